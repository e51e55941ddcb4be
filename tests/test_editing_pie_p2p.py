"""Reweight on top of refine (P2P's AttentionReweight wrapping AttentionRefine, as PnP Inversion's P2P evaluation
runs it) and per-item reweight words."""
from __future__ import annotations

import pytest
import torch

import unsampling_lab as ul
from unsampling_lab.editing import edit
from unsampling_lab.editing.controls import control_options

STEPS = 4
CFG = 3.0


@pytest.fixture(scope="module")
def setup(shapes_pair):
    model, _, latent, src, tgt = shapes_pair
    return model, latent, src, tgt


def _run(model, latent, src, tgt, rows, control, **options):
    items = {**latent, "samples": latent["samples"][rows]} if isinstance(latent, dict) else latent[rows]
    inv = ul.invert(model, items, method="unsampler", steps=STEPS, positive=[src[r] for r in rows], progress=False)
    return edit(model, inv, source=[src[r] for r in rows], target=[tgt[r] for r in rows], control=control, cfg=CFG,
                **options)


def test_refine_scale_one_is_refine_and_the_reweight_acts_in_the_cross_window_only(setup):
    model, latent, src, tgt = setup
    words = tuple(t.split()[0] for t in tgt)  # the target colours
    plain = _run(model, latent, src, tgt, [0, 1], "p2p_refine")
    one = _run(model, latent, src, tgt, [0, 1], "p2p_refine", words=words, scale=1.0)
    assert torch.equal(one.target["samples"], plain.target["samples"])
    double = _run(model, latent, src, tgt, [0, 1], "p2p_refine", words=words, scale=2.0)
    assert not torch.equal(double.target["samples"], plain.target["samples"])
    assert torch.equal(double.source["samples"], plain.source["samples"])  # the source branch is never touched
    # P2P blends the reweighted map in with the cross window's time-word alpha: outside the window, no reweight
    off = dict(cross_steps=0.0)
    assert torch.equal(_run(model, latent, src, tgt, [0, 1], "p2p_refine", words=words, scale=2.0, **off).target["samples"],
                       _run(model, latent, src, tgt, [0, 1], "p2p_refine", **off).target["samples"])


@pytest.mark.parametrize("control", ["p2p_refine", "p2p_reweight"])
def test_per_item_words_reweight_each_items_own_word(setup, control):
    """[A, B] with words ((a,), (b,)) is, row for row, [A, A] with words (a,) and [B, B] with (b,): same batch size,
    so the same kernels, bit for bit."""
    model, latent, src, tgt = setup
    words = (tgt[0].split()[0], tgt[1].split()[1])  # item 0: its colour; item 1: its shape (different positions)
    both = _run(model, latent, src, tgt, [0, 1], control, words=((words[0],), (words[1],)), scale=2.0)
    plain = _run(model, latent, src, tgt, [0, 1], control)
    for i in (0, 1):
        alone = _run(model, latent, src, tgt, [i, i], control, words=(words[i],), scale=2.0)
        assert torch.equal(both.target["samples"][i], alone.target["samples"][0])
        assert not torch.equal(both.target["samples"][i], plain.target["samples"][i])


def test_refine_reweight_options_are_checked(setup):
    model, latent, src, tgt = setup
    assert control_options("p2p_refine", {})["scale"] == 1.0
    assert control_options("p2p_refine", {"words": [["red"], ["blue"]], "scale": 2.0})["words"] == (("red",), ("blue",))
    with pytest.raises(ul.UnsamplingError, match="control 'p2p_refine': give the words to reweight"):
        control_options("p2p_refine", {"scale": 2.0})
    with pytest.raises(ul.UnsamplingError, match="words holds 3 tuples of words, one per item, but the batch has 2"):
        _run(model, latent, src, tgt, [0, 1], "p2p_refine", words=(("a",), ("b",), ("c",)), scale=2.0)
    with pytest.raises(ul.UnsamplingError, match=r"p2p_refine: none of \['hexagon'\] is a word of the target"):
        _run(model, latent, src, tgt, [0, 1], "p2p_refine", words=("hexagon",), scale=2.0)
