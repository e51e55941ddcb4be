"""Inversion methods (`ul.invert`) against closed forms: exact Gaussian models, guided Gaussian pairs, mixtures."""
from __future__ import annotations

import inspect
import warnings

import pytest
import torch

import unsampling_lab as ul
from unsampling_lab.models.gaussian import GaussianData, GaussianMixture
from unsampling_lab.guidance import GuidedDenoiser
from unsampling_lab.inversion import METHOD_SPECS, InversionWarning
from unsampling_lab.models.analytic import AnalyticModel, gaussian_model, mixture_model

F64 = torch.float64
DATA4 = GaussianData(torch.tensor([0.3, -0.5, 1.0, 0.0], dtype=F64), torch.tensor([0.5, 1.0, 0.8, 1.5], dtype=F64))
X4 = torch.tensor([[0.1, 0.4, -1.2, 2.0], [1.0, -2.0, 0.5, 0.3]], dtype=F64)[:, :, None, None]
MU, S = 0.3, 0.5  # the 1-D Gaussian of the contraction tests


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def guided_pair(s_uncond: float, s_cond: float, mu_uncond: float = 0.0, mu_cond: float = 0.5) -> AnalyticModel:
    """1-D: prompt "c" is N(mu_cond, s_cond²), "" is N(mu_uncond, s_uncond²); D_w is affine in x."""
    cond = GaussianData(torch.tensor([mu_cond], dtype=F64), torch.tensor([s_cond], dtype=F64))
    uncond = GaussianData(torch.tensor([mu_uncond], dtype=F64), torch.tensor([s_uncond], dtype=F64))

    def denoise(x, sigma, label):
        s = sigma[:, None]
        return torch.where(label[:, None] < 0, uncond.denoise(x, s), cond.denoise(x, s))

    return AnalyticModel(denoise, dim=1, labels=("c",))


def contraction(sigmas: torch.Tensor, i: int, *, w: float = 1.0, s_uncond: float = S, s_cond: float = S) -> float:
    """Slope of g(y) = x_i + Δ_i d_w(y, σ_{i+1}) for Gaussians: from (y − μ) = (x_i − μ) / (1 − Δ σ/(s² + σ²)),
    with D_w = (1 − w) D_∅ + w D_c each Gaussian: q = Δ σ ((1 − w)/(s_∅² + σ²) + w/(s_c² + σ²))."""
    lo, hi = float(sigmas[i]), float(sigmas[i + 1])
    return (hi - lo) * hi * ((1 - w) / (s_uncond**2 + hi**2) + w / (s_cond**2 + hi**2))


# -- the registry and bad input ------------------------------------------------------------------------
def test_registry_is_data_and_unsampler_is_unsample(sd_model):
    assert set(ul.INVERSION_METHODS) == set(METHOD_SPECS) and "unsampler" in ul.INVERSION_METHODS
    for spec in METHOD_SPECS.values():
        assert spec.predictions and spec.cost and spec.paper
        # the options are exactly the method's keyword-only parameters (what invert passes it), each with a default
        params = inspect.signature(spec.invert).parameters.values()
        assert sorted(p.name for p in params if p.kind is p.KEYWORD_ONLY) == sorted(spec.options), spec.name
        assert all(v is not None for v in spec.options.values()), spec.name
    mask = torch.zeros(1, 32, 32)
    mask[:, :16] = 1.0
    latent = {"samples": torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)), "noise_mask": mask}
    kw = dict(steps=3, cfg=2.0, positive="a", negative="b", progress=False)
    inv = ul.invert(sd_model, latent, **kw)
    plain = ul.unsample(sd_model, latent, **kw)
    assert torch.equal(inv.noise["samples"], plain["samples"]) and inv.noise["noise_mask"] is mask
    assert inv.method == "unsampler" and inv.nfe == 3 and inv.grad_steps == 0 and inv.converged
    back = ul.resample(sd_model, inv, **kw)
    assert torch.equal(back["samples"], ul.resample(sd_model, plain, **kw)["samples"])


