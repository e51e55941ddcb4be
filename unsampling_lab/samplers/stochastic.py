"""Stochastic samplers, for `resample` only: they inject fresh noise at every step, so they cannot invert.

ComfyUI's update rules for VP (eps / v) models, in sigma space. All randomness comes from the `noise`
argument (see `base.seeded_noise`); a run without it raises. Where ComfyUI draws from a Brownian tree
(dpmpp_sde, dpmpp_2m_sde, dpmpp_3m_sde) we draw the same standard normals from `noise`, so the
algorithms match and only the random stream differs. ComfyUI switches to rectified-flow variants of
the ancestral and SDE samplers for flow (CONST) models; these are the VP forms.
"""
from __future__ import annotations

import math

from torch import Tensor

from .base import Callback, Denoiser, NoiseSampler, denoise_at, report, require_noise, sigma_list, to_d


def ancestral_step(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """Split a step into a deterministic part down to sigma_down and fresh noise of std sigma_up, with
    sigma_down^2 + sigma_up^2 = sigma_next^2 and sigma_up = min(sigma_next, eta sigma_next sqrt(1 - sigma_next^2/sigma^2))."""
    if not eta:
        return sigma_next, 0.0
    sigma_up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    sigma_down = math.sqrt(sigma_next**2 - sigma_up**2)
    return sigma_down, sigma_up


def sample_euler_ancestral(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: Callback | None = None,
                           noise: NoiseSampler | None = None) -> Tensor:
    """Euler ancestral (Ho et al. 2020 in Karras et al.'s sigma form): Euler to sigma_down, then fresh noise."""
    noise = require_noise(noise, "euler_ancestral")
    s = sigma_list(sigmas)
    for i in range(len(s) - 1):
        denoised = denoise_at(model, x, s[i])
        sigma_down, sigma_up = ancestral_step(s[i], s[i + 1])
        report(callback, i, sigmas, x, denoised)
        if sigma_down == 0:
            x = denoised
        else:
            x = x + to_d(x, s[i], denoised) * (sigma_down - s[i])
            x = x + noise(sigmas[i], sigmas[i + 1]) * sigma_up
    return x


def sample_dpm_2_ancestral(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: Callback | None = None,
                           noise: NoiseSampler | None = None) -> Tensor:
    """DPM-Solver-2 to sigma_down, then fresh noise of std sigma_up (k-diffusion's ancestral DPM-2)."""
    noise = require_noise(noise, "dpm_2_ancestral")
    s = sigma_list(sigmas)
    for i in range(len(s) - 1):
        sigma = s[i]
        denoised = denoise_at(model, x, sigma)
        sigma_down, sigma_up = ancestral_step(sigma, s[i + 1])
        report(callback, i, sigmas, x, denoised)
        d = to_d(x, sigma, denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - sigma)
        else:
            sigma_mid = math.exp(0.5 * (math.log(sigma) + math.log(sigma_down)))
            x_mid = x + d * (sigma_mid - sigma)
            d_mid = to_d(x_mid, sigma_mid, denoise_at(model, x_mid, sigma_mid))
            x = x + d_mid * (sigma_down - sigma)
            x = x + noise(sigmas[i], sigmas[i + 1]) * sigma_up
    return x


def sample_dpmpp_2s_ancestral(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: Callback | None = None,
                              noise: NoiseSampler | None = None) -> Tensor:
    """DPM-Solver++(2S) (Lu et al. 2022b) to sigma_down with a log-midpoint stage, then fresh noise."""
    noise = require_noise(noise, "dpmpp_2s_ancestral")
    s = sigma_list(sigmas)
    for i in range(len(s) - 1):
        sigma = s[i]
        denoised = denoise_at(model, x, sigma)
        sigma_down, sigma_up = ancestral_step(sigma, s[i + 1])
        report(callback, i, sigmas, x, denoised)
        if sigma_down == 0:
            x = x + to_d(x, sigma, denoised) * (sigma_down - sigma)
        else:
            h = math.log(sigma / sigma_down)
            sigma_mid = sigma * math.exp(-h / 2)
            x_mid = (sigma_mid / sigma) * x - math.expm1(-h / 2) * denoised
            denoised_mid = denoise_at(model, x_mid, sigma_mid)
            x = (sigma_down / sigma) * x - math.expm1(-h) * denoised_mid
        if s[i + 1] > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * sigma_up
    return x


def sample_dpmpp_sde(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: Callback | None = None,
                     noise: NoiseSampler | None = None, eta: float = 1.0, r: float = 0.5) -> Tensor:
    """DPM-Solver++ SDE (Lu et al. 2022b; k-diffusion): two ancestral exponential stages per step, at lambda + r h and lambda + h."""
    noise = require_noise(noise, "dpmpp_sde")
    s = sigma_list(sigmas)
    for i in range(len(s) - 1):
        sigma, sigma_next = s[i], s[i + 1]
        denoised = denoise_at(model, x, sigma)
        report(callback, i, sigmas, x, denoised)
        if sigma_next == 0:
            x = denoised
            continue
        h = math.log(sigma / sigma_next)
        sigma_s1 = sigma * math.exp(-r * h)
        # stage 1: to sigma_s1 through its ancestral sigma_down, then noise
        sd, su = ancestral_step(sigma, sigma_s1, eta)
        h_ = math.log(sigma / sd)
        x_2 = math.exp(-h_) * x - math.expm1(-h_) * denoised
        if eta > 0:
            x_2 = x_2 + noise(sigmas[i], sigmas.new_tensor(sigma_s1)) * su
        denoised_2 = denoise_at(model, x_2, sigma_s1)
        # stage 2: the whole step with the blended estimate
        sd, su = ancestral_step(sigma, sigma_next, eta)
        h_ = math.log(sigma / sd)
        fac = 1 / (2 * r)
        denoised_d = (1 - fac) * denoised + fac * denoised_2
        x = math.exp(-h_) * x - math.expm1(-h_) * denoised_d
        if eta > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * su
    return x


def _dpmpp_multistep_sde(model: Denoiser, x: Tensor, sigmas: Tensor, callback: Callback | None,
                         noise: NoiseSampler, *, third_order: bool, eta: float = 1.0) -> Tensor:
    """DPM-Solver++(2M/3M) SDE with the midpoint correction (Lu et al. 2022b; k-diffusion / ComfyUI)."""
    s = sigma_list(sigmas)
    denoised_1 = denoised_2 = None
    h_1 = h_2 = None
    h = None
    for i in range(len(s) - 1):
        sigma, sigma_next = s[i], s[i + 1]
        denoised = denoise_at(model, x, sigma)
        report(callback, i, sigmas, x, denoised)
        if sigma_next == 0:
            x = denoised
        else:
            h = math.log(sigma / sigma_next)
            h_eta = h * (eta + 1)
            x = (sigma_next / sigma) * math.exp(-h * eta) * x - math.expm1(-h_eta) * denoised
            if third_order and h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = math.expm1(-h_eta) / h_eta + 1
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * d1 - phi_3 * d2
            elif third_order and h_1 is not None:
                phi_2 = math.expm1(-h_eta) / h_eta + 1
                x = x + phi_2 * (denoised - denoised_1) / (h_1 / h)
            elif not third_order and denoised_1 is not None:
                # midpoint: + (1/2) (1 - e^{-h_eta}) (D - D_prev) / r
                x = x + 0.5 * (-math.expm1(-h_eta)) * (h / h_1) * (denoised - denoised_1)
            if eta > 0:
                x = x + noise(sigmas[i], sigmas[i + 1]) * sigma_next * math.sqrt(-math.expm1(-2 * h * eta))
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x


def sample_dpmpp_2m_sde(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: Callback | None = None,
                        noise: NoiseSampler | None = None) -> Tensor:
    """DPM-Solver++(2M) SDE, midpoint variant (Lu et al. 2022b), eta 1."""
    return _dpmpp_multistep_sde(model, x, sigmas, callback, require_noise(noise, "dpmpp_2m_sde"), third_order=False)


def sample_dpmpp_3m_sde(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: Callback | None = None,
                        noise: NoiseSampler | None = None) -> Tensor:
    """DPM-Solver++(3M) SDE (k-diffusion's third-order multistep extension), eta 1."""
    return _dpmpp_multistep_sde(model, x, sigmas, callback, require_noise(noise, "dpmpp_3m_sde"), third_order=True)


def sample_ddpm(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: Callback | None = None,
                noise: NoiseSampler | None = None) -> Tensor:
    """DDPM ancestral sampling (Ho et al. 2020, Algorithm 2) between the VP levels abar = 1 / (1 + sigma^2)."""
    noise = require_noise(noise, "ddpm")
    s = sigma_list(sigmas)
    for i in range(len(s) - 1):
        sigma, sigma_next = s[i], s[i + 1]
        denoised = denoise_at(model, x, sigma)
        report(callback, i, sigmas, x, denoised)
        eps = to_d(x, sigma, denoised)
        abar, abar_next = 1 / (sigma**2 + 1), 1 / (sigma_next**2 + 1)
        alpha = abar / abar_next
        # mu = (x_vp - (1 - alpha) eps / sqrt(1 - abar)) / sqrt(alpha), x_vp = x sqrt(abar)
        x_vp = x / math.sqrt(1 + sigma**2)
        mu = (x_vp - (1 - alpha) * eps / math.sqrt(1 - abar)) / math.sqrt(alpha)
        if sigma_next > 0:
            mu = mu + math.sqrt((1 - alpha) * (1 - abar_next) / (1 - abar)) * noise(sigmas[i], sigmas[i + 1])
            x = mu * math.sqrt(1 + sigma_next**2)
        else:
            x = mu
    return x


def sample_lcm(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: Callback | None = None,
               noise: NoiseSampler | None = None) -> Tensor:
    """Latent consistency sampling (Luo et al. 2023): jump to the denoised estimate, renoise to sigma_next."""
    noise = require_noise(noise, "lcm")
    s = sigma_list(sigmas)
    for i in range(len(s) - 1):
        denoised = denoise_at(model, x, s[i])
        report(callback, i, sigmas, x, denoised)
        x = denoised
        if s[i + 1] > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * s[i + 1]
    return x
