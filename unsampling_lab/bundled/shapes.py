"""A procedural "shapes" dataset: one filled, saturated shape on black, captioned "<colour> <shape>".

Deterministic from a seed. Images are float [B, H, W, 3] in 0..1, rendered at 4x and box-filtered
(anti-aliased edges). Each shape has a square bounding box of half-side `r` around its centre
(cx, cy) in pixel units (pixel i covers [i, i + 1)), so the detector can fit a template to the bbox:

    circle:    (x - cx)^2 + (y - cy)^2 <= r^2
    square:    |x - cx| <= r  and  |y - cy| <= r
    triangle:  apex (cx, cy - r), base y = cy + r:  |x - cx| <= (y - cy + r) / 2,  |y - cy| <= r
    cross:     plus sign, arms of half-width w = r / 3:  (|x - cx| <= r, |y - cy| <= w) or (|x - cx| <= w, |y - cy| <= r)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

Colour = Literal["red", "green", "blue", "yellow", "magenta", "cyan"]
Shape = Literal["circle", "square", "triangle", "cross"]

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
    "magenta": (1.0, 0.0, 1.0),
    "cyan": (0.0, 1.0, 1.0),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
CAPTIONS: tuple[str, ...] = tuple(f"{c} {s}" for c in COLOURS for s in SHAPES)
WORDS: tuple[str, ...] = tuple(COLOURS) + SHAPES

SIZE = 32
R_MIN, R_MAX = 5.0, 12.0  # half-side of the bounding box, pixels
SUPERSAMPLE = 4
CROSS_ARM = 1 / 3  # arm half-width / r


@dataclass(frozen=True)
class ShapesBatch:
    """Images [B, H, W, 3] in 0..1 with their captions and the parameters that drew them."""

    images: Tensor
    captions: list[str]
    colours: list[str]
    shapes: list[str]
    centres: Tensor  # [B, 2] (cx, cy), pixels
    radii: Tensor  # [B] half-side r, pixels

    def coverage(self) -> Tensor:
        """[B, H, W] in 0..1: how much of each pixel the shape covers (the generator's exact object mask)."""
        idx = torch.tensor([SHAPES.index(s) for s in self.shapes], dtype=torch.long)
        return shape_masks(idx, self.centres, self.radii, size=self.images.shape[1])

    def latent_cells(self, size: int) -> Tensor:
        """[B, 1, size, size]: 1 on every cell of a size x size latent grid that the shape touches (coverage > 0
        anywhere in the cell): the object's own mask at latent resolution."""
        cov = self.coverage()
        if cov.shape[-1] % size:
            raise ValueError(f"a {cov.shape[-1]} px image has no {size} x {size} grid of whole cells")
        return (torch.nn.functional.avg_pool2d(cov[:, None], cov.shape[-1] // size) > 0).float()


def shape_masks(shape_idx: Tensor, centres: Tensor, radii: Tensor, *, size: int = SIZE,
                supersample: int = SUPERSAMPLE) -> Tensor:
    """Coverage [B, size, size] in 0..1 of each shape (index into SHAPES), box-filtered from `supersample`x."""
    n = size * supersample
    coords = (torch.arange(n, dtype=torch.float32) + 0.5) / supersample  # sub-pixel centres, pixel units
    dx = coords[None, None, :] - centres[:, 0, None, None]  # [B, 1, n]
    dy = coords[None, :, None] - centres[:, 1, None, None]  # [B, n, 1]
    r = radii[:, None, None]
    w = CROSS_ARM * r
    rules = (
        lambda dx, dy, r, w: dx**2 + dy**2 <= r**2,
        lambda dx, dy, r, w: (dx.abs() <= r) & (dy.abs() <= r),
        lambda dx, dy, r, w: (dy.abs() <= r) & (dx.abs() <= (dy + r) / 2),
        lambda dx, dy, r, w: ((dx.abs() <= r) & (dy.abs() <= w)) | ((dx.abs() <= w) & (dy.abs() <= r)),
    )
    inside = torch.zeros(len(shape_idx), n, n)
    for s, rule in enumerate(rules):
        sel = (shape_idx == s).nonzero()[:, 0]
        if len(sel):
            inside[sel] = rule(dx[sel], dy[sel], r[sel], w[sel]).float()
    return torch.nn.functional.avg_pool2d(inside[:, None], supersample)[:, 0]


def render(colour_idx: Tensor, shape_idx: Tensor, centres: Tensor, radii: Tensor, *, size: int = SIZE) -> Tensor:
    """Images [B, size, size, 3]: colour * coverage on black."""
    rgb = torch.tensor(list(COLOURS.values()), dtype=torch.float32)[colour_idx]  # [B, 3]
    return shape_masks(shape_idx, centres, radii, size=size)[..., None] * rgb[:, None, None, :]


def recolour_captions(batch: ShapesBatch, *, shift: int = 1) -> list[str]:
    """The benchmarks' and notebooks' edit: each caption with its colour moved `shift` places along the
    palette ("red circle" -> "green circle"), so every colour pair occurs and the shape word stays."""
    palette = list(COLOURS)
    return [f"{palette[(palette.index(c) + shift) % len(palette)]} {s}" for c, s in zip(batch.colours, batch.shapes)]


def make_shapes(n: int, *, seed: int, size: int = SIZE) -> ShapesBatch:
    """`n` random shapes, deterministic from `seed`: uniform colour, shape, radius, and a centre that keeps the shape inside."""
    g = torch.Generator().manual_seed(seed)
    colour_idx = torch.randint(len(COLOURS), (n,), generator=g)
    shape_idx = torch.randint(len(SHAPES), (n,), generator=g)
    radii = R_MIN + (R_MAX - R_MIN) * torch.rand(n, generator=g)
    # centre in [r + 1, size - 1 - r] so a one-pixel black margin remains
    lo, span = radii + 1, size - 2 * (radii + 1)
    centres = lo[:, None] + span[:, None] * torch.rand(n, 2, generator=g)
    colours = [list(COLOURS)[i] for i in colour_idx.tolist()]
    shapes = [SHAPES[i] for i in shape_idx.tolist()]
    images = torch.cat([render(colour_idx[i:i + 512], shape_idx[i:i + 512], centres[i:i + 512],
                               radii[i:i + 512], size=size) for i in range(0, n, 512)]) if n else \
        torch.zeros(0, size, size, 3)
    return ShapesBatch(images=images, captions=[f"{c} {s}" for c, s in zip(colours, shapes)],
                       colours=colours, shapes=shapes, centres=centres, radii=radii)
