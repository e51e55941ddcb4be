"""Samplers against k-diffusion, diffusers and the exact PF-ODE of Gaussian data (CPU, float64, analytic denoiser)."""
from __future__ import annotations

import math

import pytest
import torch

from kdiffusion_ref import kdiffusion_sampling
from unsampling_lab.models.gaussian import GaussianData
from unsampling_lab.errors import UnsamplingError
from unsampling_lab.model_sampling import ModelSampling
from unsampling_lab.samplers import INVERTIBLE_SAMPLERS, SAMPLER_SPECS, SAMPLERS, get_sampler
from unsampling_lab.samplers.base import seeded_noise
from unsampling_lab.samplers.registry import COMFYUI_SAMPLERS, NOT_IMPLEMENTED
from unsampling_lab.samplers.unipc import unipc_orders

F64 = torch.float64
DATA = GaussianData(torch.tensor([0.3, -0.5, 1.0, 0.0], dtype=F64), torch.tensor([0.5, 1.0, 0.8, 1.5], dtype=F64))
X0 = torch.tensor([[0.1, 0.4, -1.2, 2.0], [1.0, -2.0, 0.5, 0.3]], dtype=F64)
SIGMA_MIN, SIGMA_MAX = 0.0291675, 14.614642  # SD1.x
ODE_SAMPLERS = [n for n in INVERTIBLE_SAMPLERS if n != "ddim_inverse"]
OWN_STEPS = [n for n in SAMPLERS if not SAMPLER_SPECS[n].steps_follow_sigmas]  # dpm_fast, dpm_adaptive
STOCHASTIC = [n for n in SAMPLERS if not SAMPLER_SPECS[n].deterministic]


