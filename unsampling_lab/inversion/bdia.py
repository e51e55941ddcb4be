"""BDIA: exact inversion at DDIM cost by bi-directional integration (Zhang, Lewis & Kleijn, "Exact Diffusion
Inversion via Bi-directional Integration Approximation", ECCV 2024, arXiv 2307.10829).

States u = α x₀ + s n in the model's own scaling (VP: u = x / √(1 + σ²), α = 1/√(1 + σ²), s = σ α, the
DDIM latents; flow: u = x, α = 1 − σ, s = σ). From uᵢ at σᵢ the network gives D = D(xᵢ, σᵢ) and the noise
estimate n̂ = (uᵢ − αᵢ D)/sᵢ; the DDIM step to any σ′ is Φᵢ(σ′) = α(σ′) D + s(σ′) n̂. With sampling indices
descending (σᵢ₊₁ > σᵢ > σᵢ₋₁), one BDIA step is

    uᵢ₋₁ = γ (uᵢ₊₁ − Φᵢ(σᵢ₊₁)) + Φᵢ(σᵢ₋₁)

(the forward DDIM step from uᵢ plus γ times how far the backward DDIM step from uᵢ misses uᵢ₊₁; γ = 0 is
DDIM), one evaluation per step, and it inverts explicitly with the same evaluation:

    uᵢ₊₁ = (uᵢ₋₁ − Φᵢ(σᵢ₋₁)) / γ + Φᵢ(σᵢ₊₁).

The authors recommend γ = 1 at ~40+ steps and 0.5 at ~10 (their README). Inversion starts from u₀ = the
latent and u₁ = α₁ x₀ + s₁ n̂ with n̂ from the network at (x₀, σ₁) (their code's first DDIM reverse
step), then climbs with the inverse; `.noise` is the top state and the one below it is kept
(`resampling["second"]`): the resampling side starts from the pair, so the round trip is exact up to
rounding at any cfg, model or step count (errors grow by up to 1/γ per step, so γ < 1 costs precision).
Sigmas: the resampler's own, flipped (σ₀ = 0).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..engine import run_sampler
from ..errors import UnsamplingError
from ..samplers.base import denoise_at, model_sampling_of, report
from .base import MethodResult, Option, Problem, ResampleCall, as_sampler_spec, custom_resample

BDIA_OPTIONS = dict(gamma=Option(1.0, float, low=0.0, high=1.0, low_open=True))  # 1 at ~40+ steps, 0.5 at ~10 (paper)

StepFn = Callable[..., Tensor]


def scaling(model: Any, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(α, s, c) at sigma: u = c x = α x₀ + s n (VP: the DDIM latent; flow: the state itself)."""
    ms = model_sampling_of(model)
    if ms is not None and ms.family == "flow":
        return 1 - sigma, sigma, torch.ones_like(sigma)
    c = (1 + sigma**2).rsqrt()
    return c, sigma * c, c


def ddim_from(model: Any, x: Tensor, sigma: Tensor) -> tuple[Callable[[Tensor], Tensor], Tensor, Tensor]:
    """Φ(σ′) = α(σ′) D + s(σ′) n̂ in u-space from x at sigma (one evaluation), the denoised D and n̂."""
    denoised = denoise_at(model, x, sigma)
    a, s, c = scaling(model, sigma)
    noise = (c.to(x.dtype) * x - a.to(x.dtype) * denoised) / s.to(x.dtype)

    def phi(sigma_to: Tensor) -> Tensor:
        a2, s2, _ = scaling(model, sigma_to)
        return a2.to(x.dtype) * denoised + s2.to(x.dtype) * noise

    return phi, denoised, noise


def u_of(model: Any, x: Tensor, sigma: Tensor) -> Tensor:
    return scaling(model, sigma)[2].to(x.dtype) * x


def x_of(model: Any, u: Tensor, sigma: Tensor) -> Tensor:
    return u / scaling(model, sigma)[2].to(u.dtype)


def bdia_down(model: Any, x_prev: Tensor, x: Tensor, s_prev: Tensor, s: Tensor, s_next: Tensor, *,
              gamma: float) -> tuple[Tensor, Tensor]:
    """One sampling step: (x at s_next, the denoised at (x, s))."""
    phi, denoised, _ = ddim_from(model, x, s)
    u_next = gamma * (u_of(model, x_prev, s_prev) - phi(s_prev)) + phi(s_next)
    return x_of(model, u_next, s_next), denoised


