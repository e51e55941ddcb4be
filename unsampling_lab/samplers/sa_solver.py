"""SA-Solver (Xue et al. 2023, arXiv 2309.05019): stochastic Adams predictor-corrector in half-logSNR, as ComfyUI runs it.

Data prediction with stochasticity tau (an SDE between the ODE, tau = 0, and the reverse SDE, tau = 1):

    x_t = (sigma_t / sigma_s) e^{-tau^2 h} x_s + sum_j b_j D_j + sigma_t sqrt(1 - e^{-2 tau^2 h}) n,     h = lambda_t - lambda_s

b_j = alpha_t * integral over [lambda_s, lambda_t] of e^{(1 + tau^2)(lambda - lambda_t)} (1 + tau^2) l_j(lambda) dlambda,
l_j the Lagrange basis through the last K lambdas (predictor K = 3 previous estimates, corrector K = 4
including the new one). The integrals of e^{c lambda} lambda^p come by integration by parts (a lower
triangular matrix of (-1)^(p-q) p!/q! c^-(p-q)), then the Vandermonde system turns them into Lagrange
weights. ComfyUI's defaults: tau = 1 for sigma in [percent_to_sigma(0.8), percent_to_sigma(0.2)], else 0;
the corrector re-uses the model value at the predicted point (PECE: one more evaluation after correcting).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..model_sampling import ModelSampling
from .base import (Callback, Denoiser, NoiseSampler, NoiseSeed, denoise_at, family_of, gaussian_noise, half_log_snr,
                   model_sampling_of, offset_first_sigma, report)

Noise = NoiseSampler | NoiseSeed | None


def exponential_integrals(s: Tensor, t: Tensor, order: int, tau: float) -> Tensor:
    """(1 + tau^2) * integral_s^t e^{(1 + tau^2)(x - t)} x^p dx for p = 0 .. order - 1 (ComfyUI's
    `compute_exponential_coeffs`): M @ (t^p - s^p e^{-(1 + tau^2)(t - s)}), M_pq = (-1)^(p-q) p!/q! (1 + tau^2)^-(p-q)."""
    c = 1 + tau**2
    p = torch.arange(order, dtype=s.dtype, device=s.device)
    boundary = t**p - s**p * (-c * (t - s)).exp()
    depth = p.unsqueeze(1) - p.unsqueeze(0)
    log_fact = (p + 1).lgamma()
    log_m = log_fact.unsqueeze(1) - log_fact.unsqueeze(0)
    if tau > 0:
        log_m = log_m - depth * math.log(c)
    signs = torch.where(depth % 2 == 0, 1.0, -1.0)
    return (log_m.exp() * signs).tril() @ boundary


def adams_weights(sigma_next: Tensor, lambdas: Tensor, lambda_s: Tensor, lambda_t: Tensor, tau: float) -> Tensor:
    """The b_j of one step for the estimates at `lambdas` (oldest first): alpha_t times the Lagrange integrals."""
    k = lambdas.shape[0]
    integrals = exponential_integrals(lambda_s, lambda_t, k, tau)
    lagrange = torch.linalg.solve(torch.vander(lambdas, k, increasing=True).T, integrals)
    return sigma_next * lambda_t.exp() * lagrange


def _tau_interval(model: Denoiser, eta: float = 1.0):  # type: ignore[no-untyped-def]
    """ComfyUI's default stochasticity: eta on sigma in [percent_to_sigma(0.8), percent_to_sigma(0.2)], else 0 (ODE).
    A bare callable is read with SD1.x's table."""
    ms = model_sampling_of(model) or ModelSampling.discrete()
    start, end = ms.percent_to_sigma(0.2), ms.percent_to_sigma(0.8)

    def tau(sigma: Tensor) -> float:
        return eta if start >= float(sigma) >= end else 0.0

    return tau


def _sa_solver(model: Denoiser, x: Tensor, sigmas: Tensor, callback: Callback | None, noise: Noise, *, pece: bool,
               name: str, predictor_order: int = 3, corrector_order: int = 4, s_noise: float = 1.0) -> Tensor:
    if len(sigmas) <= 1:
        return x
    noise_fn = gaussian_noise(noise, x, name)
    tau_of = _tau_interval(model)
    sigmas = offset_first_sigma(model, sigmas)
    lambdas = half_log_snr(sigmas, family_of(model))
    keep = max(predictor_order, corrector_order)
    x_pred, h, tau, step_noise = x, 0.0, 0.0, 0.0
    estimates: list[Tensor] = []
    lower_order_to_end = float(sigmas[-1]) == 0
    n = len(sigmas) - 1
    for i in range(n):
        denoised = denoise_at(model, x_pred, sigmas[i])
        report(callback, i, sigmas, x_pred, denoised)
        estimates = (estimates + [denoised])[-keep:]
        p_order = min(predictor_order, len(estimates))
        c_order = 0 if i == 0 or (sigmas[i + 1] == 0 and not pece) else min(corrector_order, len(estimates))
        if lower_order_to_end:
            p_order, c_order = min(p_order, n - 1 - i), min(c_order, n - i)
        # corrector: redo the last step with the estimate at its end
        if c_order == 0:
            x = x_pred
        else:
            b = adams_weights(sigmas[i], lambdas[i - c_order + 1:i + 1], lambdas[i - 1], lambdas[i], tau)
            x = (sigmas[i] / sigmas[i - 1] * (-(tau**2) * h).exp() * x
                 + torch.tensordot(torch.stack(estimates[-c_order:], dim=1), b, dims=([1], [0])))
            if tau > 0 and s_noise > 0:
                x = x + step_noise  # the predictor's noise, kept
            if pece:
                denoised = denoise_at(model, x, sigmas[i])
                estimates[-1] = denoised
        # predictor: Adams step to sigma_next from the last p_order estimates
        if sigmas[i + 1] == 0:
            x_pred = denoised
            continue
        tau = tau_of(sigmas[i + 1])
        b = adams_weights(sigmas[i + 1], lambdas[i - p_order + 1:i + 1], lambdas[i], lambdas[i + 1], tau)
        h = lambdas[i + 1] - lambdas[i]
        x_pred = (sigmas[i + 1] / sigmas[i] * (-(tau**2) * h).exp() * x
                  + torch.tensordot(torch.stack(estimates[-p_order:], dim=1), b, dims=([1], [0])))
        if tau > 0 and s_noise > 0:
            step_noise = (noise_fn(sigmas[i], sigmas[i + 1]) * sigmas[i + 1]
                          * (-2 * tau**2 * h).expm1().neg().sqrt() * s_noise)
            x_pred = x_pred + step_noise
    return x_pred


def sample_sa_solver(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: Callback | None = None,
                     noise: Noise = None) -> Tensor:
    """SA-Solver, predictor order 3, corrector order 4, one evaluation per step (ComfyUI's defaults)."""
    return _sa_solver(model, x, sigmas, callback, noise, pece=False, name="sa_solver")


def sample_sa_solver_pece(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: Callback | None = None,
                          noise: Noise = None) -> Tensor:
    """SA-Solver in PECE mode: the corrected state is evaluated again (two evaluations per step)."""
    return _sa_solver(model, x, sigmas, callback, noise, pece=True, name="sa_solver_pece")
