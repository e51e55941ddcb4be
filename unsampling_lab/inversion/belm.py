"""O-BELM: the second-order bidirectional explicit linear multistep sampler, exactly invertible (Wang et al.,
"BELM: Bidirectional Explicit Linear Multi-step Sampler for Exact Inversion in Diffusion Models", NeurIPS 2024).

In VE variables x̄ = x/α, σ̄ = σ/α the probability-flow ODE is dx̄/dσ̄ = (x̄ − D)/σ̄; for our VP models these
are the model's own state and sigma. With sampling indices descending, hᵢ = σᵢ − σᵢ₋₁, hᵢ₊₁ = σᵢ₊₁ − σᵢ and
dᵢ = (xᵢ − D(xᵢ, σᵢ))/σᵢ, one O-BELM step is

    xᵢ₋₁ = (hᵢ²/hᵢ₊₁²) xᵢ₊₁ + (1 − hᵢ²/hᵢ₊₁²) xᵢ − hᵢ (hᵢ + hᵢ₊₁)/hᵢ₊₁ · dᵢ

(the weights that make the local error O(h³): Taylor-expand xᵢ₊₁ and xᵢ₋₁ about σᵢ and match the h and h²
terms), one evaluation per step, and it inverts explicitly with that evaluation:

    xᵢ₊₁ = (xᵢ₋₁ − (1 − hᵢ²/hᵢ₊₁²) xᵢ + hᵢ (hᵢ + hᵢ₊₁)/hᵢ₊₁ · dᵢ) / (hᵢ²/hᵢ₊₁²).

Flow models: the same rule on the rectified-flow ODE dx/dσ = v = (x − D)/σ in the model's own state (a
deliberate deviation: the paper's x̄ = x/(1 − σ) is infinite at the flow's top sigma 1, where its weight
hᵢ²/hᵢ₊₁² would vanish and the top state could not be recovered). Inversion starts as `bdia`'s (x₁ from
the network at (x₀, σ₁)) and keeps the state below the top; the resampling side starts from that pair, so
the round trip is exact up to rounding.
"""
from __future__ import annotations

from typing import Any

from torch import Tensor

from .base import MethodResult, Problem, ResampleCall
from ..samplers.base import denoise_at, to_d
from .bdia import invert_pair, resample_pair

BELM_OPTIONS: dict[str, Any] = {}


def _weights(h: Tensor, h_far: Tensor) -> tuple[Tensor, Tensor]:
    """O-BELM's (a, b): h the step taken, h_far the step on the other side of the evaluation point."""
    return (h / h_far) ** 2, h * (h + h_far) / h_far


def belm_down(model: Any, x_prev: Tensor, x: Tensor, s_prev: Tensor, s: Tensor, s_next: Tensor) -> tuple[Tensor, Tensor]:
    """One sampling step: (x at s_next, the denoised at (x, s))."""
    denoised = denoise_at(model, x, s)
    a, b = _weights(s - s_next, s_prev - s)
    a, b = a.to(x.dtype), b.to(x.dtype)
    return a * x_prev + (1 - a) * x - b * to_d(x, s, denoised), denoised


def belm_up(model: Any, x_low: Tensor, x: Tensor, s_low: Tensor, s: Tensor, s_high: Tensor) -> Tensor:
    """The exact inverse of `belm_down`: x at s_high from x at s and x_low at s_low."""
    denoised = denoise_at(model, x, s)
    a, b = _weights(s - s_low, s_high - s)
    a, b = a.to(x.dtype), b.to(x.dtype)
    return (x_low - (1 - a) * x + b * to_d(x, s, denoised)) / a


def invert_belm(problem: Problem) -> MethodResult:
    """See the module docstring."""
    return invert_pair(problem, belm_up, "belm")


def resample_belm(call: ResampleCall) -> Any:
    return resample_pair(call, belm_down, "belm")
