"""Flow-matching models (SD3, Flux): sigma tables against diffusers, exact inversion of Gaussian data,
ComfyUI's sigma-1 blow-up reproduced and fixed, and tiny seeded transformers through the real engine."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import unsampling_lab as ul
from unsampling_lab.models.gaussian import GaussianData
from unsampling_lab.lab.comfyui_flow import compare_with_comfyui, comfyui_flow
from unsampling_lab.model_sampling import flow_model_sampling, flux_mu
from unsampling_lab.models.analytic import gaussian_flow_model
from unsampling_lab.models.flow import load_flow_model, pack_latents, unpack_latents
from unsampling_lab.testing import tiny_flow_model

EMBED, POOLED = 16, 8


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The tiny transformers run 40x faster on one thread than on two busy ones."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# -- sigma tables ---------------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [4, 10, 28])
def test_sd3_tables_match_diffusers(steps):
    from diffusers import FlowMatchEulerDiscreteScheduler

    ms = flow_model_sampling("sd3", {"shift": 3.0})
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(steps)  # diffusers' default: uniform in timestep = ComfyUI's "normal"
    torch.testing.assert_close(ul.calculate_sigmas(ms, "normal", steps), sched.sigmas.float(), rtol=0, atol=2e-6)
    if 1000 % steps == 0:  # "simple" = the pipelines' linspace(1, 1/N, N) through the shift
        sched.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps))
        torch.testing.assert_close(ul.calculate_sigmas(ms, "simple", steps), sched.sigmas.float(), rtol=0, atol=2e-6)
    # the timestep the transformer sees is 1000 sigma, as in the SD3 pipeline
    torch.testing.assert_close(ms.timestep(sched.sigmas[:-1]), sched.timesteps, rtol=1e-6, atol=1e-3)


@pytest.mark.parametrize("size,steps", [((64, 64), 4), ((96, 128), 20), ((128, 128), 25)])
def test_flux_tables_and_mu_match_diffusers(size, steps):
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    mu = flux_mu(size)
    assert mu == pytest.approx(calculate_shift((size[0] // 2) * (size[1] // 2)), abs=1e-12)
    assert flux_mu(torch.zeros(1, 16, *size)) == mu == flux_mu({"samples": torch.zeros(1, 16, *size)})
    ms = flow_model_sampling("flux", {"use_dynamic_shifting": True}, mu=mu)
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True)
    sched.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)  # the Flux pipeline's call
    torch.testing.assert_close(ul.calculate_sigmas(ms, "simple", steps), sched.sigmas.float(), rtol=0, atol=2e-6)
    torch.testing.assert_close(ms.timestep(sched.sigmas[:-1]), sched.timesteps / 1000, rtol=1e-6, atol=1e-6)
    # mu defaults to a 1024 x 1024 image: 1.15, ComfyUI's default Flux shift
    assert flow_model_sampling("flux").shift == pytest.approx(1.15)


def test_unsample_sigmas_are_comfyuis_except_the_clamped_top():
    model = gaussian_flow_model(GaussianData(torch.zeros(2), torch.ones(2)))
    model.model_sampling = flow_model_sampling("sd3", {"shift": 3.0})
    for scheduler in ul.SCHEDULERS:
        ours = ul.unsample_sigmas(model, steps=10, end_at_step=0, sampler_name="euler", scheduler=scheduler)
        comfy = ul.unsample_sigmas(comfyui_flow(model), steps=10, end_at_step=0, sampler_name="euler", scheduler=scheduler)
        below = comfy <= 1.0
        assert torch.equal(ours[below], comfy[below]), scheduler
        assert bool((ours[~below] == 1.0).all()) and bool((ours <= 1.0).all()), scheduler
    vp = ul.ModelSampling.discrete()
    assert vp.sigma_limit == math.inf and torch.equal(vp.inverse_noise_scaling(torch.tensor(14.6), torch.ones(2)), torch.ones(2))


# -- exact Gaussian data ----------------------------------------------------------------------------
D = 8
DATA = GaussianData(torch.linspace(-1, 1, D, dtype=torch.float64), torch.linspace(0.3, 1.5, D, dtype=torch.float64))


def _x0(n: int = 4, seed: int = 0) -> torch.Tensor:
    return DATA.sample(n, generator=torch.Generator().manual_seed(seed))[:, :, None, None]


def _exact(x0: torch.Tensor, sigma_from: float, sigma_to: float) -> torch.Tensor:
    """Exact flow ODE from the Unsampler's start (1 - sigma_from) x0 to sigma_to, shaped like x0."""
    return DATA.ode_solution_flow((1 - sigma_from) * x0.flatten(1), sigma_from, sigma_to).view_as(x0)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# dpmpp_2m: its first step (from sigma 1e-4, log-ratio log(1e4 / N) growing with N) is first order,
