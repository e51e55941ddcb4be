"""The shapes dataset: deterministic from a seed, captions match the pixels."""
from __future__ import annotations

import pytest
import torch

from unsampling_lab.bundled.shapes import CAPTIONS, COLOURS, SHAPES, make_shapes


def test_vocabulary() -> None:
    assert len(COLOURS) >= 6 and len(SHAPES) >= 4
    assert {"circle", "square", "triangle"} <= set(SHAPES)
    assert COLOURS["red"] == (1.0, 0.0, 0.0) and COLOURS["yellow"] == (1.0, 1.0, 0.0)
    assert COLOURS["magenta"] == (1.0, 0.0, 1.0) and COLOURS["cyan"] == (0.0, 1.0, 1.0)
    assert len(set(CAPTIONS)) == len(COLOURS) * len(SHAPES)


def test_deterministic_from_seed() -> None:
    a, b, c = make_shapes(64, seed=7), make_shapes(64, seed=7), make_shapes(64, seed=8)
    assert torch.equal(a.images, b.images) and a.captions == b.captions
    assert not torch.equal(a.images, c.images)
    assert a.images.shape == (64, 32, 32, 3) and a.images.dtype == torch.float32


def test_captions_and_colours_match_pixels() -> None:
    batch = make_shapes(200, seed=0)
    assert batch.captions == [f"{c} {s}" for c, s in zip(batch.colours, batch.shapes)]
    assert set(batch.captions) <= set(CAPTIONS)
    for img, colour in zip(batch.images, batch.colours):
        fg = img.max(-1).values
        assert fg.max() == 1.0  # fully covered pixels are the pure colour
        full = img[fg == 1.0]
        assert torch.equal(full, torch.tensor(COLOURS[colour]).expand_as(full))
        assert img[0].abs().sum() == 0 and img[-1].abs().sum() == 0  # black margin: shape fully inside
        assert img[:, 0].abs().sum() == 0 and img[:, -1].abs().sum() == 0


def test_all_classes_appear() -> None:
    assert set(make_shapes(400, seed=1).captions) == set(CAPTIONS)


def test_recolour_captions_moves_the_colour_along_the_palette_and_keeps_the_shape():
    from unsampling_lab.bundled.shapes import COLOURS, make_shapes, recolour_captions

    batch = make_shapes(12, seed=3)
    palette = list(COLOURS)
    for caption, colour, shape, edit in zip(batch.captions, batch.colours, batch.shapes, recolour_captions(batch)):
        new_colour, new_shape = edit.split()
        assert new_shape == shape and caption == f"{colour} {shape}"
        assert palette.index(new_colour) == (palette.index(colour) + 1) % len(palette)
    assert recolour_captions(batch, shift=len(palette)) == batch.captions


def test_coverage_and_latent_cells_are_the_generators_own_object_mask() -> None:
    batch = make_shapes(3, seed=5)
    cov = batch.coverage()
    # the images are colour x coverage on black, so the coverage is the brightest channel of each pixel
    assert torch.allclose(cov, batch.images.amax(-1), atol=1e-6)
    cells = batch.latent_cells(8)
    assert cells.shape == (3, 1, 8, 8) and set(cells.unique().tolist()) <= {0.0, 1.0}
    for b in range(3):  # a cell is on exactly when some pixel of its 4x4 block is touched
        touched = cov[b].reshape(8, 4, 8, 4).amax(dim=(1, 3)) > 0
        assert torch.equal(cells[b, 0] > 0, touched)
    with pytest.raises(ValueError, match="no 5 x 5 grid"):
        batch.latent_cells(5)
