"""PIE-shapes: an offline editing suite in PIE-Bench's format, drawn by the bundled shapes generator.

Every case is one shape on black, captioned "<colour> <shape>", and one edit the bundled model can make:
    colour change (PIE-Bench type 6, "change attribute color"): "[red] circle" -> "[green] circle", the next
        colour of the palette (every colour pair occurs); the edited region is the shape's exact footprint;
    shape change (type 1, "change object"): "red [circle]" -> "red [square]", the next shape; the edited region
        is the union of the old and the new shape's footprints at the same centre and size.
A footprint is every pixel the anti-aliased shape touches (coverage > 0), so the background region is exactly
black in the source. The generator has no background, removal or addition, so those types are absent.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ...errors import check_int
from ...bundled.shapes import COLOURS, SHAPES, make_shapes, shape_masks
from .data import PieCase, load_pie_bench, write_pie_bench

__all__ = ["PIE_SHAPES_SEED", "ShapesCase", "pie_shapes", "write_pie_shapes"]

PIE_SHAPES_SEED = 2024


@dataclass(frozen=True)
class ShapesCase:
    """What the generator knows about a PIE-shapes case beyond PIE-Bench's fields: the target's colour and shape."""

    key: str
    target_colour: str
    target_shape: str


def _cases(n_colour: int, n_shape: int, seed: int) -> list[tuple]:
    batch = make_shapes(n_colour + n_shape, seed=seed)
    palette = list(COLOURS)
    src_idx = torch.tensor([SHAPES.index(s) for s in batch.shapes])
    # keys interleave the two edit types, so the first k cases of the suite hold both
    order = sorted(range(n_colour + n_shape), key=lambda i: (i / n_colour if i < n_colour else (i - n_colour) / n_shape, i))
    position = {i: p for p, i in enumerate(order)}
    out = []
    for i in range(n_colour + n_shape):
        colour, shape = batch.colours[i], batch.shapes[i]
        if i < n_colour:
            new_colour = palette[(palette.index(colour) + 1 + i // len(palette)) % len(palette)]
            if new_colour == colour:
                new_colour = palette[(palette.index(colour) + 1) % len(palette)]
            new_shape, kind = shape, 6
            source, target, words = f"[{colour}] {shape}", f"[{new_colour}] {shape}", f"{shape} {shape}"
        else:
            new_colour, kind = colour, 1
            new_shape = SHAPES[(SHAPES.index(shape) + 1 + (i - n_colour) // len(SHAPES)) % len(SHAPES)]
            if new_shape == shape:
                new_shape = SHAPES[(SHAPES.index(shape) + 1) % len(SHAPES)]
            source, target, words = f"{colour} [{shape}]", f"{colour} [{new_shape}]", f"{shape} {new_shape}"
        idx = torch.tensor([int(src_idx[i]), SHAPES.index(new_shape)])
        cover = shape_masks(idx, batch.centres[i].expand(2, 2), batch.radii[i].expand(2)) > 0
        mask = (cover[0] | cover[1]).numpy()
        out.append((f"{position[i]:04d}", batch.images[i], source, target, kind, mask, words, new_colour, new_shape))
    return out


def write_pie_shapes(folder: str | Path, *, n_colour: int = 40, n_shape: int = 24, seed: int = PIE_SHAPES_SEED) -> Path:
    """Write the suite to `folder` in PIE-Bench's layout (mapping_file.json + annotation_images/)."""
    check_int("n_colour", n_colour, minimum=0)
    check_int("n_shape", n_shape, minimum=0)
    return write_pie_bench(folder, [c[:7] for c in _cases(n_colour, n_shape, seed)])


def pie_shapes(*, n_colour: int = 40, n_shape: int = 24, seed: int = PIE_SHAPES_SEED,
               folder: str | Path | None = None) -> tuple[list[PieCase], dict[str, ShapesCase]]:
    """The suite's cases (written to `folder`, or to a temporary folder, and read back with the PIE-Bench
    loader so both go through one path) and, per key, the target the detector should see."""
    import tempfile

    extra = {c[0]: ShapesCase(c[0], c[7], c[8]) for c in _cases(n_colour, n_shape, seed)}
    if folder is None:
        with tempfile.TemporaryDirectory() as tmp:
            root = write_pie_shapes(tmp, n_colour=n_colour, n_shape=n_shape, seed=seed)
            cases = [_in_memory(c) for c in load_pie_bench(root)]
    else:
        cases = load_pie_bench(write_pie_shapes(folder, n_colour=n_colour, n_shape=n_shape, seed=seed))
    return cases, extra


def _in_memory(case: PieCase) -> PieCase:
    from dataclasses import replace

    assert case.image_path is not None
    return replace(case, image_bytes=case.image_path.read_bytes(), image_path=None)


def images_of(cases: list[PieCase]) -> Tensor:
    """The cases' source images stacked [B, H, W, 3] (all PIE-shapes images have one size)."""
    return torch.stack([c.image() for c in cases])


def masks_of(cases: list[PieCase], *, border: bool = False) -> np.ndarray:
    """Edited-region masks [B, H, W]; PIE-shapes' masks are exact, so no border by default."""
    return np.stack([c.mask(border=border) for c in cases])
