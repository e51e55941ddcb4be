"""Inversion methods for flow (rectified-flow) models: x = (1 − σ) x₀ + σ n, d(x, σ) = v the velocity.

rf_solver (Wang et al., "Taming Rectified Flow for Inversion and Editing", ICML 2025): a second-order
    Taylor step whose derivative of v is a finite difference over half a step,
        x′ = x + Δ v + ½ Δ² (v(x + ½Δ v, σ + ½Δ) − v) / (½Δ) = x + Δ v(x + ½Δ v(x, σ), σ + ½Δ),
    i.e. the explicit midpoint step, on inversion (ascending, the Unsampler's sigmas) and on
    resampling (descending). 2 evaluations per step.
fireflow (Deng et al., "FireFlow: Fast Inversion of Rectified Flow for Image Semantic Editing",
    ICML 2025): the midpoint step with the half step driven by the previous step's midpoint velocity,
        x_mid = x + ½Δ v_mid,prev,   v_mid = v(x_mid, σ + ½Δ),   x′ = x + Δ v_mid,
    so one evaluation per step (+1 for the first step's v(x, σ)).
rf_inversion (Rout et al., "Semantic Image Inversion and Editing using Rectified Stochastic
    Differential Equations", ICLR 2025): a controlled ODE. Inversion drifts towards a fixed noise ξ,
        v ← (1 − γ) v + γ (ξ − x)/(1 − σ)     (γ = 0: plain Euler inversion; γ = 1: lands on ξ exactly,
                                              since x′ − ξ = (x − ξ)(1 − σ′)/(1 − σ) telescopes to 0 at σ = 1)
    and resampling drifts towards the source latent y₀ on the steps in the window [start, stop) (fractions
    of the resampling steps):  v ← (1 − η) v + η (x − y₀)/σ  (η = 1 over all steps lands on y₀ exactly).
    Euler steps, one evaluation each. The paper inverts with the null prompt; here the call's prompts and
    cfg are used as given (pass positive="" for the paper's setting).

Inversion runs on the Unsampler's sigmas (flipped schedule + 1e-4, clamped to 1: evaluated at σ₀ > 0);
resampling on `resample`'s.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..engine import run_sampler
from ..errors import UnsamplingError
from ..samplers.base import denoise_at, report, to_d
from .base import MethodResult, Option, Problem, ResampleCall, as_sampler_spec, custom_resample

RF_SOLVER_OPTIONS: dict[str, Option] = {}
FIREFLOW_OPTIONS: dict[str, Option] = {}
_FRACTION = dict(low=0.0, high=1.0)
RF_INVERSION_OPTIONS = dict(gamma=Option(0.5, float, **_FRACTION), eta=Option(0.9, float, **_FRACTION),
                            start=Option(0.0, float, **_FRACTION), stop=Option(0.25, float, **_FRACTION),
                            seed=Option(0, int, low=0, high=2**64 - 1))  # torch.Generator.manual_seed's range


def _v(model: Any, x: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
    denoised = denoise_at(model, x, sigma)
    return to_d(x, sigma, denoised), denoised


def sample_midpoint(model: Any, x: Tensor, sigmas: Tensor, *, callback=None, noise=None) -> Tensor:
    """RF-Solver's step: x + Δ v(x + ½Δ v(x, σ), σ + ½Δ), either direction."""
    for i in range(len(sigmas) - 1):
        sigma, dt = sigmas[i], sigmas[i + 1] - sigmas[i]
        v, denoised = _v(model, x, sigma)
        report(callback, i, sigmas, x, denoised)
        x_mid = x + (dt / 2).to(x.dtype) * v
        x = x + dt.to(x.dtype) * _v(model, x_mid, sigma + dt / 2)[0]
    return x