def karras(n: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, rho: float = 7.0) -> torch.Tensor:
    """n descending Karras sigmas (no trailing 0)."""
    ramp = torch.linspace(0, 1, n, dtype=F64)
    return (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


def sampling_sigmas(steps: int) -> torch.Tensor:
    """A sampling schedule: steps + 1 descending sigmas ending in 0."""
    return torch.cat([karras(steps), torch.zeros(1, dtype=F64)])


def unsampler_sigmas(steps: int, dtype: torch.dtype = F64) -> torch.Tensor:
    """The Unsampler's list: the sampling schedule flipped, 1e-4 added to every entry."""
    return (sampling_sigmas(steps).to(dtype).flip(0) + 1e-4)


def noisy(sigma: float) -> torch.Tensor:
    """X0 carried exactly along the PF-ODE to sigma."""
    return DATA.ode_solution(X0, 1e-4, sigma)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# -- k-diffusion parity -----------------------------------------------------------------------------------------

KD_NAMES = ["euler", "heun", "dpm_2", "lms", "dpmpp_2m"]


@pytest.mark.parametrize("direction", ["descending", "ascending"])
@pytest.mark.parametrize("name", KD_NAMES)
def test_matches_kdiffusion(name: str, direction: str) -> None:
    kd = kdiffusion_sampling()
    kd_fn = getattr(kd, f"sample_{name}")
    ours = SAMPLER_SPECS[name].fn
    sigmas = sampling_sigmas(10) if direction == "descending" else unsampler_sigmas(10)
    x = noisy(float(sigmas[0]))
    if name == "lms" and direction == "descending":
        # k-diffusion 0.1.1's lms has no special case for a step into 0 (ComfyUI returns the denoised
        # estimate there): compare the run up to the last sigma, then ComfyUI's final step.
        head = sigmas[:-1]
        expected = kd_fn(DATA, x, head, disable=True)
        got = ours(DATA, x, head)
        assert rel(got, expected) < 1e-10
        last = ours(DATA, x, sigmas)
        assert torch.allclose(last, DATA.denoise(got, head[-1]), rtol=1e-12, atol=1e-12)
        return
    expected = kd_fn(DATA, x, sigmas, disable=True)
    got = ours(DATA, x, sigmas)
    assert rel(got, expected) < 1e-10


KD_STOCHASTIC = ["euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m_sde",
                 "dpmpp_3m_sde"]


@pytest.mark.parametrize("name", KD_STOCHASTIC)
def test_stochastic_matches_kdiffusion(name: str) -> None:
    """VP forms against k-diffusion's own functions, both drawing from the same seeded noise stream."""
    kd = kdiffusion_sampling()
    sigmas = sampling_sigmas(10)
    x = noisy(float(sigmas[0]))
    expected = getattr(kd, f"sample_{name}")(DATA, x, sigmas, disable=True, noise_sampler=seeded_noise(x, 3))
    got = SAMPLER_SPECS[name].fn(DATA, x, sigmas, noise=seeded_noise(x, 3))
    assert rel(got, expected) < 1e-10


@pytest.mark.parametrize("direction", ["descending", "ascending"])
@pytest.mark.parametrize("name", ["dpm_fast", "dpm_adaptive"])
def test_dpm_solver_matches_kdiffusion(name: str, direction: str) -> None:
    """ComfyUI calls k-diffusion's DPM-Solver between sigmas[0] and the last nonzero sigma; so do we, both ways."""
    kd = kdiffusion_sampling()
    sigmas = sampling_sigmas(12) if direction == "descending" else unsampler_sigmas(12)
    x = noisy(float(sigmas[0]))
    end = sigmas[-2] if sigmas[-1] == 0 else sigmas[-1]
    if name == "dpm_fast":
        expected = kd.sample_dpm_fast(DATA, x, end, sigmas[0], len(sigmas) - 1, disable=True)
    else:
        expected = kd.sample_dpm_adaptive(DATA, x, end, sigmas[0], disable=True)
    got = SAMPLER_SPECS[name].fn(DATA, x, sigmas)
    assert rel(got, expected) < 1e-10
    # and it integrates the PF-ODE, downwards and upwards (they run either way at eta 0). Measured: dpm_fast
    # 1.5e-2 down, 0.26 up (12 evaluations = 4 uniform steps in -log sigma over 1e-4 -> 14.6: coarse; it
    # converges at third order, below); dpm_adaptive (rtol 0.05) 3.9e-2 down, < 2e-2 up.
    tol = {("dpm_fast", "descending"): 3e-2, ("dpm_fast", "ascending"): 0.4,
           ("dpm_adaptive", "descending"): 8e-2, ("dpm_adaptive", "ascending"): 4e-2}[name, direction]
    assert rel(got, DATA.ode_solution(x, sigmas[0], end)) < tol


def test_dpm_fast_converges_at_third_order() -> None:
    errors = []
    for n in (12, 24, 48):
        sigmas = karras(n + 1, sigma_min=1e-4).flip(0)
        x = noisy(float(sigmas[0]))
        errors.append(rel(SAMPLER_SPECS["dpm_fast"].fn(DATA, x, sigmas), DATA.ode_solution(x, sigmas[0], sigmas[-1])))
    assert math.log2(errors[1] / errors[2]) > 2.4, errors


# -- convergence on the exact PF-ODE ------------------------------------------------------------------------------


def _ode_error(name: str, steps: int, direction: str) -> float:
    sigmas = karras(steps + 1, sigma_min=1e-4)
    if direction == "ascending":
        sigmas = sigmas.flip(0)
    x = noisy(float(sigmas[0]))
    y = SAMPLER_SPECS[name].fn(DATA, x, sigmas)
    return rel(y, DATA.ode_solution(x, sigmas[0], sigmas[-1]))


@pytest.mark.parametrize("direction", ["ascending", "descending"])
@pytest.mark.parametrize("name", ODE_SAMPLERS)
def test_convergence_order(name: str, direction: str) -> None:
    """Error against the closed-form PF-ODE solution shrinks ~2^order per doubling of the steps."""
    spec = SAMPLER_SPECS[name]
    e32, e64, e128 = (_ode_error(name, n, direction) for n in (32, 64, 128))
    if name == "ipndm_v":  # ComfyUI's weights are inconsistent on unequal steps: the error stalls
        assert e32 < 0.1 and e128 < 2e-3
        return
    measured = math.log2(e64 / e128)
    assert measured >= spec.order - 0.6, (name, direction, e32, e64, e128, measured)
    assert e128 < 5e-2


@pytest.mark.parametrize("name", ODE_SAMPLERS)
def test_round_trip(name: str) -> None:
    """Unsample 1e-4 -> sigma_max and sample back at 50 steps: close to the start."""
    up = karras(51, sigma_min=1e-4).flip(0)
    fn = SAMPLER_SPECS[name].fn
    back = fn(DATA, fn(DATA, X0, up), up.flip(0))
    tol = {"euler": 0.1, "euler_cfg_pp": 0.1, "ddim": 0.1, "gradient_estimation": 0.1, "gradient_estimation_cfg_pp": 0.1,
           "ipndm_v": 0.05}.get(name, 5e-3)
    assert rel(back, X0) < tol


@pytest.mark.parametrize("name", [*INVERTIBLE_SAMPLERS])
def test_float32_unsampler_sigmas_finite(name: str) -> None:
    """Production precision on the Unsampler's list (first sigma 1e-4, which broke ComfyUI's uni_pc)."""
    sigmas = unsampler_sigmas(20, torch.float32)
    if name == "ddim_inverse":
        sigmas = torch.cat([torch.zeros(1), sigmas[1:]])
    y = SAMPLER_SPECS[name].fn(DATA.denoise, X0.float(), sigmas)
    assert y.dtype == torch.float32 and bool(torch.isfinite(y).all())
    y64 = SAMPLER_SPECS[name].fn(DATA.denoise, X0, sigmas.double())
    # exp_heun_2_x0 and uni_pc_bh2 weight the second model value by ~e^|h|/|h| (~50, ~300) on the first
    # step (sigma x300), so float32 rounding of x - D at sigma 1e-4 grows to ~8e-4 (uni_pc_bh2). exp_heun_2_x0
    # also keeps ComfyUI's grouping e^{-h} x - (e^{-h} - 1) D, whose float32 rounding of e^{-h} x is not
    # cancelled: measured 1.6e-3 (3e-4 with D + e^{-h}(x - D)); that is ComfyUI's own float32 result.
    tol = {"exp_heun_2_x0": 3e-3, "uni_pc_bh2": 2e-3}.get(name, 1e-4)
    assert rel(y.double(), y64) < tol


# -- prefix consistency (one trajectory serves every end_at_step) ------------------------------------------------


def _trajectory(name: str, sigmas: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    states: list[torch.Tensor] = []
    x = noisy(float(sigmas[0])) if float(sigmas[0]) > 0 else X0
    noise = None if SAMPLER_SPECS[name].deterministic else seeded_noise(x, 7)
    out = SAMPLER_SPECS[name].fn(DATA, x, sigmas, callback=lambda step: states.append(step.x), noise=noise)
    return states, out


@pytest.mark.parametrize("direction", ["descending", "ascending"])
@pytest.mark.parametrize("name", SAMPLERS)
def test_prefix_consistent_claim(name: str, direction: str) -> None:
    spec = SAMPLER_SPECS[name]
    if not spec.deterministic and direction == "ascending":
        pytest.skip("stochastic samplers do not run upwards")
    sigmas = sampling_sigmas(8) if direction == "descending" else unsampler_sigmas(8)
    if name == "ddim_inverse":
        sigmas = unsampler_sigmas(8)
        if direction == "descending":
            pytest.skip("ddim_inverse only steps upwards")
    states, _ = _trajectory(name, sigmas)
    if name in OWN_STEPS:  # their steps are their own; not prefix-consistent by construction
        assert not spec.prefix_consistent
        return
    assert len(states) == len(sigmas) - 1
    agree = []
    for k in range(2, len(sigmas) - 1):
        _, out = _trajectory(name, sigmas[: k + 1])
        agree.append(torch.allclose(out, states[k], rtol=1e-12, atol=1e-12))
    if spec.prefix_consistent:
        assert all(agree)
    else:
        assert not all(agree)


def test_unipc_order_schedule() -> None:
    """ComfyUI's schedule: order min(3, N - 1), warm-up k, lower_order_final, no corrector on the last step."""
    assert unipc_orders(2) == [(1, True), (1, False)]
    assert unipc_orders(3) == [(1, True), (2, True), (1, False)]
    assert unipc_orders(6) == [(1, True), (2, True), (3, True), (3, True), (2, True), (1, False)]


# -- uni_pc against diffusers, ddim_inverse against diffusers ------------------------------------------------------


def _eps_model(sigma_of_t):
    """A diffusers-style eps network for DATA: eps(x_vp, t) from the VE denoiser at sigma(t)."""
    def unet(sample: torch.Tensor, t) -> torch.Tensor:
        s = float(sigma_of_t(t))
        x = sample * math.sqrt(1 + s**2)
        return (x - DATA.denoise(x, s)) / s
    return unet


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
def test_uni_pc_matches_diffusers(variant: str) -> None:
    from diffusers import UniPCMultistepScheduler

    sched = UniPCMultistepScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                    solver_order=3, predict_x0=True, solver_type=variant, lower_order_final=True,
                                    final_sigmas_type="sigma_min")
    sched.set_timesteps(12)
    sigmas = sched.sigmas.double()  # descending, last = sigma_min (no 0, so ComfyUI's 0 -> 0.001 does not apply)
    by_t = {int(t): float(s) for t, s in zip(sched.timesteps, sigmas[:-1])}
    unet = _eps_model(lambda t: by_t[int(t)])
    x_ve = noisy(float(sigmas[0]))
    sample = x_ve / math.sqrt(1 + float(sigmas[0]) ** 2)
    for t in sched.timesteps:
        sample = sched.step(unet(sample, t), t, sample).prev_sample
    expected = sample * math.sqrt(1 + float(sigmas[-1]) ** 2)
    got = SAMPLER_SPECS["uni_pc" if variant == "bh1" else "uni_pc_bh2"].fn(DATA, x_ve, sigmas)
    assert rel(got, expected) < 1e-5


def _unipc_vp_reference(x_ve: torch.Tensor, sigmas: torch.Tensor, variant: str) -> torch.Tensor:
    """ComfyUI's formulation, re-derived independently: VP state, alpha/std/lambda from
    log(alpha) = -log(1 + sigma^2) / 2, data prediction through eps, final division by alpha."""
    ts = sigmas.clone().to(x_ve.dtype)
    if float(ts[-1]) == 0:
        ts[-1] = 1e-3
    log_alpha = 0.5 * torch.log(1 / (ts * ts + 1))
    alpha, std = log_alpha.exp(), torch.sqrt(1 - torch.exp(2 * log_alpha))
    lam = log_alpha - 0.5 * torch.log(1 - torch.exp(2 * log_alpha))

    def data_pred(x_vp: torch.Tensor, i: int) -> torch.Tensor:
        x = x_vp * torch.sqrt(ts[i] ** 2 + 1)
        eps = (x - DATA.denoise(x, ts[i])) / ts[i]
        return (x_vp - std[i] * eps) / alpha[i]

    n = len(ts) - 1
    p = min(3, n - 1)
    x = x_ve / torch.sqrt(1 + ts[0] ** 2)
    hist = [(0, data_pred(x, 0))]
    for k in range(1, n + 1):
        order = k if k < p else min(p, n + 1 - k)
        i0, m0 = hist[-1]
        h = lam[k] - lam[i0]
        rk = [((lam[hist[-1 - j][0]] - lam[i0]) / h) for j in range(1, order)]
        d1 = [(hist[-1 - j][1] - m0) / rk[j - 1] for j in range(1, order)]
        hh = -h
        bh = hh if variant == "bh1" else torch.expm1(hh)
        phis, f, hp = [], 1, torch.expm1(hh) / hh - 1
        for i in range(1, order + 1):
            phis.append(hp * f / bh)
            f *= i + 1
            hp = hp / hh - 1 / f
        nodes = [*rk, torch.ones((), dtype=ts.dtype)]
        R = torch.stack([torch.stack([r ** (i - 1) for r in nodes]) for i in range(1, order + 1)])
        b = torch.stack(phis)
        x_ = (std[k] / std[i0]) * x - alpha[k] * torch.expm1(hh) * m0
        pred = 0 if order == 1 else (0.5 * d1[0] if order == 2 else sum(c * d for c, d in zip(torch.linalg.solve(R[:-1, :-1], b[:-1]), d1)))
        x_t = x_ - alpha[k] * bh * pred
        if k < n:
            m_t = data_pred(x_t, k)
            rc = torch.tensor([0.5], dtype=ts.dtype) if order == 1 else torch.linalg.solve(R, b)
            x = x_ - alpha[k] * bh * (sum((c * d for c, d in zip(rc[:-1], d1)), 0) + rc[-1] * (m_t - m0))
            hist = (hist + [(k, m_t)])[-p:]
        else:
            x = x_t
    return x / alpha[-1]


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("direction", ["descending", "ascending"])
def test_uni_pc_equals_vp_formulation(variant: str, direction: str) -> None:
    """The sigma-space rewrite is ComfyUI's VP algorithm where that is finite (float64); in float32 the VP
    form gives NaN on the Unsampler's first sigma 1e-4, ours does not."""
    name = "uni_pc" if variant == "bh1" else "uni_pc_bh2"
    sigmas = sampling_sigmas(9) if direction == "descending" else unsampler_sigmas(9)
    x = noisy(float(sigmas[0]))
    got = SAMPLER_SPECS[name].fn(DATA, x, sigmas)
    assert rel(got, _unipc_vp_reference(x, sigmas, variant)) < 1e-6
    if direction == "ascending":
        assert bool(torch.isnan(_unipc_vp_reference(x.float(), sigmas.float(), variant)).any())
        assert bool(torch.isfinite(SAMPLER_SPECS[name].fn(DATA, x.float(), sigmas.float())).all())


def test_ddim_inverse_matches_diffusers() -> None:
    from diffusers import DDIMInverseScheduler

    sched = DDIMInverseScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                 clip_sample=False, set_alpha_to_one=True, steps_offset=1)
    sched.set_timesteps(10)
    abar = sched.alphas_cumprod.double()
    table = ((1 - abar) / abar).sqrt()
    sched.alphas_cumprod = abar  # run the reference in float64 too
    unet = _eps_model(lambda t: table[int(t)])
    sample = X0.clone()
    for t in sched.timesteps:
        sample = sched.step(unet(sample, t), t, sample).prev_sample
    first = int(sched.timesteps[0]) - 1000 // 10
    sigma_start = 0.0 if first < 0 else float(table[first])  # set_alpha_to_one: abar = 1 before the first step
    sigmas = torch.tensor([sigma_start] + [float(table[int(t)]) for t in sched.timesteps], dtype=F64)
    got = SAMPLER_SPECS["ddim_inverse"].fn(DATA, X0 * math.sqrt(1 + sigma_start**2), sigmas)
    expected = sample * math.sqrt(1 + float(sigmas[-1]) ** 2)
    assert rel(got, expected) < 1e-12