@pytest.mark.parametrize("sampler, evals", [("euler", 1), ("heun", 2)])
def test_unsampler_nfe_is_the_counted_forward_passes_and_engine_resample_takes_latents_only(sampler, evals):
    """The Unsampler method's nfe is the problem's counter (as for every method), equal to the network calls
    counted from outside; an Inversion goes to ul.resample, and engine.resample says so."""
    m = gaussian_model(DATA4)
    calls: list[int] = []
    forward = m.forward
    m.forward = lambda x, t, c: (calls.append(int(x.shape[0])), forward(x, t, c))[1]
    inv = ul.invert(m, X4, steps=4, sampler_name=sampler, progress=False)
    assert inv.nfe == len(calls) == 4 * evals
    assert torch.equal(inv.noise, ul.unsample(m, X4, steps=4, sampler_name=sampler, progress=False))
    with pytest.raises(ul.UnsamplingError, match=r"Inversion; resample it with ul.resample\(model, inversion"):
        ul.engine.resample(m, inv, steps=4, progress=False)
    assert torch.equal(ul.resample(m, inv, steps=4, sampler_name=sampler, progress=False),
                       ul.engine.resample(m, inv.noise, steps=4, sampler_name=sampler, progress=False))


def test_bad_method_options_sampler_are_clear_errors():
    m = gaussian_model(DATA4)
    with pytest.raises(ul.UnsamplingError, match="did you mean 'fixed_point'"):
        ul.invert(m, X4, method="fixed_pont", progress=False)
    with pytest.raises(ul.UnsamplingError, match=r"no option 'iteration' \(did you mean 'iterations'\?\).*tol="):
        ul.invert(m, X4, method="fixed_point", iteration=3, progress=False)
    with pytest.raises(ul.UnsamplingError, match="unsampler' takes no option 'tol'.*none"):
        ul.invert(m, X4, tol=1e-3, progress=False)
    with pytest.raises(ul.UnsamplingError, match="iterations must be a int"):
        ul.invert(m, X4, method="fixed_point", iterations=2.5, progress=False)
    with pytest.raises(ul.UnsamplingError, match="sampler_name in .*'lms'.*multistep"):
        ul.invert(m, X4, method="fixed_point", sampler_name="lms", progress=False)


# -- fixed point -----------------------------------------------------------------------------------------
def test_fixed_point_residual_falls_with_the_closed_form_contraction():
    m = gaussian_model(GaussianData(torch.tensor([MU], dtype=F64), torch.tensor([S], dtype=F64)))
    x0 = torch.tensor([[1.4], [-0.9]], dtype=F64)[:, :, None, None]
    with pytest.warns(InversionWarning):  # tol 0: no step "converges", every iteration is recorded
        inv = ul.invert(m, x0, method="fixed_point", steps=8, iterations=6, tol=0.0, progress=False)
    sigmas = ul.resample_sigmas(m, steps=8).flip(0)
    checked = 0
    for i, res in enumerate(inv.residuals):
        q = contraction(sigmas, i)
        assert 0 < q < 1
        ratios = [b / a for a, b in zip(res, res[1:]) if b > 1e-8]  # above float64 rounding of the residual
        for r in ratios:
            assert r == pytest.approx(q, rel=1e-6)
        checked += len(ratios)
    assert checked >= 20


def test_fixed_point_diverges_where_the_contraction_exceeds_one_and_says_so():
    m = guided_pair(s_uncond=1.0, s_cond=0.2)
    x0 = torch.tensor([[0.55]], dtype=F64)[:, :, None, None]
    w, steps = 7.5, 6
    sigmas = ul.resample_sigmas(m, steps=steps).flip(0)
    q = [contraction(sigmas, i, w=w, s_uncond=1.0, s_cond=0.2) for i in range(steps)]
    assert max(q) > 1.5 and min(abs(v) for v in q) < 0.5  # some steps diverge, some contract
    with pytest.warns(InversionWarning, match="did not reach tol"):
        inv = ul.invert(m, x0, method="fixed_point", steps=steps, cfg=w, positive="c", iterations=12, tol=1e-12,
                        progress=False)
    assert not inv.converged
    for i, res in enumerate(inv.residuals):
        if abs(q[i]) > 1:
            assert i in inv.nonconverged_steps
            assert res[2] / res[1] == pytest.approx(abs(q[i]), rel=1e-6)  # grows by exactly |q| per iteration
        elif abs(q[i]) < 0.5:
            assert inv.step_converged[i]
    # Anderson acceleration is a secant method on this affine map: it converges on every step
    with warnings.catch_warnings():
        warnings.simplefilter("error", InversionWarning)
        acc = ul.invert(m, x0, method="fixed_point", steps=steps, cfg=w, positive="c", iterations=12, tol=1e-12,
                        anderson=2, progress=False)
    assert acc.converged and acc.nfe < steps * 12
    back = ul.resample(m, acc, steps=steps, cfg=w, positive="c", progress=False)
    assert rel(back, x0) < 1e-11


