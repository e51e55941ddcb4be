"""Deterministic (ODE) samplers. Each runs on ascending or descending sigmas.

All of them integrate the probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma with ComfyUI's update
rules (k-diffusion's, and the diff-sampler ports ComfyUI carries). Scalar coefficients are computed in
Python floats from the given sigmas; tensors stay in x's dtype. The special cases ComfyUI has for a
step that ends at sigma 0 are kept; they only trigger when sampling down to 0, never when unsampling.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy import integrate
from torch import Tensor

from .base import Callback, Denoiser, NoiseSampler, batch_sigma, denoise_at, derivative, report, sigma_list, to_d


def sample_euler(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: Callback | None = None,
                 noise: NoiseSampler | None = None) -> Tensor:
    """Euler's method on the probability-flow ODE (Karras et al. 2022, Algorithm 2 without churn)."""
    for i in range(len(sigmas) - 1):
        denoised = model(x, batch_sigma(sigmas[i], x))
        report(callback, i, sigmas, x, denoised)
        x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i]).to(x.dtype)
    return x


def sample_heun(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: Callback | None = None,
                noise: NoiseSampler | None = None) -> Tensor:
    """Heun's second-order method (Karras et al. 2022, Algorithm 1); a plain Euler step into sigma 0."""
    s = sigma_list(sigmas)
    for i in range(len(s) - 1):
        sigma, sigma_next = s[i], s[i + 1]
        denoised = denoise_at(model, x, sigma)
        report(callback, i, sigmas, x, denoised)
        d = derivative(x, sigma, denoised)
        dt = sigma_next - sigma
        if sigma_next == 0:
            x = x + d * dt
            continue
        x_2 = x + d * dt
        d_2 = derivative(x_2, sigma_next, denoise_at(model, x_2, sigma_next))
        x = x + (d + d_2) / 2 * dt  # trapezoid: mean of the slopes at both ends
    return x


def sample_dpm_2(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: Callback | None = None,
                 noise: NoiseSampler | None = None) -> Tensor:
    """DPM-Solver-2 in sigma (Lu et al. 2022; k-diffusion): the slope at the log-midpoint sigma_mid = sqrt(sigma*sigma_next)."""
    s = sigma_list(sigmas)
    for i in range(len(s) - 1):
        sigma, sigma_next = s[i], s[i + 1]
        denoised = denoise_at(model, x, sigma)
        report(callback, i, sigmas, x, denoised)
        d = derivative(x, sigma, denoised)
        if sigma_next == 0:
            x = x + d * (sigma_next - sigma)
            continue
        sigma_mid = math.exp(0.5 * (math.log(sigma) + math.log(sigma_next)))
        x_mid = x + d * (sigma_mid - sigma)
        d_mid = derivative(x_mid, sigma_mid, denoise_at(model, x_mid, sigma_mid))
        x = x + d_mid * (sigma_next - sigma)
    return x


def lms_coefficient(s: list[float], i: int, j: int, order: int) -> float:
    """Weight of d_{i-j} in the linear multistep step i: the integral over [s_i, s_{i+1}] of the Lagrange
    basis polynomial l_j through the nodes s_i, s_{i-1}, ..., s_{i-order+1} (l_j(s_{i-j}) = 1), by quadrature."""
    nodes = [s[i - k] for k in range(order)]

    def basis(tau: float) -> float:
        # l_j(tau) = prod_{k != j} (tau - s_{i-k}) / (s_{i-j} - s_{i-k})
        value = 1.0
        for k, node in enumerate(nodes):
            if k != j:
                value *= (tau - node) / (nodes[j] - node)
        return value

    return integrate.quad(basis, s[i], s[i + 1], epsrel=1e-4)[0]


def sample_lms(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: Callback | None = None,
               noise: NoiseSampler | None = None, order: int = 4) -> Tensor:
    """Linear multistep (Adams-Bashforth in sigma, order 4; Karras et al. 2022 / k-diffusion); returns the denoised estimate on a step into 0."""
    s = sigma_list(sigmas)
    ds: list[Tensor] = []  # newest last
    for i in range(len(s) - 1):
        denoised = denoise_at(model, x, s[i])
        ds = (ds + [derivative(x, s[i], denoised)])[-order:]
        report(callback, i, sigmas, x, denoised)
        if s[i + 1] == 0:
            x = denoised
            continue
        cur_order = min(i + 1, order)
        coeffs = [lms_coefficient(s, i, j, cur_order) for j in range(cur_order)]
        x = x + sum(c * d for c, d in zip(coeffs, reversed(ds)))
    return x