# -- stochastic samplers ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", STOCHASTIC)
def test_stochastic_seeded(name: str) -> None:
    fn = SAMPLER_SPECS[name].fn
    sigmas = sampling_sigmas(6)
    x = X0 * 0 + float(sigmas[0]) * torch.randn(X0.shape, generator=torch.Generator().manual_seed(1), dtype=F64)
    a = fn(DATA, x, sigmas, noise=seeded_noise(x, 3))
    b = fn(DATA, x, sigmas, noise=seeded_noise(x, 3))
    c = fn(DATA, x, sigmas, noise=seeded_noise(x, 4))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    with pytest.raises(UnsamplingError, match="noise sampler"):
        fn(DATA, x, sigmas)


@pytest.mark.parametrize("name", STOCHASTIC)
def test_stochastic_denoises_to_the_data(name: str) -> None:
    """From pure noise at sigma_max, the samples' mean and std approach the data's."""
    n = 4000
    gen = torch.Generator().manual_seed(0)
    x = DATA.mean + torch.randn((n, 4), generator=gen, dtype=F64) * math.sqrt(1 + SIGMA_MAX**2)
    y = SAMPLER_SPECS[name].fn(DATA, x, sampling_sigmas(12), noise=seeded_noise(x, 5))
    assert torch.allclose(y.mean(0), DATA.mean, atol=0.1)
    ratio = y.std(0) / DATA.std  # few-step ancestral sampling under-disperses (lcm most: ~0.6)
    assert bool(((ratio > 0.5) & (ratio < 1.3)).all())


