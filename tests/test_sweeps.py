"""ul.sweep: rows equal direct unsample + resample, the shared-inversion cost formula, resume after interruption."""
from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
import torch

import unsampling_lab as ul
from unsampling_lab.analysis import metrics as M
from unsampling_lab.testing import CountingModel

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one thread


STEPS = 4


def test_rows_equal_direct_unsample_and_resample(tiny_model, tiny_latent):
    latent, images = tiny_latent
    kept = {}
    df = ul.sweep(tiny_model, latent, {"end_at_step": [0, 2], "normalize": ["disable", "enable"]}, steps=STEPS,
                  cfg=2.0, positive="red circle", negative="blue", progress=False, images=images,
                  callback=lambda rows, out: kept.setdefault((out.params["end_at_step"], out.params["normalize"]), out))
    assert len(df) == 4 * 2 and set(df["item"]) == {0, 1}
    for (k, normalize), out in kept.items():
        noise = ul.unsample(tiny_model, latent, steps=STEPS, end_at_step=k, cfg=2.0, normalize=normalize,
                            positive="red circle", negative="blue", progress=False)
        result = ul.resample(tiny_model, noise, steps=STEPS, start_at_step=k, cfg=2.0, positive="red circle",
                             negative="blue", progress=False)
        torch.testing.assert_close(out.noise, noise["samples"], rtol=0, atol=1e-6)
        torch.testing.assert_close(out.result, result["samples"], rtol=0, atol=1e-6)
        rows = df[(df.end_at_step == k) & (df.normalize == normalize)].sort_values("item")
        assert rows["latent_mse"].tolist() == pytest.approx(M.latent_mse(result["samples"], latent["samples"]).tolist())
        psnr = M.psnr(tiny_model.decode(result), images)
        assert rows["psnr"].tolist() == pytest.approx(psnr.tolist())
    assert {"ssim", "psnr_vae", "ssim_vae", "noise_ks", "noise_kurtosis_z", "noise_autocorr_1", "nfe"} <= set(df.columns)
    assert (df["edit"] == "red circle").all() and (df["cfg"] == 2.0).all()


def test_nfe_shared_inversion_formula(tiny_model, tiny_latent):
    latent, _ = tiny_latent
    ks = [0, 1, 3]
    df = ul.sweep(tiny_model, latent, {"end_at_step": ks}, steps=STEPS, metrics=["latent"], progress=False)
    resample_cost = sum(STEPS - k for k in ks)
    assert int(df["nfe"].sum()) == df.attrs["nfe_total"] == STEPS + resample_cost  # N + sum(N - k)
    assert df.attrs["nfe_naive"] == 2 * resample_cost  # 2 sum(N - k)
    # the naive loop really costs that
    counted = CountingModel(tiny_model)
    for k in ks:
        noise = ul.unsample(counted, latent, steps=STEPS, end_at_step=k, progress=False)
        ul.resample(counted, noise, steps=STEPS, start_at_step=k, progress=False)
    assert counted.calls == 2 * resample_cost
    assert (df[df.item == 1]["nfe"] == 0).all()  # a combination's cost sits on its item-0 row


def test_non_prefix_consistent_sampler_unsamples_per_row(tiny_model, tiny_latent, monkeypatch):
    from unsampling_lab.samplers import registry

    spec = dataclasses.replace(registry.SAMPLER_SPECS["ddim"], prefix_consistent=False)
    monkeypatch.setitem(registry.SAMPLER_SPECS, "ddim", spec)
    latent, _ = tiny_latent
    df = ul.sweep(tiny_model, latent, {"end_at_step": [0, 2], "normalize": ["disable", "enable"]}, steps=STEPS,
                  sampler_name="ddim", metrics=["latent"], progress=False)
    # one inversion per end_at_step (shared by both normalize values), one resample per row
    assert df.attrs["nfe_total"] == (STEPS + 2) + 2 * (STEPS + 2)
    direct = ul.resample(tiny_model, ul.unsample(tiny_model, latent, steps=STEPS, end_at_step=2, sampler_name="ddim",
                                                 progress=False), steps=STEPS, start_at_step=2, sampler_name="ddim",
                         progress=False)
    row = df[(df.end_at_step == 2) & (df.normalize == "disable") & (df.item == 0)].iloc[0]
    assert row.latent_mse == pytest.approx(float(M.latent_mse(direct["samples"], latent["samples"])[0]))


def test_interrupted_sweep_resumes_only_missing_rows(tiny_model, tiny_latent, tmp_path):
    latent, _ = tiny_latent
    path = tmp_path / "sweep.csv"
    grid = {"end_at_step": [0, 1, 2], "positive": ["", "red circle"]}
    finished = []

    def crash_after_two(rows, outputs):
        finished.append(outputs.params)
        if len(finished) == 2:
            raise KeyboardInterrupt  # as Ctrl-C would

    with pytest.raises(KeyboardInterrupt):
        ul.sweep(tiny_model, latent, grid, steps=STEPS, path=path, metrics=["latent"], progress=False,
                 callback=crash_after_two)
    assert len(pd.read_csv(path)) == 2 * 2  # two combinations x two items are on disk

    counted = CountingModel(tiny_model)
    df = ul.sweep(counted, latent, grid, steps=STEPS, path=path, metrics=["latent"], progress=False)
    # missing: positive "" with k = 2 (inversion 4 + resample 2); "red circle" k = 0, 1, 2 (4 + 4 + 3 + 2)
    assert counted.calls == df.attrs["nfe_total"] == (STEPS + 2) + (STEPS + 4 + 3 + 2)
    assert df.attrs["rows_skipped"] == 4 and df.attrs["rows_computed"] == 8 and len(df) == 12
    on_disk = pd.read_csv(path, keep_default_na=False)
    assert len(on_disk) == 12 and not on_disk.duplicated(["positive", "end_at_step", "item"]).any()

    again = CountingModel(tiny_model)
    df2 = ul.sweep(again, latent, grid, steps=STEPS, path=path, metrics=["latent"], progress=False)
    assert again.calls == 0 and df2.attrs["rows_skipped"] == 12
    assert df2["latent_mse"].tolist() == pytest.approx(df["latent_mse"].tolist())


