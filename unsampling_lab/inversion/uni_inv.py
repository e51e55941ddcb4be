"""Uni-Inv: predictor-corrector inversion (Jiao, Huang, Wang & Liao, "UniEdit-Flow: Unleashing Inversion and
Editing in the Era of Flow Models", arXiv 2504.13109, 2025).

The resampler's Euler step xᵢ = xᵢ₊₁ − Δᵢ d(xᵢ₊₁, σᵢ₊₁) is implicit to invert. Uni-Inv predicts xᵢ₊₁ with the
velocity the previous step ended with, evaluates there, and corrects the step with that velocity:

    x̂ = xᵢ + Δᵢ v_prev,   v = d(x̂, σᵢ₊₁),   xᵢ₊₁ = xᵢ + Δᵢ v,   v_prev ← v

(one fixed-point iteration of `fixed_point`'s map per step, warm-started by the previous velocity), one
evaluation per step plus one for the first predictor. Sigmas: the resampler's own, flipped (σ₀ = 0); the
authors' code evaluates the network at t = 0 for the first predictor, which d = (x − D)/σ cannot, so the first
predictor's velocity is taken at (x₀, σ₁). Resampling is the plain Euler resample of `.noise` (their
`denoise`). Written for flow models and, in VE form, the same for eps/v models (the paper calls it
model-agnostic).
"""
from __future__ import annotations

from typing import Any

from torch import Tensor

from ..engine import run_sampler
from ..samplers.base import denoise_at, report, to_d
from .base import MethodResult, Problem, as_sampler_spec

UNI_INV_OPTIONS: dict[str, Any] = {}


def sample_uni_inv(model: Any, x: Tensor, sigmas: Tensor, *, callback=None, noise=None) -> Tensor:
    """Uni-Inv up the ascending `sigmas` (σ₀ = 0 allowed: nothing is evaluated there)."""
    v_prev = to_d(x, sigmas[1], denoise_at(model, x, sigmas[1]))
    for i in range(len(sigmas) - 1):
        dt, hi = (sigmas[i + 1] - sigmas[i]).to(x.dtype), sigmas[i + 1]
        x_hat = x + dt * v_prev
        denoised = denoise_at(model, x_hat, hi)
        v_prev = to_d(x_hat, hi, denoised)
        report(callback, i, sigmas, x, denoised)
        x = x + dt * v_prev
    return x


def invert_uni_inv(problem: Problem) -> MethodResult:
    """See the module docstring."""
    sigmas = problem.resampler_sigmas()
    x = run_sampler(as_sampler_spec("uni_inv", sample_uni_inv), problem.denoiser(), problem.start(sigmas[0]), sigmas,
             callback=None, progress=problem.progress, noise_seed=None, desc="invert")
    return MethodResult(problem.finish(x, sigmas[-1]))
