"""CFG++ samplers (Chung et al. 2024, arXiv 2406.08070), as ComfyUI has them.

CFG++ takes the step's direction from the *unconditional* estimate and only its landing point from the
guided one: an Euler step from x at sigma to sigma_next reads

    x_next = D_cfg + sigma_next * (x - D_uncond) / sigma        (plain Euler: D_cfg + sigma_next (x - D_cfg) / sigma)

Each sampler asks the denoiser for both estimates through `base.denoise_with_uncond` (the guided
denoiser's `with_uncond`; ComfyUI reads the uncond through a post-cfg hook and, like ours, evaluates
it even at cfg 1). Arithmetic is ComfyUI's (comfy/k_diffusion/sampling.py), in 0-d tensors.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .base import (Callback, Denoiser, NoiseSampler, NoiseSeed, denoise_with_uncond, family_of, gaussian_noise,
                   half_log_snr, report, to_d)
from .stochastic import _rf_ancestral_step, _rf_midpoint, ancestral_step

Noise = NoiseSampler | NoiseSeed | None


def _euler_ancestral_cfg_pp(model: Denoiser, x: Tensor, sigmas: Tensor, callback: Callback | None, noise: Noise, *,
                            eta: float, s_noise: float, name: str) -> Tensor:
    """ComfyUI's `sample_euler_ancestral_cfg_pp`, in half-logSNR so that alpha = sigma e^lambda is 1 (VP) or
    1 - sigma (flow): x_next = alpha_t D_cfg + sigma_down (x - alpha_s D_uncond) / sigma + alpha_t sigma_up n,
    with the ancestral split taken in the VE sigmas sigma / alpha. A flow step into sigma 1 (alpha_t = 0, where
    ComfyUI's 0 * inf is NaN) takes the limit x_next = sigma_next d."""
    inject = eta > 0 and s_noise > 0
    noise_fn = gaussian_noise(noise, x, name) if inject else None
    family = family_of(model)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised, uncond = denoise_with_uncond(model, x, sigma)
        report(callback, i, sigmas, x, denoised)
        if sigma_next == 0:
            x = denoised
            continue
        alpha_s = sigma * half_log_snr(sigma, family).exp()
        alpha_t = sigma_next * half_log_snr(sigma_next, family).exp()
        d = to_d(x, sigma, alpha_s * uncond)
        if alpha_t == 0:  # flow step into sigma 1 (unsampling): alpha_t (sigma_t / alpha_t) -> sigma_t, no data left
            x = sigma_next * d
            continue
        sigma_down, sigma_up = ancestral_step(sigma / alpha_s, sigma_next / alpha_t, eta)
        x = alpha_t * denoised + (alpha_t * sigma_down) * d
        if inject:
            x = x + alpha_t * noise_fn(sigma, sigma_next) * s_noise * sigma_up
    return x


def sample_euler_cfg_pp(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: Callback | None = None,
                        noise: Noise = None) -> Tensor:
    """Euler with CFG++ (ComfyUI: euler_ancestral_cfg_pp at eta 0, no noise)."""
    return _euler_ancestral_cfg_pp(model, x, sigmas, callback, None, eta=0.0, s_noise=0.0, name="euler_cfg_pp")


def sample_euler_ancestral_cfg_pp(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: Callback | None = None,
                                  noise: Noise = None) -> Tensor:
    """Euler ancestral with CFG++, eta 1."""
    return _euler_ancestral_cfg_pp(model, x, sigmas, callback, noise, eta=1.0, s_noise=1.0,
                                   name="euler_ancestral_cfg_pp")


def sample_dpmpp_2s_ancestral_cfg_pp(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: Callback | None = None,
                                     noise: Noise = None, eta: float = 1.0, s_noise: float = 1.0) -> Tensor:
    """DPM-Solver++(2S) ancestral with CFG++ (ComfyUI's `sample_dpmpp_2s_ancestral_cfg_pp` and its RF form): both
    stages integrate with the uncond estimate, and the guidance D_cfg - D_uncond of the step's first call is
    added at the end (times alpha_next = 1 - sigma_next on flow models). The midpoint call only refreshes
    the uncond."""
    noise_fn = gaussian_noise(noise, x, "dpmpp_2s_ancestral_cfg_pp")
    flow = family_of(model) == "flow"
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised, uncond = denoise_with_uncond(model, x, sigma)
        guidance = denoised - uncond
        if flow:
            sigma_down, alpha_next, alpha_down, renoise = _rf_ancestral_step(sigma, sigma_next, eta)
        else:
            sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        report(callback, i, sigmas, x, denoised)
        if (sigma_next == 0) if flow else (sigma_down == 0):
            x = x + to_d(x, sigma, uncond) * (sigma_down - sigma)
        elif flow:
            sigma_s = _rf_midpoint(sigma, sigma_down)
            ratio = sigma_s / sigma
            _, uncond_2 = denoise_with_uncond(model, ratio * x + (1 - ratio) * uncond, sigma_s)
            ratio = sigma_down / sigma
            x = ratio * x + (1 - ratio) * uncond_2
        else:
            t, t_next = sigma.log().neg(), sigma_down.log().neg()
            h = t_next - t
            s = t + 0.5 * h
            x_2 = (s.neg().exp() / t.neg().exp()) * x - (-h * 0.5).expm1() * uncond
            _, uncond_2 = denoise_with_uncond(model, x_2, s.neg().exp())
            x = (t_next.neg().exp() / t.neg().exp()) * x - (-h).expm1() * uncond_2
        if flow:
            if sigma_next > 0 and eta > 0:
                x = (alpha_next / alpha_down) * x + noise_fn(sigma, sigma_next) * s_noise * renoise
            x = x + (1 - sigma_next) * guidance
        else:
            if sigma_next > 0:
                x = x + noise_fn(sigma, sigma_next) * s_noise * sigma_up
            x = x + guidance
    return x


def sample_dpmpp_2m_cfg_pp(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: Callback | None = None,
                           noise: Noise = None) -> Tensor:
    """DPM-Solver++(2M) with CFG++ (ComfyUI's `sample_dpmpp_2m_cfg_pp`), lambda = -log sigma:
    x_next = D_cfg - e^{-h} D_uncond + e^{-h} x - (e^{-h} - 1) (D_cfg - D_uncond,prev) / 2r."""
    old_uncond: Tensor | None = None
    for i in range(len(sigmas) - 1):
        denoised, uncond = denoise_with_uncond(model, x, sigmas[i])
        report(callback, i, sigmas, x, denoised)
        t, t_next = sigmas[i].log().neg(), sigmas[i + 1].log().neg()
        h = t_next - t
        if old_uncond is None or sigmas[i + 1] == 0:
            mix = -torch.exp(-h) * uncond
        else:
            r = (t - sigmas[i - 1].log().neg()) / h  # h_last / h
            mix = -torch.exp(-h) * uncond - torch.expm1(-h) * (1 / (2 * r)) * (denoised - old_uncond)
        x = denoised + mix + torch.exp(-h) * x
        old_uncond = uncond
    return x


def sample_gradient_estimation_cfg_pp(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: Callback | None = None,
                                      noise: Noise = None, ge_gamma: float = 2.0) -> Tensor:
    """Gradient estimation (Permenter & Yuan 2024) with CFG++: the slope from the uncond estimate, the Euler
    step landing on D_cfg + sigma_next d, then the extrapolation (gamma - 1)(d - d_prev) dt."""
    old_d: Tensor | None = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised, uncond = denoise_with_uncond(model, x, sigma)
        d = to_d(x, sigma, uncond)
        report(callback, i, sigmas, x, denoised)
        dt = sigma_next - sigma
        if sigma_next == 0:
            x = denoised
        else:
            x = denoised + d * sigma_next
            if old_d is not None:
                x = x + (ge_gamma - 1) * (d - old_d) * dt
        old_d = d
    return x
