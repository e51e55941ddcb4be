"""FlowEdit: inversion-free editing of flow models (Kulikov, Kleiner, Huberman-Spiegelglas & Michaeli, "FlowEdit:
Inversion-Free Text-Based Editing Using Pre-Trained Flow Models", ICCV 2025, arXiv 2412.08629).

Flow states x = (1 − σ) x₀ + σ n, v(x, σ; c) = (x − D)/σ the guided velocity. With X the source latent,
the edit Z starts at Z = X on the resampling schedule's step N − n_max (σ₀ = its sigma) and takes Euler
steps of the averaged velocity difference (n_avg fresh noises per step):

    Z_src = (1 − σ) X + σ N,   Z_tar = Z + Z_src − X,   N ~ N(0, I)
    Z ← Z + (σ′ − σ) · mean over N of [ v(Z_tar, σ; target, cfg_tar) − v(Z_src, σ; source, cfg_src) ]

down to σ = 0 (the paper's n_min = 0). Nothing is inverted: `ul.invert(..., method="flowedit")` costs no
evaluation and returns the source latent as `.noise`; the source prompt and cfg are the invert call's,
the target prompt and cfg the resample call's (`ul.resample(model, inv, positive=target, cfg=13.5,
steps=50)`), so it fits sweeps and the store as every method does. Target = source (prompt and cfg) gives
a zero difference at Z = X: the source comes back unchanged.

Closed form on an exact Gaussian flow model (x₀ ~ N(μ_c, s²) per dimension, the prompt moving only the
mean; guidance gives the mean μ_w = μ_∅ + w (μ_c − μ_∅)). Then v(x, σ) = A(σ) x + B(σ; μ) is affine in x
with A shared by both prompts, so the difference A (Z − X) + B(μ_tar) − B(μ_src) does not depend on N and
the paper's ODE dZ/dσ = A (Z − X) + ΔB is linear. x = (1 − σ) μ solves dx/dσ = A x + B(μ), and the
homogeneous solutions scale as r(σ) = √((1 − σ)² s² + σ²) (the Gaussian flow invariant), so with
W = Z − X, W(σ₀) = 0:

    W(σ) = (μ_tar − μ_src) [ (1 − σ) − (1 − σ₀) r(σ)/r(σ₀) ],   Z(0) = X + (μ_tar − μ_src)(1 − (1 − σ₀) s / r(σ₀)).

The Euler steps above converge to it at first order (tests/test_inversion_flowedit.py).
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..engine import guided_denoiser, keep_unmasked, run_sampler, wrap
from ..errors import UnsamplingError
from ..inputs import on_off, read_latent
from ..samplers.base import denoise_at, report, to_d
from .base import MethodResult, Option, Problem, ResampleCall, as_sampler_spec

FLOWEDIT_OPTIONS = dict(n_max=Option(33, int, low=1, high=math.inf), n_avg=Option(1, int, low=1, high=math.inf),
                        seed=Option(0, int, low=0, high=2**64 - 1))  # the paper: n_max 33 of 50 steps, n_avg 1


def invert_flowedit(problem: Problem, *, n_max: int, n_avg: int, seed: int) -> MethodResult:
    """Nothing to invert: keep the source latent and the source prompts and cfg for the resampling side."""
    return MethodResult(problem.latent, nfe=0, resampling={
        "source": problem.latent_in, "positive": problem.positive, "negative": problem.negative, "cfg": problem.cfg})


def flowedit_loop(source_den: Any, source: Tensor, *, n_avg: int, seed: int):  # type: ignore[no-untyped-def]
    """The edit as a sampler loop over descending sigmas: `model` is the target's denoiser, x starts at the source."""
    gen = torch.Generator().manual_seed(seed)

    def loop(model: Any, x: Tensor, sigmas: Tensor, *, callback=None, noise=None) -> Tensor:
        src = source.to(x)
        for i in range(len(sigmas) - 1):
            sigma, dt = sigmas[i], (sigmas[i + 1] - sigmas[i]).to(x.dtype)
            delta = torch.zeros_like(x)
            for _ in range(n_avg):
                n = torch.randn(tuple(x.shape), generator=gen, dtype=torch.float32).to(x)
                z_src = (1 - sigma).to(x.dtype) * src + sigma.to(x.dtype) * n
                z_tar = z_src + (x - src)  # this order: bitwise z_src while the edit is still the source
                d_tar = denoise_at(model, z_tar, sigma)
                delta += to_d(z_tar, sigma, d_tar) - to_d(z_src, sigma, denoise_at(source_den, z_src, sigma))
            report(callback, i, sigmas, x, d_tar)
            x = x + dt * delta / n_avg
        return x

    return loop


def resample_flowedit(call: ResampleCall) -> Any:
    """The edit from the source latent with the call's prompts and cfg as the target (see the module docstring)."""
    inv, model, opts, data = call.inversion, call.model, call.inversion.options, call.inversion.resampling
    if on_off("add_noise", call.add_noise):
        raise UnsamplingError("flowedit starts from the source latent itself; add_noise must be off")
    sigmas = call.sigmas()
    if float(sigmas[-1]) != 0.0:
        raise UnsamplingError("flowedit edits down to sigma 0; leave end_at_step and return_with_leftover_noise alone")
    n_max = opts["n_max"]
    if n_max > len(sigmas) - 1:
        raise UnsamplingError(f"flowedit: n_max={n_max} is more than the {len(sigmas) - 1} steps of this resample; "
                              f"give steps >= {n_max} (the paper: 50 steps, n_max 33) or a smaller n_max")
    sigmas = sigmas[len(sigmas) - 1 - n_max:].to(model.device)
    samples, mask = read_latent(inv.noise, model)
    source = data["source"].to(model.device)
    zeros = torch.zeros_like(source)
    target = guided_denoiser(model, source, mask, cfg=call.cfg, positive=call.positive, negative=call.negative,
                             noise=zeros, counter=call.counter)
    src_den = guided_denoiser(model, source, mask, cfg=data["cfg"], positive=data["positive"],
                              negative=data["negative"], noise=zeros, counter=target.counter)
    loop = flowedit_loop(src_den, source, n_avg=opts["n_avg"], seed=opts["seed"])
    x = run_sampler(as_sampler_spec("flowedit", loop, 2 * opts["n_avg"]), target, source.clone(), sigmas,
             callback=call.callback, progress=call.progress, noise_seed=None, desc="flowedit")
    fmt = model.latent_format  # the edit as a change of the source LATENT: bit for bit the source where Z = X
    out = samples + (fmt.process_out(x) - fmt.process_out(source)).cpu().to(samples.dtype)
    return wrap(keep_unmasked(out, samples, mask), inv.noise)


def closed_form_edit(source: Tensor, mu_src: Tensor, mu_tar: Tensor, std: Tensor, sigma0: float) -> Tensor:
    """Z(0) of the paper's ODE on a Gaussian flow model whose prompts move only the mean (module docstring)."""
    r0 = ((1 - sigma0) ** 2 * std**2 + sigma0**2) ** 0.5
    return source + (mu_tar - mu_src) * (1 - (1 - sigma0) * std / r0)