def test_fixed_point_euler_round_trip_to_float_precision():
    m = gaussian_model(DATA4)
    for kw in (dict(iterations=200), dict(iterations=60, anderson=3), dict(iterations=200, averaging=3)):
        inv = ul.invert(m, X4, method="fixed_point", steps=10, tol=1e-14, **kw, progress=False)
        back = ul.resample(m, inv, steps=10, progress=False)
        assert inv.converged and rel(back, X4) < 1e-12, kw
        assert sum(len(r) for r in inv.residuals) == inv.nfe
    plain = ul.resample(m, ul.unsample(m, X4, steps=10, progress=False), steps=10, progress=False)
    assert rel(plain, X4) > 1e-2  # what the Unsampler's explicit step gives at 10 steps


def test_fixed_point_other_one_step_samplers_and_end_at_step():
    m = gaussian_model(DATA4)
    for name in ("heun", "dpm_2"):
        inv = ul.invert(m, X4, method="fixed_point", steps=6, end_at_step=2, sampler_name=name, iterations=100,
                        tol=1e-14, anderson=3, progress=False)
        back = ul.resample(m, inv, steps=6, start_at_step=2, sampler_name=name, progress=False)
        assert rel(back, X4) < 1e-12, name


def test_resample_of_an_inversion_continues_it_and_refuses_another_start_sigma():
    """ul.resample(model, inversion) with the schedule left unset continues the inversion (its steps, sampler,
    scheduler, from the step it stopped at); a plain method's noise resampled from another sigma was silently
    wrong (relative error ~1 here) and is refused, unless add_noise re-noises it."""
    m = gaussian_model(DATA4)
    for method in ("unsampler", "fixed_point"):
        opts = dict(iterations=100, tol=1e-14) if method == "fixed_point" else {}
        inv = ul.invert(m, X4, method=method, steps=8, end_at_step=3, sampler_name="heun", scheduler="karras",
                        progress=False, **opts)
        cont = ul.resample(m, inv, progress=False)
        same = ul.resample(m, inv, steps=8, start_at_step=3, sampler_name="heun", scheduler="karras", progress=False)
        assert torch.equal(cont, same), method
        wrong = ul.resample(m, inv.noise, progress=False)  # a LATENT: KSamplerAdvanced's defaults, from sigma_max
        assert rel(wrong, X4) > 0.1, method
        with pytest.raises(ul.UnsamplingError, match=r"noise is at sigma .*\(step 3 of 8\).*starts at .*leave steps"):
            ul.resample(m, inv, steps=20, start_at_step=0, progress=False)
        ul.resample(m, inv, steps=20, add_noise=True, progress=False)  # re-noised on purpose: allowed
    full = ul.invert(m, X4, steps=8, progress=False)
    ul.resample(m, full, steps=30, progress=False)  # a full inversion's noise is at sigma_max for any step count


# -- negative-prompt inversion ------------------------------------------------------------------------------
def test_negative_prompt_denoiser_is_the_conditional_one():
    mixture = GaussianMixture.two_class_2d()
    m = mixture_model(mixture, labels=("left", "right"))
    pos = m.encode_prompt(["left", "left"])
    x = torch.tensor([[0.3, -1.0], [2.0, 0.5]], dtype=F64)[:, :, None, None]
    sigma = torch.tensor([1.3, 1.3], dtype=F64)
    npi = GuidedDenoiser(m, pos, pos, 7.5)(x, sigma)
    cond = GuidedDenoiser(m, pos, None, 1.0)(x, sigma)
    uncond = GuidedDenoiser(m, m.encode_prompt(["", ""]), None, 1.0)(x, sigma)
    torch.testing.assert_close(npi, cond, rtol=1e-14, atol=1e-14)
    assert rel(uncond, cond) > 1e-2
    x0 = mixture.sample(4, torch.Generator().manual_seed(0))[0][:, :, None, None]
    inv = ul.invert(m, x0, method="negative_prompt", steps=8, cfg=7.5, positive="left", progress=False)
    assert torch.equal(inv.noise, ul.unsample(m, x0, steps=8, cfg=1.0, positive="left", progress=False))
    back = ul.resample(m, inv, steps=8, cfg=7.5, positive="left", progress=False)
    cfg1 = ul.resample(m, inv.noise, steps=8, cfg=1.0, positive="left", progress=False)
    torch.testing.assert_close(back, cfg1, rtol=1e-12, atol=1e-12)


