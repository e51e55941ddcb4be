"""The explorer: controls set programmatically change the outputs; end_at_step reuses the inversion."""
from __future__ import annotations

import pytest

pytest.importorskip("ipywidgets")

import unsampling_lab as ul  # noqa: E402
from unsampling_lab.errors import UnsamplingError  # noqa: E402
from unsampling_lab.bundled.shapes import make_shapes  # noqa: E402
from unsampling_lab.testing import CountingModel  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one thread


@pytest.fixture(scope="module")
def bundled():
    try:
        return ul.load_model(device="cpu")
    except UnsamplingError:
        return None


@pytest.fixture()
def model(bundled, sd_model):
    return CountingModel(bundled if bundled is not None else sd_model)


@pytest.fixture(scope="module")
def image():
    return make_shapes(1, seed=3).images


def _prompts(model):
    # the bundled tokenizer knows the shapes words; the tiny test tokenizer encodes any characters
    return dict(source="red circle", edit="blue square")


def test_end_at_step_reuses_the_inversion(model, image):
    ex = ul.widgets.explorer(model, image, steps=6, **_prompts(model))
    assert ex.inversions == 1 and ex.updates == 1
    before = (ex.strip.value, ex.stats.value, ex.table.value)
    calls = model.calls
    ex.end_at_step.value = 3
    assert ex.inversions == 1, "an end_at_step change must read off the cached trajectory"
    # only the resample from step 3 (euler: one call per step; source and edit in one batch) ran
    assert model.calls - calls == 6 - 3
    after = (ex.strip.value, ex.stats.value, ex.table.value)
    assert all(a != b for a, b in zip(before, after)), "strip, statistics and metrics must all change"
    assert {r["end_at_step"] for r in ex.rows} == {3}


def test_normalize_and_edit_reuse_the_inversion(model, image):
    ex = ul.widgets.explorer(model, image, steps=5, **_prompts(model))
    strip = ex.strip.value
    ex.normalize.value = "enable"
    assert ex.inversions == 1 and ex.strip.value != strip
    rows = list(ex.rows)
    ex.edit.value = "green triangle"
    assert ex.inversions == 1
    assert ex.rows[1]["edit"] == "green triangle" and ex.rows[1] != rows[1]
    assert ex.rows[0]["psnr"] == pytest.approx(rows[0]["psnr"])  # the reconstruction did not change


@pytest.mark.parametrize("control, value", [("cfg", 2.0), ("sampler_name", "heun"), ("scheduler", "karras"),
                                            ("source", "blue circle"), ("negative", "red")])
def test_inversion_parameters_rerun_the_inversion(model, image, control, value):
    ex = ul.widgets.explorer(model, image, steps=4, **_prompts(model))
    table = ex.table.value
    getattr(ex, control).value = value
    assert ex.inversions == 2
    if control == "negative":  # at cfg 1 the negative pass is skipped: a new inversion, the same numbers
        assert ex.table.value == table
    else:
        assert ex.table.value != table
    assert ex.trajectory.params[{"source": "positive"}.get(control, control)] == value


def test_steps_moves_the_end_at_step_range(model, image):
    ex = ul.widgets.explorer(model, image, steps=8, end_at_step=6, **_prompts(model))
    ex.steps.value = 4
    assert ex.end_at_step.max == 3 and ex.end_at_step.value == 3
    assert ex.inversions == 2
    assert ex.trajectory.params["steps"] == 4 and {r["end_at_step"] for r in ex.rows} == {3}


def test_errors_show_in_the_status_line(model, image, monkeypatch):
    ex = ul.widgets.explorer(model, image, steps=3, **_prompts(model))
    assert "ancestral" not in " ".join(ex.sampler_name.options), "only invertible samplers are offered"

    def refuse(*args, **kwargs):
        raise UnsamplingError("resample refused this setting")

    monkeypatch.setattr(ul.engine, "resample", refuse)
    ex.end_at_step.value = 1  # no exception escapes into the notebook: the status line says it
    assert "resample refused this setting" in ex.status.value and ex.updates == 2