def test_sweep_errors_say_what_to_do(tiny_model, tiny_latent, tmp_path):
    latent, _ = tiny_latent
    with pytest.raises(ValueError, match="did you mean 'end_at_step'"):
        ul.sweep(tiny_model, latent, {"end_at_stp": [0]}, progress=False)
    with pytest.raises(ValueError, match="must be a list"):
        ul.sweep(tiny_model, latent, {"cfg": 2.0}, progress=False)
    with pytest.raises(ValueError, match="both in the grid and as fixed"):
        ul.sweep(tiny_model, latent, {"cfg": [1.0]}, cfg=2.0, progress=False)
    with pytest.raises(ValueError, match="unknown sampler 'eulr'"):
        ul.sweep(tiny_model, latent, {"sampler_name": ["eulr"]}, progress=False)
    with pytest.raises(ValueError, match=r"\.csv or \.parquet"):
        ul.sweep(tiny_model, latent, {"end_at_step": [0]}, path=tmp_path / "x.txt", progress=False)


def test_method_grid_rows_equal_invert_then_resample(tiny_model, tiny_latent, tmp_path):
    """`method` is a grid key: each row is what ul.invert + ul.resample(inversion) give for that setting,
    the inversion cfg and the resampling cfg are separate, and method options are part of the row key."""
    latent, _ = tiny_latent
    opts = {"fixed_point": {"iterations": 4}}
    df = ul.sweep(tiny_model, latent, {"method": ["unsampler", "fixed_point"], "end_at_step": [0, 2]}, steps=STEPS,
                  cfg=2.0, resample_cfg=3.0, positive="red circle", metrics=["latent"], progress=False,
                  method_options=opts, path=tmp_path / "m.sqlite")
    assert set(df["method"]) == {"unsampler", "fixed_point"} and set(df["resample_cfg"]) == {3.0}
    for k in (0, 2):
        with pytest.warns(ul.inversion.InversionWarning):  # 4 iterations do not converge on the random UNet
            inv = ul.invert(tiny_model, latent, method="fixed_point", steps=STEPS, end_at_step=k, cfg=2.0,
                            positive="red circle", progress=False, iterations=4)
        back = ul.resample(tiny_model, inv, steps=STEPS, start_at_step=k, cfg=3.0, positive="red circle", progress=False)
        want = M.latent_mse(back["samples"], latent["samples"])
        got = df[(df["method"] == "fixed_point") & (df["end_at_step"] == k)].sort_values("item")["latent_mse"]
        torch.testing.assert_close(torch.tensor(got.to_numpy()), want.double(), rtol=1e-6, atol=0)
        row = df[(df["method"] == "fixed_point") & (df["end_at_step"] == k) & (df["item"] == 0)].iloc[0]
        assert row["nfe"] == inv.nfe + (STEPS - k)  # the inversion's evaluations + one Euler resample's
    again = ul.sweep(tiny_model, latent, {"method": ["fixed_point"], "end_at_step": [0]}, steps=STEPS, cfg=2.0,
                     resample_cfg=3.0, positive="red circle", metrics=["latent"], progress=False,
                     method_options={"fixed_point": {"iterations": 3}}, path=tmp_path / "m.sqlite")
    assert again.attrs["rows_computed"] == 2  # other options: other numbers, never a reused row


def test_method_grid_errors(tiny_model, tiny_latent):
    latent, _ = tiny_latent
    with pytest.raises(ul.UnsamplingError, match="did you mean 'fixed_point'"):
        ul.sweep(tiny_model, latent, {"method": ["fixd_point"]}, steps=STEPS, progress=False)
    with pytest.raises(ul.UnsamplingError, match="does not run"):
        ul.sweep(tiny_model, latent, {"end_at_step": [0]}, steps=STEPS, progress=False,
                 method_options={"fixed_point": {"iterations": 3}})
    with pytest.raises(ul.UnsamplingError, match="normalize='disable'"):
        ul.sweep(tiny_model, latent, {"method": ["negative_prompt"], "normalize": ["enable"]}, steps=STEPS,
                 progress=False)


def test_pack_cost_orders_executor_tasks_longest_first():
    """cfg 1 skips the uncond pass and later end_at_steps resample fewer steps: cheaper packs go last."""
    from unsampling_lab.analysis.sweeps import pack_cost, plan

    groups = plan({"cfg": [1.0, 3.0], "end_at_step": [0, 5]}, {"steps": 10}, batch=1)
    cheap, dear = (next(g for g in groups if g.cfg == c) for c in (1.0, 3.0))
    assert pack_cost([cheap]) == 10 + (10 + 5)  # inversion + two resamples, one pass each
    assert pack_cost([dear]) == 2 * pack_cost([cheap])
    (fp,) = plan({"method": ["fixed_point"]}, {"steps": 10}, batch=1)
    assert pack_cost([fp]) > pack_cost([dear])
