"""Editing controls in a sweep: `control` (+ options) and `direct` as grid keys, run through `ul.edit`.

On the bundled shapes model (cross-attention UNet, 8x8 latents), 2 images, 3-4 steps.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import unsampling_lab as ul
from unsampling_lab.analysis import running
from unsampling_lab.analysis.evaluate import references
from unsampling_lab.analysis.grid import direct_methods, direct_samplers, plan
from unsampling_lab.analysis.sweeps import _Keys
from unsampling_lab.bundled import shapes
from unsampling_lab.errors import UnsamplingError

pytestmark = pytest.mark.filterwarnings("ignore::unsampling_lab.inversion.InversionWarning")  # few iterations
OLD_STORE = Path(__file__).parent / "data" / "store_16dce2f"
STEPS = 4
METRIC_COLUMNS = ("latent_mse", "relative_error", "psnr", "ssim")


@pytest.fixture(scope="module")
def setup(shapes_pair):
    model, batch, latent, src, tgt = shapes_pair
    return model, latent, batch.images, src, tgt


# -- identity: older stores resume ------------------------------------------------------------------------
def test_plain_settings_keep_the_row_keys_they_had_before_controls():
    """Golden keys printed by the code at 16dce2f (before control/direct existed) for the same plan."""
    keys = _Keys("model-fp", "inputs-fp")
    groups = plan({"end_at_step": [0, 3], "edit": [None, "blue circle"]},
                  {"steps": 4, "positive": "red circle", "cfg": 2.0}, batch=2)
    groups += plan({"method": ["fixed_point"]}, {"steps": 4, "resample_cfg": 3.0, "positive": ["a", "b"]}, batch=2,
                   method_options={"fixed_point": {"iterations": 3}})
    got = [keys.rows(g, s, 2)[0][:16] for g in groups for s in g.settings]
    assert got == ["d9eae56bede6f99d", "d1f0c505da19cfd5", "31c72d3a6fe31ef5", "7166e39d2f77da48", "5469565840574dc2"]
    # a controlled setting is another row
    (g,) = plan({}, {"steps": 4, "positive": "red circle", "cfg": 2.0, "control": "p2p"}, batch=2)
    assert keys.rows(g, g.settings[0], 2)[0][:16] != "d9eae56bede6f99d"


def test_a_store_written_before_controls_resumes_with_no_recomputation(setup, tmp_path):
    """tests/data/store_16dce2f/store_16dce2f.sqlite was written by the code at 16dce2f (make.py beside it) on the
    bundled model; it is resumed whole, and a p2p column added to its grid computes only the p2p rows."""
    from safetensors.torch import load_file

    model = setup[0]
    shutil.copy(OLD_STORE / "store_16dce2f.sqlite", tmp_path / "s.sqlite")
    latents = {"samples": load_file(OLD_STORE / "latents.safetensors")["samples"]}
    captions = list(shapes.make_shapes(2, seed=7).captions)
    common = dict(steps=3, cfg=1.0, resample_cfg=2.0, positive=captions, path=tmp_path / "s.sqlite", progress=False)
    df = ul.sweep(model, latents, {"end_at_step": [0, 2], "edit": [None, "blue circle"]}, metrics=["latent", "noise"],
                  **common)
    assert (df.attrs["rows_computed"], df.attrs["rows_skipped"]) == (0, 8)
    assert set(df["control"]) == {"prompt_swap"} and set(df["direct"]) == {False}
    df = ul.sweep(model, latents, {"method": ["fixed_point"], "control": ["prompt_swap"], "direct": [False]},
                  steps=3, positive=captions, method_options={"fixed_point": {"iterations": 2}},
                  path=tmp_path / "s.sqlite", metrics=["latent"], progress=False)
    assert (df.attrs["rows_computed"], df.attrs["rows_skipped"]) == (0, 2)
    df = ul.sweep(model, latents, {"edit": [None, "blue circle"], "control": ["prompt_swap", "p2p"]},
                  metrics=["latent", "noise"], **common)
    assert (df.attrs["rows_computed"], df.attrs["rows_skipped"]) == (4, 4)
    assert list(df["control"]) == (["prompt_swap"] * 2 + ["p2p"] * 2) * 2  # grid order: edit, then control


# -- plan-time checks ------------------------------------------------------------------------------------
@pytest.mark.parametrize("grid,fixed,options,message", [
    ({"control": ["p2pp"]}, {}, None, "did you mean 'p2p'"),
    ({}, {"direct": True}, None, "control='prompt_swap' is meaningless"),
    ({}, {"direct": True, "control": "p2p", "method": "edict"}, None, "EDICT's resampling is exact"),
    ({}, {"direct": True, "control": "p2p", "method": "bdia"}, None, "records no path"),
    ({}, {"direct": "yes", "control": "p2p"}, None, "direct is True or False"),
    ({}, {"direct": True, "control": "p2p", "sampler_name": "dpm_2"}, None, "evaluates the model between them"),
    ({"control": ["p2p"]}, {}, {"pnp": {"qk_steps": 0.2}}, "does not run"),
    ({"control": ["p2p"]}, {}, {"p2p": {"cross_step": 0.2}}, "did you mean 'cross_steps'"),
    ({"control": ["p2p"]}, {}, {"p2p": {"cross_steps": 2}}, "must be in [0, 1]"),
    ({"control": ["p2p"]}, {"end_at_step": 20}, None, "nothing to resample"),
])
def test_plan_refuses_in_one_line(grid, fixed, options, message):
    with pytest.raises(UnsamplingError) as e:
        plan(grid, fixed, batch=1, control_options=options)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_direct_swept_over_both_values_skips_what_it_cannot_serve_and_options_drop_defaults():
    groups = plan({"control": ["prompt_swap", "p2p"], "direct": [False, True], "method": ["unsampler", "edict"]}, {},
                  batch=1, control_options={"p2p": {"cross_steps": 0.8, "self_steps": 0.2}})
    got = [(s.method, s.control, s.direct) for g in groups for s in g.settings]
    assert got == [("unsampler", "prompt_swap", False), ("unsampler", "p2p", False), ("unsampler", "p2p", True),
                   ("edict", "prompt_swap", False), ("edict", "p2p", False)]
    assert {s.control_options for g in groups for s in g.settings if s.control == "p2p"} == {(("self_steps", 0.2),)}
    assert len(groups) == 2, "control and direct never split an inversion group"


def test_direct_swept_over_both_values_skips_samplers_that_evaluate_between_the_sigmas():
    """dpm_2 (midpoints) has no direct=True row. exp_heun_2_x0 leaves the schedule on flow models only (its first
    sigma of 1 is moved): kept without a model family (ul.edit refuses it on a flow model before any network
    call) and on a VP model, refused on a flow model."""
    samplers = ["euler", "dpm_2", "lms", "exp_heun_2_x0"]
    groups = plan({"sampler_name": samplers, "direct": [False, True]}, {"control": "p2p"}, batch=1)
    got = [(s.sampler_name, s.direct) for g in groups for s in g.settings]
    assert got == [("euler", False), ("euler", True), ("dpm_2", False), ("lms", False), ("lms", True),
                   ("exp_heun_2_x0", False), ("exp_heun_2_x0", True)]
    assert {"euler", "lms", "heun", "dpmpp_2m", "uni_pc"} <= set(direct_samplers())
    assert not {"dpm_2", "dpm_fast", "dpm_adaptive"} & set(direct_samplers())
    # exp_heun_2_x0 leaves the schedule on flow models only (its first sigma of 1 moved): fine on a VP model
    assert "exp_heun_2_x0" in direct_samplers("vp") and "exp_heun_2_x0" not in direct_samplers("flow")
    groups = plan({"sampler_name": samplers, "direct": [False, True]}, {"control": "p2p"}, batch=1, family="flow")
    assert [s.sampler_name for g in groups for s in g.settings if s.direct] == ["euler", "lms"]
    with pytest.raises(UnsamplingError, match="evaluates the model between them on flow models"):
        plan({}, {"control": "p2p", "direct": True, "sampler_name": "exp_heun_2_x0"}, batch=1, family="flow")


def test_edit_refuses_direct_with_such_a_sampler_before_any_network_call(setup):
    model, latent, _, captions, targets = setup
    traj = ul.unsample_trajectory(model, latent, steps=2, sampler_name="dpm_2", positive=captions, progress=False)
    calls = []
    handle = model.unet.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        with pytest.raises(UnsamplingError, match="sampler 'dpm_2' evaluates the model between them") as e:
            ul.edit(model, traj, source=captions, target=targets, control="p2p", direct=True)
    finally:
        handle.remove()
    assert calls == [] and "\n" not in str(e.value) and "euler" in str(e.value)


def test_edit_takes_direct_with_a_sampler_that_leaves_the_schedule_only_on_flow_models(setup):
    """exp_heun_2_x0 evaluates only at the schedule's sigmas on a VP model: direct runs there (the source branch's
    network inputs are the path's states at every call)."""
    model, latent, _, captions, targets = setup
    traj = ul.unsample_trajectory(model, latent, steps=2, sampler_name="exp_heun_2_x0", positive=captions, progress=False)
    res = ul.edit(model, traj, source=captions, target=targets, control="p2p", direct=True)
    assert res.direct and res.network_calls == 3  # two evaluations, one on the last step (to sigma 0)


