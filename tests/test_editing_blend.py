"""Local blend: the mask from hand-made maps (pooling, normalisation, layers, rows) and a mask of one's own (mask=)."""
from __future__ import annotations

import pytest
import torch

import unsampling_lab as ul
from unsampling_lab.editing import edit
from unsampling_lab.editing.controls import control_options
from unsampling_lab.editing.model import blend_mask

DEFAULTS = dict(threshold=0.3, dilation=0.0, layers="all", norm="max", rows="both")


def _rows(*maps: list[list[float]]) -> torch.Tensor:
    """[2B, Q] from square maps given row by row (rows: source B, then target B)."""
    return torch.tensor(maps, dtype=torch.float32).flatten(1)


# one item: a 4 x 4 map with a floor of 0.5 and a peak, at the latent's own size (no resizing)
SRC = [[0.5, 0.5, 0.5, 0.5], [0.5, 1.0, 0.9, 0.5], [0.5, 0.6, 0.5, 0.5], [0.5, 0.5, 0.5, 0.5]]
TGT = [[0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 0.5, 1.0]]


def test_no_pool_gives_exactly_the_thresholded_cells():
    sums = {"layer": _rows(SRC, TGT)}
    # divided by the maximum (P2P): > 0.7 keeps 1.0 and 0.9 of the source, 1.0 of the target
    want = torch.zeros(4, 4)
    want[1, 1] = want[1, 2] = want[3, 3] = 1
    got = blend_mask(sums, 1, (4, 4), **{**DEFAULTS, "threshold": 0.7})
    assert got.shape == (1, 1, 4, 4) and torch.equal(got[0, 0], want)
    # P2P's 0.3 under a floor of 0.5 of the maximum: every cell
    assert torch.equal(blend_mask(sums, 1, (4, 4), **DEFAULTS), torch.ones(1, 1, 4, 4))
    # by the range: (m - 0.5) / 0.5 > 0.3 keeps 1.0, 0.9 (0.8) and the target's 1.0, not 0.6 (0.2)
    assert torch.equal(blend_mask(sums, 1, (4, 4), **{**DEFAULTS, "norm": "range"})[0, 0], want)
    # source rows alone
    src_only = want.clone()
    src_only[3, 3] = 0
    got = blend_mask(sums, 1, (4, 4), **{**DEFAULTS, "norm": "range", "rows": "source"})
    assert torch.equal(got[0, 0], src_only)


def test_dilation_pools_whole_cells_of_the_width():
    peak = [[0.0] * 8 for _ in range(8)]
    peak[2][5] = 1.0
    sums = {"layer": _rows(peak, peak)}
    assert int(blend_mask(sums, 1, (8, 8), **{**DEFAULTS, "dilation": 1 / 16}).sum()) == 1  # ⌊8/16⌋ = 0: no pool
    got = blend_mask(sums, 1, (8, 8), **{**DEFAULTS, "dilation": 1 / 8})[0, 0]  # r = 1: 3 x 3
    want = torch.zeros(8, 8)
    want[1:4, 4:7] = 1
    assert torch.equal(got, want)
    assert int(blend_mask(sums, 1, (8, 8), **{**DEFAULTS, "dilation": 2 / 8}).sum()) == 25  # r = 2: 5 x 5


def test_layers_pick_a_resolution():
    fine = [[0.0] * 4 for _ in range(4)]
    fine[0][0] = 1.0
    coarse = [[0.0, 0.0], [0.0, 1.0]]  # the bottom-right quarter, resized bilinearly to 4 x 4
    sums = {"fine": _rows(fine, fine), "coarse": _rows(coarse, coarse)}
    got = blend_mask(sums, 1, (4, 4), **{**DEFAULTS, "layers": "finest"})[0, 0]
    assert int(got.sum()) == 1 and got[0, 0] == 1
    got = blend_mask(sums, 1, (4, 4), **{**DEFAULTS, "layers": "coarsest", "threshold": 0.5})[0, 0]
    assert got[0, 0] == 0 and got[3, 3] == 1 and int(got[:2].sum()) == 0
    both = blend_mask(sums, 1, (4, 4), **{**DEFAULTS, "threshold": 0.1})[0, 0]
    assert both[0, 0] == 1 and both[3, 3] == 1


@pytest.mark.parametrize("option,value,say", [("blend_dilation", 0.6, r"option blend_dilation must be in \[0, 0.5\]"),
                                              ("blend_norm", "min", "option blend_norm must be one of 'range', 'max'"),
                                              ("blend_layers", "middle", "option blend_layers must be one of"),
                                              ("blend_rows", "target", "option blend_rows must be one of"),
                                              ("blend_threshold", -0.1, r"option blend_threshold must be in \[0, 1\]")])
def test_blend_options_out_of_range_are_refused_in_one_line(option, value, say):
    with pytest.raises(ul.UnsamplingError, match=say) as err:
        control_options("p2p", {option: value})
    assert "\n" not in str(err.value)


def test_blend_defaults():
    opts = control_options("p2p", {})
    assert opts["blend_dilation"] == 1 / 16 and opts["blend_norm"] == "range" and opts["blend_rows"] == "both"
    assert opts["blend_layers"] == "all" and opts["blend_threshold"] == 0.3


STEPS = 4


@pytest.fixture(scope="module")
def setup(shapes_pair):
    model, _, latent, src, tgt = shapes_pair
    inv = ul.invert(model, latent, method="unsampler", steps=STEPS, positive=src, progress=False)
    return model, src, tgt, inv


def test_a_given_mask_keeps_the_source_outside_it_and_changes_nothing_at_target_equal_source(setup):
    model, src, tgt, inv = setup
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, 2:6, 3:7] = 1
    res = edit(model, inv, source=src, target=tgt, control="p2p", cfg=3.0, mask=mask)
    assert torch.equal(res.mask, mask)
    out, back = res.target["samples"], res.source["samples"]
    keep = (mask == 0).expand_as(out)
    assert torch.equal(out[keep], back[keep]) and not torch.equal(out[~keep], back[~keep])
    same = edit(model, inv, source=src, target=src, control="p2p", cfg=3.0, mask=mask)
    assert torch.equal(same.target["samples"], same.source["samples"])


def test_a_given_mask_refuses_what_it_cannot_use(setup):
    model, src, tgt, inv = setup
    with pytest.raises(ul.UnsamplingError, match=r"shaped \[2, 1, 8, 8\]"):
        edit(model, inv, source=src, target=tgt, control="p2p", mask=torch.ones(2, 8, 8))
    with pytest.raises(ul.UnsamplingError, match="0s and 1s"):
        edit(model, inv, source=src, target=tgt, control="p2p", mask=torch.full((2, 1, 8, 8), 0.5))
    with pytest.raises(ul.UnsamplingError, match="has no local blend"):
        edit(model, inv, source=src, target=tgt, control="pnp", mask=torch.ones(2, 1, 8, 8))
    with pytest.raises(ul.UnsamplingError, match="not both"):
        edit(model, inv, source=src, target=tgt, control="p2p", mask=torch.ones(2, 1, 8, 8), blend_words=("circle",))
