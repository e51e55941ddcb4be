"""Local blend on per-item words: blend_words as one tuple of words per batch item, checked by the one option checker."""
from __future__ import annotations

import pytest
import torch

import unsampling_lab as ul
from unsampling_lab.editing import edit
from unsampling_lab.editing.controls import control_options
from unsampling_lab.inversion.base import Option

STEPS = 4
CFG = 3.0


@pytest.fixture(scope="module")
def setup(shapes_pair):
    model, batch, latent, src, tgt = shapes_pair
    assert batch.shapes[0] != batch.shapes[1], "the test needs two different shapes"
    return model, latent, src, tgt, list(batch.shapes)


def _items(latent, rows):
    return {**latent, "samples": latent["samples"][rows]} if isinstance(latent, dict) else latent[rows]


def test_per_item_words_give_each_items_own_mask_and_edit(setup):
    """[A, B] with words ((a,), (b,)) is, row for row, [A, A] with words (a,) and [B, B] with (b,): same batch size,
    so the same kernels, bit for bit."""
    model, latent, src, tgt, words = setup

    def run(rows, blend_words):
        inv = ul.invert(model, _items(latent, rows), method="unsampler", steps=STEPS,
                        positive=[src[r] for r in rows], progress=False)
        return edit(model, inv, source=[src[r] for r in rows], target=[tgt[r] for r in rows], control="p2p", cfg=CFG,
                    blend_words=blend_words)

    both = run([0, 1], ((words[0],), (words[1],)))
    alone = [run([0, 0], (words[0],)), run([1, 1], (words[1],))]
    for i in (0, 1):
        assert torch.equal(both.mask[i], alone[i].mask[0])
        assert torch.equal(both.target["samples"][i], alone[i].target["samples"][0])
    assert not torch.equal(both.mask[0], both.mask[1])  # the items' own words: different masks
    assert 0 < int(both.mask.sum()) < both.mask.numel()
    # lists (as JSON gives them) are the same option
    listed = run([0, 1], [[words[0]], [words[1]]])
    assert torch.equal(listed.mask, both.mask)


def test_per_item_words_are_checked_in_one_line(setup):
    model, latent, src, tgt, words = setup
    inv = ul.invert(model, latent, method="unsampler", steps=STEPS, positive=src, progress=False)
    with pytest.raises(ul.UnsamplingError, match="holds 3 tuples of words, one per item, but the batch has 2 items"):
        edit(model, inv, source=src, target=tgt, blend_words=(("a",), ("b",), ("c",)))
    with pytest.raises(ul.UnsamplingError, match=r"none of \['cross'\] is a word of"):
        edit(model, inv, source=src, target=tgt, blend_words=((words[0],), ("cross",)) if "cross" not in words
             else ((words[0],), ("square",)))
    for bad in ((("circle",), "square"), (("circle",), ()), ((1,), ("circle",))):
        with pytest.raises(ul.UnsamplingError, match="option blend_words must be words .* one non-empty list of str per "
                                                     "batch item"):
            control_options("p2p", {"blend_words": bad})
    # reweight's words are per item too (tests/test_editing_pie_p2p.py), checked the same way
    assert control_options("p2p_reweight", {"words": (("red",), ("blue",)), "scale": 2.0})["words"] == (("red",), ("blue",))
    with pytest.raises(ul.UnsamplingError, match="option words must be words .* one non-empty list of str per batch item"):
        control_options("p2p_reweight", {"words": (("red",), "blue"), "scale": 2.0})


def test_option_per_item_admits_exactly_a_tuple_of_word_tuples():
    opt = Option((), tuple, per_item=True)
    assert opt.admits(("a", "b")) and opt.admits((("a",), ("b", "c"))) and opt.admits(())
    assert not opt.admits((("a",), ())) and not opt.admits((("a",), "b")) and not opt.admits(((("a",),),))
    assert not Option((), tuple).admits((("a",), ("b",)))
    with pytest.raises(TypeError, match="per_item is for tuple options"):
        Option(1.0, float, low=0.0, high=1.0, per_item=True)