# so at these N it converges at ~1.6, approaching 2 slowly.
ORDERS = {"euler": (0.9, 1.15), "heun": (1.9, 2.4), "dpmpp_2m": (1.4, 2.2)}


@pytest.mark.parametrize("sampler", list(ORDERS))
def test_full_unsample_converges_at_the_samplers_order(sampler):
    if sampler not in ul.SAMPLERS:
        pytest.skip(f"{sampler} not registered")
    model, x0 = gaussian_flow_model(DATA), _x0()
    errors = []
    for n in (8, 16, 32, 64):
        sigmas = ul.unsample_sigmas(model, steps=n, end_at_step=0, sampler_name=sampler, scheduler="simple")
        assert float(sigmas[-1]) == 1.0
        out = ul.unsample(model, x0, steps=n, sampler_name=sampler, scheduler="simple", progress=False)
        assert torch.isfinite(out).all()
        errors.append(_rel(out, _exact(x0, float(sigmas[0]), 1.0)))
    orders = [math.log2(a / b) for a, b in zip(errors, errors[1:])]
    lo, hi = ORDERS[sampler]
    assert all(lo < p < hi for p in orders[1:]), (errors, orders)


def test_round_trip_and_partial_unsample_pair_like_comfyui():
    model, x0 = gaussian_flow_model(DATA), _x0()
    errs = []
    for n in (10, 40):
        noise = ul.unsample(model, x0, steps=n, sampler_name="heun", progress=False)
        back = ul.resample(model, noise, steps=n, sampler_name="heun", progress=False)
        errs.append(_rel(back, x0))
    assert errs[1] < errs[0] / 8 and errs[1] < 2e-3, errs
    n = 20
    for k in (1, 5, 15):
        part = ul.unsample(model, x0, steps=n, end_at_step=k, sampler_name="heun", progress=False)
        sigmas = ul.unsample_sigmas(model, steps=n, end_at_step=k, sampler_name="heun", scheduler="normal")
        s = float(sigmas[-1])
        assert s < 1.0
        # below sigma 1 ours is ComfyUI's arithmetic, bit for bit: the VE form x / (1 - sigma)
        assert torch.equal(part, ul.unsample(comfyui_flow(model), x0, steps=n, end_at_step=k, sampler_name="heun", progress=False))
        assert _rel(part * (1 - s), _exact(x0, float(sigmas[0]), s)) < 5e-3  # heun, 20 steps
        back = ul.resample(model, part, steps=n, start_at_step=k, sampler_name="heun", progress=False)
        assert _rel(back, x0) < 5e-3, k


def test_comfyuis_blow_up_is_reproduced_and_absent_from_ours():
    model, x0 = gaussian_flow_model(DATA), _x0()
    noise = _exact(x0, 1e-4, 1.0)
    rows = compare_with_comfyui(model, x0, noise=noise, steps=40, sampler_name="heun")
    comfy, ours = rows["comfyui"], rows["unsampling_lab"]
    assert -1.05e4 < comfy["ratio"] < -0.95e4  # x / (1 - 1.0001): sign flip, x 1e4
    assert comfy["roundtrip_error"] > 0.5  # its resample restarts from 0 * latent: the data mean
    assert abs(ours["ratio"] - 1) < 2e-3 and ours["noise_error"] < 2e-3 and ours["roundtrip_error"] < 2e-3
    # one step, end_at_step = 0: still finite, and exactly the Euler step to sigma 1
    one = ul.unsample(model, x0, steps=1, progress=False)
    assert torch.isfinite(one).all()


def test_trajectory_serves_every_end_at_step_with_the_clamp():
    model, x0 = gaussian_flow_model(DATA), _x0(2)
    traj = ul.unsample_trajectory(model, x0, steps=6, sampler_name="euler", progress=False)
    for k in (0, 2, 5):
        direct = ul.unsample(model, x0, steps=6, end_at_step=k, progress=False)
        got = ul.unsampled(model, traj, k)  # the trajectory keeps float32 states
        torch.testing.assert_close(got, direct.to(got.dtype), rtol=1e-6, atol=1e-6)