# -- EDICT ------------------------------------------------------------------------------------------------
def test_edict_round_trip_to_float_precision_at_cfg_7_5_exact_model():
    mixture = GaussianMixture.two_class_2d()
    m = mixture_model(mixture, labels=("left", "right"))
    x0 = mixture.sample(6, torch.Generator().manual_seed(1))[0][:, :, None, None]
    kw = dict(steps=3, cfg=7.5, positive="right", progress=False)
    inv = ul.invert(m, x0, method="edict", **kw)
    back = ul.resample(m, inv, **kw)
    assert inv.nfe == 6 and rel(back, x0) < 1e-12
    plain = ul.resample(m, ul.unsample(m, x0, **kw), **kw)
    assert rel(plain, x0) > 1e-2
    with pytest.raises(ul.UnsamplingError, match="steps=3"):
        ul.resample(m, inv, steps=3, start_at_step=1, cfg=7.5, positive="right", progress=False)


def test_edict_round_trip_on_the_tiny_unet(one_thread):
    """float64 state and network: exact to rounding. (In float32 this random UNet at cfg 7.5 amplifies the
    rounding to ~1e-3 over 3 steps, where the Unsampler's round trip is off by ~50x the latent's norm.)"""
    from unsampling_lab.testing import SD15_SCHEDULER, tiny_unet
    from unsampling_lab.models.unet import UNetModel

    m = UNetModel(tiny_unet().double(), SD15_SCHEDULER, device="cpu", dtype=F64)
    g = torch.Generator().manual_seed(3)
    latent = {"samples": torch.randn(2, 4, 8, 8, generator=g, dtype=F64)}
    kw = dict(steps=3, cfg=7.5, positive=torch.randn(1, 5, 32, generator=g, dtype=F64),
              negative=torch.zeros(1, 5, 32, dtype=F64), progress=False)
    inv = ul.invert(m, latent, method="edict", **kw)
    back = ul.resample(m, inv, **kw)
    err = rel(back["samples"], latent["samples"])
    plain = rel(ul.resample(m, ul.unsample(m, latent, **kw), **kw)["samples"], latent["samples"])
    assert err < 1e-12 and plain > 1.0, (err, plain)


# -- null-text inversion -------------------------------------------------------------------------------------
class SmoothToy:
    """A float64 eps model whose output depends smoothly on the prompt embedding (for gradient checks):
    eps = tanh(A x + (mean_L embeds) B) per pixel, A [C, C], B [W, C]."""

    def __init__(self, channels: int = 3, width: int = 5, seed: int = 0):
        from unsampling_lab.model_sampling import ModelSampling
        from unsampling_lab.models.base import LatentFormat

        g = torch.Generator().manual_seed(seed)
        self.a = torch.randn(channels, channels, generator=g, dtype=F64) * 0.5
        self.b = torch.randn(width, channels, generator=g, dtype=F64) * 0.3
        self.model_sampling = ModelSampling.continuous(sigma_min=0.002, sigma_max=5.0, prediction="eps")
        self.latent_format = LatentFormat(channels=channels)
        self.device, self.dtype, self.width = torch.device("cpu"), F64, width

    def encode_prompt(self, prompts):
        from unsampling_lab.models.base import Conditioning

        return Conditioning(torch.stack([torch.full((2, self.width), float(len(p)) / 10, dtype=F64) for p in prompts]))

    def check_conditioning(self, cond):
        pass

    def forward(self, x, timestep, cond):
        h = torch.einsum("ij,bjhw->bihw", self.a, x) + (cond.embeds.mean(1) @ self.b)[:, :, None, None]
        return torch.tanh(h)


