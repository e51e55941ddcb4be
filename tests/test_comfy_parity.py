"""Parity with ComfyUI's own Unsampler and KSamplerAdvanced on the same tiny seeded UNet.

The reference outputs were produced by ComfyUI itself (../shared/comfy_reference/README.md). Our
UNet forward is diffusers', ComfyUI's is its own: their last-bit differences are amplified by the
Unsampler's first step ((x - denoised) / 1e-4 cancels in float32) and by cfg. Measured: <= 2e-5
relative at cfg 1, <= 1.2e-4 at cfg 4 (unsample), <= 1.2e-5 for the resamples.
"""
from __future__ import annotations

import pytest
import torch

import unsampling_lab as ul
from unsampling_lab.model_sampling import ModelSampling

TOL = {1.0: 1e-4}
TOL_CFG = 2e-4  # cfg > 1 multiplies the cond/uncond rounding difference (see module docstring)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _conds(inputs):
    return [[inputs["positive"], {}]], [[inputs["negative"], {}]]


def test_every_reference_case(comfy_reference):
    model, inputs, outputs = comfy_reference["model"], comfy_reference["inputs"], comfy_reference["outputs"]
    positive, negative = _conds(inputs)
    checked, worst = 0, {}
    for case in comfy_reference["cases"]:
        p = case["params"]
        if case["kind"] in ("unsample", "unsample_mask"):
            latent = {"samples": inputs["latent"]}
            if p["noise_mask"]:
                latent["noise_mask"] = inputs["mask"]
            sigmas = ul.unsample_sigmas(model, steps=p["steps"], end_at_step=p["end_at_step"],
                                        sampler_name=p["sampler_name"], scheduler=p["scheduler"])
            torch.testing.assert_close(sigmas, torch.tensor(case["unsample_sigmas"]), rtol=1e-6, atol=1e-7)
            out = ul.unsample(model, latent, steps=p["steps"], end_at_step=p["end_at_step"], cfg=p["cfg"],
                              sampler_name=p["sampler_name"], scheduler=p["scheduler"], normalize=p["normalize"],
                              positive=positive, negative=negative, progress=False)
            assert "noise_mask" not in latent or out["noise_mask"] is latent["noise_mask"]
        else:
            source = {"samples": outputs[case["input_key"]]}
            out = ul.resample(model, source, steps=p["steps"], start_at_step=p["start_at_step"],
                              end_at_step=p["end_at_step"], cfg=p["cfg"], sampler_name=p["sampler_name"],
                              scheduler=p["scheduler"], positive=positive, negative=negative,
                              add_noise=p["add_noise"], noise_seed=p["noise_seed"],
                              return_with_leftover_noise=p["return_with_leftover_noise"], progress=False)
        rel = _rel(out["samples"], outputs[case["output_key"]])
        tol = TOL_CFG if (p["cfg"] != 1.0 and case["kind"] != "resample") else 1e-4
        worst[case["id"]] = rel
        assert rel < tol, f"{case['id']}: relative L2 {rel:.2e} >= {tol:.0e}"
        checked += 1
    assert checked == len(comfy_reference["cases"]) >= 45


def test_masked_unsample_keeps_the_unmasked_region(comfy_reference):
    model, inputs = comfy_reference["model"], comfy_reference["inputs"]
    mask = (inputs["mask"] > 0.5).float()
    out = ul.unsample(model, {"samples": inputs["latent"], "noise_mask": mask}, steps=10, progress=False,
                      positive=_conds(inputs)[0])
    keep = mask.expand_as(inputs["latent"]) == 0
    assert keep.any()
    assert torch.equal(out["samples"][keep], inputs["latent"][keep])
    assert not torch.allclose(out["samples"][~keep], inputs["latent"][~keep])


@pytest.mark.parametrize("table", ["sd15_discrete_eps", "flow_discrete_shift3_sd3", "flux_shift1.15"])
def test_scheduler_sigmas_match_comfyui(comfy_reference, table):
    ms = {"sd15_discrete_eps": ModelSampling.discrete(), "flow_discrete_shift3_sd3": ModelSampling.flow(shift=3.0),
          "flux_shift1.15": ModelSampling.flux(shift=1.15)}[table]
    reference = comfy_reference["sigmas"]
    assert [ms.sigma_min, ms.sigma_max] == pytest.approx(reference[f"{table}_sigma_min_max"], rel=1e-7)
    for scheduler, by_steps in reference["schedules"][table].items():
        for steps, expected in by_steps.items():
            ours = ul.calculate_sigmas(ms, scheduler, int(steps))
            expected = torch.tensor(expected)
            if expected.isnan().any():  # ComfyUI's kl_optimal at 1 step is [nan, 0]; ours is finite
                assert scheduler == "kl_optimal" and int(steps) == 1 and torch.isfinite(ours).all()
                continue
            torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-8, msg=f"{table} {scheduler} {steps}")


def test_sd15_table_matches_comfyui_exactly(comfy_reference):
    expected = torch.tensor(comfy_reference["sigmas"]["sd15_model_sigmas_1000"])
    assert torch.equal(ModelSampling.discrete().sigmas, expected)


def test_comfyui_failures_are_not_reproduced(comfy_reference):
    """ComfyUI: ddim errors inside the Unsampler; uni_pc returns NaN. Ours: finite results."""
    model, inputs = comfy_reference["model"], comfy_reference["inputs"]
    latent = {"samples": inputs["latent"]}
    for sampler in ("ddim", "uni_pc", "uni_pc_bh2"):
        if sampler not in ul.SAMPLERS:
            pytest.skip(f"{sampler} not registered")
        out = ul.unsample(model, latent, steps=10, sampler_name=sampler, positive=_conds(inputs)[0], progress=False)
        assert torch.isfinite(out["samples"]).all(), sampler
    ddim = ul.unsample(model, latent, steps=10, sampler_name="ddim", positive=_conds(inputs)[0], progress=False)
    euler = ul.unsample(model, latent, steps=10, sampler_name="euler", positive=_conds(inputs)[0], progress=False)
    assert torch.equal(ddim["samples"], euler["samples"])  # ComfyUI's ddim is euler
