"""UniPC (Zhao et al. 2023) as ComfyUI runs it, rewritten in sigma space so that it can unsample.

ComfyUI's `uni_pc` / `uni_pc_bh2` (comfy/extra_samplers/uni_pc.py) run the multistep data-prediction
UniPC in VP variables: x_vp = x / sqrt(1 + sigma^2), alpha = 1 / sqrt(1 + sigma^2), std = sigma * alpha,
lambda = log(alpha / std). In float32, at the Unsampler's first sigma 1e-4, 1 / (1 + 1e-8) rounds to 1,
so std = 0 and lambda is infinite: the run returns NaN. Every VP factor cancels against the final
division by alpha: with lambda = -log sigma and the VE state x the same update reads

    h = lambda_t - lambda_s = log(sigma_s / sigma_t)
    x_t = (sigma_t / sigma_s) x_s - expm1(-h) D_s - B(h) (sum_k rho_k D1_k)
        = D_s + (sigma_t / sigma_s) (x_s - D_s) - B(h) (sum_k rho_k D1_k)

with B(h) = -h (bh1) or expm1(-h) (bh2), D1_k = (D_{s_k} - D_s) / r_k, r_k = (lambda_{s_k} - lambda_s) / h,
and rho solving R rho = b, R_ij = r_j^i, b_i = i! h phi_{i+1}(-h) / B(h). The same algorithm, finite.

The schedule of orders is ComfyUI's: order p = min(3, N - 1) for N steps; step k (1..N) uses order
k while k < p (warm-up), else min(p, N + 1 - k) (lower_order_final); every step but the last is
corrected (UniC) with the model value at the predicted point, which is reused as the next step's
history, so the cost is one model call per step. Sampling down to sigma 0 stops at sigma 0.001
(ComfyUI replaces a final 0 by 0.001 and returns that state). With a single step ComfyUI takes no
step at all and returns x rescaled by sqrt(1 + sigma_last^2) / sqrt(1 + sigma_0^2); so does this.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from .base import Callback, Denoiser, NoiseSampler, denoise_at, report, sigma_list

Variant = Literal["bh1", "bh2"]

FINAL_SIGMA = 0.001  # ComfyUI's stand-in for a final sigma of 0


def unipc_orders(n_steps: int) -> list[tuple[int, bool]]:
    """(order, corrected) for the updates into sigma index k = 1..N, as ComfyUI schedules them."""
    p = min(3, n_steps - 1)
    plan = []
    for k in range(1, n_steps + 1):
        order = k if k < p else min(p, n_steps + 1 - k)
        plan.append((order, k < n_steps))
    return plan


def _coefficients(h: float, rks: list[float], order: int, variant: Variant) -> tuple[float, list[float], list[float]]:
    """B(h), the predictor weights (order - 1 of them) and the corrector weights (order of them)."""
    hh = -h  # data prediction
    h_phi_1 = math.expm1(hh)
    b_h = hh if variant == "bh1" else h_phi_1
    # b_i = i! * h phi_{i+1}(hh) / B(h), with h phi_{k+1} = h phi_k / hh - 1 / k!
    b, h_phi_k, factorial = [], h_phi_1 / hh - 1, 1
    for i in range(1, order + 1):
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    r = torch.tensor(rks + [1.0], dtype=torch.float64)
    R = torch.stack([r ** (i - 1) for i in range(1, order + 1)])  # R_ij = r_j^(i-1)
    bt = torch.tensor(b, dtype=torch.float64)
    if order == 1:
        rhos_p: list[float] = []
    elif order == 2:
        rhos_p = [0.5]
    else:
        rhos_p = torch.linalg.solve(R[:-1, :-1], bt[:-1]).tolist()
    rhos_c = [0.5] if order == 1 else torch.linalg.solve(R, bt).tolist()
    return b_h, rhos_p, rhos_c


def _sample_unipc(model: Denoiser, x: Tensor, sigmas: Tensor, callback: Callback | None, variant: Variant) -> Tensor:
    s = sigma_list(sigmas)
    if s[-1] == 0:
        s[-1] = FINAL_SIGMA
    report_sigmas = torch.tensor(s, dtype=torch.float64)
    n = len(s) - 1
    if n < 1:
        return x
    lam = [-math.log(v) for v in s]
    denoised = denoise_at(model, x, s[0])
    report(callback, 0, report_sigmas, x, denoised)
    if n == 1:  # ComfyUI: order 0, no update; only the VP <-> VE rescaling remains
        return x * (math.sqrt(1 + s[-1] ** 2) / math.sqrt(1 + s[0] ** 2))
    history: list[tuple[int, Tensor]] = [(0, denoised)]  # (sigma index, D there), newest last
    p = min(3, n - 1)
    for k, (order, corrected) in enumerate(unipc_orders(n), start=1):
        i0, m0 = history[-1]
        h = lam[k] - lam[i0]
        prev = [history[-(j + 1)] for j in range(1, order)]
        rks = [(lam[ij] - lam[i0]) / h for ij, _ in prev]
        d1s = [(mj - m0) / rk for (_, mj), rk in zip(prev, rks)]
        b_h, rhos_p, rhos_c = _coefficients(h, rks, order, variant)
        # first-order (DDIM) step (sigma_t / sigma_s) x - expm1(-h) D_s, written without cancellation
        x_base = m0 + (s[k] / s[i0]) * (x - m0)
        x_pred = x_base - b_h * sum(r * d for r, d in zip(rhos_p, d1s)) if rhos_p else x_base
        if corrected:
            m_t = denoise_at(model, x_pred, s[k])
            corr = sum((r * d for r, d in zip(rhos_c[:-1], d1s)), rhos_c[-1] * (m_t - m0))
            x = x_base - b_h * corr
            history = (history + [(k, m_t)])[-p:]
            report(callback, k, report_sigmas, x, m_t)
        else:
            x = x_pred
    return x


def sample_uni_pc(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: Callback | None = None,
                  noise: NoiseSampler | None = None) -> Tensor:
    """UniPC with B(h) = h (bh1), multistep data prediction (Zhao et al. 2023), in sigma space."""
    return _sample_unipc(model, x, sigmas, callback, "bh1")


def sample_uni_pc_bh2(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: Callback | None = None,
                      noise: NoiseSampler | None = None) -> Tensor:
    """UniPC with B(h) = e^h - 1 (bh2), multistep data prediction (Zhao et al. 2023), in sigma space."""
    return _sample_unipc(model, x, sigmas, callback, "bh2")
