"""Stochastic samplers, for `resample` only: they inject fresh noise at every step, so they cannot invert.

ComfyUI's update rules (comfy/k_diffusion/sampling.py), with ComfyUI's arithmetic: 0-d tensors
`sigmas[i]` in the sigmas' dtype, in ComfyUI's order, so that from the same noise the result is
ComfyUI's bit for bit. Two model families (`base.family_of`, read off `model.model_sampling`):

- VP (eps / v): k-diffusion's VE forms, lambda = -log sigma.
- flow (CONST): the ancestral samplers take ComfyUI's rectified-flow step (`_rf_ancestral_step`:
  a DDIM step to sigma_down = sigma_next^2 / sigma, rescaled by (1 - sigma_next) / (1 - sigma_down),
  then noise); the SDE and SEEDS samplers are written in half-logSNR lambda = log((1 - sigma) / sigma)
  and start at `percent_to_sigma(1e-4)` instead of sigma 1 (`base.offset_first_sigma`).
  `ddpm` has VP arithmetic only (ComfyUI runs it on flow models anyway, and draws the wrong
  distribution); its spec refuses flow models.

Randomness comes from `noise` only: a `NoiseSeed` gives ComfyUI's streams (per-step Gaussians from a
generator seeded with the noise seed for the ancestral samplers, a torchsde Brownian tree for the
SDE samplers), or any `NoiseSampler` callable. A run without it raises.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from .base import (Callback, Denoiser, NoiseSampler, NoiseSeed, _rf_ancestral_step, _rf_midpoint, ancestral_step,
                   brownian_noise, denoise_at, denoise_pair, family_of, gaussian_noise, half_log_snr,
                   half_log_snr_to_sigma, model_sampling_of, offset_first_sigma, report, to_d)

Noise = NoiseSampler | NoiseSeed | None


# -- ancestral samplers ---------------------------------------------------------------------------------


def sample_euler_ancestral(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: Callback | None = None,
                           noise: Noise = None, eta: float = 1.0, s_noise: float = 1.0) -> Tensor:
    """Euler ancestral (Karras et al. 2022's sigma form of DDPM sampling): Euler to sigma_down, then fresh noise.
    Flow models: ComfyUI's `sample_euler_ancestral_RF`."""
    noise_fn = gaussian_noise(noise, x, "euler_ancestral")
    flow = family_of(model) == "flow"
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise_at(model, x, sigma)
        report(callback, i, sigmas, x, denoised)
        if flow:
            if sigma_next == 0:
                x = denoised
                continue
            sigma_down, alpha_next, alpha_down, renoise = _rf_ancestral_step(sigma, sigma_next, eta)
            ratio = sigma_down / sigma
            x = ratio * x + (1 - ratio) * denoised  # DDIM step to sigma_down
            if eta > 0:
                x = (alpha_next / alpha_down) * x + noise_fn(sigma, sigma_next) * s_noise * renoise
            continue
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        if sigma_down == 0:
            x = denoised
        else:
            x = x + to_d(x, sigma, denoised) * (sigma_down - sigma) + noise_fn(sigma, sigma_next) * s_noise * sigma_up
    return x


def sample_dpm_2_ancestral(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: Callback | None = None,
                           noise: Noise = None, eta: float = 1.0, s_noise: float = 1.0) -> Tensor:
    """DPM-Solver-2 (log-midpoint slope) to sigma_down, then fresh noise (k-diffusion's ancestral DPM-2).
    Flow models: ComfyUI's `sample_dpm_2_ancestral_RF` (the RF split of `_rf_ancestral_step`)."""
    noise_fn = gaussian_noise(noise, x, "dpm_2_ancestral")
    flow = family_of(model) == "flow"
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise_at(model, x, sigma)
        if flow:
            sigma_down, alpha_next, alpha_down, renoise = _rf_ancestral_step(sigma, sigma_next, eta)
        else:
            sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        report(callback, i, sigmas, x, denoised)
        d = to_d(x, sigma, denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - sigma)
            continue
        sigma_mid = sigma.log().lerp(sigma_down.log(), 0.5).exp()
        x_2 = x + d * (sigma_mid - sigma)
        d_2 = to_d(x_2, sigma_mid, denoise_at(model, x_2, sigma_mid))
        x = x + d_2 * (sigma_down - sigma)
        if flow:
            x = (alpha_next / alpha_down) * x + noise_fn(sigma, sigma_next) * s_noise * renoise
        else:
            x = x + noise_fn(sigma, sigma_next) * s_noise * sigma_up
    return x


def dpmpp_2s_ancestral(model: Denoiser, x: Tensor, sigmas: Tensor, callback: Callback | None, noise: Noise, *,
                       cfg_pp: bool, name: str, eta: float = 1.0, s_noise: float = 1.0) -> Tensor:
    """DPM-Solver++(2S) (Lu et al. 2022b) to sigma_down with a midpoint stage in lambda, then fresh noise, as
    ComfyUI's `sample_dpmpp_2s_ancestral`; flow models: its `_RF` form (lambda = log((1 - sigma) / sigma), RF split).

    With `cfg_pp` (CFG++, ComfyUI's `sample_dpmpp_2s_ancestral_cfg_pp` and `_RF_cfg_pp`): both stages integrate
    the uncond estimate (the midpoint call only refreshes it), and the guidance D_cfg - D_uncond of the step's
    first call is added after the noise, times alpha_next (1 VP, 1 - sigma_next flow). That is ComfyUI since its
    PR 14814; before it (the temp[0] form) the stages integrated x + D_cfg - D_uncond with D_cfg and the
    midpoint's D_cfg, with no flow form.
    """
    noise_fn = gaussian_noise(noise, x, name)
    flow = family_of(model) == "flow"
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised, estimate = denoise_pair(model, x, sigma, cfg_pp=cfg_pp)
        if flow:
            sigma_down, alpha_next, alpha_down, renoise = _rf_ancestral_step(sigma, sigma_next, eta)
        else:
            sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        report(callback, i, sigmas, x, denoised)
        if (sigma_next == 0) if flow else (sigma_down == 0):
            x = x + to_d(x, sigma, estimate) * (sigma_down - sigma)
        elif flow:
            sigma_s = _rf_midpoint(sigma, sigma_down)
            ratio = sigma_s / sigma
            _, estimate_2 = denoise_pair(model, ratio * x + (1 - ratio) * estimate, sigma_s, cfg_pp=cfg_pp)
            ratio = sigma_down / sigma
            x = ratio * x + (1 - ratio) * estimate_2
        else:
            t, t_next = sigma.log().neg(), sigma_down.log().neg()
            h = t_next - t
            s = t + 0.5 * h
            x_2 = (s.neg().exp() / t.neg().exp()) * x - (-h * 0.5).expm1() * estimate
            _, estimate_2 = denoise_pair(model, x_2, s.neg().exp(), cfg_pp=cfg_pp)
            x = (t_next.neg().exp() / t.neg().exp()) * x - (-h).expm1() * estimate_2
        if flow:
            if sigma_next > 0 and eta > 0:
                x = (alpha_next / alpha_down) * x + noise_fn(sigma, sigma_next) * s_noise * renoise
        elif sigma_next > 0:
            x = x + noise_fn(sigma, sigma_next) * s_noise * sigma_up
        if cfg_pp:
            x = x + ((1 - sigma_next) * (denoised - estimate) if flow else denoised - estimate)
    return x


def sample_dpmpp_2s_ancestral(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: Callback | None = None,
                              noise: Noise = None, eta: float = 1.0, s_noise: float = 1.0) -> Tensor:
    """DPM-Solver++(2S) ancestral."""
    return dpmpp_2s_ancestral(model, x, sigmas, callback, noise, cfg_pp=False, name="dpmpp_2s_ancestral", eta=eta,
                              s_noise=s_noise)


def sample_dpmpp_2s_ancestral_cfg_pp(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: Callback | None = None,
                                     noise: Noise = None, eta: float = 1.0, s_noise: float = 1.0) -> Tensor:
    """DPM-Solver++(2S) ancestral with CFG++ (Chung et al. 2024)."""
    return dpmpp_2s_ancestral(model, x, sigmas, callback, noise, cfg_pp=True, name="dpmpp_2s_ancestral_cfg_pp",
                              eta=eta, s_noise=s_noise)


# -- SDE samplers (Brownian tree noise), half-logSNR form ------------------------------------------------------


def _sde_setup(model: Denoiser, x: Tensor, sigmas: Tensor, noise: Noise, name: str, cpu: bool):  # type: ignore[no-untyped-def]
    """The Brownian noise over the run's sigmas, then the sigmas offset for a flow model's logSNR, and the family."""
    noise_fn = brownian_noise(noise, x, sigmas, name, cpu=cpu)
    return noise_fn, offset_first_sigma(model, sigmas), family_of(model)


def sample_dpmpp_sde(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: Callback | None = None,
                     noise: Noise = None, eta: float = 1.0, s_noise: float = 1.0, r: float = 0.5,
                     cpu_noise: bool = True) -> Tensor:
    """DPM-Solver++ SDE (Lu et al. 2022b; k-diffusion): two ancestral exponential stages per step, at lambda + r h
    and lambda + h, in half-logSNR lambda (alpha_t = sigma_t e^lambda_t: 1 for VP, 1 - sigma for flow)."""
    if len(sigmas) <= 1:
        return x
    noise_fn, sigmas, family = _sde_setup(model, x, sigmas, noise, "dpmpp_sde", cpu_noise)
    fac = 1 / (2 * r)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise_at(model, x, sigma)
        report(callback, i, sigmas, x, denoised)
        if sigma_next == 0:
            x = denoised
            continue
        lambda_s, lambda_t = half_log_snr(sigma, family), half_log_snr(sigma_next, family)
        h = lambda_t - lambda_s
        lambda_s_1 = lambda_s + r * h
        sigma_s_1 = half_log_snr_to_sigma(lambda_s_1, family)
        alpha_s = sigma * lambda_s.exp()
        alpha_s_1 = sigma_s_1 * lambda_s_1.exp()
        alpha_t = sigma_next * lambda_t.exp()
        # stage 1: to lambda_s_1 through its ancestral sigma_down (in the VE sigma e^-lambda), then noise
        sd, su = ancestral_step(lambda_s.neg().exp(), lambda_s_1.neg().exp(), eta)
        h_ = sd.log().neg() - lambda_s
        x_2 = (alpha_s_1 / alpha_s) * (-h_).exp() * x - alpha_s_1 * (-h_).expm1() * denoised
        if eta > 0 and s_noise > 0:
            x_2 = x_2 + alpha_s_1 * noise_fn(sigma, sigma_s_1) * s_noise * su
        denoised_2 = denoise_at(model, x_2, sigma_s_1)
        # stage 2: the whole step with the blended estimate
        sd, su = ancestral_step(lambda_s.neg().exp(), lambda_t.neg().exp(), eta)
        h_ = sd.log().neg() - lambda_s
        denoised_d = (1 - fac) * denoised + fac * denoised_2
        x = (alpha_t / alpha_s) * (-h_).exp() * x - alpha_t * (-h_).expm1() * denoised_d
        if eta > 0 and s_noise > 0:
            x = x + alpha_t * noise_fn(sigma, sigma_next) * s_noise * su
    return x


def sample_dpmpp_sde_gpu(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: Callback | None = None,
                         noise: Noise = None) -> Tensor:
    """dpmpp_sde with the Brownian tree on x's device (ComfyUI's `_gpu` form; the same on a CPU run)."""
    return sample_dpmpp_sde(model, x, sigmas, callback=callback, noise=noise, cpu_noise=False)


SolverType = Literal["midpoint", "heun"]


def _dpmpp_multistep_sde(model: Denoiser, x: Tensor, sigmas: Tensor, callback: Callback | None, noise: Noise, *,
                         name: str, third_order: bool, solver_type: SolverType = "midpoint", eta: float = 1.0,
                         s_noise: float = 1.0, cpu_noise: bool = True) -> Tensor:
    """DPM-Solver++(2M) SDE (midpoint or heun correction) and (3M) SDE (Lu et al. 2022b; k-diffusion / ComfyUI),
    in half-logSNR: x_t = (sigma_t / sigma_s) e^{-eta h} x + alpha_t (1 - e^{-(1 + eta) h}) D + corrections
    + sigma_t sqrt(1 - e^{-2 eta h}) n."""
    if len(sigmas) <= 1:
        return x
    noise_fn, sigmas, family = _sde_setup(model, x, sigmas, noise, name, cpu_noise)
    denoised_1 = denoised_2 = None
    h = h_1 = h_2 = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise_at(model, x, sigma)
        report(callback, i, sigmas, x, denoised)
        if sigma_next == 0:
            x = denoised
        else:
            lambda_s, lambda_t = half_log_snr(sigma, family), half_log_snr(sigma_next, family)
            h = lambda_t - lambda_s
            h_eta = h * (eta + 1)
            alpha_t = sigma_next * lambda_t.exp()
            x = sigma_next / sigma * (-h * eta).exp() * x + alpha_t * (-h_eta).expm1().neg() * denoised
            if third_order and h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                phi_3 = phi_2 / h_eta - 0.5
                x = x + (alpha_t * phi_2) * d1 - (alpha_t * phi_3) * d2
            elif third_order and h_1 is not None:
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                x = x + (alpha_t * phi_2) * ((denoised - denoised_1) / (h_1 / h))
            elif not third_order and denoised_1 is not None:
                r = h_1 / h
                if solver_type == "heun":
                    x = x + alpha_t * ((-h_eta).expm1().neg() / (-h_eta) + 1) * (1 / r) * (denoised - denoised_1)
                else:
                    x = x + 0.5 * alpha_t * (-h_eta).expm1().neg() * (1 / r) * (denoised - denoised_1)
            if eta > 0 and s_noise > 0:
                x = x + noise_fn(sigma, sigma_next) * sigma_next * (-2 * h * eta).expm1().neg().sqrt() * s_noise
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x


def sample_dpmpp_2m_sde(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: Callback | None = None,
                        noise: Noise = None) -> Tensor:
    """DPM-Solver++(2M) SDE, midpoint correction (Lu et al. 2022b), eta 1, Brownian noise on the CPU."""
    return _dpmpp_multistep_sde(model, x, sigmas, callback, noise, name="dpmpp_2m_sde", third_order=False)


def sample_dpmpp_2m_sde_gpu(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: Callback | None = None,
                            noise: Noise = None) -> Tensor:
    """dpmpp_2m_sde with the Brownian tree on x's device."""
    return _dpmpp_multistep_sde(model, x, sigmas, callback, noise, name="dpmpp_2m_sde_gpu", third_order=False,
                                cpu_noise=False)


def sample_dpmpp_2m_sde_heun(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: Callback | None = None,
                             noise: Noise = None) -> Tensor:
    """DPM-Solver++(2M) SDE with the Heun correction alpha_t (phi_1(-h_eta) ... + 1) (D - D_prev) / r, eta 1."""
    return _dpmpp_multistep_sde(model, x, sigmas, callback, noise, name="dpmpp_2m_sde_heun", third_order=False,
                                solver_type="heun")


def sample_dpmpp_2m_sde_heun_gpu(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: Callback | None = None,
                                 noise: Noise = None) -> Tensor:
    """dpmpp_2m_sde_heun with the Brownian tree on x's device."""
    return _dpmpp_multistep_sde(model, x, sigmas, callback, noise, name="dpmpp_2m_sde_heun_gpu", third_order=False,
                                solver_type="heun", cpu_noise=False)


def sample_dpmpp_3m_sde(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: Callback | None = None,
                        noise: Noise = None) -> Tensor:
    """DPM-Solver++(3M) SDE (k-diffusion's third-order multistep extension), eta 1, Brownian noise on the CPU."""
    return _dpmpp_multistep_sde(model, x, sigmas, callback, noise, name="dpmpp_3m_sde", third_order=True)


def sample_dpmpp_3m_sde_gpu(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: Callback | None = None,
                            noise: Noise = None) -> Tensor:
    """dpmpp_3m_sde with the Brownian tree on x's device."""
    return _dpmpp_multistep_sde(model, x, sigmas, callback, noise, name="dpmpp_3m_sde_gpu", third_order=True,
                                cpu_noise=False)


# -- DDPM, LCM -----------------------------------------------------------------------------------------------


def sample_ddpm(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: Callback | None = None,
                noise: Noise = None) -> Tensor:
    """DDPM ancestral sampling (Ho et al. 2020, Algorithm 2) between the VP levels abar = 1 / (1 + sigma^2),
    as ComfyUI's `generic_step_sampler` + `DDPMSampler_step` (VP models only)."""
    noise_fn = gaussian_noise(noise, x, "ddpm")
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise_at(model, x, sigma)
        report(callback, i, sigmas, x, denoised)
        x_vp, eps = x / torch.sqrt(1.0 + sigma**2.0), (x - denoised) / sigma
        abar, abar_next = 1 / ((sigma * sigma) + 1), 1 / ((sigma_next * sigma_next) + 1)
        alpha = abar / abar_next
        # mu = (x_vp - (1 - alpha) eps / sqrt(1 - abar)) / sqrt(alpha), plus the posterior std times fresh noise
        x = (1.0 / alpha).sqrt() * (x_vp - (1 - alpha) * eps / (1 - abar).sqrt())
        if sigma_next > 0:
            x = x + ((1 - alpha) * (1.0 - abar_next) / (1.0 - abar)).sqrt() * noise_fn(sigma, sigma_next)
        if sigma_next != 0:
            x = x * torch.sqrt(1.0 + sigma_next**2.0)
    return x


def sample_lcm(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: Callback | None = None,
               noise: Noise = None) -> Tensor:
    """Latent consistency sampling (Luo et al. 2023): jump to the denoised estimate, renoise it to sigma_next with
    the model's `noise_scaling` (VP: D + sigma n; flow: (1 - sigma) D + sigma n), as ComfyUI does."""
    noise_fn = gaussian_noise(noise, x, "lcm")
    ms = model_sampling_of(model)
    for i in range(len(sigmas) - 1):
        denoised = denoise_at(model, x, sigmas[i])
        report(callback, i, sigmas, x, denoised)
        x = denoised
        if sigmas[i + 1] > 0:
            n = noise_fn(sigmas[i], sigmas[i + 1])
            x = n * sigmas[i + 1] + x if ms is None else ms.noise_scaling(sigmas[i + 1], n, x)
    return x


# -- SEEDS (Gonzalez et al. 2023) and the ER-SDE solver (Cui et al. 2023) ------------------------------------------


def seeds_2(model: Denoiser, x: Tensor, sigmas: Tensor, callback: Callback | None, noise: Noise, *, name: str,
            eta: float = 1.0, s_noise: float = 1.0, r: float = 0.5,
            solver_type: Literal["phi_1", "phi_2"] = "phi_1") -> Tensor:
    """SEEDS-2 (Gonzalez et al. 2023, arXiv 2305.14267), data prediction in half-logSNR, as ComfyUI's `sample_seeds_2`:
    a stage at lambda_s + r h, then the step with phi_1 (lerp of D and D_2 by 1 / 2r) or phi_2 weights; the
    SDE noise of the stage is carried into the step (e^{(r - 1) eta h} times it, plus fresh noise). eta 0: an ODE
    solver (exp_heun_2_x0 is r = 1, phi_2)."""
    inject = eta > 0 and s_noise > 0
    noise_fn = gaussian_noise(noise, x, name) if inject else None
    sigmas, family = offset_first_sigma(model, sigmas), family_of(model)
    fac = 1 / (2 * r)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise_at(model, x, sigma)
        report(callback, i, sigmas, x, denoised)
        if sigma_next == 0:
            x = denoised
            continue
        lambda_s, lambda_t = half_log_snr(sigma, family), half_log_snr(sigma_next, family)
        h = lambda_t - lambda_s
        h_eta = h * (eta + 1)
        lambda_s_1 = torch.lerp(lambda_s, lambda_t, r)
        sigma_s_1 = half_log_snr_to_sigma(lambda_s_1, family)
        alpha_s_1 = sigma_s_1 * lambda_s_1.exp()
        alpha_t = sigma_next * lambda_t.exp()
        if alpha_t == 0:  # flow step into sigma 1 (unsampling): alpha_t e^{-h} -> sigma_t alpha_s / sigma_s
            x = sigma_next / sigma * x - sigma_next * (sigma * lambda_s.exp()) / sigma * denoised
            continue
        x_2 = sigma_s_1 / sigma * (-r * h * eta).exp() * x - alpha_s_1 * torch.expm1(-r * h_eta) * denoised
        if inject:
            sde_noise = (-2 * r * h * eta).expm1().neg().sqrt() * noise_fn(sigma, sigma_s_1)
            x_2 = x_2 + sde_noise * sigma_s_1 * s_noise
        denoised_2 = denoise_at(model, x_2, sigma_s_1)
        if solver_type == "phi_1":
            x = sigma_next / sigma * (-h * eta).exp() * x - alpha_t * torch.expm1(-h_eta) * torch.lerp(denoised, denoised_2, fac)
        else:
            b2 = (torch.expm1(-h_eta) - (-h_eta)) / (-h_eta) / r  # h phi_2(-h) / r
            b1 = torch.expm1(-h_eta) - b2
            x = sigma_next / sigma * (-h * eta).exp() * x - alpha_t * (b1 * denoised + b2 * denoised_2)
        if inject:
            segment = (r - 1) * h * eta
            sde_noise = sde_noise * segment.exp() + segment.mul(2).expm1().neg().sqrt() * noise_fn(sigma_s_1, sigma_next)
            x = x + sde_noise * sigma_next * s_noise
    return x


def sample_seeds_2(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: Callback | None = None,
                   noise: Noise = None) -> Tensor:
    """SEEDS-2 with ComfyUI's defaults: eta 1, r 1/2, phi_1."""
    return seeds_2(model, x, sigmas, callback, noise, name="seeds_2")


def sample_exp_heun_2_x0_sde(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: Callback | None = None,
                             noise: Noise = None) -> Tensor:
    """Stochastic exponential Heun in data prediction: SEEDS-2 with r 1, phi_2, eta 1."""
    return seeds_2(model, x, sigmas, callback, noise, name="exp_heun_2_x0_sde", r=1.0, solver_type="phi_2")


def sample_seeds_3(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: Callback | None = None,
                   noise: Noise = None, eta: float = 1.0, s_noise: float = 1.0, r_1: float = 1.0 / 3,
                   r_2: float = 2.0 / 3) -> Tensor:
    """SEEDS-3 (Gonzalez et al. 2023) as ComfyUI's `sample_seeds_3`: stages at lambda_s + r_1 h and + r_2 h, the step
    with phi_1 / phi_2 weights on D and D_3; the stage noise is carried forward as in `seeds_2`."""
    inject = eta > 0 and s_noise > 0
    noise_fn = gaussian_noise(noise, x, "seeds_3") if inject else None
    sigmas, family = offset_first_sigma(model, sigmas), family_of(model)

    def h_phi_2(t: Tensor) -> Tensor:
        return (torch.expm1(t) - t) / t

    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise_at(model, x, sigma)
        report(callback, i, sigmas, x, denoised)
        if sigma_next == 0:
            x = denoised
            continue
        lambda_s, lambda_t = half_log_snr(sigma, family), half_log_snr(sigma_next, family)
        h = lambda_t - lambda_s
        h_eta = h * (eta + 1)
        lambda_s_1, lambda_s_2 = torch.lerp(lambda_s, lambda_t, r_1), torch.lerp(lambda_s, lambda_t, r_2)
        sigma_s_1, sigma_s_2 = half_log_snr_to_sigma(lambda_s_1, family), half_log_snr_to_sigma(lambda_s_2, family)
        alpha_s_1, alpha_s_2 = sigma_s_1 * lambda_s_1.exp(), sigma_s_2 * lambda_s_2.exp()
        alpha_t = sigma_next * lambda_t.exp()
        x_2 = sigma_s_1 / sigma * (-r_1 * h * eta).exp() * x - alpha_s_1 * torch.expm1(-r_1 * h_eta) * denoised
        if inject:
            sde_noise = (-2 * r_1 * h * eta).expm1().neg().sqrt() * noise_fn(sigma, sigma_s_1)
            x_2 = x_2 + sde_noise * sigma_s_1 * s_noise
        denoised_2 = denoise_at(model, x_2, sigma_s_1)
        a3_2 = r_2 / r_1 * h_phi_2(-r_2 * h_eta)
        a3_1 = torch.expm1(-r_2 * h_eta) - a3_2
        x_3 = sigma_s_2 / sigma * (-r_2 * h * eta).exp() * x - alpha_s_2 * (a3_1 * denoised + a3_2 * denoised_2)
        if inject:
            segment = (r_1 - r_2) * h * eta
            sde_noise = sde_noise * segment.exp() + segment.mul(2).expm1().neg().sqrt() * noise_fn(sigma_s_1, sigma_s_2)
            x_3 = x_3 + sde_noise * sigma_s_2 * s_noise
        denoised_3 = denoise_at(model, x_3, sigma_s_2)
        b3 = h_phi_2(-h_eta) / r_2
        b1 = torch.expm1(-h_eta) - b3
        x = sigma_next / sigma * (-h * eta).exp() * x - alpha_t * (b1 * denoised + b3 * denoised_3)
        if inject:
            segment = (r_2 - 1) * h * eta
            sde_noise = sde_noise * segment.exp() + segment.mul(2).expm1().neg().sqrt() * noise_fn(sigma_s_2, sigma_next)
            x = x + sde_noise * sigma_next * s_noise
    return x


def sample_er_sde(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: Callback | None = None,
                  noise: Noise = None, s_noise: float = 1.0, max_stage: int = 3) -> Tensor:
    """ER-SDE-Solver-3 (Cui et al. 2023, arXiv 2309.06169) in ComfyUI's VP form: er_lambda = sigma_t / alpha_t,
    noise scaler f(l) = l (e^{l^0.3} + 10), stage-2/3 integrals by 200-point Riemann sums, as ComfyUI's `sample_er_sde`."""
    noise_fn = gaussian_noise(noise, x, "er_sde")
    sigmas, family = offset_first_sigma(model, sigmas), family_of(model)

    def scaler(v: Tensor) -> Tensor:
        return v * ((v**0.3).exp() + 10.0)

    n_points = 200.0
    points = torch.arange(0, n_points, dtype=torch.float32, device=x.device)
    er_lambdas = half_log_snr(sigmas, family).neg().exp()
    old_denoised = old_denoised_d = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise_at(model, x, sigma)
        report(callback, i, sigmas, x, denoised)
        stage = min(max_stage, i + 1)
        if sigma_next == 0:
            x = denoised
        else:
            er_s, er_t = er_lambdas[i], er_lambdas[i + 1]
            alpha_s, alpha_t = sigma / er_s, sigma_next / er_t
            r_alpha = alpha_t / alpha_s
            r = scaler(er_t) / scaler(er_s)
            x = r_alpha * r * x + alpha_t * (1 - r) * denoised  # stage 1: Euler
            if stage >= 2:
                dt = er_t - er_s
                step = -dt / n_points
                pos = er_t + points * step
                scaled = scaler(pos)
                s = torch.sum(1 / scaled) * step
                denoised_d = (denoised - old_denoised) / (er_s - er_lambdas[i - 1])
                x = x + alpha_t * (dt + s * scaler(er_t)) * denoised_d
                if stage >= 3:
                    s_u = torch.sum((pos - er_s) / scaled) * step
                    denoised_u = (denoised_d - old_denoised_d) / ((er_s - er_lambdas[i - 2]) / 2)
                    x = x + alpha_t * ((dt**2) / 2 + s_u * scaler(er_t)) * denoised_u
                old_denoised_d = denoised_d
            if s_noise > 0:
                x = x + alpha_t * noise_fn(sigma, sigma_next) * s_noise * (er_t**2 - er_s**2 * r**2).sqrt().nan_to_num(nan=0.0)
        old_denoised = denoised
    return x