# -- CFG++ is a flag of its base loop --------------------------------------------------------------------------


@pytest.mark.parametrize("direction", ["descending", "ascending"])
@pytest.mark.parametrize("base", ["dpmpp_2s_ancestral", "res_multistep_ancestral", "gradient_estimation",
                                  "res_multistep"])
def test_cfg_pp_without_guidance_is_its_base_sampler(base: str, direction: str) -> None:
    """CFG++ changes only which estimate a step integrates. With no guidance (uncond == guided: a bare denoiser)
    each `_cfg_pp` variant is its base sampler: to the bit where the guidance is only added on (2S ancestral adds
    D - D_uncond = 0), to rounding where CFG++ writes the Euler part as D + sigma_next d instead of x + d dt."""
    spec, variant = SAMPLER_SPECS[base], SAMPLER_SPECS[f"{base}_cfg_pp"]
    if direction == "ascending" and not spec.deterministic:
        pytest.skip("stochastic samplers do not run upwards")
    sigmas = sampling_sigmas(8) if direction == "descending" else unsampler_sigmas(8)
    x = noisy(float(sigmas[0]))
    def run(fn):  # a fresh noise stream from the same seed for each run
        return fn(DATA, x, sigmas) if spec.deterministic else fn(DATA, x, sigmas, noise=seeded_noise(x, 3))

    ours, plain = run(variant.fn), run(spec.fn)
    if base == "dpmpp_2s_ancestral":
        assert torch.equal(ours, plain)
    else:
        assert rel(ours, plain) < 1e-12, rel(ours, plain)


