"""Deterministic (ODE) samplers. Each runs on ascending or descending sigmas.

All of them integrate the probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma with ComfyUI's update
rules (k-diffusion's, and the diff-sampler ports ComfyUI carries). Scalar coefficients are 0-d tensors
computed from `sigmas[i]` in the sigmas' dtype, with ComfyUI's operations in ComfyUI's order (float32 in
production, float64 in the k-diffusion parity tests): on the Unsampler's first step sigma grows ~300-3000x,
and coefficients such as sigma_next / sigma multiply a cancellation, so float32-vs-float64 coefficient
rounding alone moves results by up to ~1e-3 relative. Exceptions, as in ComfyUI: lms integrates with scipy
on the CPU sigmas, DEIS builds its table on the CPU. The special cases ComfyUI has for a step that ends at
sigma 0 are kept; they only trigger when sampling down to 0, never when unsampling.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import integrate
from torch import Tensor

from .base import (Callback, Denoiser, NoiseSampler, NoiseSeed, ancestral_step, denoise_at, denoise_pair,
                   gaussian_noise, report, to_d)

Noise = NoiseSampler | NoiseSeed | None


def sample_euler(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: Callback | None = None,
                 noise: NoiseSampler | None = None) -> Tensor:
    """Euler's method on the probability-flow ODE (Karras et al. 2022, Algorithm 2 without churn)."""
    for i in range(len(sigmas) - 1):
        denoised = denoise_at(model, x, sigmas[i])
        report(callback, i, sigmas, x, denoised)
        x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i]).to(x.dtype)
    return x


def sample_heun(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: Callback | None = None,
                noise: NoiseSampler | None = None) -> Tensor:
    """Heun's second-order method (Karras et al. 2022, Algorithm 1); a plain Euler step into sigma 0."""
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise_at(model, x, sigma)
        report(callback, i, sigmas, x, denoised)
        d = to_d(x, sigma, denoised)
        dt = sigma_next - sigma
        if sigma_next == 0:
            x = x + d * dt
            continue
        x_2 = x + d * dt
        d_2 = to_d(x_2, sigma_next, denoise_at(model, x_2, sigma_next))
        x = x + (d + d_2) / 2 * dt  # trapezoid: mean of the slopes at both ends
    return x


def sample_dpm_2(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: Callback | None = None,
                 noise: NoiseSampler | None = None) -> Tensor:
    """DPM-Solver-2 in sigma (Lu et al. 2022; k-diffusion): the slope at the log-midpoint sigma_mid = sqrt(sigma*sigma_next)."""
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise_at(model, x, sigma)
        report(callback, i, sigmas, x, denoised)
        d = to_d(x, sigma, denoised)
        if sigma_next == 0:
            x = x + d * (sigma_next - sigma)
            continue
        sigma_mid = sigma.log().lerp(sigma_next.log(), 0.5).exp()  # exp of the mean of the logs
        x_mid = x + d * (sigma_mid - sigma)
        d_mid = to_d(x_mid, sigma_mid, denoise_at(model, x_mid, sigma_mid))
        x = x + d_mid * (sigma_next - sigma)
    return x


def lms_coefficient(s: np.ndarray, i: int, j: int, order: int) -> float:
    """Weight of d_{i-j} in the linear multistep step i: the integral over [s_i, s_{i+1}] of the Lagrange
    basis polynomial l_j through the nodes s_i, s_{i-1}, ..., s_{i-order+1} (l_j(s_{i-j}) = 1), by quadrature.

    `s` is the sigmas as a NumPy array in their own dtype (ComfyUI's `sigmas.cpu().numpy()`): with float32
    sigmas NumPy evaluates the basis in float32 (tau is a Python float), and so do we.
    """
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
    s = sigmas.detach().cpu().numpy()
    ds: list[Tensor] = []  # newest last
    for i in range(len(s) - 1):
        denoised = denoise_at(model, x, sigmas[i])
        ds = (ds + [to_d(x, sigmas[i], denoised)])[-order:]
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


# Fixed-step Adams-Bashforth weights as integer numerators over a common denominator, newest slope first
# (ComfyUI's iPNDM combines the slopes with these integers and divides by the denominator after the step).
_AB_FIXED: dict[int, tuple[tuple[int, ...], int]] = {
    1: ((1,), 1), 2: ((3, -1), 2), 3: ((23, -16, 5), 12), 4: ((55, -59, 37, -9), 24),
}