def test_sweep_button_runs_the_grid_with_progress(model, image, tmp_path):
    path = tmp_path / "sweep.csv"
    ex = ul.widgets.explorer(model, image, steps=4, grid={"end_at_step": [0, 2], "normalize": ["disable", "enable"]},
                             sweep_path=str(path), **_prompts(model))
    calls = model.calls
    ex.sweep_button.click()
    df = ex.sweep_frame
    assert df is not None and len(df) == 4
    assert ex.progress.max == 4 and ex.progress.value == 4
    assert path.exists() and "<table" in ex.sweep_table.value
    # one shared inversion (4 calls) + resamples from steps 0 and 2, for each normalize (2 * (4 + 2))
    assert model.calls - calls == 4 + 2 * (4 + 2)


def test_end_at_step_update_costs_one_resample_on_the_bundled_model(bundled, image):
    """An end_at_step change runs no inversion and exactly the network calls of one resample from that
    step (the honest measure of its cost; its seconds are measured by benchmarks/explorer_latency.py)."""
    if bundled is None:
        pytest.skip("the bundled model is missing (unsampling_lab/bundled/weights)")
    counted = CountingModel(bundled)
    ex = ul.widgets.explorer(counted, image, steps=10, source="red circle", edit="blue circle")
    for k in (9, 5, 0, 3):
        before = counted.calls
        ex.end_at_step.value = k
        assert ex.inversions == 1
        assert counted.calls - before == 10 - k, f"end_at_step {k}: {counted.calls - before} network calls"
        assert ex.last_update_s > 0 and ex.last_update_cpu_s > 0


def test_resample_cfg_is_its_own_slider_and_reuses_the_inversion(model, image):
    ex = ul.widgets.explorer(model, image, steps=4, cfg=1.0, resample_cfg=3.0, **_prompts(model))
    assert ex.cfg.value == 1.0 and ex.resample_cfg.value == 3.0
    assert ex.trajectory.params["cfg"] == 1.0, "the inversion runs at the inversion cfg"
    table = ex.table.value
    ex.resample_cfg.value = 1.0
    assert ex.inversions == 1, "the resampling cfg does not change the inversion"
    assert ex.table.value != table and {r["resample_cfg"] for r in ex.rows} == {1.0}
    # the same as calling the engine by hand: invert at cfg 1, resample at cfg 3
    ex.resample_cfg.value = 3.0
    noise = ul.unsample(model, ex.latent, steps=4, cfg=1.0, positive="red circle", progress=False)
    back = ul.resample(model, noise, steps=4, cfg=3.0, positive="red circle", progress=False)
    assert ex.rows[0]["latent_mse"] == pytest.approx(float(ul.metrics.latent_mse(back["samples"], ex.latent["samples"])[0]),
                                                     rel=1e-5)


def test_explorer_defaults_resample_cfg_to_cfg(model, image):
    ex = ul.widgets.explorer(model, image, steps=3, cfg=2.0, **_prompts(model))
    assert ex.resample_cfg.value == 2.0


def test_truncated_prompt_is_warned(bundled, image):
    if bundled is None:
        pytest.skip("the bundled model's 8-token tokenizer is what truncates")
    ex = ul.widgets.explorer(bundled, image, steps=3, source="red circle", edit="blue circle")
    assert ex.warning.value == ""
    long = "a photograph of a big shiny red circle on a wooden table"
    ex.edit.value = long
    assert "tokens" in ex.warning.value and "8" in ex.warning.value
    note = ul.widgets.prompt_truncation(bundled, long)
    assert note is not None and "sees only" in note
    assert ul.widgets.prompt_truncation(bundled, "red circle") is None


