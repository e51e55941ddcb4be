"""The engine on tiny seeded diffusers models and on exact analytic models."""
from __future__ import annotations

import copy
import math

import pytest
import torch

import unsampling_lab as ul
from unsampling_lab.models.gaussian import GaussianData, GaussianMixture
from unsampling_lab.models.analytic import gaussian_model, mixture_model


def _latent(b=1, c=4, seed=0, dtype=torch.float32):
    return torch.randn(b, c, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _count_rows(model):
    """Wrap model.forward to count network rows and calls."""
    calls = {"calls": 0, "rows": 0}
    forward = model.forward

    def counting(x, t, cond):
        calls["calls"] += 1
        calls["rows"] += x.shape[0]
        return forward(x, t, cond)

    model.forward = counting
    return calls, lambda: setattr(model, "forward", forward)


# -- model families ----------------------------------------------------------------------------------
def test_sd_eps_shapes_determinism_and_prompt_batching(sd_model):
    latent = {"samples": _latent(b=2)}
    kw = dict(steps=4, positive=["a red circle", "a blue square"], progress=False)
    a = ul.unsample(sd_model, latent, **kw)
    b = ul.unsample(sd_model, latent, **kw)
    assert a["samples"].shape == (2, 4, 8, 8) and torch.equal(a["samples"], b["samples"])
    same = ul.unsample(sd_model, latent, steps=4, positive="a red circle", progress=False)
    torch.testing.assert_close(same["samples"][0], a["samples"][0], rtol=1e-5, atol=1e-5)  # same prompt on row 0
    assert not torch.allclose(a["samples"][1], same["samples"][1])


def test_sd2_v_prediction_uses_v_parametrization(sd2v_model):
    assert sd2v_model.model_sampling.prediction == "v"
    emb = torch.randn(1, 5, 32, generator=torch.Generator().manual_seed(1))
    out = ul.unsample(sd2v_model, _latent(), steps=3, positive=emb, progress=False)
    assert isinstance(out, torch.Tensor) and out.shape == (1, 4, 8, 8) and torch.isfinite(out).all()
    back = ul.resample(sd2v_model, out, steps=3, positive=emb, progress=False)
    assert torch.isfinite(back).all()


def test_sdxl_pooled_and_time_ids(sdxl_model):
    out = ul.unsample(sdxl_model, _latent(), steps=3, cfg=2.0, positive="a cat", negative="", progress=False)
    assert out.shape == (1, 4, 8, 8) and torch.isfinite(out).all()
    cond = sdxl_model.encode_prompt(["a cat"])
    assert cond.pooled is not None and cond.embeds.shape[-1] == 32
    with pytest.raises(ul.UnsamplingError, match="pooled"):
        ul.unsample(sdxl_model, _latent(), steps=2, positive=cond.embeds, progress=False)


def test_encode_decode_roundtrip_shapes(sd_model):
    images = torch.rand(2, 32, 32, 3, generator=torch.Generator().manual_seed(0))
    latent = sd_model.encode(images)
    assert latent["samples"].shape == (2, 4, 16, 16)
    assert sd_model.decode(latent).shape == (2, 32, 32, 3)


# -- guidance ----------------------------------------------------------------------------------------
def test_cfg_batches_cond_and_uncond_and_skips_negative_at_cfg_1(sd_model):
    calls, restore = _count_rows(sd_model)
    try:
        ul.unsample(sd_model, _latent(b=2), steps=3, cfg=3.0, positive="x", negative="y", progress=False)
        assert calls == {"calls": 3, "rows": 12}  # one forward per step, cond + uncond stacked
        calls.update(calls=0, rows=0)
        ul.unsample(sd_model, _latent(b=2), steps=3, cfg=1.0, positive="x", negative="y", progress=False)
        assert calls == {"calls": 3, "rows": 6}
    finally:
        restore()


def test_per_item_cfg_skips_the_uncond_of_cfg_1_items(sd_model):
    """A packed batch with one cfg per item: the cfg-1 items get no uncond rows (as alone) and their
    denoised is the cond output itself; the others are uncond + cfg (cond - uncond). Each item equals
    its own unpacked call up to float32 rounding (another batch size, other kernels)."""
    from unsampling_lab.guidance import EvalCounter, GuidedDenoiser, to_conditioning

    model = sd_model
    p = to_conditioning(model, ["a", "b", "c"], batch_size=3, name="positive")
    n = to_conditioning(model, ["", "", ""], batch_size=3, name="negative")
    x, sigma = _latent(b=3), torch.tensor([2.0, 2.0, 2.0])
    counter = EvalCounter()
    out, uncond = GuidedDenoiser(model, p, n, torch.tensor([1.0, 3.0, 1.0]), counter=counter).with_uncond(x, sigma)
    assert counter.rows == 3 + 1  # three cond rows, one uncond row
    for i, cfg in enumerate((1.0, 3.0, 1.0)):
        alone = GuidedDenoiser(model, to_conditioning(model, "abc"[i], batch_size=1, name="positive"),
                               to_conditioning(model, "", batch_size=1, name="negative"), cfg)
        got, unc = alone.with_uncond(x[i:i + 1], sigma[i:i + 1])
        torch.testing.assert_close(out[i:i + 1], got, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(uncond[i:i + 1], unc, rtol=1e-4, atol=1e-5)


def test_cfg_is_x0_space_extrapolation(sd2v_model):
    """denoised = uncond + cfg (cond - uncond): linear in cfg at a fixed state."""
    from unsampling_lab.guidance import GuidedDenoiser
    from unsampling_lab.guidance import to_conditioning

    emb_p, emb_n = torch.randn(1, 4, 32), torch.randn(1, 4, 32)
    p = to_conditioning(sd2v_model, emb_p, batch_size=1, name="positive")
    n = to_conditioning(sd2v_model, emb_n, batch_size=1, name="negative")
    x, sigma = _latent(), torch.tensor([2.0])
    d = {cfg: GuidedDenoiser(sd2v_model, p, n, cfg)(x, sigma) for cfg in (1.5, 3.0, 4.5)}
    torch.testing.assert_close(d[4.5] - d[3.0], d[3.0] - d[1.5], rtol=1e-4, atol=1e-5)


# -- masks, pairing, trajectories ----------------------------------------------------------------------
def test_mask_region_comes_back_exactly_and_input_is_not_mutated(sd_model):
    mask = torch.zeros(1, 32, 32)
    mask[:, :16] = 1.0  # pixel-space mask, resized to the latent as ComfyUI does
    latent = {"samples": _latent(), "noise_mask": mask}
    before = copy.deepcopy(latent)
    out = ul.unsample(sd_model, latent, steps=4, cfg=2.0, positive="a", progress=False)
    assert torch.equal(latent["samples"], before["samples"]) and torch.equal(latent["noise_mask"], mask)
    assert out["noise_mask"] is mask and out is not latent
    keep = ul.engine.prepare_mask(mask, (1, 4, 8, 8)) == 0
    assert keep.any() and torch.equal(out["samples"][keep], latent["samples"][keep])
    assert not torch.allclose(out["samples"][~keep], latent["samples"][~keep])
    back = ul.resample(sd_model, out, steps=4, cfg=2.0, positive="a", progress=False)
    assert torch.equal(back["samples"][keep], latent["samples"][keep])


def test_end_at_step_pairs_with_start_at_step(sd_model):
    """unsample(N, end_at_step=k) stops at ascending index N-k, i.e. schedule[k] + 1e-4."""
    steps, k = 6, 2
    sigmas = ul.unsample_sigmas(sd_model, steps=steps, end_at_step=k, sampler_name="euler", scheduler="normal")
    schedule = ul.calculate_sigmas(sd_model.model_sampling, "normal", steps)
    assert len(sigmas) == steps - k + 1
    assert float(sigmas[-1]) == pytest.approx(float(schedule[k]) + 1e-4, rel=1e-6)
    seen = []
    noisy = ul.unsample(sd_model, _latent(), steps=steps, end_at_step=k, positive="a", progress=False)
    ul.resample(sd_model, noisy, steps=steps, start_at_step=k, positive="a", progress=False,
                callback=lambda s: seen.append(s.sigma))
    assert seen[0] == pytest.approx(float(schedule[k])) and len(seen) == steps - k


def test_end_at_step_clamps_and_resample_past_the_end_returns_input(sd_model):
    a = ul.unsample(sd_model, _latent(), steps=3, end_at_step=99, positive="a", progress=False)
    b = ul.unsample(sd_model, _latent(), steps=3, end_at_step=2, positive="a", progress=False)
    assert torch.equal(a, b)
    x = _latent()
    assert torch.equal(ul.resample(sd_model, x, steps=3, start_at_step=3, progress=False), x)


def test_trajectory_serves_every_end_at_step(sd_model):
    latent = {"samples": _latent()}
    traj = ul.unsample_trajectory(sd_model, latent, steps=5, cfg=2.0, positive="a", negative="b", progress=False)
    assert traj.xs.shape == (6, 1, 4, 8, 8) and traj.denoised.shape == (5, 1, 4, 8, 8) and traj.nfe == 5
    for k in range(5):
        for normalize in ("disable", "enable", "sigma"):
            direct = ul.unsample(sd_model, latent, steps=5, end_at_step=k, cfg=2.0, normalize=normalize,
                                 positive="a", negative="b", progress=False)
            torch.testing.assert_close(ul.unsampled(sd_model, traj, k, normalize, like=latent)["samples"],
                                       direct["samples"], rtol=0, atol=0)


def test_trajectory_reads_its_own_end_at_step():
    """Trajectory.index/state own ComfyUI's rule (last_step = N - min(k, N - 1)), written out here as a table."""
    from unsampling_lab.trajectory import Trajectory

    def recorded(n_steps: int, **params) -> Trajectory:
        xs = torch.arange(n_steps + 1, dtype=torch.float32).reshape(-1, 1, 1, 1, 1)
        return Trajectory(sigmas=torch.linspace(0.1, 1.0, n_steps + 1), xs=xs, denoised=xs[1:], params=params)

    full = recorded(5, steps=5)
    assert [full.index(k) for k in (0, 1, 2, 3, 4, 5, 9)] == [5, 4, 3, 2, 1, 1, 1]
    assert float(full.state(1).flatten()[0]) == 4.0 and torch.equal(ul.engine.trajectory_state(full, 1), full.state(1))
    assert ul.engine.state_index(5, 3) == full.index(3) == 2
    partial = recorded(3, steps=5, end_at_step=2)  # stopped at step 2: states for k >= 2 only
    assert [partial.index(k) for k in (2, 3, 4, 7)] == [3, 2, 1, 1]
    with pytest.raises(ul.UnsamplingError, match="has 3 steps; it does not reach end_at_step=1"):
        partial.state(1)
    with pytest.raises(ul.UnsamplingError, match="end_at_step must be a whole number, got 1.5"):
        full.index(1.5)
    history = recorded(5, steps=5, sampler_name="dpmpp_2m", prefix_consistent=False)
    assert float(history.state(0).flatten()[0]) == 5.0
    with pytest.raises(ul.UnsamplingError, match="'dpmpp_2m' changes its rule with the number of steps"):
        history.state(2)


def test_normalize_modes(sd_model):
    latent = _latent(b=2)
    raw = ul.unsample(sd_model, latent, steps=3, progress=False, positive="a")
    glob = ul.unsample(sd_model, latent, steps=3, normalize="enable", progress=False, positive="a")
    torch.testing.assert_close(glob, (raw - raw.mean()) / raw.std())
    assert torch.equal(glob, ul.unsample(sd_model, latent, steps=3, normalize=True, progress=False, positive="a"))
    per = ul.unsample(sd_model, latent, steps=3, normalize="per_sample", progress=False, positive="a")
    for row in per:
        assert float(row.mean()) == pytest.approx(0, abs=1e-5) and float(row.std()) == pytest.approx(1, abs=1e-5)
    sig = ul.unsample(sd_model, latent, steps=3, normalize="sigma", progress=False, positive="a")
    scale, s_max = sd_model.latent_format.scale, sd_model.model_sampling.sigma_max + 1e-4
    torch.testing.assert_close(sig, raw * scale / s_max, rtol=1e-5, atol=1e-6)


# -- exact answers ------------------------------------------------------------------------------------
def test_engine_inverts_gaussian_data_at_first_order():
    """Gaussian data has a closed-form PF-ODE: the euler unsample error halves as steps double."""
    data = GaussianData(mean=torch.tensor([0.5, -1.0, 0.0, 2.0], dtype=torch.float64),
                        std=torch.tensor([1.0, 0.5, 2.0, 0.1], dtype=torch.float64))
    model = gaussian_model(data)
    x0 = data.sample(16, torch.Generator().manual_seed(0)).reshape(16, 4, 1, 1)
    errors = []
    for steps in (16, 32, 64):
        sig = ul.unsample_sigmas(model, steps=steps, end_at_step=0, sampler_name="euler", scheduler="karras")
        exact = data.ode_solution(x0.flatten(1), float(sig[0]), float(sig[-1])).reshape(x0.shape)
        out = ul.unsample(model, x0, steps=steps, scheduler="karras", progress=False)
        errors.append(float((out - exact).norm() / exact.norm()))
    orders = [math.log2(errors[i] / errors[i + 1]) for i in range(2)]
    assert all(0.8 < o < 1.3 for o in orders), (errors, orders)
    back = ul.resample(model, ul.unsample(model, x0, steps=64, sampler_name="heun", scheduler="karras", progress=False),
                       steps=64, sampler_name="heun", scheduler="karras", progress=False)
    assert float((back - x0).norm() / x0.norm()) < 1e-2


def test_cfg_pulls_between_classes_of_a_mixture():
    mix = GaussianMixture.two_class_2d()
    model = mixture_model(mix, labels=["left", "right"])
    noise = torch.randn(64, 2, 1, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sigma_max = model.model_sampling.sigma_max
    start = noise * sigma_max
    kw = dict(steps=30, sampler_name="heun", scheduler="karras", add_noise=False, progress=False)
    plain = ul.resample(model, start, positive="right", cfg=1.0, **kw)
    guided = ul.resample(model, start, positive="right", negative="", cfg=3.0, **kw)
    left = ul.resample(model, start, positive="left", cfg=1.0, **kw)
    # "right" is the class whose components sit at x > 0, "left" at x < 0 (GaussianMixture.two_class_2d)
    assert bool((plain[:, 0] > 0).all()) and bool((left[:, 0] < 0).all())
    # cfg extrapolates away from the unconditional mixture, i.e. further from the left class
    assert float(guided[:, 0].mean()) > float(plain[:, 0].mean()) + 0.05
    assert torch.isfinite(guided).all()


# -- bad input ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    (dict(sampler_name="eulr"), "did you mean 'euler'"),
    (dict(scheduler="karas"), "did you mean 'karras'"),
    (dict(sampler_name="euler_ancestral"), "cannot run backwards.*euler"),
    (dict(steps=0), "steps must be >= 1"),
    (dict(cfg=-1.0), "cfg must be"),
    (dict(end_at_step=-1), "end_at_step must be >= 0"),
    (dict(normalize="yes"), "normalize mode"),
])
def test_bad_arguments_raise_clear_errors(sd_model, kwargs, match):
    latent = {"samples": _latent()}
    before = latent["samples"].clone()
    with pytest.raises(ul.UnsamplingError, match=match):
        ul.unsample(sd_model, latent, **{"steps": 2, **kwargs}, progress=False)
    assert torch.equal(latent["samples"], before)


def test_bad_latents_masks_and_prompts(sd_model, sd2v_model):
    nan = _latent()
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(ul.UnsamplingError, match="NaN"):
        ul.unsample(sd_model, nan, steps=2, progress=False)
    with pytest.raises(ul.UnsamplingError, match="3 channels.*4"):
        ul.unsample(sd_model, torch.zeros(1, 3, 8, 8), steps=2, progress=False)
    with pytest.raises(ul.UnsamplingError, match="noise_mask"):
        ul.unsample(sd_model, {"samples": _latent(), "noise_mask": torch.ones(3, 2, 8, 8)}, steps=2, progress=False)
    with pytest.raises(ul.UnsamplingError, match="noise_mask has batch 3"):
        ul.unsample(sd_model, {"samples": _latent(b=2), "noise_mask": torch.ones(3, 8, 8)}, steps=2, progress=False)
    with pytest.raises(ul.UnsamplingError, match="width 16.*expects 32"):
        ul.unsample(sd_model, _latent(), steps=2, positive=torch.zeros(1, 4, 16), progress=False)
    with pytest.raises(ul.UnsamplingError, match="no text encoder"):
        ul.unsample(sd2v_model, _latent(), steps=2, positive="a cat", progress=False)
    with pytest.raises(ul.UnsamplingError, match="2 prompts for a batch of 3"):
        ul.unsample(sd_model, _latent(b=3), steps=2, positive=["a", "b"], progress=False)
    with pytest.raises(ul.UnsamplingError, match="add_noise"):
        ul.resample(sd_model, _latent(), steps=2, add_noise="maybe", progress=False)


def test_stochastic_samplers_resample_seeded(sd_model):
    x = {"samples": torch.zeros(1, 4, 8, 8)}
    kw = dict(steps=3, sampler_name="euler_ancestral", add_noise=True, positive="a", progress=False)
    a = ul.resample(sd_model, x, noise_seed=1, **kw)["samples"]
    b = ul.resample(sd_model, x, noise_seed=1, **kw)["samples"]
    c = ul.resample(sd_model, x, noise_seed=2, **kw)["samples"]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_load_model_errors_clearly(tmp_path):
    with pytest.raises(ul.UnsamplingError, match="not a diffusers pipeline folder"):
        ul.load_model(tmp_path, device="cpu")
    with pytest.raises(ul.UnsamplingError, match="never downloads"):
        ul.load_model("nobody/not-a-model", device="cpu")


def test_masked_resample_shows_the_network_the_noised_latent_outside_the_mask(sd2v_model):
    """ComfyUI's KSamplerX0Inpaint: outside the mask the input is noise_scaling(sigma, noise, latent)."""
    ms = sd2v_model.model_sampling
    latent = _latent()
    mask = torch.zeros(1, 8, 8)
    mask[:, :, :4] = 1.0
    seen = []
    forward = sd2v_model.forward
    sd2v_model.forward = lambda x, t, cond: (seen.append(x.clone()), forward(x, t, cond))[1]
    try:
        emb = torch.randn(1, 4, 32, generator=torch.Generator().manual_seed(2))
        ul.resample(sd2v_model, {"samples": latent, "noise_mask": mask}, steps=3, add_noise=True, noise_seed=7,
                    positive=emb, progress=False)
    finally:
        sd2v_model.forward = forward
    sigma0 = ms.sigmas[-1:]  # a full resample starts at sigma_max
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(7))
    known = ms.calculate_input(sigma0, latent * sd2v_model.latent_format.scale + noise * sigma0)
    outside = mask.expand(1, 4, 8, 8) == 0
    torch.testing.assert_close(seen[0][outside], known[outside], rtol=1e-5, atol=1e-6)


def test_masked_trajectory_matches_masked_unsample(sd_model):
    mask = torch.zeros(1, 8, 8)
    mask[:, 2:6, 2:6] = 1.0
    latent = {"samples": _latent(seed=3), "noise_mask": mask}
    traj = ul.unsample_trajectory(sd_model, latent, steps=4, positive="a", progress=False)
    for k in (0, 2):
        direct = ul.unsample(sd_model, latent, steps=4, end_at_step=k, positive="a", progress=False)
        assert torch.equal(ul.unsampled(sd_model, traj, k, like=latent)["samples"], direct["samples"])