# -- registry ----------------------------------------------------------------------------------------------------


def test_registry_order_and_flags() -> None:
    comfy_order = [n for n in COMFYUI_SAMPLERS if n in SAMPLERS]
    assert list(SAMPLERS[: len(comfy_order)]) == comfy_order and SAMPLERS[-1] == "ddim_inverse"
    assert set(INVERTIBLE_SAMPLERS) == {n for n in SAMPLERS if SAMPLER_SPECS[n].deterministic
                                        and SAMPLER_SPECS[n].runs_upwards and SAMPLER_SPECS[n].steps_follow_sigmas}
    assert {n for n in SAMPLERS if not SAMPLER_SPECS[n].runs_upwards} == {"heunpp2"}
    assert set(OWN_STEPS) == {"dpm_fast", "dpm_adaptive"}
    assert {n for n in SAMPLERS if SAMPLER_SPECS[n].families == {"vp"}} == {
        "ddpm", "res_multistep_ancestral", "res_multistep_ancestral_cfg_pp", "ddim_inverse"}
    assert {n for n in SAMPLERS if SAMPLER_SPECS[n].needs_uncond} == {n for n in SAMPLERS if "cfg_pp" in n}
    discard = {n for n in SAMPLERS if SAMPLER_SPECS[n].discard_penultimate_sigma}
    assert discard == {"dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"}
    for name in ("euler", "ddim", "heun", "dpm_2", "lms", "dpmpp_2m", "ipndm", "ipndm_v", "deis", "uni_pc",
                 "uni_pc_bh2", "res_multistep", "gradient_estimation"):
        assert name in INVERTIBLE_SAMPLERS
    for name in ("euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m_sde",
                 "dpmpp_3m_sde", "ddpm", "lcm"):
        assert name in STOCHASTIC


