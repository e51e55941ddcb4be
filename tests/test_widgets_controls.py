"""The explorer's editing controls: the control dropdown and direct checkbox drive a controlled evaluation (the
sweep's, through ul.edit), and the attention view (token x step) renders. On the bundled model, no browser."""
from __future__ import annotations

import pytest

pytest.importorskip("ipywidgets")

import unsampling_lab as ul  # noqa: E402
from unsampling_lab.bundled.shapes import make_shapes  # noqa: E402
from unsampling_lab.testing import CountingModel  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
STEPS = 5
PNG = b"\x89PNG"


@pytest.fixture(scope="module")
def bundled():
    return ul.load_model(device="cpu")


@pytest.fixture(scope="module")
def image():
    return make_shapes(1, seed=3).images


def test_the_control_dropdown_edits_through_ul_edit_as_a_sweep_does(bundled, image):
    model = CountingModel(bundled)
    ex = ul.widgets.explorer(model, image, steps=STEPS, end_at_step=1, resample_cfg=3.0, source="red circle",
                             edit="blue circle")
    assert ex.attention.layout.display == "none" and ex.attention_maps is None, "prompt_swap records no attention"
    before = model.calls
    ex.control.value = "p2p"
    assert ex.inversions == 1, "a control reads off the cached trajectory"
    assert model.calls - before == 2 * (STEPS - 1), "the reconstruction's resample, then the edit's (2B rows per call)"
    assert [(r["control"], r["direct"]) for r in ex.rows] == [("prompt_swap", False), ("p2p", False)]
    df = ul.sweep(bundled, ex.latent, {"control": ["p2p"], "direct": [False, True]}, steps=STEPS, end_at_step=1,
                  resample_cfg=3.0, positive="red circle", edit="blue circle", images=image, progress=False)
    for col in ("latent_mse", "psnr", "ssim", "noise_std"):
        assert ex.rows[1][col] == df[col].iloc[0], col
    ex.direct.value = True
    assert ex.rows[1]["direct"] and ex.rows[1]["psnr"] == df["psnr"].iloc[1]
    assert "(p2p + direct)" in ex.caption.value


def test_the_attention_view_shows_the_targets_tokens_by_step_and_hides_without_a_control(bundled, image):
    ex = ul.widgets.explorer(bundled, image, steps=STEPS, control="pnp", source="red circle", edit="blue circle")
    assert bytes(ex.attention.value).startswith(PNG) and ex.attention.layout.display == ""
    assert ex.attention_maps.token_by_step().shape[1] == STEPS
    first = ex.attention.value
    ex.edit.value = "green circle"
    assert ex.attention.value != first, "a new target prompt is a new picture"
    ex.show_attention.value = False
    assert ex.attention_maps is None and ex.attention.layout.display == "none"
    ex.show_attention.value = True
    ex.control.value = "prompt_swap"
    assert ex.attention.layout.display == "none"


def test_direct_with_prompt_swap_is_said_in_the_status_line(bundled, image):
    ex = ul.widgets.explorer(bundled, image, steps=3, source="red circle", edit="blue circle")
    ex.direct.value = True
    assert "meaningless" in ex.status.value and ex.updates == 2


def test_with_the_edit_equal_to_the_source_a_controlled_edit_is_the_reconstruction(bundled, image):
    """To float rounding only: with ONE image the edit's network batch (2 rows per pass) and the plain resample's
    (1 row) take different CPU kernels, which differ in the last float bits (bit for bit from 2 images on,
    tests/test_sweep_controls.py)."""
    ex = ul.widgets.explorer(bundled, image, steps=STEPS, resample_cfg=3.0, control="p2p", source="red circle", edit="")
    recon, edit = ex.rows
    assert edit["control"] == "p2p"
    for c in ("latent_mse", "psnr", "ssim"):
        assert edit[c] == pytest.approx(recon[c], rel=1e-4), c


def test_an_unknown_control_is_refused_with_the_nearest_name(bundled, image):
    with pytest.raises(ul.UnsamplingError, match="did you mean 'pnp'"):
        ul.widgets.explorer(bundled, image, steps=3, control="pnpp")
