"""Null-text inversion (Mokady, Hertz, Aberman, Pritch & Cohen-Or, "Null-text Inversion for Editing Real
Images using Guided Diffusion Models", CVPR 2023).

1. Pivot: a cfg-1 inversion x*₀ (= the latent), x*₁, …, x*_N on the resampler's own sigmas (the paper
   uses DDIM inversion; we solve each step with `fixed_point` at cfg 1, `pivot_iterations` evaluations,
   so the pivot is what the cfg-1 resampler maps back).
2. From x̄_N = x*_N, for each sampling step σ = σᵢ₊₁ → σᵢ (Δ′ = σᵢ − σᵢ₊₁), optimise the unconditional
   embedding ∅ᵢ (initialised from ∅ᵢ₊₁, the first from the negative prompt's embedding) so that the
   cfg-w Euler/DDIM step lands on the pivot:

       min over ∅  ‖x̄ᵢ₊₁ + Δ′ d_w(x̄ᵢ₊₁, σ; ∅) − x*ᵢ‖² / ‖x*ᵢ‖²   (per batch item, summed),
       D_w = D(·; ∅) + w (D(·; c) − D(·; ∅)),

   until the step's relative residual r = ‖step − x*ᵢ‖ / ‖x*ᵢ‖ (worst batch item) is <= `tol`, or after
   `inner_steps` optimiser steps. A step that stops above `tol` is reported (`Inversion.step_converged`,
   `.residuals`, an `InversionWarning`), as `fixed_point` does. Then x̄ᵢ = x̄ᵢ₊₁ + Δ′ d_w(x̄ᵢ₊₁, σ; ∅ᵢ).
   optimizer="newton_cg" (default): Newton steps solved by conjugate gradients, Hessian-vector products by
   differences of gradients, so the step length follows the curvature whatever the embedding's scale; on a
   model whose D(·; ∅) is affine in ∅ the objective is quadratic and one Newton step reaches float
   rounding. `inner_steps` bounds the forward + backward passes per step (gradients and products).
   optimizer="adam": the paper's setting, Adam at learning rate lr (1 − k/(2N)) on sampling step k (its
   1e-2 (1 − k/100) over 50 steps), also stopping once the loss < `early_stop` (the paper's 1e-5 on its
   mean squared error, which it lets grow by 2e-5 per step; we keep it fixed) or r <= tol; `lr` and
   `early_stop` are Adam's only. On an exact conditional Gaussian whose embedding sets the mean of every
   dimension (cfg 5, 10 Euler steps; tests/test_inversion_null_text.py prints the numbers) Adam's 10 steps
   at lr 1e-2 stop short of the pivot on every step; newton_cg reaches float32 rounding in one Newton step.
3. The resampling side uses ∅ᵢ as the negative on step i; reconstruction ends at x̄₀ ≈ the latent.

Gradients flow through the network into ∅ only (the weights stay frozen); the engine samples under
inference_mode, this module switches autograd on around the optimisation. `grad_steps` counts the
forward passes taken with autograd (each followed by a backward unless it met the early stop);
`nfe` counts the others (pivot, D(·; c) once per step, the residual checks). `residuals[k]` is the
relative residual r of sampling step k after each optimiser step (first entry: with the initial ∅).
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor

from ..guidance import to_conditioning
from ..guidance import EvalCounter, GuidedDenoiser
from ..models.base import Conditioning
from ..samplers.base import report, to_d
from .base import InversionWarning, MethodResult, Option, Problem, ResampleCall, bound_schedule, custom_resample, rel_residual
from .fixed_point import fixed_point_path

Optimizer = Literal["newton_cg", "adam"]
NULL_TEXT_OPTIONS = dict(
    optimizer=Option("newton_cg", str, choices=("newton_cg", "adam")),
    inner_steps=Option(10, int, low=0, high=math.inf), tol=Option(1e-5, float, low=0.0, high=math.inf, low_open=True),
    lr=Option(1e-2, float, low=0.0, high=math.inf, low_open=True),
    early_stop=Option(1e-5, float, low=0.0, high=math.inf), pivot_iterations=Option(5, int, low=1, high=math.inf),
)


def guided_euler_step(x: Tensor, sigma: Tensor, sigma_next: Tensor, *, cond_denoised: Tensor, uncond_denoised: Tensor,
                      cfg: float) -> Tensor:
    """x + (σ′ − σ) d_w(x, σ) with D_w = D_∅ + w (D_c − D_∅) (the resampler's Euler step)."""
    denoised = uncond_denoised + cfg * (cond_denoised - uncond_denoised)
    return x + to_d(x, sigma, denoised) * (sigma_next - sigma).to(x.dtype)


def null_text_loss(uncond: Callable[[Tensor], Tensor], embeds: Tensor, x: Tensor, sigma: Tensor, sigma_next: Tensor,
                   target: Tensor, *, cond_denoised: Tensor, cfg: float, scale: float) -> tuple[Tensor, Tensor]:
    """The per-step objective: mean (scale (step(x; ∅ = embeds) − target))²; returns (loss, the step's state).

    `uncond(embeds)` is D(x, σ; ∅ = embeds), differentiable in `embeds`.
    """
    x_next = guided_euler_step(x, sigma, sigma_next, cond_denoised=cond_denoised, uncond_denoised=uncond(embeds), cfg=cfg)
    return ((x_next - target) * scale).pow(2).mean(), x_next


def _adam(loss_of: Callable[[Tensor], tuple[Tensor, Tensor]], e0: Tensor, target: Tensor, *, steps: int, lr: float,
          early_stop: float, tol: float) -> tuple[Tensor, list[float]]:
    """The paper's inner loop: Adam steps until the loss < early_stop or the residual <= tol (residual before each)."""
    emb = e0.clone().requires_grad_(True)
    opt = torch.optim.Adam([emb], lr=lr)
    res: list[float] = []
    with torch.inference_mode(False), torch.enable_grad():
        for _ in range(steps):
            loss, x_next = loss_of(emb)
            res.append(rel_residual(x_next.detach() - target, target))
            if float(loss.detach()) < early_stop or res[-1] <= tol:
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return emb.detach(), res


def _newton_cg(loss_of: Callable[[Tensor], tuple[Tensor, Tensor]], evaluate: Callable[[Tensor], tuple[float, Tensor]],
               e0: Tensor, *, steps: int, tol: float) -> tuple[Tensor, list[float], Tensor]:
    """Newton-CG on the loss until the residual <= tol or `steps` gradient evaluations are spent.

    Each outer iteration takes the gradient g at e, then conjugate gradients on H p = −g with Hessian-vector
    products by differences of gradients, H d ≈ (∇f(e + h d) − g) / h (exact up to rounding where D(·; ∅) is
    affine in ∅, as on the test's Gaussian), h d as long as the Gauss-Newton step 2 f / ‖g‖ so the difference
    stands far above rounding; then e + p if it lowers the residual, else e + p/2, e + p/4, then the
    gradient step to zero loss under linearisation, −(f/‖g‖²) g, and its quarter and sixteenth; it stops
    when none lowers the residual.
    Returns the best embedding, the residual after each outer iteration (first: e0's) and its step."""
    def grad(e: Tensor) -> tuple[float, Tensor]:
        with torch.inference_mode(False), torch.enable_grad():
            e = e.detach().clone().requires_grad_(True)
            loss = loss_of(e)[0]
            (g,) = torch.autograd.grad(loss, e)
        return float(loss), g.detach()

    def dot(a: Tensor, b: Tensor) -> float:
        return float((a.double() * b.double()).sum())

    e = e0.detach().clone()
    r, out = evaluate(e)
    res, spent = [r], 0
    while r > tol and spent < steps and math.isfinite(r):
        f, g = grad(e)
        spent += 1
        gg = dot(g, g)
        if not gg > 0:
            break
        length = 2 * f / gg**0.5
        p, rr = torch.zeros_like(e), -g
        d, rr2 = rr.clone(), gg
        while spent < steps:
            h = length / dot(d, d) ** 0.5
            hd = (grad(e + h * d)[1] - g) / h
            spent += 1
            curv = dot(d, hd)
            if not curv > 0:
                break
            alpha = rr2 / curv
            p = p + alpha * d
            rr = rr - alpha * hd
            new = dot(rr, rr)
            if new <= 1e-12 * gg:
                break
            d, rr2 = rr + (new / rr2) * d, new
        polyak = -(f / gg) * g  # the gradient step to zero loss under linearisation, for when Newton's fails
        for step in (p, 0.5 * p, 0.25 * p, polyak, 0.25 * polyak, 0.0625 * polyak):
            r_try, out_try = evaluate(e + step)
            if r_try < r:
                e, r, out = e + step, r_try, out_try
                break
        else:
            res.append(r)
            break
        res.append(r)
    return e, res, out


def invert_null_text(problem: Problem, *, optimizer: Optimizer, inner_steps: int, tol: float, lr: float,
                     early_stop: float, pivot_iterations: int) -> MethodResult:
    from tqdm.auto import tqdm

    from ..errors import UnsamplingError

    if optimizer == "newton_cg" and (lr != NULL_TEXT_OPTIONS["lr"].default
                                     or early_stop != NULL_TEXT_OPTIONS["early_stop"].default):
        raise UnsamplingError("null_text: lr and early_stop are Adam's (the paper's setting); pass optimizer='adam' "
                              "with them, or leave them out (newton_cg takes its step length from the curvature and stops "
                              "at tol)")

    model, ms = problem.model, problem.model.model_sampling
    sigmas = problem.resampler_sigmas()  # ascending, sigmas[0] = 0
    n = len(sigmas) - 1
    pivots: list[Tensor] = []
    fixed_point_path(problem, problem.denoiser(cfg=1.0), sigmas, iterations=pivot_iterations, tol=1e-5, record=pivots)
    pivots = [p.clone() for p in pivots]  # out of inference mode, so autograd may use them

    b = problem.latent_in.shape[0]
    pos = to_conditioning(model, problem.positive, batch_size=b, name="positive").to(model.device)
    neg = to_conditioning(model, problem.negative, batch_size=b, name="negative").to(model.device)
    latent_in = problem.latent_in.clone()
    mask = None if problem.mask is None else problem.mask.clone()
    cond_den = GuidedDenoiser(model, pos, None, 1.0, latent=latent_in, mask=mask, counter=problem.counter,
                              outer_cfg=problem.cfg)
    grad_counter = EvalCounter()
    embeds = neg.embeds.detach().clone()
    x = pivots[n]
    per_step: list[Tensor] = []
    residuals: list[list[float]] = []
    converged: list[bool] = []
    with tqdm(total=n, desc="invert (null_text)", disable=not problem.progress, leave=False) as bar:
        for k in range(n):
            hi, lo = sigmas[n - k], sigmas[n - k - 1]
            sigma_b = x.new_full([b], float(hi))
            target = pivots[n - k - 1]
            scale = float(ms.calculate_input(lo.reshape(1), torch.ones(1, dtype=torch.float64)))
            rel_scale = target.numel() ** 0.5 / max(float(target.norm()), 1e-30)
            with torch.no_grad():
                cond_out = cond_den(x, sigma_b)

            def uncond(e: Tensor, counter: EvalCounter = grad_counter) -> Tensor:
                den = GuidedDenoiser(model, Conditioning(e, neg.pooled), None, 1.0, latent=latent_in, mask=mask,
                                     counter=counter, outer_cfg=problem.cfg)
                return den(x, sigma_b)

            def loss_of(e: Tensor) -> tuple[Tensor, Tensor]:
                return null_text_loss(uncond, e, x, hi, lo, target, cond_denoised=cond_out, cfg=problem.cfg,
                                      scale=scale if optimizer == "adam" else rel_scale)

            def evaluate(e: Tensor) -> tuple[float, Tensor]:
                with torch.no_grad():
                    out = guided_euler_step(x, hi, lo, cond_denoised=cond_out, cfg=problem.cfg,
                                            uncond_denoised=uncond(e, problem.counter))
                return rel_residual(out - target, target), out

            if optimizer == "adam":
                embeds, res = _adam(loss_of, embeds, target, steps=inner_steps, lr=lr * (1.0 - k / (2.0 * n)),
                                    early_stop=early_stop, tol=tol)
                r, x = evaluate(embeds)
                res.append(r)
            else:
                embeds, res, x = _newton_cg(loss_of, evaluate, embeds, steps=inner_steps, tol=tol)
            residuals.append(res)
            converged.append(min(res) <= tol if optimizer == "newton_cg" else res[-1] <= tol)
            per_step.append(embeds)
            bar.update(1)
    bad = [k for k, ok in enumerate(converged) if not ok]
    if bad:
        worst = max(bad, key=lambda k: min(residuals[k]))
        warnings.warn(f"null_text: {len(bad)} of {n} steps did not reach tol {tol:g} (worst: step {worst}, residual "
                      f"{min(residuals[worst]):.3g}); see Inversion.residuals / .nonconverged_steps. More inner_steps, "
                      "optimizer='newton_cg' or more sampling steps may help; a residual that stays put is what "
                      "the model allows (the embedding cannot move the step further)", InversionWarning, stacklevel=3)
    return MethodResult(
        problem.finish(pivots[n], sigmas[-1]), residuals=residuals, step_converged=tuple(converged),
        grad_steps=grad_counter.nfe,
        resampling={"null_embeds": per_step, "pooled": neg.pooled, "sigma_top": float(sigmas[-1]), "state": pivots[n],
                    "reconstruction": x.detach(), **bound_schedule(sigmas.flip(0), "one embedding per step"),
                    "path": torch.stack(pivots).flip(0).cpu()},  # the pivots, descending sigma (ul.edit's direct)
    )


def resample_null_text(call: ResampleCall) -> Any:
    """Euler with ∅ᵢ as the negative on step i (the call's positive and cfg, so an edit is one call)."""
    data = call.inversion.resampling
    embeds, pooled = data["null_embeds"], data["pooled"]

    def loop(model: Any, x: Tensor, sigmas: Tensor, *, callback=None, noise=None) -> Tensor:
        for i in range(len(sigmas) - 1):
            den = dataclasses.replace(model, negative=Conditioning(embeds[i], pooled))
            denoised = den(x, x.new_full([x.shape[0]], float(sigmas[i])))
            report(callback, i, sigmas, x, denoised)
            x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i]).to(x.dtype)
        return x

    return custom_resample(call, loop, name="null_text")
