"""PIE-Bench in the field's own units (PnP Inversion, Ju et al. ICLR 2024, arXiv 2310.01506).

    masks     the benchmark's run-length masks (decode / encode)
    data      the data set as distributed (mapping_file.json + images, or the parquet mirror) -> `PieCase`s
    metrics   the released evaluation code's formulas: masked PSNR / MSE / SSIM, structure distance, CLIP score
    networks  the networks those metrics need (LPIPS-squeeze, DINO ViT-B/8, CLIP ViT-L/14), loaded offline only
    suite     "PIE-shapes": an offline suite in PIE-Bench's format, drawn by the bundled shapes generator
"""
from __future__ import annotations

from .data import EDITING_TYPES, PieCase, load_pie_bench, write_pie_bench
from .masks import decode_mask, encode_mask

__all__ = ["EDITING_TYPES", "PieCase", "decode_mask", "encode_mask", "load_pie_bench", "write_pie_bench"]