def test_direct_methods_are_the_ones_whose_inversion_records_a_path(setup):
    model, latent, _, captions, _ = setup
    options = {"fixed_point": {"iterations": 1}, "null_text": {"inner_steps": 1, "cfg": 3.0}}
    assert set(direct_methods()) == {"unsampler", "negative_prompt", "fixed_point", "null_text"}
    for method in (*direct_methods(), "edict", "bdia"):
        inv = ul.invert(model, latent, method=method, steps=2, positive=captions, progress=False, **options.get(method, {}))
        assert ("path" in inv.resampling) == (method in direct_methods()), method
        if method in direct_methods():  # the 3 states of 2 steps, descending sigma
            assert inv.resampling["path"].shape[:2] == (3, len(captions)), method


def test_a_control_the_model_family_does_not_serve_is_refused_before_any_work():
    from unsampling_lab.testing import tiny_flow_model

    flow = tiny_flow_model("sd3")
    with pytest.raises(UnsamplingError, match="serves eps/v models, not this 'flow' model"):
        ul.sweep(flow, torch.zeros(1, 4, 8, 8), {"control": ["p2p"]}, steps=2, progress=False)


# -- running --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["unsampler", "fixed_point"])
def test_target_equal_to_source_gives_the_prompt_swap_row(setup, method):
    """edit=None: the edit's target branch is the plain resample bit for bit, so every metric is the same."""
    model, latent, images, captions, _ = setup
    df = ul.sweep(model, latent, {"control": ["prompt_swap", "p2p", "pnp"]}, steps=STEPS, end_at_step=1, cfg=1.0,
                  resample_cfg=3.0, positive=captions, images=images, method=method, progress=False,
                  normalize="enable" if method == "unsampler" else "disable", metrics=["latent", "pixel"])
    assert list(df["control"]) == ["prompt_swap"] * 2 + ["p2p"] * 2 + ["pnp"] * 2
    cols = df[list(METRIC_COLUMNS)].to_numpy()
    assert (cols[2:4] == cols[0:2]).all() and (cols[4:6] == cols[0:2]).all()


