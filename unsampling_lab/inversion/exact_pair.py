"""EDICT: exact inversion with two coupled latents (Wallace, Gokul & Naik, "EDICT: Exact Diffusion
Inversion via Coupled Transformations", CVPR 2023, arXiv 2211.12446).

In our notation, one sampling step from σ = σᵢ₊₁ down to σᵢ (Δ′ = σᵢ − σᵢ₊₁ < 0) on the pair (x, y):

    x′ = x + Δ′ d(y, σ)             y′ = y + Δ′ d(x′, σ)              (each an Euler/DDIM step of one
    x″ = p x′ + (1 − p) y′          y″ = p y′ + (1 − p) x″             latent driven by the other; mixing p)

Every stage changes one latent by a function of the other only, so each inverts explicitly:

    y′ = (y″ − (1 − p) x″) / p      x′ = (x″ − (1 − p) y′) / p
    y = y′ − Δ′ d(x′, σ)            x = x′ − Δ′ d(y, σ)

and the round trip is exact up to rounding at any cfg, step count or model (2 evaluations per step).
The paper writes the DDIM step a_t x + b_t ε(y, t) in VP form; in VE form that step is the Euler step
above, and p = 0.93 is its default. Inversion starts from x = y = the latent at σ₀ = 0 on the
resampler's own sigmas; `.noise` is x, the second latent y is kept for the resampling side, which
returns x at the end.
"""
from __future__ import annotations

from typing import Any

from torch import Tensor

from ..engine import run_sampler
from ..samplers.base import denoise_at, report, to_d
from .base import MethodResult, Option, Problem, ResampleCall, as_sampler_spec, bound_schedule, custom_resample

EDICT_OPTIONS = dict(mix=Option(0.93, float, low=0.5, high=1.0, high_open=True))  # the paper's p


def _d(model: Any, x: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
    denoised = denoise_at(model, x, sigma)
    return to_d(x, sigma, denoised), denoised


def invert_edict(problem: Problem, *, mix: float) -> MethodResult:
    p = mix
    sigmas = problem.resampler_sigmas()
    second: list[Tensor] = []

    def loop(model: Any, x: Tensor, sigmas: Tensor, *, callback=None, noise=None) -> Tensor:
        y = x.clone()
        for i in range(len(sigmas) - 1):
            sigma, dt = sigmas[i + 1], (sigmas[i] - sigmas[i + 1]).to(x.dtype)
            y_mid = (y - (1 - p) * x) / p
            x_mid = (x - (1 - p) * y_mid) / p
            d, denoised = _d(model, x_mid, sigma)
            y = y_mid - dt * d
            x = x_mid - dt * _d(model, y, sigma)[0]
            report(callback, i, sigmas, x_mid, denoised)
        second.append(y)
        return x

    x = run_sampler(as_sampler_spec("edict", loop, 2), problem.denoiser(), problem.start(sigmas[0]), sigmas, callback=None,
                    progress=problem.progress, noise_seed=None, desc="invert")
    return MethodResult(problem.finish(x, sigmas[-1]),
                        resampling={"second": second[0], "state": x, "sigma_top": float(sigmas[-1]), "mix": p,
                                    **bound_schedule(sigmas.flip(0), "a second latent coupled to it at every step")})


def resample_edict(call: ResampleCall) -> Any:
    """EDICT's sampling steps from the inverted pair (x from `.noise`, y stored)."""
    p = call.inversion.resampling["mix"]
    y0 = call.inversion.resampling["second"]

    def loop(model: Any, x: Tensor, sigmas: Tensor, *, callback=None, noise=None) -> Tensor:
        y = y0.to(x)
        for i in range(len(sigmas) - 1):
            sigma, dt = sigmas[i], (sigmas[i + 1] - sigmas[i]).to(x.dtype)
            d, denoised = _d(model, y, sigma)
            report(callback, i, sigmas, x, denoised)
            x_mid = x + dt * d
            y_mid = y + dt * _d(model, x_mid, sigma)[0]
            x = p * x_mid + (1 - p) * y_mid
            y = p * y_mid + (1 - p) * x
        return x

    return custom_resample(call, loop, name="edict", evals_per_step=2)