def sample_fireflow(model: Any, x: Tensor, sigmas: Tensor, *, callback=None, noise=None) -> Tensor:
    """FireFlow's step: the midpoint step with the previous midpoint velocity as the half step's slope."""
    v_prev: Tensor | None = None
    for i in range(len(sigmas) - 1):
        sigma, dt = sigmas[i], sigmas[i + 1] - sigmas[i]
        if v_prev is None:
            v_prev, denoised = _v(model, x, sigma)
        else:
            denoised = x - sigma.to(x.dtype) * v_prev  # the x0 estimate the reused slope stands for
        report(callback, i, sigmas, x, denoised)
        x_mid = x + (dt / 2).to(x.dtype) * v_prev
        v_prev = _v(model, x_mid, sigma + dt / 2)[0]
        x = x + dt.to(x.dtype) * v_prev
    return x


def _explicit(problem: Problem, name: str, loop: Any, evals: int) -> tuple[Tensor, Tensor]:
    sigmas = problem.unsampler_sigmas()
    x = run_sampler(as_sampler_spec(name, loop, evals), problem.denoiser(), problem.start(sigmas[0]), sigmas, callback=None,
                    progress=problem.progress, noise_seed=None, desc="invert")
    return x, sigmas


def invert_rf_solver(problem: Problem) -> MethodResult:
    x, sigmas = _explicit(problem, "rf_solver", sample_midpoint, 2)
    return MethodResult(problem.finish(x, sigmas[-1]))


def invert_fireflow(problem: Problem) -> MethodResult:
    x, sigmas = _explicit(problem, "fireflow", sample_fireflow, 1)
    return MethodResult(problem.finish(x, sigmas[-1]))


def resample_rf_solver(call: ResampleCall) -> Any:
    return custom_resample(call, sample_midpoint, name="rf_solver", evals_per_step=2)


def resample_fireflow(call: ResampleCall) -> Any:
    return custom_resample(call, sample_fireflow, name="fireflow")


def invert_rf_inversion(problem: Problem, *, gamma: float, eta: float, start: float, stop: float,
                        seed: int) -> MethodResult:
    if start > stop:  # each option's own range is checked where every option is (base.check_option_values)
        raise UnsamplingError(f"rf_inversion: the window needs start <= stop; got start={start}, stop={stop}")
    shape = problem.latent_in.shape
    xi = torch.randn(tuple(shape), generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
    xi = xi.to(problem.model.device, problem.latent_in.dtype)

    def loop(model: Any, x: Tensor, sigmas: Tensor, *, callback=None, noise=None) -> Tensor:
        for i in range(len(sigmas) - 1):
            sigma, dt = sigmas[i], (sigmas[i + 1] - sigmas[i]).to(x.dtype)
            v, denoised = _v(model, x, sigma)
            report(callback, i, sigmas, x, denoised)
            if gamma:
                v = (1 - gamma) * v + gamma * (xi - x) / (1 - sigma).to(x.dtype)
            x = x + dt * v
        return x

    x, sigmas = _explicit(problem, "rf_inversion", loop, 1)
    return MethodResult(problem.finish(x, sigmas[-1]),
                        resampling={"source": problem.latent_in, "xi": xi})


def resample_rf_inversion(call: ResampleCall) -> Any:
    """Euler with v ← (1 − η) v + η (x − y₀)/σ on the steps in [start, stop) of this resample."""
    opts = call.inversion.options
    eta, source = opts["eta"], call.inversion.resampling["source"]

    def loop(model: Any, x: Tensor, sigmas: Tensor, *, callback=None, noise=None) -> Tensor:
        n = len(sigmas) - 1
        first, last = round(opts["start"] * n), round(opts["stop"] * n)
        for i in range(n):
            sigma, dt = sigmas[i], (sigmas[i + 1] - sigmas[i]).to(x.dtype)
            v, denoised = _v(model, x, sigma)
            report(callback, i, sigmas, x, denoised)
            if eta and first <= i < last:
                v = (1 - eta) * v + eta * (x - source.to(x)) / sigma.to(x.dtype)
            x = x + dt * v
        return x

    return custom_resample(call, loop, name="rf_inversion")
