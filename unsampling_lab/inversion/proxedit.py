"""ProxEdit / ProxNPI: negative-prompt inversion with proximal guidance on the edit side (Han et al., "Improving
Tuning-Free Real Image Editing with Proximal Guidance", WACV 2024, arXiv 2306.05414).

Inversion is NPI's (`negative_prompt`: the Unsampler at cfg 1). Each resampling step from σ to σ′ evaluates the
source prompt c (NPI's unconditional) and the call's prompt c′, and in ε = (x − D)/σ:

    Δ = ε(c′) − ε(c),   τ = quantile(|Δ|, q) over the whole batch,
    l0:  Δ̃ = Δ − clamp(Δ, −τ, τ)                 (soft threshold: small differences dropped)
    l1:  then Δ̃ ∓= τ where Δ̃ ≷ 0                 (as the authors' code writes it)
    ε_w = ε(c) + w Δ̃,   D_w = x − σ ε_w

and, while the model's timestep is below `recon_t`, pulls the x₀ estimate towards the source latent X outside
the edited region (the authors' DDIM scheduler with ref_image): with m = [|Δ̃| > τ],
D_w ← D_w − recon_lr (D_w − X)(1 − m); then the DDIM step x′ = D_w + σ′ ε_w (the Euler step when nothing is
pulled). Options as the authors' defaults: prox "l0", quantile 0.7, recon_lr 0.1, recon_t 400. Their
optional "inversion guidance" (pulling the state towards the inverted states) is not included.
"""
from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor

from ..engine import guided_denoiser
from ..errors import UnsamplingError
from ..inputs import read_latent
from ..samplers.base import report
from .base import MethodResult, Option, Problem, ResampleCall, custom_resample
from .prompts import invert_negative_prompt

Prox = Literal["l0", "l1"]
PROXEDIT_OPTIONS = dict(prox=Option("l0", str, choices=("l0", "l1")), quantile=Option(0.7, float, low=0.0, high=1.0, high_open=True),
                        recon_lr=Option(0.1, float, low=0.0, high=math.inf), recon_t=Option(400.0, float, low=0.0, high=math.inf))


def proximal(delta: Tensor, *, prox: Prox, quantile: float) -> tuple[Tensor, Tensor]:
    """(Δ̃, τ): the thresholded guidance difference and its threshold (module docstring)."""
    tau = delta.abs().flatten().float().quantile(quantile).to(delta.dtype)
    out = delta - delta.clamp(-tau, tau)
    if prox == "l1":
        out = torch.where(out > 0, out - tau, out)
        out = torch.where(out < 0, out + tau, out)
    return out, tau


def proxedit_step(x: Tensor, sigma: Tensor, sigma_next: Tensor, *, d_src: Tensor, d_tar: Tensor, source: Tensor,
                  cfg: float, prox: Prox, quantile: float, recon_lr: float) -> tuple[Tensor, Tensor]:
    """One edit step from the two denoised estimates; recon_lr 0 turns the x₀ pull off. Returns (x′, D_w)."""
    s = sigma.to(x.dtype)
    eps_src, eps_tar = (x - d_src) / s, (x - d_tar) / s
    delta, tau = proximal(eps_tar - eps_src, prox=prox, quantile=quantile)
    eps = eps_src + cfg * delta
    denoised = x - s * eps
    if recon_lr > 0:
        keep = 1.0 - (delta.abs() > tau).to(x.dtype)
        denoised = denoised - recon_lr * (denoised - source) * keep
    return denoised + sigma_next.to(x.dtype) * eps, denoised


def invert_proxedit(problem: Problem, *, prox: str, quantile: float, recon_lr: float, recon_t: float) -> MethodResult:
    out = invert_negative_prompt(problem)
    out.resampling.update(source=problem.latent_in, sigma_top=float(problem.resampler_sigmas()[-1]))
    return out


def resample_proxedit(call: ResampleCall) -> Any:
    """Euler/DDIM steps with proximal guidance between the source prompt (as NPI's negative) and the call's prompt."""
    opts, data = call.inversion.options, call.inversion.resampling
    cfg = float(call.cfg)
    if not cfg > 0:
        raise UnsamplingError(f"proxedit scales the thresholded guidance by cfg; give cfg > 0, got {cfg}")
    _, mask = read_latent(call.inversion.noise, call.model)
    source = data["source"].to(call.model.device)
    ms = call.model.model_sampling
    den = guided_denoiser(call.model, source, mask, cfg=cfg, positive=call.positive, negative=data["source_prompt"],
                          noise=torch.zeros_like(source), always_uncond=True, counter=call.counter)

    def loop(model: Any, x: Tensor, sigmas: Tensor, *, callback=None, noise=None) -> Tensor:
        for i in range(len(sigmas) - 1):
            sigma = sigmas[i]
            guided, d_src = model.with_uncond(x, x.new_full([x.shape[0]], float(sigma)))
            d_tar = d_src + (guided - d_src) / cfg
            pull = opts["recon_lr"] if float(ms.timestep(sigma.reshape(1).float())) < opts["recon_t"] else 0.0
            x_next, denoised = proxedit_step(x, sigma, sigmas[i + 1], d_src=d_src, d_tar=d_tar, source=source.to(x),
                                             cfg=cfg, prox=opts["prox"], quantile=opts["quantile"], recon_lr=pull)
            report(callback, i, sigmas, x, denoised)
            x = x_next
        return x

    return custom_resample(call, loop, name="proxedit", denoiser=den)
