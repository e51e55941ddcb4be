"""Score one edit or one reconstruction the way PIE-Bench does, with whichever learned metrics have weights here.

    scorer = PieScorer.load()                 # networks from local files; the missing ones are listed, not guessed
    scorer.skipped                            # {"structure_distance": "needs facebook/dino-vitb8, ... run: hf download ..."}
    scorer.edit(source, edited, mask, source_prompt, target_prompt)   # -> {metric: value}, NaN for empty regions
    scorer.reconstruction(source, reconstructed)                      # whole-image psnr/mse/ssim(/lpips)

Images are float [H, W, 3] in 0..1 and quantised to 8 bits first (`metrics.quantise`); `mask` is the edited
region [H, W] (True = edited), the background is its complement.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .metrics import PIE_METRICS, quantise, region_scores, structure_distance_from_keys
from .networks import Clip, Dino, Lpips, MissingWeights

__all__ = ["PieScorer", "RECONSTRUCTION_METRICS"]

RECONSTRUCTION_METRICS: tuple[str, ...] = ("psnr_whole", "mse_whole", "ssim_whole", "lpips_whole")
_NETWORK_OF = {"lpips": ("lpips_unedit_part", "lpips_whole"), "dino": ("structure_distance",),
               "clip": ("clip_similarity_target_image", "clip_similarity_target_image_edit_part")}


@dataclass
class PieScorer:
    """The loaded networks (None when their weights are missing) and why each skipped metric is skipped."""

    lpips: Lpips | None = None
    dino: Dino | None = None
    clip: Clip | None = None
    skipped: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, *, weights: Mapping[str, str | Path] | None = None, networks: Sequence[str] = ("lpips", "dino", "clip"),
             quiet: bool = False) -> "PieScorer":
        """Load each of `networks` from `weights[name]` (a file or folder) or the local caches; a missing one
        is recorded in `skipped` for every metric it serves and reported in one warning line each."""
        weights = dict(weights or {})
        unknown = set(weights) - set(_NETWORK_OF)
        if unknown:
            raise ValueError(f"unknown metric network(s) {sorted(unknown)}; choose from {sorted(_NETWORK_OF)}")
        loaders = {"lpips": Lpips.load, "dino": Dino.load, "clip": Clip.load}
        scorer = cls()
        for name in _NETWORK_OF:
            if name not in networks:
                for metric in _NETWORK_OF[name]:
                    scorer.skipped[metric] = "not asked for"
                continue
            try:
                setattr(scorer, name, loaders[name](weights.get(name)))
            except (MissingWeights, FileNotFoundError) as e:
                for metric in _NETWORK_OF[name]:
                    scorer.skipped[metric] = str(e)
                if not quiet:
                    warnings.warn(f"skipping {', '.join(_NETWORK_OF[name])}: {e}", stacklevel=2)
        return scorer

    def identities(self) -> dict[str, str]:
        """Which weights scored (recorded with every run): model ids, or 'missing'."""
        from .networks import WEIGHTS

        return {name: WEIGHTS[name].model_id if getattr(self, name) is not None else "missing" for name in _NETWORK_OF}

    def edit(self, source: Tensor, edited: Tensor, mask: np.ndarray, source_prompt: str, target_prompt: str
             ) -> dict[str, float]:
        """PIE-Bench's Table 1 columns for one edit (released-code names; NaN for a skipped metric)."""
        a, b = quantise(source), quantise(edited)
        edited_region = np.asarray(mask, dtype=bool)
        if edited_region.shape != tuple(a.shape[:2]):
            raise ValueError(f"the edit mask is {edited_region.shape} but the image is {tuple(a.shape[:2])}")
        keep = (~edited_region).astype(np.float64)
        out = region_scores(a, b, keep, "unedit_part")
        out["lpips_unedit_part"] = self._lpips(a, b, keep) if keep.sum() else math.nan
        out["structure_distance"] = (structure_distance_from_keys(self.dino.keys(a * 255), self.dino.keys(b * 255))
                                     if self.dino is not None else math.nan)
        if self.clip is not None:
            pixels = (b.numpy() * 255).round().astype(np.uint8)
            out["clip_similarity_target_image"] = self.clip.score(pixels, target_prompt)
            out["clip_similarity_target_image_edit_part"] = (
                self.clip.score((pixels * edited_region[..., None]).astype(np.uint8), target_prompt)
                if edited_region.any() else math.nan)
        else:
            out["clip_similarity_target_image"] = out["clip_similarity_target_image_edit_part"] = math.nan
        return {name: out[name] for name in (*PIE_METRICS, "mse_unedit_part")}

    def reconstruction(self, source: Tensor, reconstructed: Tensor) -> dict[str, float]:
        """Whole-image psnr / mse / ssim (and lpips) of a reconstruction against its source."""
        a, b = quantise(source), quantise(reconstructed)
        out = region_scores(a, b, None, "whole")
        out["lpips_whole"] = self._lpips(a, b, None)
        return out

    def _lpips(self, a: Tensor, b: Tensor, keep: np.ndarray | None) -> float:
        if self.lpips is None:
            return math.nan
        k = torch.ones(a.shape[:2], dtype=torch.float64) if keep is None else torch.as_tensor(keep)
        x = (a * k[..., None]).permute(2, 0, 1)[None].float() * 2 - 1
        y = (b * k[..., None]).permute(2, 0, 1)[None].float() * 2 - 1
        return float(self.lpips(x, y)[0])


def shapes_scores(edited: Tensor, source: Tensor, target_colour: str, target_shape: str) -> dict[str, float]:
    """PIE-shapes' stand-ins for CLIP and DINO: the bundled detector's edit success (both words of the target
    seen) and the shape kept (foreground IoU of edit and source), per image [H, W, 3]."""
    from ..metrics import detector_metrics

    (row,) = detector_metrics(edited[None], source[None], prompts=[f"{target_colour} {target_shape}"]) or [{}]
    if not row:
        return {"edit_success": math.nan, "shape_iou": math.nan}
    return {"edit_success": float(row["colour_match"] * row["shape_match"]), "shape_iou": float(row["fg_iou"])}


def nan_count(rows: Sequence[Mapping[str, Any]], metric: str) -> int:
    """How many rows have no finite value for `metric`."""
    return sum(1 for r in rows if not (isinstance(r.get(metric), (int, float)) and math.isfinite(r[metric])))