def bdia_up(model: Any, x_low: Tensor, x: Tensor, s_low: Tensor, s: Tensor, s_high: Tensor, *,
            gamma: float) -> Tensor:
    """The exact inverse of `bdia_down`: x at s_high from x at s and x_low at s_low."""
    phi, _, _ = ddim_from(model, x, s)
    return x_of(model, (u_of(model, x_low, s_low) - phi(s_low)) / gamma + phi(s_high), s_high)


def invert_pair(problem: Problem, up: StepFn, name: str, **kw: Any) -> MethodResult:
    """Climb the resampler's sigmas with a two-state exact method: x₁ by the DDIM inversion step, then `up`."""
    sigmas = problem.resampler_sigmas()  # ascending, σ₀ = 0
    if len(sigmas) < 3:
        raise UnsamplingError(f"{name} inverts with two states and needs at least 2 steps from end_at_step to the "
                              f"end; got {len(sigmas) - 1} (raise steps or lower end_at_step)")
    second: list[Tensor] = []

    def loop(model: Any, x: Tensor, sigmas: Tensor, *, callback=None, noise=None) -> Tensor:
        _, denoised, noise = ddim_from(model, x, sigmas[1])  # the first reverse step: the network at (x₀, σ₁)
        a1, s1, _ = scaling(model, sigmas[1])
        low, x = x, x_of(model, a1.to(x.dtype) * x + s1.to(x.dtype) * noise, sigmas[1])  # u₁ = α₁ x₀ + s₁ n̂
        report(callback, 0, sigmas, low, denoised)
        for i in range(1, len(sigmas) - 1):
            low, x = x, up(model, low, x, sigmas[i - 1], sigmas[i], sigmas[i + 1], **kw)
            report(callback, i, sigmas, low, x)
        second.append(low)
        return x

    x = run_sampler(as_sampler_spec(name, loop), problem.denoiser(), problem.start(sigmas[0]), sigmas, callback=None,
             progress=problem.progress, noise_seed=None, desc="invert")
    return MethodResult(problem.finish(x, sigmas[-1]),
                        resampling={"second": second[0], "state": x, "sigma_top": float(sigmas[-1]),
                                    "sigmas": sigmas.flip(0).cpu()})


def resample_pair(call: ResampleCall, down: StepFn, name: str, **kw: Any) -> Any:
    """Sample down from the stored pair (top state, the one below) with the two-state step `down`."""
    second, stored, p = call.inversion.resampling["second"], call.inversion.resampling["sigmas"], call.inversion.params

    def loop(model: Any, x: Tensor, sigmas: Tensor, *, callback=None, noise=None) -> Tensor:
        if len(sigmas) != len(stored) or not torch.allclose(sigmas.cpu().to(stored.dtype), stored, rtol=1e-6, atol=0):
            raise UnsamplingError(
                f"{name} starts from the pair of states its inversion ended with, on its {len(stored) - 1}-step schedule; "
                f"resample with steps={p['steps']}, scheduler={p['scheduler']!r}, "
                f"start_at_step={min(p['end_at_step'], p['steps'] - 1)}, down to sigma 0")
        if len(sigmas) < 3:
            raise UnsamplingError(f"{name} needs at least 2 resampling steps (it starts from a pair of states)")
        prev, x = x, second.to(x)
        for i in range(1, len(sigmas) - 1):
            nxt, denoised = down(model, prev, x, sigmas[i - 1], sigmas[i], sigmas[i + 1], **kw)
            report(callback, i - 1, sigmas[1:], x, denoised)
            prev, x = x, nxt
        return x

    return custom_resample(call, loop, name=name)


def invert_bdia(problem: Problem, *, gamma: float) -> MethodResult:
    """See the module docstring."""
    out = invert_pair(problem, bdia_up, "bdia", gamma=gamma)
    out.resampling["gamma"] = gamma
    return out


def resample_bdia(call: ResampleCall) -> Any:
    return resample_pair(call, bdia_down, "bdia", gamma=call.inversion.resampling["gamma"])