@pytest.mark.parametrize("end_at_step", [0, 2])
def test_a_sweep_row_is_a_direct_edit_call(setup, end_at_step):
    """The sweep's p2p + direct row against ul.edit called by hand on the recorded trajectory (direct=trajectory)."""
    model, latent, images, captions, targets = setup
    kept = []
    df = ul.sweep(model, latent, {"control": ["prompt_swap", "p2p"], "direct": [False, True]}, steps=STEPS,
                  end_at_step=end_at_step, resample_cfg=3.0, positive=captions, edit=targets, images=images,
                  metrics=["latent", "pixel"], progress=False, callback=lambda rows, out: kept.append(out))
    traj = ul.unsample_trajectory(model, latent, steps=STEPS, positive=captions, end_at_step=end_at_step, progress=False)
    noise = ul.unsampled(model, traj, end_at_step, like=latent)
    res = ul.edit(model, noise, source=captions, target=targets, control="p2p", cfg=3.0, direct=traj, steps=STEPS,
                  start_at_step=end_at_step)
    (out,) = [o for o in kept if o.params["control"] == "p2p" and o.params["direct"]]
    assert torch.equal(out.result, res.target["samples"])
    row = df[(df["control"] == "p2p") & df["direct"]]
    want = ul.metrics.psnr(model.decode(res.target), images)
    assert row["psnr"].tolist() == pytest.approx(want.tolist(), abs=1e-6)
    assert row["latent_mse"].tolist() == pytest.approx(ul.metrics.latent_mse(res.target["samples"], latent["samples"]).tolist(),
                                                       rel=1e-6)
    assert int(row["nfe"].iloc[0]) == res.nfe, "the edit's evaluations (one per step, 2B rows each) are its nfe"