def sample_dpmpp_2m(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: Callback | None = None,
                    noise: NoiseSampler | None = None) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022b): second-order multistep exponential integrator in t = -log sigma.

    The step coefficients are computed as tensors in the sigmas' dtype, in ComfyUI's order
    (sigma(t_next) / sigma(t) with t = -log sigma): on the Unsampler's first step that ratio is
    ~3000 and multiplies a cancellation, so float32 rounding of the coefficients shows at 1e-3.
    """
    old_denoised: Tensor | None = None
    t_prev: Tensor | None = None
    for i in range(len(sigmas) - 1):
        denoised = denoise_at(model, x, sigmas[i])
        report(callback, i, sigmas, x, denoised)
        t, t_next = sigmas[i].log().neg(), sigmas[i + 1].log().neg()
        h = t_next - t  # lambda_next - lambda; infinite when sampling into sigma 0
        if old_denoised is None or sigmas[i + 1] == 0:
            denoised_d = denoised
        else:
            r = (t - t_prev) / h  # h_last / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
        # x_next = (sigma_next / sigma) x - (e^{-h} - 1) D
        x = (t_next.neg().exp() / t.neg().exp()).to(x.dtype) * x - (-h).expm1().to(x.dtype) * denoised_d
        old_denoised, t_prev = denoised, t
    return x


def _ab_fixed(order: int) -> tuple[float, ...]:
    """Adams-Bashforth weights for equal steps, newest slope first."""
    return {1: (1.0,), 2: (3 / 2, -1 / 2), 3: (23 / 12, -16 / 12, 5 / 12), 4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}[order]


def _ab_variable(order: int, h: tuple[float, ...]) -> tuple[float, ...]:
    """iPNDM-v's weights for the step h[0] given the previous steps h[1], h[2], h[3] (Zhang & Chen 2023;
    ComfyUI's port of zju-pi/diff-sampler). Newest slope first. Order 2 is the variable-step Adams-Bashforth;
    the order-4 weights reduce to (57, -65, 43, -11)/24 on equal steps (third-order accurate), as in ComfyUI."""
    if order == 1:
        return (1.0,)
    h0, h1 = h[0], h[1]
    a = h0 / h1  # r = h_n / h_{n-1}
    if order == 2:
        return (1 + a / 2, -a / 2)
    h2 = h[2]
    u = 0.5 - h0 * h0 / (6 * h1 * (h1 + h2))  # the order-3 correction weight
    if order == 3:
        return (1 + a / 2 + u, -a / 2 - (1 + h1 / h2) * u, u * h1 / h2)
    h3 = h[3]
    q = h1 * (h1 + h2) / (h2 * (h2 + h3))
    v = ((1 - h0 / (3 * (h0 + h1))) / 2 + (1 - h0 / (2 * (h0 + h1))) * h0 / (6 * (h0 + h1 + h2))) \
        * (h0 * (h0 + h1) * (h0 + h1 + h2)) / (h1 * (h1 + h2) * (h1 + h2 + h3))
    return (
        1 + a / 2 + u + v,
        -a / 2 - (1 + h1 / h2) * u - (1 + h1 / h2 + q) * v,
        u * h1 / h2 + (h1 / h2 + q * (1 + h2 / h3)) * v,
        -v * q * h1 / h2,
    )


def _ipndm(model: Denoiser, x: Tensor, sigmas: Tensor, callback: Callback | None, *, variable: bool,
           max_order: int = 4) -> Tensor:
    """Shared loop of iPNDM and iPNDM-v: Adams-Bashforth on the slope d = (x - D) / sigma, warming up from Euler."""
    s = sigma_list(sigmas)
    history: list[Tensor] = []  # previous slopes, newest last, at most max_order - 1
    for i in range(len(s) - 1):
        sigma, sigma_next = s[i], s[i + 1]
        denoised = denoise_at(model, x, sigma)
        report(callback, i, sigmas, x, denoised)
        d = derivative(x, sigma, denoised)
        order = min(max_order, i + 1)
        if sigma_next == 0:
            x_next = denoised
        else:
            if variable:
                steps = tuple(s[i + 1 - k] - s[i - k] for k in range(order))  # h_n, h_{n-1}, ...
                weights = _ab_variable(order, steps)
            else:
                weights = _ab_fixed(order)
            slopes = [d] + history[::-1][: order - 1]
            x_next = x + (sigma_next - sigma) * sum(w * g for w, g in zip(weights, slopes))
        history = (history + [d])[-(max_order - 1):]
        x = x_next
    return x


def sample_ipndm(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: Callback | None = None,
                 noise: NoiseSampler | None = None) -> Tensor:
    """Improved PNDM (Zhang & Chen 2023, DEIS paper): fixed fourth-order Adams-Bashforth weights in sigma."""
    return _ipndm(model, x, sigmas, callback, variable=False)


def sample_ipndm_v(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: Callback | None = None,
                   noise: NoiseSampler | None = None) -> Tensor:
    """iPNDM with variable-step Adams-Bashforth weights (Zhang & Chen 2023; diff-sampler's `ipndm_v`)."""
    return _ipndm(model, x, sigmas, callback, variable=True)


# -- DEIS ----------------------------------------------------------------------------------------------------


def _deis_vp_time(sigmas: Tensor, *, eps_s: float = 1e-3, sigma_min: float = 0.002, sigma_max: float = 80.0):
    """Map sigmas to the time t of the linear VP SDE that DEIS integrates in (diff-sampler's `edm2t`).

    The VP SDE has sigma(t)^2 = exp(beta_d t^2 / 2 + beta_min t) - 1, with beta_d, beta_min fixed by
    sigma(eps_s) = 0.002 and sigma(1) = 80 (EDM's defaults, whatever the model), so
    t(sigma) = (sqrt(beta_min^2 + 2 beta_d log(1 + sigma^2)) - beta_min) / beta_d.
    Computed in the sigmas' dtype, with the two constants in float32, as ComfyUI does.
    """
    smin, smax = torch.tensor(sigma_min), torch.tensor(sigma_max)  # float32, as in ComfyUI
    beta_d = 2 * (torch.log(smin**2 + 1) / eps_s - torch.log(smax**2 + 1)) / (eps_s - 1)
    beta_min = torch.log(smax**2 + 1) - 0.5 * beta_d
    t = ((beta_min**2 + 2 * beta_d * torch.log(sigmas**2 + 1)).sqrt() - beta_min) / beta_d
    return t, beta_min, beta_d + beta_min


def deis_coefficients(sigmas: Tensor, max_order: int = 3, n: int = 10000) -> list[list[float]]:
    """DEIS "tab" weights (Zhang & Chen 2023): for step i of order k = min(i + 1, max_order), weight j of
    d_{i-j} is the integral over [t_i, t_{i+1}] of l_j(tau) dsigma/dtau, l_j the Lagrange basis through
    t_i, ..., t_{i-k+1}, dsigma/dtau = -(1/2) dlog(alpha)/dtau / sqrt(alpha (1 - alpha)),
    alpha(tau) = exp(-tau^2 (beta_1 - beta_0) / 2 - tau beta_0), by a Riemann sum over n points
    (linspace including both ends, times (t_{i+1} - t_i) / n) as ComfyUI does. Order-1 steps and steps
    into sigma 0 get [] (they are Euler steps). Precision follows the sigmas (float32 as ComfyUI; float64 in tests).
    """
    dtype = torch.float64 if sigmas.dtype == torch.float64 else torch.float32
    sig = sigmas.detach().cpu().to(dtype)
    t, beta_0, beta_1 = _deis_vp_time(sig)
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    t = t.to(dtype).numpy().astype(np_dtype)
    beta_0, beta_1 = np_dtype(float(beta_0)), np_dtype(float(beta_1))
    table: list[list[float]] = []
    for i in range(len(sig) - 1):
        order = min(i + 1, max_order)
        if order == 1 or float(sig[i + 1]) <= 0:
            table.append([])
            continue
        taus = np.linspace(t[i], t[i + 1], n, dtype=np_dtype)
        dtau = (t[i + 1] - t[i]) / np_dtype(n)
        alpha = np.exp(np_dtype(-0.5) * taus**2 * (beta_1 - beta_0) - taus * beta_0)
        dlog_alpha = -(taus * (beta_1 - beta_0) + beta_0)
        dsigma_dtau = np_dtype(-0.5) * dlog_alpha / np.sqrt(alpha * (1 - alpha))
        nodes = [t[i - k] for k in range(order)]
        row = []
        for j in range(order):
            basis = np.ones_like(taus)
            for k in range(order):
                if k != j:
                    basis = basis * (taus - nodes[k]) / (nodes[j] - nodes[k])
            row.append(float(np.sum(dsigma_dtau * basis) * dtau))
        table.append(row)
    return table


def sample_deis(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: Callback | None = None,
                noise: NoiseSampler | None = None, max_order: int = 3) -> Tensor:
    """DEIS, tAB variant (Zhang & Chen 2023): multistep with weights integrated in the VP time of EDM's schedule."""
    s = sigma_list(sigmas)
    table = deis_coefficients(sigmas, max_order)
    history: list[Tensor] = []
    for i in range(len(s) - 1):
        sigma, sigma_next = s[i], s[i + 1]
        denoised = denoise_at(model, x, sigma)
        report(callback, i, sigmas, x, denoised)
        d = derivative(x, sigma, denoised)
        order = 1 if sigma_next <= 0 else min(max_order, i + 1)
        if order == 1:
            x_next = x + (sigma_next - sigma) * d
        else:
            slopes = [d] + history[::-1][: order - 1]
            x_next = x + sum(w * g for w, g in zip(table[i], slopes))
        history = (history + [d])[-(max_order - 1):]
        x = x_next
    return x


# -- exponential-integrator multistep and gradient estimation ------------------------------------------------


def _phi_1(z: float) -> float:
    return math.expm1(z) / z


def _phi_2(z: float) -> float:
    return (_phi_1(z) - 1.0) / z


def sample_res_multistep(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: Callback | None = None,
                         noise: NoiseSampler | None = None) -> Tensor:
    """RES second-order multistep (Zhang et al. 2023, arXiv 2308.02157) in lambda = -log sigma, Euler to start."""
    s = sigma_list(sigmas)
    old_denoised: Tensor | None = None
    for i in range(len(s) - 1):
        sigma, sigma_next = s[i], s[i + 1]
        denoised = denoise_at(model, x, sigma)
        report(callback, i, sigmas, x, denoised)
        if sigma_next == 0 or old_denoised is None:
            x = x + derivative(x, sigma, denoised) * (sigma_next - sigma)
        else:
            h = math.log(sigma / sigma_next)  # lambda_next - lambda
            c2 = math.log(sigma / s[i - 1]) / h  # (lambda_prev - lambda) / h = -h_last / h
            phi_1, phi_2 = _phi_1(-h), _phi_2(-h)
            b1 = phi_1 - phi_2 / c2
            b2 = phi_2 / c2
            if not math.isfinite(b1):  # ComfyUI's nan_to_num
                b1 = 0.0
            if not math.isfinite(b2):
                b2 = 0.0
            # x_next = e^{-h} x + h (b1 D_i + b2 D_{i-1})
            x = math.exp(-h) * x + h * (b1 * denoised + b2 * old_denoised)
        old_denoised = denoised
    return x


def sample_gradient_estimation(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: Callback | None = None,
                               noise: NoiseSampler | None = None, ge_gamma: float = 2.0) -> Tensor:
    """Gradient estimation (Permenter & Yuan 2024): Euler with the slope extrapolated, d + (gamma - 1)(d - d_prev)."""
    s = sigma_list(sigmas)
    old_d: Tensor | None = None
    for i in range(len(s) - 1):
        sigma, sigma_next = s[i], s[i + 1]
        denoised = denoise_at(model, x, sigma)
        d = derivative(x, sigma, denoised)
        report(callback, i, sigmas, x, denoised)
        dt = sigma_next - sigma
        if sigma_next == 0:
            x = denoised
        else:
            x = x + d * dt
            if old_d is not None:
                x = x + (ge_gamma - 1) * (d - old_d) * dt
        old_d = d
    return x


def sample_exp_heun_2_x0(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: Callback | None = None,
                         noise: NoiseSampler | None = None) -> Tensor:
    """Exponential Heun in data prediction and lambda = -log sigma (SEEDS-2 with r = 1, eta = 0, phi_2; Gonzalez et al. 2023)."""
    s = sigma_list(sigmas)
    for i in range(len(s) - 1):
        sigma, sigma_next = s[i], s[i + 1]
        denoised = denoise_at(model, x, sigma)
        report(callback, i, sigmas, x, denoised)
        if sigma_next == 0:
            x = denoised
            continue
        h = math.log(sigma / sigma_next)
        ratio = sigma_next / sigma  # e^{-h}
        # e^{-h} x - (e^{-h} - 1) D, written as D + e^{-h} (x - D): no cancellation when e^{-h} >> 1 (unsampling)
        x_2 = denoised + ratio * (x - denoised)  # first-order (DDIM) step to sigma_next
        denoised_2 = denoise_at(model, x_2, sigma_next)
        b2 = (math.expm1(-h) + h) / (-h)  # h phi_2(-h); b1 = (e^{-h} - 1) - b2
        # x_next = e^{-h} x - (b1 D + b2 D_2) = D + e^{-h} (x - D) - b2 (D_2 - D)
        x = denoised + ratio * (x - denoised) - b2 * (denoised_2 - denoised)
    return x
