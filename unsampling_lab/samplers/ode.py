"""Deterministic (ODE) samplers. Each runs on ascending or descending sigmas."""
from __future__ import annotations

from torch import Tensor

from .base import Callback, Denoiser, NoiseSampler, batch_sigma, report, to_d


def sample_euler(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: Callback | None = None,
                 noise: NoiseSampler | None = None) -> Tensor:
    """Euler's method on the probability-flow ODE (Karras et al. 2022, Algorithm 2 without churn)."""
    for i in range(len(sigmas) - 1):
        denoised = model(x, batch_sigma(sigmas[i], x))
        report(callback, i, sigmas, x, denoised)
        x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i]).to(x.dtype)
    return x