def test_evaluate_setting_records_the_targets_attention(setup):
    model, latent, _, captions, targets = setup
    (group,) = plan({}, {"steps": STEPS, "positive": captions, "edit": targets, "control": "p2p", "resample_cfg": 3.0},
                    batch=2)
    traj = ul.unsample_trajectory(model, latent, steps=STEPS, positive=captions, progress=False)
    (done,), nfe = running.evaluate_setting(model, [(running.Inverted(traj), group.settings[0])],
                                            references(model, latent["samples"], None), metrics=("latent",), like=latent,
                                            record_attention=True)
    assert done.attention is not None and done.attention.token_by_step().shape[1] == STEPS
    assert nfe == STEPS
    with pytest.raises(UnsamplingError, match="edited alone"):
        running.evaluate_setting(model, [(running.Inverted(traj), group.settings[0])] * 2,
                                 references(model, latent["samples"], None), metrics=("latent",), like=latent)


def test_the_readme_controls_sweep_prints_the_readme_table(setup, tmp_path, monkeypatch, capsys):
    """The README's "Editing controls in a sweep" block, run as written: it prints the table shown under it."""
    import re

    monkeypatch.chdir(tmp_path)
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text[text.index("**Editing controls in a sweep.**"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    after = section[section.index(code) + len(code) + 3:]  # past the code block's closing fence
    shown = re.search(r"```\n(.*?)```", after, re.S).group(1)
    exec(compile(code, "README.md", "exec"), dict(ul=ul, model=setup[0]))
    printed = capsys.readouterr().out

    def numbers(table: str) -> list[float]:
        return [float(v) for v in re.findall(r"-?\d+\.\d+|\b\d+\b", table)]

    assert numbers(printed) == pytest.approx(numbers(shown), abs=2e-3)
    assert [w for w in printed.split() if w.isalpha()] == [w for w in shown.split() if w.isalpha()]


def test_packed_groups_edit_their_controlled_settings_alone(setup):
    """max_batch packs the two cfg groups' inversions; each controlled setting is still edited alone, from its
    own group's slice of the packed trajectory (rows equal the unpacked ones to float rounding)."""
    model, latent, images, captions, targets = setup
    grid = {"cfg": [1.0, 2.0], "control": ["prompt_swap", "p2p"], "direct": [False, True]}
    common = dict(steps=STEPS, end_at_step=1, resample_cfg=3.0, positive=captions, edit=targets, metrics=["latent"],
                  progress=False)
    alone = ul.sweep(model, latent, grid, **common)
    packed = ul.sweep(model, latent, grid, max_batch=4, **common)
    assert len(packed) == 2 * 3 * 2 and list(packed["control"]) == list(alone["control"])
    assert packed["latent_mse"].tolist() == pytest.approx(alone["latent_mse"].tolist(), rel=1e-3)
    assert packed["nfe"].sum() < alone["nfe"].sum(), "one packed inversion for both groups"


def test_a_controlled_row_is_not_exported_as_a_comfyui_workflow(tmp_path):
    from unsampling_lab.analysis.grid import Setting
    from unsampling_lab.lab.comfy import workflow_for_row

    row = Setting(steps=4, positive="red circle", edit="blue circle", control="p2p", direct=True).row(0)
    with pytest.raises(UnsamplingError, match="control 'p2p' and Direct Inversion .* no ComfyUI node"):
        workflow_for_row(row, tmp_path / "w.json")
    plain = workflow_for_row(Setting(steps=4, positive="red circle", edit="blue circle").row(0), tmp_path / "p.json")
    assert plain.ui_path.exists()


def test_controlled_settings_run_on_an_executor_as_here(tiny_model, tiny_latent, tiny_pipeline_dir, one_thread):
    """The controlled settings travel to a worker (here a thread that loads the model from its source) and come
    back equal to the in-process rows (a tiny SD pipeline with a character tokenizer)."""
    from concurrent.futures import ThreadPoolExecutor

    latent, images = tiny_latent
    grid = {"control": ["prompt_swap", "pnp"], "direct": [False, True]}
    common = dict(steps=3, end_at_step=1, resample_cfg=2.0, positive="red circle", edit="blue circle", images=images,
                  progress=False)
    here = ul.sweep(tiny_model, latent, grid, **common)
    with ThreadPoolExecutor(1) as pool:
        there = ul.sweep(ul.ModelSource(tiny_pipeline_dir, device="cpu", threads=1), latent, grid, executor=pool, **common)
    assert list(zip(there["control"], there["direct"])) == list(zip(here["control"], here["direct"]))
    assert there.drop(columns=["seconds"]).equals(here.drop(columns=["seconds"]))