# -- tiny seeded transformers -----------------------------------------------------------------------
def _sd3():
    return tiny_flow_model("sd3", embed_width=EMBED, pooled_width=POOLED)


def _flux():
    # through the public loader, as a pipeline-like object
    parts = tiny_flow_model("flux", embed_width=EMBED, pooled_width=POOLED)
    sched = SimpleNamespace(config={"shift": 3.0, "use_dynamic_shifting": True})
    return ul.load_model(SimpleNamespace(transformer=parts.transformer, scheduler=sched), device="cpu")


@pytest.fixture(scope="module", params=["sd3", "flux"])
def flow_model(request):
    return _sd3() if request.param == "sd3" else _flux()


def _cond(seed: int = 1, b: int = 1) -> ul.Conditioning:
    g = torch.Generator().manual_seed(seed)
    return ul.Conditioning(torch.randn(b, 5, EMBED, generator=g), torch.randn(b, POOLED, generator=g))


def _latent(b: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_loading_formats_and_options(flow_model):
    kind = flow_model.kind
    scale, shift = (1.5305, 0.0609) if kind == "sd3" else (0.3611, 0.1159)
    assert (flow_model.latent_format.channels, flow_model.latent_format.scale, flow_model.latent_format.shift) == (4, scale, shift)
    assert flow_model.model_sampling.prediction == "flow" and flow_model.model_sampling.sigma_max == 1.0
    if kind == "flux":
        assert flow_model.model_sampling.timestep_map == "flux"
        small = flow_model.for_latent(_latent())
        assert small.model_sampling.shift == pytest.approx(flux_mu((8, 8))) and small.transformer is flow_model.transformer
        x = _latent()
        torch.testing.assert_close(unpack_latents(pack_latents(x), 8, 8), x, rtol=0, atol=0)
    else:
        assert flow_model.model_sampling.timestep_map == "scaled" and flow_model.for_latent(_latent()) is flow_model


def test_shapes_determinism_and_round_trip(flow_model):
    latent = {"samples": _latent()}
    kw = dict(steps=8, positive=_cond(), progress=False)
    out = ul.unsample(flow_model, latent, **kw)
    again = ul.unsample(flow_model, latent, **kw)
    assert out["samples"].shape == (2, 4, 8, 8) and torch.isfinite(out["samples"]).all()
    assert torch.equal(out["samples"], again["samples"])
    back = ul.resample(flow_model, out, **kw)
    assert back["samples"].shape == (2, 4, 8, 8) and torch.isfinite(back["samples"]).all()
    comfy = ul.unsample(comfyui_flow(flow_model), latent, **kw)
    ratio = float((comfy["samples"] * out["samples"]).sum() / (out["samples"] ** 2).sum())
    assert ratio < -1e3  # ComfyUI's sign flip and x 1e4 (in raw latents, after the VAE shift)


def test_mask_keeps_the_unmasked_region_exactly(flow_model):
    mask = torch.zeros(1, 8, 8)
    mask[:, :, :4] = 1.0
    latent = {"samples": _latent(), "noise_mask": mask}
    keep = ul.engine.prepare_mask(mask, (2, 4, 8, 8)) == 0
    for k in (0, 3):
        out = ul.unsample(flow_model, latent, steps=4, end_at_step=k, positive=_cond(), progress=False)
        assert torch.equal(out["samples"][keep], latent["samples"][keep]), k
        assert not torch.allclose(out["samples"][~keep], latent["samples"][~keep])
        back = ul.resample(flow_model, out, steps=4, start_at_step=k, positive=_cond(), progress=False)
        assert torch.equal(back["samples"][keep], latent["samples"][keep]), k


def test_cfg_batches_cond_and_uncond(flow_model, monkeypatch):
    rows = []
    forward = flow_model.forward
    monkeypatch.setattr(flow_model, "forward", lambda x, t, c: rows.append(x.shape[0]) or forward(x, t, c))
    a = ul.unsample(flow_model, _latent(), steps=2, cfg=1.0, positive=_cond(), negative=_cond(2), progress=False)
    assert rows == [2, 2]
    rows.clear()
    b = ul.unsample(flow_model, _latent(), steps=2, cfg=4.0, positive=_cond(), negative=_cond(2), progress=False)
    assert rows == [4, 4] and not torch.allclose(a, b)


def test_unsample_resample_pair_on_comfyuis_sigmas(flow_model):
    latent, n = _latent(1), 6
    schedule = ul.calculate_sigmas(flow_model.model_sampling, "normal", n)
    traj = ul.unsample_trajectory(flow_model, latent, steps=n, positive=_cond(), progress=False)
    for k in (0, 2, 4):
        out = ul.unsample(flow_model, latent, steps=n, end_at_step=k, positive=_cond(), progress=False)
        first = []
        ul.resample(flow_model, out, steps=n, start_at_step=k, positive=_cond(), progress=False,
                    callback=lambda step: first.append(step) if not first else None)
        s_unsample = min(float(schedule[k]) + 1e-4, 1.0)
        assert first[0].sigma == pytest.approx(float(schedule[k]), abs=1e-7)
        # ComfyUI's pairing: the state at schedule[k] + 1e-4 restarts at schedule[k] as (1 - s) * x / (1 - s')
        scale = 1.0 if k == 0 else (1 - float(schedule[k])) / (1 - s_unsample)
        torch.testing.assert_close(first[0].x, ul.engine.trajectory_state(traj, k) * scale, rtol=1e-5, atol=1e-5)


def test_guidance_option_and_conditioning_errors(flow_model):
    with pytest.raises(ul.UnsamplingError, match=f"width 7 .* expects {EMBED}"):
        ul.unsample(flow_model, _latent(), steps=1, positive=torch.randn(1, 5, 7), progress=False)
    with pytest.raises(ul.UnsamplingError, match="pooled text embedding"):
        ul.unsample(flow_model, _latent(), steps=1, positive=torch.randn(1, 5, EMBED), progress=False)
    with pytest.raises(ul.UnsamplingError, match=rf"expected \[B, {POOLED}\]"):
        ul.unsample(flow_model, _latent(), steps=1, positive=ul.Conditioning(torch.randn(1, 5, EMBED), torch.randn(1, 3)), progress=False)
    with pytest.raises(ul.UnsamplingError, match="no text encoders"):
        ul.unsample(flow_model, _latent(), steps=1, positive="a cat", progress=False)
    with pytest.raises(ul.UnsamplingError, match="patch size"):
        ul.unsample(flow_model, torch.randn(1, 4, 7, 8), steps=1, positive=_cond(), progress=False)
    if flow_model.kind == "flux":
        a = ul.unsample(flow_model, _latent(), steps=2, positive=_cond(), progress=False)
        b = ul.unsample(flow_model.with_options(guidance=1.0), _latent(), steps=2, positive=_cond(), progress=False)
        assert not torch.allclose(a, b) and flow_model.guidance == 3.5


def test_prompts_delegate_to_the_pipelines_encode_prompt():
    sd3 = _sd3()
    calls = []

    def encode_prompt(prompt, prompt_2=None, prompt_3=None, device=None, do_classifier_free_guidance=True, **kw):
        calls.append(prompt)
        return torch.ones(len(prompt), 5, EMBED), None, torch.ones(len(prompt), POOLED), None

    pipe = SimpleNamespace(transformer=sd3.transformer, scheduler=SimpleNamespace(config={"shift": 3.0}),
                           text_encoder=object(), text_encoder_2=object(), encode_prompt=encode_prompt)
    model = load_flow_model(pipe, device="cpu")
    out = ul.unsample(model, _latent(), steps=1, positive="a cat", progress=False)
    assert calls == [["a cat"]] and torch.isfinite(out).all()
    with pytest.raises(ul.UnsamplingError, match="'transformer'"):
        load_flow_model({"scheduler": None})


def test_a_second_sigma_pushed_past_one_is_refused_clearly():
    model = gaussian_flow_model(DATA)  # linear_quadratic at 600 steps: sigma_1 = 0.99992, + 1e-4 > 1
    with pytest.raises(ul.UnsamplingError, match="second sigma within 1e-4 of 1"):
        ul.unsample(model, _x0(1), steps=600, scheduler="linear_quadratic", progress=False)
    assert torch.isfinite(ul.unsample(model, _x0(1), steps=60, scheduler="linear_quadratic", progress=False)).all()