@pytest.mark.parametrize("name", ["euler_ancestral", "dpmpp_sde", "lcm"])
def test_unsample_refuses_stochastic(name: str) -> None:
    with pytest.raises(UnsamplingError, match="deterministic sampler instead: euler, euler_cfg_pp, heun"):
        get_sampler(name, invertible=True)
    assert get_sampler(name).name == name


def test_unknown_and_unimplemented_names() -> None:
    with pytest.raises(UnsamplingError, match="did you mean 'euler'"):
        get_sampler("eulr")
    assert NOT_IMPLEMENTED == ()  # every ComfyUI name is registered
    with pytest.raises(UnsamplingError, match="deterministic but cannot run backwards"):
        get_sampler("heunpp2", invertible=True)
    with pytest.raises(UnsamplingError, match="chooses its own steps"):
        get_sampler("dpm_fast", invertible=True)


def test_family_refusal() -> None:
    """A sampler without a form for the model family is refused, naming the samplers that have one."""
    with pytest.raises(UnsamplingError, match="no form for flow .* models.*Use one of euler, euler_cfg_pp"):
        get_sampler("ddpm", family="flow")
    with pytest.raises(UnsamplingError, match="no form for flow"):
        get_sampler("ddim_inverse", invertible=True, family="flow")
    assert get_sampler("ddpm", family="vp").name == "ddpm"
    assert get_sampler("euler_ancestral", family="flow").name == "euler_ancestral"


