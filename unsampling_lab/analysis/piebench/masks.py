"""PIE-Bench's run-length masks.

A mask is a flat list [start_0, length_0, start_1, length_1, ...] over the row-major pixels of the image
(512 x 512 in PIE-Bench); pixels inside a run are the *edited* region (1), the rest 0. The released
evaluation code (`evaluation/evaluate.py`, `mask_decode`) also sets the one-pixel image border to 1 "to avoid
annotation errors in boundary": `border=True` reproduces that, and it is the default because every published
PIE-Bench number was computed with it. The parquet mirror stores the same runs as a space-separated string.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["decode_mask", "encode_mask", "parse_runs"]


def parse_runs(encoded: Sequence[int] | str) -> list[int]:
    """The run list from a list of ints or the mirror's "start length start length ..." string."""
    if isinstance(encoded, str):
        parts = encoded.replace(",", " ").split()
        try:
            runs = [int(p) for p in parts]
        except ValueError:
            raise ValueError(f"a PIE-Bench mask string holds whole numbers 'start length ...', got {encoded[:60]!r}") from None
    else:
        runs = [int(v) for v in encoded]
    if len(runs) % 2:
        raise ValueError(f"a PIE-Bench mask is pairs (start, length); got an odd count {len(runs)}")
    if any(v < 0 for v in runs):
        raise ValueError("a PIE-Bench mask has no negative starts or lengths")
    return runs


def decode_mask(encoded: Sequence[int] | str, shape: tuple[int, int] = (512, 512), *,
                border: bool = True) -> np.ndarray:
    """Boolean [H, W] edited-region mask from run-length pairs; runs are clipped at the image's end."""
    h, w = shape
    flat = np.zeros(h * w, dtype=bool)
    runs = parse_runs(encoded)
    for start, length in zip(runs[0::2], runs[1::2]):
        flat[start:min(start + length, h * w)] = True
    mask = flat.reshape(h, w)
    if border:
        mask[0, :] = mask[-1, :] = True
        mask[:, 0] = mask[:, -1] = True
    return mask


def encode_mask(mask: np.ndarray) -> list[int]:
    """Run-length pairs of a boolean [H, W] mask (row-major), the inverse of `decode_mask(..., border=False)`."""
    flat = np.asarray(mask, dtype=bool).ravel()
    padded = np.concatenate([[False], flat, [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    starts, ends = edges[0::2], edges[1::2]
    return [int(v) for pair in zip(starts, ends - starts) for v in pair]
