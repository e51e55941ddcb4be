"""PIE-Bench's metrics, as its released evaluation code computes them (PnP Inversion, `evaluation/`).

Every image is first quantised to 8 bits (the released code reads PNG/JPEG files) and scaled to 0..1.
Region metrics multiply *both* images by the region's mask and then score the whole image, so pixels outside
the region count as exact matches in the mean (this is how the published numbers were made; it is not a mean
over the region alone):

    mse_<region>   = mean over all H*W*3 values of (m (a - b))^2                 (paper: x 10^4)
    psnr_<region>  = 10 log10(1 / mse_<region>)                                  (dB)
    ssim_<region>  = SSIM(m a, m b), 11-tap Gaussian window (sigma 1.5), data range 1 (paper: x 10^2)
    lpips_<region> = LPIPS-squeeze(2 m a - 1, 2 m b - 1)                         (paper: x 10^3)
    structure_distance = mean((S(a) - S(b))^2), S the cosine self-similarity of DINO ViT-B/8's last-layer
                         keys (CLS included) of the image in 0..255 resized to 224 and ImageNet-normalised as if
                         it were in 0..1: the released code's scaling, kept so numbers compare   (paper: x 10^3)
    clip_<which>   = max(100 cos(E_image, E_text), 0), CLIP ViT-L/14; the edited part is the 8-bit image times
                     the edit mask

The background ("unedited part") is 1 - the edit mask; a region with no pixel gives NaN, which summaries
count and report (never drop). PSNR/SSIM/MSE are torchmetrics' functions, the library the released code
calls, so the arithmetic is the same.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import Tensor

from ..metrics import wilson_interval

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["PIE_METRICS", "RATE_METRICS", "PieMetric", "quantise", "region_scores", "self_similarity", "summarise", "structure_distance_from_keys"]


@dataclass(frozen=True)
class PieMetric:
    """A column of PIE-Bench's Table 1: its name in the released code, the paper's scale and what it needs."""

    name: str
    column: str
    scale: float
    needs: Literal["none", "lpips", "dino", "clip"]
    higher_is_better: bool


#: The released code's default metric list, in Table 1's order, with the paper's column names and scales.
PIE_METRICS: dict[str, PieMetric] = {m.name: m for m in (
    PieMetric("structure_distance", "Structure Distance x10^3", 1e3, "dino", False),
    PieMetric("psnr_unedit_part", "Background PSNR", 1.0, "none", True),
    PieMetric("lpips_unedit_part", "Background LPIPS x10^3", 1e3, "lpips", False),
    PieMetric("mse_unedit_part", "Background MSE x10^4", 1e4, "none", False),
    PieMetric("ssim_unedit_part", "Background SSIM x10^2", 1e2, "none", True),
    PieMetric("clip_similarity_target_image", "CLIP Whole", 1.0, "clip", True),
    PieMetric("clip_similarity_target_image_edit_part", "CLIP Edited", 1.0, "clip", True),
)}


def quantise(image: Tensor) -> Tensor:
    """Float [H, W, 3] in 0..1 -> the 8-bit image the released code reads, as float64 in 0..1."""
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"PIE-Bench metrics take one image [H, W, 3], got {tuple(image.shape)}")
    if not torch.isfinite(image).all():
        raise ValueError("the image holds NaN or inf; a metric of it would be meaningless")
    return (image.detach().double().cpu().clamp(0, 1) * 255).round() / 255


def _chw(image: Tensor, keep: Tensor | None) -> Tensor:
    x = image if keep is None else image * keep[..., None]
    return x.permute(2, 0, 1)[None].float()


def region_scores(source: Tensor, edited: Tensor, keep: np.ndarray | Tensor | None, suffix: str) -> dict[str, float]:
    """mse / psnr / ssim of two quantised images [H, W, 3] with both multiplied by `keep` [H, W] (None: whole)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    if keep is not None:
        keep = torch.as_tensor(np.asarray(keep), dtype=torch.float64)
        if keep.shape != source.shape[:2]:
            raise ValueError(f"the mask is {tuple(keep.shape)} but the image is {tuple(source.shape[:2])}")
        if keep.sum() == 0:
            return {f"{k}_{suffix}": math.nan for k in ("mse", "psnr", "ssim")}
    a, b = _chw(source, keep), _chw(edited, keep)
    return {f"mse_{suffix}": float(((a - b) ** 2).mean()),
            f"psnr_{suffix}": float(peak_signal_noise_ratio(b, a, data_range=1.0)),
            f"ssim_{suffix}": float(structural_similarity_index_measure(b, a, data_range=1.0))}


def self_similarity(keys: Tensor) -> Tensor:
    """Cosine self-similarity [T, T] of token keys [T, D] (norms clamped at 1e-8, as the released code)."""
    norm = keys.norm(dim=-1, keepdim=True)
    return (keys @ keys.T) / (norm @ norm.T).clamp_min(1e-8)


def structure_distance_from_keys(keys_a: Tensor, keys_b: Tensor) -> float:
    """mean((S(a) - S(b))^2) of the two images' key self-similarities."""
    return float(((self_similarity(keys_a) - self_similarity(keys_b)) ** 2).mean())


#: 0/1 columns (a rate per group): summarised with Wilson score intervals instead of a t-interval.
RATE_METRICS: tuple[str, ...] = ("edit_success",)


def _t95(n: int) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.975, n - 1)) if n > 1 else math.nan


def summarise(rows: Iterable[Mapping[str, Any]], *, by: Sequence[str] = ("method",),
              metrics: Sequence[str] | None = None, skipped: Mapping[str, str] | None = None) -> "pd.DataFrame":
    """One line per group: for each metric its mean in the paper's scale, the 95 % t-interval half-width (and
    for rates, `RATE_METRICS`, the Wilson interval `<name>_lo` / `<name>_hi`), the number of items scored and the number that were NaN (counted, never dropped silently); metrics in
    `skipped` (name -> reason) are columns of NaN with the reason in `skipped_metrics`."""
    import pandas as pd

    frame = pd.DataFrame(list(rows))
    names = [m for m in (metrics or [c for c in frame.columns if c not in by]) if m in frame.columns]
    out = []
    for key, part in frame.groupby(list(by), sort=True, dropna=False):
        line: dict[str, Any] = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        line["n"] = len(part)
        for name in names:
            values = pd.to_numeric(part[name], errors="coerce").to_numpy(dtype=float)
            finite = values[np.isfinite(values)]
            scale = PIE_METRICS[name].scale if name in PIE_METRICS else 1.0
            mean = finite.mean() * scale if len(finite) else math.nan
            half = _t95(len(finite)) * finite.std(ddof=1) / math.sqrt(len(finite)) * scale if len(finite) > 1 else math.nan
            line[name] = mean
            line[f"{name}_ci95"] = half
            if name in RATE_METRICS:
                line[f"{name}_lo"], line[f"{name}_hi"] = wilson_interval(float(finite.mean()), len(finite))
            line[f"{name}_nan"] = int(len(values) - len(finite))
        for name in (skipped or {}):
            line[name] = math.nan
        if skipped:
            line["skipped_metrics"] = "; ".join(f"{k}: {v}" for k, v in skipped.items())
        out.append(line)
    return pd.DataFrame(out)
