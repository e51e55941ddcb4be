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

Arithmetic: lambda, h, r_k, b, R and the solves for rho are float32 tensors (the sigmas' dtype) in
ComfyUI's order, and the rho-weighted sums are ComfyUI's einsum. One deliberate difference besides the
VE state: the first-order part is written D_s + (sigma_t / sigma_s)(x_s - D_s), not ComfyUI's
(sigma_t / sigma_s) x_s - expm1(-h) D_s. Sampling down, the two agree with ComfyUI's float32 VP run
equally well (~1e-6, its own VP rescaling rounding); unsampling, ComfyUI has no finite result to match and
ComfyUI's grouping multiplies the float32 rounding of x_s by sigma_t / sigma_s (~300 on the first step):
against float64, 7e-5 instead of 1.4e-5 (bh1) and 4.5e-3 instead of 8e-4 (bh2).
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from .base import Callback, Denoiser, NoiseSampler, denoise_at, report

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


def _coefficients(h: Tensor, rks: list[Tensor], order: int,
                  variant: Variant) -> tuple[Tensor, Tensor | None, Tensor]:
    """B(h), the predictor weights (order - 1 of them, None for order 1) and the corrector weights (order of
    them): 0-d / 1-d tensors in h's dtype, computed and solved as ComfyUI does (float32 in production)."""
    hh = -h  # data prediction
    h_phi_1 = torch.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1  # h phi_2(hh); then h phi_{k+1} = h phi_k / hh - 1 / k!
    b_h = hh if variant == "bh1" else torch.expm1(hh)
    r = torch.stack([*rks, torch.ones_like(h)])
    rows, b, factorial = [], [], 1
    for i in range(1, order + 1):
        rows.append(torch.pow(r, i - 1))  # R_ij = r_j^(i-1)
        b.append(h_phi_k * factorial / b_h)  # b_i = i! h phi_{i+1}(hh) / B(h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    R, bt = torch.stack(rows), torch.stack(b)
    half = torch.full((1,), 0.5, dtype=h.dtype)
    if order == 1:
        rhos_p = None
    elif order == 2:
        rhos_p = half
    else:
        rhos_p = torch.linalg.solve(R[:-1, :-1], bt[:-1])
    rhos_c = half if order == 1 else torch.linalg.solve(R, bt)
    return b_h, rhos_p, rhos_c


def _weighted(rhos: Tensor, d1s: list[Tensor]) -> Tensor:
    """sum_k rho_k D1_k, contracted as ComfyUI's einsum over the stacked differences."""
    return torch.einsum("k,bk...->b...", rhos.to(d1s[0].device, d1s[0].dtype), torch.stack(d1s, dim=1))


def _sample_unipc(model: Denoiser, x: Tensor, sigmas: Tensor, callback: Callback | None, variant: Variant) -> Tensor:
    s = sigmas.clone()
    if s[-1] == 0:
        s[-1] = FINAL_SIGMA
    n = len(s) - 1
    if n < 1:
        return x
    lam = s.log().neg()
    denoised = denoise_at(model, x, s[0])
    report(callback, 0, s, x, denoised)
    if n == 1:  # ComfyUI: order 0, no update; only the VP <-> VE rescaling remains
        return x * (torch.sqrt(1 + s[-1] ** 2) / torch.sqrt(1 + s[0] ** 2)).to(x.dtype)
    history: list[tuple[int, Tensor]] = [(0, denoised)]  # (sigma index, D there), newest last
    p = min(3, n - 1)
    for k, (order, corrected) in enumerate(unipc_orders(n), start=1):
        i0, m0 = history[-1]
        h = lam[k] - lam[i0]
        prev = [history[-(j + 1)] for j in range(1, order)]
        rks = [(lam[ij] - lam[i0]) / h for ij, _ in prev]
        d1s = [(mj - m0) / rk for (_, mj), rk in zip(prev, rks)]
        b_h, rhos_p, rhos_c = _coefficients(h, rks, order, variant)
        # first-order (DDIM) step, written without cancellation: D + (sigma_t / sigma_s)(x - D) (see module docstring)
        x_base = m0 + (s[k] / s[i0]) * (x - m0)
        x_pred = x_base if rhos_p is None else x_base - b_h * _weighted(rhos_p, d1s)
        if corrected:
            m_t = denoise_at(model, x_pred, s[k])
            corr = rhos_c[-1] * (m_t - m0)
            if d1s:
                corr = _weighted(rhos_c[:-1], d1s) + corr
            x = x_base - b_h * corr
            history = (history + [(k, m_t)])[-p:]
            report(callback, k, s, x, m_t)
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
