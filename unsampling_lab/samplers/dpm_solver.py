"""DPM-Solver (Lu et al. 2022, arXiv 2206.00927) with its own time steps: ComfyUI's `dpm_fast` and `dpm_adaptive`.

Both integrate the probability-flow ODE in t = -log sigma with the noise prediction eps = (x - D) / sigma:

    DPM-Solver-1:  x_t = x_s - sigma_t (e^h - 1) eps_s,                          h = t - s
    DPM-Solver-2:  u = x_s - sigma_u (e^{r h} - 1) eps_s,  u at s + r h;  x_t = x_s - sigma_t (e^h - 1) eps_s
                   - sigma_t / (2 r) (e^h - 1) (eps_u - eps_s)
    DPM-Solver-3:  two stages at s + h / 3 and s + 2h / 3 (Lu et al., Algorithm 2's third-order rule)

between the run's two ends only, as ComfyUI calls them: from sigmas[0] to the last sigma (the one before
it when the last is 0, so a sampling run stops at sigma_min with that noise left, as in ComfyUI). dpm_fast
spends the len(sigmas) - 1 evaluations on uniform steps in t (orders 3, ..., 3, then 2, 1 or the remainder);
dpm_adaptive picks its steps by the embedded lower-order error and a PID controller (rtol 0.05, atol 0.0078,
h_init 0.05). At eta 0 (ComfyUI's) both are deterministic and run either way; their steps are not the
schedule's, so the Unsampler's per-step trajectory (end_at_step) does not apply to them.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import Callback, Denoiser, NoiseSampler, NoiseSeed, Step

Noise = NoiseSampler | NoiseSeed | None


def _sigma(t: Tensor) -> Tensor:
    return t.neg().exp()


def _t(sigma: Tensor) -> Tensor:
    return -sigma.log()


def _eps(model: Denoiser, cache: dict[str, Tensor], key: str, x: Tensor, t: Tensor) -> Tensor:
    """eps at (x, t), evaluated once per key and step (ComfyUI's eps_cache)."""
    if key not in cache:
        cache[key] = (x - model(x, _sigma(t) * x.new_ones([x.shape[0]]))) / _sigma(t)
    return cache[key]


def _step_1(model: Denoiser, x: Tensor, t: Tensor, t_next: Tensor, cache: dict[str, Tensor]) -> Tensor:
    h = t_next - t
    return x - _sigma(t_next) * h.expm1() * _eps(model, cache, "eps", x, t)


def _step_2(model: Denoiser, x: Tensor, t: Tensor, t_next: Tensor, cache: dict[str, Tensor], r1: float = 1 / 2) -> Tensor:
    h = t_next - t
    eps = _eps(model, cache, "eps", x, t)
    s1 = t + r1 * h
    u1 = x - _sigma(s1) * (r1 * h).expm1() * eps
    eps_r1 = _eps(model, cache, "eps_r1", u1, s1)
    return x - _sigma(t_next) * h.expm1() * eps - _sigma(t_next) / (2 * r1) * h.expm1() * (eps_r1 - eps)


def _step_3(model: Denoiser, x: Tensor, t: Tensor, t_next: Tensor, cache: dict[str, Tensor], r1: float = 1 / 3,
            r2: float = 2 / 3) -> Tensor:
    h = t_next - t
    eps = _eps(model, cache, "eps", x, t)
    s1, s2 = t + r1 * h, t + r2 * h
    u1 = x - _sigma(s1) * (r1 * h).expm1() * eps
    eps_r1 = _eps(model, cache, "eps_r1", u1, s1)
    u2 = x - _sigma(s2) * (r2 * h).expm1() * eps - _sigma(s2) * (r2 / r1) * ((r2 * h).expm1() / (r2 * h) - 1) * (eps_r1 - eps)
    eps_r2 = _eps(model, cache, "eps_r2", u2, s2)
    return x - _sigma(t_next) * h.expm1() * eps - _sigma(t_next) / r2 * (h.expm1() / h - 1) * (eps_r2 - eps)


def _ends(sigmas: Tensor) -> tuple[Tensor, Tensor]:
    """ComfyUI's wrapper: (t of sigmas[0], t of the last sigma, or of the one before it when the last is 0)."""
    sigma_end = sigmas[-2] if sigmas[-1] == 0 else sigmas[-1]
    return _t(sigmas[0].clone()), _t(sigma_end.clone())


def _report(callback: Callback | None, i: int, t: Tensor, t_next: Tensor, x: Tensor, eps: Tensor) -> None:
    if callback is not None:
        callback(Step(i, float(_sigma(t)), float(_sigma(t_next)), x, x - _sigma(t) * eps))


def sample_dpm_fast(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: Callback | None = None,
                    noise: Noise = None) -> Tensor:
    """DPM-Solver-fast (Lu et al. 2022): len(sigmas) - 1 evaluations on uniform steps in t between the run's ends."""
    n = len(sigmas) - 1
    if n < 1:
        return x
    t_start, t_end = _ends(sigmas)
    m = math.floor(n / 3) + 1
    ts = torch.linspace(t_start, t_end, m + 1, device=x.device)
    orders = [3] * (m - 2) + [2, 1] if n % 3 == 0 else [3] * (m - 1) + [n % 3]
    step = {1: _step_1, 2: _step_2, 3: _step_3}
    for i, order in enumerate(orders):
        cache: dict[str, Tensor] = {}
        t, t_next = ts[i], ts[i + 1]
        _report(callback, i, t, t_next, x, _eps(model, cache, "eps", x, t))
        x = step[order](model, x, t, t_next, cache)
    return x


class _PID:
    """ComfyUI's PIDStepSizeController (Söderlind's PID step-size control, limiter 1 + atan(x - 1))."""

    def __init__(self, h: float, pcoeff: float, icoeff: float, dcoeff: float, order: float, accept_safety: float,
                 eps: float = 1e-8) -> None:
        self.h = h
        self.b1 = (pcoeff + icoeff + dcoeff) / order
        self.b2 = -(pcoeff + 2 * dcoeff) / order
        self.b3 = dcoeff / order
        self.accept_safety, self.eps = accept_safety, eps
        self.errs: list[float] = []

    def propose_step(self, error: Tensor) -> bool:
        inv_error = 1 / (float(error) + self.eps)
        if not self.errs:
            self.errs = [inv_error, inv_error, inv_error]
        self.errs[0] = inv_error
        factor = self.errs[0] ** self.b1 * self.errs[1] ** self.b2 * self.errs[2] ** self.b3
        factor = 1 + math.atan(factor - 1)
        accept = factor >= self.accept_safety
        if accept:
            self.errs[2], self.errs[1] = self.errs[1], self.errs[0]
        self.h *= factor
        return accept


def sample_dpm_adaptive(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: Callback | None = None,
                        noise: Noise = None, order: int = 3, rtol: float = 0.05, atol: float = 0.0078,
                        h_init: float = 0.05, pcoeff: float = 0.0, icoeff: float = 1.0, dcoeff: float = 0.0,
                        accept_safety: float = 0.81) -> Tensor:
    """DPM-Solver-23 with adaptive steps (Lu et al. 2022): accept a third-order step when its distance to the embedded
    second-order one (r1 = 1/3), in units of max(atol, rtol |x|), is small; the PID controller sets the next h."""
    if len(sigmas) < 2:
        return x
    s, t_end = _ends(sigmas)
    forward = bool(t_end > s)
    h_init = abs(h_init) * (1 if forward else -1)
    atol_t, rtol_t = torch.tensor(atol), torch.tensor(rtol)
    x_prev = x
    pid = _PID(h_init, pcoeff, icoeff, dcoeff, order, accept_safety)
    i = 0
    while s < t_end - 1e-5 if forward else s > t_end + 1e-5:
        cache: dict[str, Tensor] = {}
        t = torch.minimum(t_end, s + pid.h) if forward else torch.maximum(t_end, s + pid.h)
        eps = _eps(model, cache, "eps", x, s)
        if order == 2:
            x_low, x_high = _step_1(model, x, s, t, cache), _step_2(model, x, s, t, cache)
        else:
            x_low, x_high = _step_2(model, x, s, t, cache, r1=1 / 3), _step_3(model, x, s, t, cache)
        delta = torch.maximum(atol_t, rtol_t * torch.maximum(x_low.abs(), x_prev.abs()))
        error = torch.linalg.norm((x_low - x_high) / delta) / x.numel() ** 0.5
        if pid.propose_step(error):
            _report(callback, i, s, t, x, eps)
            i += 1
            x_prev, x, s = x_low, x_high, t
    return x