def test_evals_per_step() -> None:
    for name in ODE_SAMPLERS:
        calls = []

        def counting(x, sigma):
            calls.append(1)
            return DATA.denoise(x, sigma)

        SAMPLER_SPECS[name].fn(counting, noisy(1e-4), unsampler_sigmas(6))
        assert len(calls) == 6 * SAMPLER_SPECS[name].evals_per_step, name


def test_model_sampling_table_unipc_no_nan() -> None:
    """uni_pc unsampling on an SD sigma table's own schedule, float32: finite (ComfyUI gives NaN here)."""
    ms = ModelSampling.discrete()
    sigmas = torch.cat([ms.sigmas.flip(0)[:: 50], torch.zeros(1)])
    up = sigmas.flip(0) + 1e-4
    for name in ("uni_pc", "uni_pc_bh2"):
        y = SAMPLER_SPECS[name].fn(DATA.denoise, X0.float(), up)
        assert bool(torch.isfinite(y).all())


@pytest.mark.parametrize("tau", [0.0, 1.0])
def test_sa_solver_exponential_integrals_by_quadrature(tau: float) -> None:
    """SA-Solver's integration-by-parts matrix against scipy's quadrature of (1 + tau^2) int e^{c(x - t)} x^p dx."""
    from scipy import integrate

    from unsampling_lab.samplers.sa_solver import exponential_integrals

    s, t = torch.tensor(-1.3, dtype=F64), torch.tensor(0.4, dtype=F64)
    c = 1 + tau**2
    got = exponential_integrals(s, t, 4, tau)
    for p in range(4):
        expected = c * integrate.quad(lambda v: math.exp(c * (v - 0.4)) * v**p, -1.3, 0.4, epsabs=1e-13)[0]
        assert abs(float(got[p]) - expected) < 1e-10