def test_layout_fits_a_1000_px_output_area(model, image):
    ex = ul.widgets.explorer(model, image, steps=3, **_prompts(model))
    controls, view = ex.widget.children[0].children
    width = lambda w: int(w.layout.width.removesuffix("px"))  # noqa: E731
    assert width(controls) + width(view) <= 1000
    w, h = ul.widgets.StatsFigure.pixel_size()
    from PIL import Image
    import io

    png = Image.open(io.BytesIO(ex.stats.value))
    assert png.size == (w, h), "the statistics plot is drawn at the size it is shown (no stretching)"
    assert ex.stats.layout.width == f"{w}px"


def test_method_dropdown_shows_that_methods_inversion_and_resampling(model, image):
    """The method dropdown: the view is ul.invert(method) + ul.resample(inversion) for the current setting,
    computed once per setting; the Unsampler's trajectory (statistics plot) is not recomputed for it."""
    ex = ul.widgets.explorer(model, image, steps=4, cfg=2.0, **_prompts(model))
    assert "negative_prompt" in ex.method.options and "rf_solver" not in ex.method.options  # a VP model
    shown = ex.strip.value
    ex.method.value = "negative_prompt"
    assert ex.status.value.startswith("<small>"), ex.status.value  # no error line
    assert ex.method_inversions == 1 and ex.inversions == 1 and ex.strip.value != shown
    latent = ex.latent
    inv = ul.invert(model, latent, method="negative_prompt", steps=4, cfg=2.0, positive="red circle", progress=False)
    back = ul.resample(model, inv, steps=4, cfg=2.0, positive="red circle", progress=False)
    want = float(ul.metrics.latent_mse(back["samples"], latent["samples"])[0])
    assert ex.rows[0]["latent_mse"] == pytest.approx(want, rel=1e-6)
    ex.resample_cfg.value = 3.0  # resampling only: the method's inversion is reused
    assert ex.method_inversions == 1
    ex.end_at_step.value = 2
    assert ex.method_inversions == 2 and ex.inversions == 1


def test_explorer_and_sweep_rows_come_from_one_evaluate_setting(model, image, monkeypatch):
    """The explorer's view and a sweep's row of the same setting are both `running.evaluate_setting` (counted)
    and hold the same metric values."""
    from unsampling_lab.analysis import running

    real, calls = running.evaluate_setting, []

    def counted(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append([e.setting for e in out[0]])
        return out

    monkeypatch.setattr(running, "evaluate_setting", counted)
    ex = ul.widgets.explorer(model, image, steps=4, end_at_step=1, cfg=2.0, **_prompts(model))
    shown = [ex.setting(ex.params, edit=None), ex.setting(ex.params, edit="blue square")]
    assert calls == [shown], "one explorer update: the reconstruction and the edit in one evaluate_setting call"
    df = ul.sweep(model, ex.latent, {"edit": [None, "blue square"]}, steps=4, end_at_step=1, cfg=2.0, resample_cfg=2.0,
                  positive="red circle", images=ex.images, progress=False)
    assert calls[1:] == [[shown[0]], [shown[1]]], "the sweep runs the same two settings, each through evaluate_setting"
    skip = set(ul.sweeps.PARAMETERS) | {"item", "nfe", "nfe_naive", "seconds"}
    cols = [c for c in df.columns if c in ex.rows[0] and c not in skip]
    assert {"latent_mse", "psnr", "noise_std", "noise_ks", "sigma_final"} <= set(cols)
    for row, shown_row in zip(df.to_dict("records"), ex.rows):
        # the explorer resamples reconstruction and edit in one network batch, the sweep one setting at a time:
        # equal to float rounding; the detector's colour / shape are words, equal exactly
        numbers = [c for c in cols if not isinstance(shown_row[c], str)]
        assert {c: row[c] for c in cols if c not in numbers} == {c: shown_row[c] for c in cols if c not in numbers}
        assert {c: row[c] for c in numbers} == pytest.approx({c: shown_row[c] for c in numbers}, rel=1e-5, abs=1e-9)