def test_null_text_gradients_match_finite_differences():
    from unsampling_lab.inversion.null_text import null_text_loss
    from unsampling_lab.models.base import Conditioning

    m = SmoothToy()
    g = torch.Generator().manual_seed(5)
    x, target = torch.randn(2, 3, 2, 2, generator=g, dtype=F64) * 3, torch.randn(2, 3, 2, 2, generator=g, dtype=F64)
    sigma, sigma_next = torch.tensor(2.0, dtype=F64), torch.tensor(1.2, dtype=F64)
    sig_b = torch.full([2], 2.0, dtype=F64)
    cond = GuidedDenoiser(m, m.encode_prompt(["abc", "abc"]), None, 1.0)(x, sig_b)

    def loss_of(e):
        uncond = lambda emb: GuidedDenoiser(m, Conditioning(emb), None, 1.0)(x, sig_b)  # noqa: E731
        return null_text_loss(uncond, e, x, sigma, sigma_next, target, cond_denoised=cond, cfg=7.5, scale=0.4)[0]

    e = torch.randn(2, 2, 5, generator=g, dtype=F64).requires_grad_(True)
    (grad,) = torch.autograd.grad(loss_of(e), e)
    h = 1e-6
    for _ in range(3):
        v = torch.randn(e.shape, generator=g, dtype=F64)
        with torch.no_grad():
            fd = (loss_of(e + h * v) - loss_of(e - h * v)) / (2 * h)
        assert float((grad * v).sum()) == pytest.approx(float(fd), rel=1e-7, abs=1e-10)


def test_null_text_drives_the_per_step_residual_down_and_resamples_its_embeddings():
    m = SmoothToy()
    x0 = torch.randn(2, 3, 2, 2, generator=torch.Generator().manual_seed(2), dtype=F64)
    kw = dict(steps=6, cfg=3.0, positive="a prompt", negative="", progress=False)
    inv = ul.invert(m, x0, method="null_text", optimizer="adam", inner_steps=20, lr=0.05, **kw)
    assert len(inv.residuals) == 6 and inv.grad_steps > 0 and inv.nfe > 0
    for res in inv.residuals:
        assert res[-1] < res[0]
    back = ul.resample(m, inv, **kw)
    torch.testing.assert_close(back, inv.resampling["reconstruction"])
    plain = ul.resample(m, ul.unsample(m, x0, **kw), **kw)
    assert rel(back, x0) < 0.5 * rel(plain, x0)
    with pytest.raises(ul.UnsamplingError, match="cfg 1 never uses"):
        ul.invert(m, x0, method="null_text", steps=6, cfg=1.0, progress=False)
    with pytest.raises(ul.UnsamplingError, match="one embedding per step"):
        ul.resample(m, inv, steps=7, cfg=3.0, positive="a prompt", progress=False)


def test_null_text_runs_on_the_bundled_model(one_thread):
    from unsampling_lab.bundled import shapes

    model = ul.load_model(device="cpu")
    batch = shapes.make_shapes(1, seed=7)
    latent = model.encode(batch.images)
    kw = dict(steps=4, cfg=7.5, positive=batch.captions, progress=False)
    inv = ul.invert(model, latent, method="null_text", inner_steps=3, **kw)
    assert inv.grad_steps > 0 and all(r[-1] <= r[0] for r in inv.residuals)
    back = ul.resample(model, inv, **kw)
    plain = ul.resample(model, ul.unsample(model, latent, **kw), **kw)
    assert rel(back["samples"], latent["samples"]) < rel(plain["samples"], latent["samples"])


# -- flow models -----------------------------------------------------------------------------------------------
def _flow_setup():
    from unsampling_lab.models.analytic import gaussian_flow_model

    data = GaussianData(torch.tensor([0.3, -0.5, 1.0, 0.0], dtype=F64), torch.tensor([0.5, 1.0, 0.8, 1.5], dtype=F64))
    return data, gaussian_flow_model(data)


