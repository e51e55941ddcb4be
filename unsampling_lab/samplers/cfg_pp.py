"""CFG++ samplers (Chung et al. 2024, arXiv 2406.08070), as ComfyUI has them.

CFG++ takes the step's direction from the *unconditional* estimate and only its landing point from the
guided one: an Euler step from x at sigma to sigma_next reads

    x_next = D_cfg + sigma_next * (x - D_uncond) / sigma        (plain Euler: D_cfg + sigma_next (x - D_cfg) / sigma)

Each sampler asks the denoiser for both estimates through `base.denoise_with_uncond` (the guided
denoiser's `with_uncond`; ComfyUI reads the uncond through a post-cfg hook and, like ours, evaluates
it even at cfg 1). Arithmetic is ComfyUI's (comfy/k_diffusion/sampling.py), in 0-d tensors.

Here are the CFG++ samplers that are loops of their own in ComfyUI too (euler_ancestral_cfg_pp in
half-logSNR, dpmpp_2m_cfg_pp). Where CFG++ is a variant of a base sampler it is that loop's `cfg_pp` flag
(`base.denoise_pair`): dpmpp_2s_ancestral_cfg_pp in stochastic.py, res_multistep(_ancestral)_cfg_pp and
gradient_estimation_cfg_pp in ode.py.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .base import (Callback, Denoiser, NoiseSampler, NoiseSeed, ancestral_step, denoise_with_uncond, family_of,
                   gaussian_noise, half_log_snr, report, to_d)

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