def _ab_variable(order: int, h: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """iPNDM-v's weights for the step h[0] given the previous steps h[1], h[2], h[3] (Zhang & Chen 2023;
    ComfyUI's port of zju-pi/diff-sampler), as 0-d tensors in ComfyUI's order of operations. Newest slope
    first. Order 2 is the variable-step Adams-Bashforth; the order-4 weights reduce to (57, -65, 43, -11)/24
    on equal steps (third-order accurate), as in ComfyUI."""
    h0, h1 = h[0], h[1]
    a = h0 / h1  # r = h_n / h_{n-1}
    if order == 2:
        return ((2 + a) / 2, -a / 2)
    h2 = h[2]
    # the order-3 correction weight u = (1 - h0^2 / (3 h1 (h1 + h2))) / 2, grouped as ComfyUI does
    u = (1 - h0 / (3 * (h0 + h1)) * (h0 * (h0 + h1)) / (h1 * (h1 + h2))) / 2
    if order == 3:
        return ((2 + a) / 2 + u, -a / 2 - (1 + h1 / h2) * u, u * h1 / h2)
    h3 = h[3]
    q = h1 * (h1 + h2) / (h2 * (h2 + h3))
    v = ((1 - h0 / (3 * (h0 + h1))) / 2 + (1 - h0 / (2 * (h0 + h1))) * h0 / (6 * (h0 + h1 + h2))) \
        * (h0 * (h0 + h1) * (h0 + h1 + h2)) / (h1 * (h1 + h2) * (h1 + h2 + h3))
    return (
        (2 + a) / 2 + u + v,
        -a / 2 - (1 + h1 / h2) * u - (1 + h1 / h2 + q) * v,
        u * h1 / h2 + (h1 / h2 + q * (1 + h2 / h3)) * v,
        -v * q * h1 / h2,
    )


def _ipndm(model: Denoiser, x: Tensor, sigmas: Tensor, callback: Callback | None, *, variable: bool,
           max_order: int = 4) -> Tensor:
    """Shared loop of iPNDM and iPNDM-v: Adams-Bashforth on the slope d = (x - D) / sigma, warming up from Euler."""
    history: list[Tensor] = []  # previous slopes, newest last, at most max_order - 1
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise_at(model, x, sigma)
        report(callback, i, sigmas, x, denoised)
        d = to_d(x, sigma, denoised)
        order = min(max_order, i + 1)
        slopes = [d] + history[::-1][: order - 1]  # newest first
        if sigma_next == 0:
            x_next = denoised
        elif order == 1:
            x_next = x + (sigma_next - sigma) * d
        elif variable:
            steps = tuple(sigmas[i + 1 - k] - sigmas[i - k] for k in range(order))  # h_n, h_{n-1}, ...
            x_next = x + (sigma_next - sigma) * sum(w * g for w, g in zip(_ab_variable(order, steps), slopes))
        else:
            numerators, denominator = _AB_FIXED[order]
            x_next = x + (sigma_next - sigma) * sum(n * g for n, g in zip(numerators, slopes)) / denominator
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


def _deis_vp_time(sigmas: Tensor, *, eps_s: float = 1e-3, sigma_min: float = 0.002,
                  sigma_max: int = 80) -> tuple[Tensor, Tensor, Tensor]:
    """Map sigmas to the time t of the linear VP SDE that DEIS integrates in (diff-sampler's `edm2t`).

    The VP SDE has sigma(t)^2 = exp(beta_d t^2 / 2 + beta_min t) - 1, with beta_d, beta_min fixed by
    sigma(eps_s) = 0.002 and sigma(1) = 80 (EDM's defaults, whatever the model), so
    t(sigma) = (sqrt(beta_min^2 + 2 beta_d log(1 + sigma^2)) - beta_min) / beta_d.
    The constants' dtypes are ComfyUI's (comfy/k_diffusion/deis.py), which NumPy takes the logs of: 0.002 is a
    float, so log(1 + 0.002^2) is float32 (NumPy's float32 log, an ulp off torch's); 80 is an int, so
    log(1 + 80^2) is float64, and with it beta_d, beta_min, beta_0 and beta_1 are 0-d float64 tensors that
    enter the float32 arithmetic on t and the integrand. With float32 constants instead every t differs from
    ComfyUI's in its last bits, and so does every DEIS result. Returns t, beta_0, beta_1.
    """
    log_min = torch.tensor(np.log((torch.tensor(float(sigma_min)) ** 2 + 1).numpy()))
    log_max = torch.tensor(np.log(np.int64(sigma_max) ** 2 + 1))
    beta_d = 2 * (log_min / eps_s - log_max) / (eps_s - 1)
    beta_min = log_max - 0.5 * beta_d
    t = ((beta_min**2 + 2 * beta_d * (sigmas**2 + 1).log()).sqrt() - beta_min) / beta_d
    return t, beta_min, beta_d + beta_min


def _deis_integrand(beta_0: Tensor, beta_1: Tensor, taus: Tensor) -> Tensor:
    """dsigma/dtau = -(1/2) dlog(alpha)/dtau / sqrt(alpha (1 - alpha)), alpha(tau) = exp(-tau^2 (beta_1 - beta_0) / 2
    - tau beta_0), with dlog(alpha)/dtau by autograd through log(alpha) as ComfyUI takes it (same rounding)."""
    with torch.inference_mode(False), torch.enable_grad():
        tau, beta_0, beta_1 = taus.clone().requires_grad_(True), beta_0.clone(), beta_1.clone()
        alpha = torch.exp(-0.5 * tau**2 * (beta_1 - beta_0) - tau * beta_0)
        (dlog_alpha,) = torch.autograd.grad(alpha.log().sum(), tau)
        alpha = alpha.detach()
    return -0.5 * dlog_alpha / torch.sqrt(alpha * (1 - alpha))


def deis_coefficients(sigmas: Tensor, max_order: int = 3, n: int = 10000) -> list[list[Tensor]]:
    """DEIS "tab" weights (Zhang & Chen 2023): for step i of order k = min(i + 1, max_order), weight j of
    d_{i-j} is the integral over [t_i, t_{i+1}] of l_j(tau) dsigma/dtau, l_j the Lagrange basis through
    t_i, ..., t_{i-k+1}, by a Riemann sum over n points (torch.linspace including both ends, torch.sum,
    times (t_{i+1} - t_i) / n) as ComfyUI does. Order-1 steps and steps into sigma 0 get [] (they are Euler
    steps). 0-d tensors in the sigmas' dtype, on the CPU (float32 as in ComfyUI; float64 in tests, where
    ComfyUI's linspace would fall back to float32).
    """
    sig = sigmas.detach().cpu()
    t, beta_0, beta_1 = _deis_vp_time(sig)
    table: list[list[Tensor]] = []
    for i in range(len(sig) - 1):
        order = min(i + 1, max_order)
        if order == 1 or sig[i + 1] <= 0:
            table.append([])
            continue
        taus = torch.linspace(t[i], t[i + 1], n, dtype=t.dtype)
        dtau = (t[i + 1] - t[i]) / n
        integrand = _deis_integrand(beta_0, beta_1, taus)
        nodes = t[[i - k for k in range(order)]]
        row = []
        for j in range(order):
            basis = 1
            for k in range(order):
                if k != j:
                    basis = basis * ((taus - nodes[k]) / (nodes[j] - nodes[k]))
            row.append(torch.sum(integrand * basis) * dtau)
        table.append(row)
    return table


def sample_deis(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: Callback | None = None,
                noise: NoiseSampler | None = None, max_order: int = 3) -> Tensor:
    """DEIS, tAB variant (Zhang & Chen 2023): multistep with weights integrated in the VP time of EDM's schedule."""
    table = deis_coefficients(sigmas, max_order)
    history: list[Tensor] = []
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise_at(model, x, sigma)
        report(callback, i, sigmas, x, denoised)
        d = to_d(x, sigma, denoised)
        order = 1 if sigma_next <= 0 else min(max_order, i + 1)
        if order == 1:
            x_next = x + (sigma_next - sigma) * d
        else:
            x_next = x
            for w, g in zip(table[i], [d] + history[::-1][: order - 1]):  # added one by one, newest first
                x_next = x_next + w.to(sigmas.device) * g
        history = (history + [d])[-(max_order - 1):]
        x = x_next
    return x


# -- exponential-integrator multistep and gradient estimation ------------------------------------------------


def res_multistep(model: Denoiser, x: Tensor, sigmas: Tensor, callback: Callback | None, noise: "Noise", *,
                  eta: float, cfg_pp: bool, name: str, s_noise: float = 1.0) -> Tensor:
    """RES second-order multistep (Zhang et al. 2023, arXiv 2308.02157) in lambda = -log sigma, Euler to start,
    as ComfyUI's `res_multistep`: each step goes to the ancestral sigma_down (sigma_next at eta 0) and adds
    sigma_up fresh noise; with `cfg_pp` the integration uses the uncond estimate (CFG++).

    x_next = e^{-h} x + h (b1 D_i + b2 D_{i-1}),  b1 = phi_1 - phi_2 / c2,  b2 = phi_2 / c2,  c2 = (lambda_{i-1} - lambda_down,{i-1}) / h.
    Coefficients are 0-d tensors in the sigmas' dtype, in ComfyUI's order.
    """
    noise_fn = gaussian_noise(noise, x, name) if eta > 0 else None
    old_denoised: Tensor | None = None
    old_sigma_down: Tensor | None = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised, uncond = denoise_pair(model, x, sigma, cfg_pp=cfg_pp)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        report(callback, i, sigmas, x, denoised)
        if sigma_down == 0 or old_denoised is None:
            if cfg_pp:
                x = denoised + to_d(x, sigma, uncond) * sigma_down
            else:
                x = x + to_d(x, sigma, denoised) * (sigma_down - sigma)
        else:
            lam, lam_old, lam_next, lam_prev = (s.log().neg() for s in (sigma, old_sigma_down, sigma_down, sigmas[i - 1]))
            h = lam_next - lam
            c2 = (lam_prev - lam_old) / h
            phi_1 = torch.expm1(-h) / -h
            phi_2 = (phi_1 - 1.0) / -h
            b1 = torch.nan_to_num(phi_1 - phi_2 / c2, nan=0.0)  # ComfyUI's guard
            b2 = torch.nan_to_num(phi_2 / c2, nan=0.0)
            if cfg_pp:
                x = x + (denoised - uncond)
            x = h.neg().exp() * x + h * (b1 * uncond + b2 * old_denoised)
        if noise_fn is not None and sigma_next > 0:
            x = x + noise_fn(sigma, sigma_next) * s_noise * sigma_up
        old_denoised, old_sigma_down = uncond, sigma_down
    return x


def sample_res_multistep(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: Callback | None = None,
                         noise: "Noise" = None) -> Tensor:
    """RES second-order multistep (Zhang et al. 2023), deterministic (eta 0)."""
    return res_multistep(model, x, sigmas, callback, None, eta=0.0, cfg_pp=False, name="res_multistep")


def sample_res_multistep_cfg_pp(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: Callback | None = None,
                                noise: "Noise" = None) -> Tensor:
    """RES multistep with CFG++ (the uncond estimate integrated, the guidance added before each multistep update)."""
    return res_multistep(model, x, sigmas, callback, None, eta=0.0, cfg_pp=True, name="res_multistep_cfg_pp")


def sample_res_multistep_ancestral(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: Callback | None = None,
                                   noise: "Noise" = None) -> Tensor:
    """RES multistep to the ancestral sigma_down, then fresh noise (eta 1)."""
    return res_multistep(model, x, sigmas, callback, noise, eta=1.0, cfg_pp=False, name="res_multistep_ancestral")


def sample_res_multistep_ancestral_cfg_pp(model: Denoiser, x: Tensor, sigmas: Tensor, *,
                                          callback: Callback | None = None, noise: "Noise" = None) -> Tensor:
    """RES multistep ancestral (eta 1) with CFG++."""
    return res_multistep(model, x, sigmas, callback, noise, eta=1.0, cfg_pp=True,
                         name="res_multistep_ancestral_cfg_pp")


def gradient_estimation(model: Denoiser, x: Tensor, sigmas: Tensor, callback: Callback | None, *, cfg_pp: bool,
                        ge_gamma: float = 2.0) -> Tensor:
    """Gradient estimation (Permenter & Yuan 2024) as ComfyUI's `sample_gradient_estimation`: Euler with the slope
    extrapolated, d + (gamma - 1)(d - d_prev). With `cfg_pp` (CFG++, ComfyUI's cfg_pp=True) the slope d comes
    from the uncond estimate and the Euler part lands on D_cfg + sigma_next d."""
    old_d: Tensor | None = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised, estimate = denoise_pair(model, x, sigma, cfg_pp=cfg_pp)
        d = to_d(x, sigma, estimate)
        report(callback, i, sigmas, x, denoised)
        dt = sigma_next - sigma
        if sigma_next == 0:
            x = denoised
        else:
            x = denoised + d * sigma_next if cfg_pp else x + d * dt
            if old_d is not None:
                x = x + (ge_gamma - 1) * (d - old_d) * dt
        old_d = d
    return x


def sample_gradient_estimation(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: Callback | None = None,
                               noise: NoiseSampler | None = None, ge_gamma: float = 2.0) -> Tensor:
    """Gradient estimation (Permenter & Yuan 2024), gamma 2."""
    return gradient_estimation(model, x, sigmas, callback, cfg_pp=False, ge_gamma=ge_gamma)


def sample_gradient_estimation_cfg_pp(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: Callback | None = None,
                                      noise: NoiseSampler | None = None, ge_gamma: float = 2.0) -> Tensor:
    """Gradient estimation with CFG++ (Chung et al. 2024), gamma 2."""
    return gradient_estimation(model, x, sigmas, callback, cfg_pp=True, ge_gamma=ge_gamma)


def sample_exp_heun_2_x0(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: Callback | None = None,
                         noise: "Noise" = None) -> Tensor:
    """Exponential Heun in data prediction and half-logSNR lambda (SEEDS-2 with r = 1, eta = 0, phi_2; Gonzalez
    et al. 2023), as ComfyUI's `sample_exp_heun_2_x0`: lambda = -log sigma on VP models, log((1 - sigma) / sigma)
    on flow models (whose first sigma 1 becomes `percent_to_sigma(1e-4)`).

    As ComfyUI computes it: the intermediate sigma is sigma(lambda_next), which may differ from sigma_next by
    an ulp, and the first-order part is (sigma_t / sigma_s) x - alpha_t (e^{-h} - 1) D, not D + e^{-h} (x - D):
    on the Unsampler's first step e^{-h} ~ 300-3000 and the two forms round differently (~1e-4 relative),
    both finite; this one is ComfyUI's. A flow step into sigma 1 (alpha_t = 0, lambda_t = -inf: ComfyUI's
    NaN) takes the limit (sigma_t / sigma_s)(x - alpha_s D), one model call.
    """
    from .stochastic import seeds_2

    return seeds_2(model, x, sigmas, callback, None, name="exp_heun_2_x0", eta=0.0, s_noise=0.0, r=1.0,
                   solver_type="phi_2")


def sample_heunpp2(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: Callback | None = None,
                   noise: "Noise" = None) -> Tensor:
    """Heun++ (ComfyUI's `sample_heunpp2`, from Carzit/sd-webui-samplers-scheduler), without churn: up to three
    slopes per step, d at sigma_i, d_2 at sigma_{i+1} after an Euler step, d_3 at sigma_{i+2} after another,
    weighted w2 = sigma_{i+1} / 3 sigma_0, w3 = sigma_{i+2} / 3 sigma_0, w1 = 1 - w2 - w3 (Heun with
    w2 = sigma_{i+1} / 2 sigma_0 on the second-to-last step, Euler on the last). The weights read sigma_0 and
    the final sigma, so it is not prefix-consistent, and on ascending sigmas (sigma_0 ~ 1e-4) they explode.
    """
    s_end = sigmas[-1]
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise_at(model, x, sigma)
        d = to_d(x, sigma, denoised)
        report(callback, i, sigmas, x, denoised)
        dt = sigma_next - sigma
        if sigma_next == s_end:
            x = x + d * dt
            continue
        x_2 = x + d * dt
        d_2 = to_d(x_2, sigma_next, denoise_at(model, x_2, sigma_next))
        if sigmas[i + 2] == s_end:
            w2 = sigma_next / (2 * sigmas[0])
            x = x + (d * (1 - w2) + d_2 * w2) * dt
            continue
        x_3 = x_2 + d_2 * (sigmas[i + 2] - sigma_next)
        d_3 = to_d(x_3, sigmas[i + 2], denoise_at(model, x_3, sigmas[i + 2]))
        w = 3 * sigmas[0]
        w2, w3 = sigma_next / w, sigmas[i + 2] / w
        x = x + ((1 - w2 - w3) * d + w2 * d_2 + w3 * d_3) * dt
    return x