def test_rf_solver_step_is_a_midpoint_step_and_second_order():
    data, m = _flow_setup()
    x0 = X4
    sigmas = ul.unsample_sigmas(m, steps=8, end_at_step=0, sampler_name="euler", scheduler="simple")  # float32
    v = lambda x, s: (x - data.denoise_flow(x, s)) / s  # noqa: E731  the exact velocity, independent of the engine
    x = (1 - sigmas[0].double()) * x0.flatten(1)  # the Unsampler's zero-noise start at sigma_0 = 1e-4
    for lo, hi in zip(sigmas[:-1], sigmas[1:]):
        dt, mid = (hi - lo).double(), (lo + (hi - lo) / 2).double()  # sigma arithmetic in the sigmas' float32
        x = x + dt * v(x + dt / 2 * v(x, lo.double()), mid)
    x = x.reshape(x0.shape)
    inv = ul.invert(m, x0, method="rf_solver", steps=8, scheduler="simple", progress=False)
    torch.testing.assert_close(inv.noise, x, rtol=1e-12, atol=1e-12)
    assert inv.nfe == 16
    exact = data.ode_solution_flow(x0.flatten(1), float(sigmas[0]), 1.0).reshape(x0.shape)
    euler = ul.unsample(m, x0, steps=8, scheduler="simple", progress=False)
    assert rel(inv.noise, exact) < 0.1 * rel(euler, exact)
    back = ul.resample(m, inv, steps=8, scheduler="simple", progress=False)
    plain = ul.resample(m, euler, steps=8, scheduler="simple", progress=False)
    assert rel(back, x0) < 0.1 * rel(plain, x0)


def test_fireflow_one_evaluation_per_step_and_better_than_euler():
    data, m = _flow_setup()
    inv = ul.invert(m, X4, method="fireflow", steps=10, scheduler="simple", progress=False)
    assert inv.nfe == 11
    back = ul.resample(m, inv, steps=10, scheduler="simple", progress=False)
    plain = ul.resample(m, ul.unsample(m, X4, steps=10, scheduler="simple", progress=False), steps=10,
                        scheduler="simple", progress=False)
    assert rel(back, X4) < 0.5 * rel(plain, X4)


def test_rf_inversion_gamma_0_is_euler_and_gamma_1_lands_on_xi():
    data, m = _flow_setup()
    kw = dict(steps=6, scheduler="simple", progress=False)
    inv0 = ul.invert(m, X4, method="rf_inversion", gamma=0.0, **kw)
    torch.testing.assert_close(inv0.noise, ul.unsample(m, X4, **kw), rtol=0, atol=0)
    inv1 = ul.invert(m, X4, method="rf_inversion", gamma=1.0, seed=3, **kw)
    xi = torch.randn(X4.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float32).double()
    torch.testing.assert_close(inv1.noise, xi, rtol=1e-12, atol=1e-12)
    # eta = 1 over every resampling step drives the sample onto the source latent
    inv = ul.invert(m, X4, method="rf_inversion", gamma=0.5, eta=1.0, start=0.0, stop=1.0, **kw)
    torch.testing.assert_close(ul.resample(m, inv, **kw), X4, rtol=1e-12, atol=1e-12)


def test_flow_methods_refuse_other_families_and_samplers(sd_model):
    data, m = _flow_setup()
    with pytest.raises(ul.UnsamplingError, match="serves flow models, not this 'eps' model.*straight paths.*fixed_point"):
        ul.invert(sd_model, torch.zeros(1, 4, 8, 8), method="rf_solver", progress=False)
    with pytest.raises(ul.UnsamplingError, match="sampler_name in \\['euler'\\], got 'heun'"):
        ul.invert(m, X4, method="fireflow", sampler_name="heun", progress=False)
    with pytest.raises(ul.UnsamplingError, match="gamma"):
        ul.invert(m, X4, method="rf_inversion", gamma=2.0, progress=False)


def test_flow_methods_run_on_a_tiny_sd3_transformer(one_thread):
    from unsampling_lab.testing import tiny_flow_model

    m = tiny_flow_model("sd3")
    latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    emb, pooled = torch.zeros(1, 3, 16), torch.zeros(1, 8)
    from unsampling_lab.models.base import Conditioning

    kw = dict(steps=4, scheduler="simple", positive=Conditioning(emb, pooled), progress=False)
    for method in ("rf_solver", "fireflow", "rf_inversion"):
        inv = ul.invert(m, latent, method=method, **kw)
        back = ul.resample(m, inv, **kw)
        assert back.shape == latent.shape and torch.isfinite(back).all(), method
