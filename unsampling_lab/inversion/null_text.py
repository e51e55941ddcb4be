"""Null-text inversion (Mokady, Hertz, Aberman, Pritch & Cohen-Or, "Null-text Inversion for Editing Real
Images using Guided Diffusion Models", CVPR 2023).

1. Pivot: a cfg-1 inversion x*₀ (= the latent), x*₁, …, x*_N on the resampler's own sigmas (the paper
   uses DDIM inversion; we solve each step with `fixed_point` at cfg 1, `pivot_iterations` evaluations,
   so the pivot is what the cfg-1 resampler maps back).
2. From x̄_N = x*_N, for each sampling step σ = σᵢ₊₁ → σᵢ (Δ′ = σᵢ − σᵢ₊₁), optimise the unconditional
   embedding ∅ᵢ (initialised from ∅ᵢ₊₁, the first from the negative prompt's embedding) so that the
   cfg-w Euler/DDIM step lands on the pivot:

       min over ∅  ‖ c_in(σᵢ) (x̄ᵢ₊₁ + Δ′ d_w(x̄ᵢ₊₁, σ; ∅) − x*ᵢ) ‖²,
       D_w = D(·; ∅) + w (D(·; c) − D(·; ∅)),

   with Adam, `inner_steps` steps (paper: 10) at learning rate lr (1 − k/(2N)) on sampling step k
   (the paper's 1e-2 (1 − k/100) over 50 steps), stopping early once the loss < `early_stop` (paper 1e-5;
   it also lets the threshold grow by 2e-5 per step, we keep it fixed). c_in(σ) = 1/√(1 + σ²) for VP
   models (the loss on the network's scale, as the paper's latents), 1 for flow models. Then
   x̄ᵢ = x̄ᵢ₊₁ + Δ′ d_w(x̄ᵢ₊₁, σ; ∅ᵢ).
3. The resampling side uses ∅ᵢ as the negative on step i; reconstruction ends at x̄₀ ≈ the latent.

Gradients flow through the network into ∅ only (the weights stay frozen); the engine samples under
inference_mode, this module switches autograd on around the optimisation. `grad_steps` counts the
forward passes taken with autograd (each followed by a backward unless it met the early stop);
`nfe` counts the others (pivot, D(·; c) once per step, the final step). `residuals[k]` is the
relative residual ‖x̄ᵢ − x*ᵢ‖ / ‖x*ᵢ‖ after each Adam step (first entry: with the initial ∅).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..guidance import to_conditioning
from ..guidance import EvalCounter, GuidedDenoiser
from ..models.base import Conditioning
from ..samplers.base import report, to_d
from .base import MethodResult, Problem, ResampleCall, custom_resample, rel_residual
from .fixed_point import fixed_point_path

NULL_TEXT_OPTIONS = dict(inner_steps=10, lr=1e-2, early_stop=1e-5, pivot_iterations=5)


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


def invert_null_text(problem: Problem, *, inner_steps: int, lr: float, early_stop: float,
                     pivot_iterations: int) -> MethodResult:
    from tqdm.auto import tqdm

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
    cond_den = GuidedDenoiser(model, pos, None, 1.0, latent=latent_in, mask=mask, counter=problem.counter)
    grad_counter = EvalCounter()
    embeds = neg.embeds.detach().clone()
    x = pivots[n]
    per_step: list[Tensor] = []
    residuals: list[list[float]] = []
    with tqdm(total=n, desc="invert (null_text)", disable=not problem.progress, leave=False) as bar:
        for k in range(n):
            hi, lo = sigmas[n - k], sigmas[n - k - 1]
            sigma_b = x.new_full([b], float(hi))
            target = pivots[n - k - 1]
            scale = float(ms.calculate_input(lo.reshape(1), torch.ones(1, dtype=torch.float64)))
            with torch.no_grad():
                cond_out = cond_den(x, sigma_b)

            def uncond(e: Tensor, counter: EvalCounter = grad_counter) -> Tensor:
                den = GuidedDenoiser(model, Conditioning(e, neg.pooled), None, 1.0, latent=latent_in, mask=mask,
                                     counter=counter)
                return den(x, sigma_b)

            emb = embeds.clone().requires_grad_(True)
            opt = torch.optim.Adam([emb], lr=lr * (1.0 - k / (2.0 * n)))
            res: list[float] = []
            with torch.inference_mode(False), torch.enable_grad():
                for _ in range(inner_steps):
                    loss, x_next = null_text_loss(uncond, emb, x, hi, lo, target, cond_denoised=cond_out,
                                                  cfg=problem.cfg, scale=scale)
                    res.append(rel_residual(x_next.detach() - target, target))
                    if float(loss.detach()) < early_stop:
                        break
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
            embeds = emb.detach()
            with torch.no_grad():
                x = guided_euler_step(x, hi, lo, cond_denoised=cond_out, cfg=problem.cfg,
                                      uncond_denoised=uncond(embeds, problem.counter))
            res.append(rel_residual(x - target, target))
            residuals.append(res)
            per_step.append(embeds)
            bar.update(1)
    return MethodResult(
        problem.finish(pivots[n], sigmas[-1]), residuals=residuals, grad_steps=grad_counter.nfe,
        resampling={"null_embeds": per_step, "pooled": neg.pooled, "sigma_top": float(sigmas[-1]), "state": pivots[n],
                    "sigmas": sigmas.flip(0).cpu(), "reconstruction": x.detach(),
                    "path": torch.stack(pivots).flip(0).cpu()},  # the pivots, descending sigma (ul.edit's direct)
    )


def resample_null_text(call: ResampleCall) -> Any:
    """Euler with ∅ᵢ as the negative on step i (the call's positive and cfg, so an edit is one call)."""
    from ..errors import UnsamplingError

    data = call.inversion.resampling
    embeds, pooled = data["null_embeds"], data["pooled"]

    def loop(model: Any, x: Tensor, sigmas: Tensor, *, callback=None, noise=None) -> Tensor:
        stored = data["sigmas"]
        if len(sigmas) != len(stored) or not torch.allclose(sigmas.cpu().to(stored.dtype), stored, rtol=1e-6, atol=0):
            raise UnsamplingError(
                f"null_text has one embedding per step of its {len(stored) - 1}-step schedule; resample with the "
                f"inversion's steps={call.inversion.params['steps']}, scheduler={call.inversion.params['scheduler']!r} "
                "and start_at_step = its end_at_step, down to sigma 0"
            )
        for i in range(len(sigmas) - 1):
            den = dataclasses.replace(model, negative=Conditioning(embeds[i], pooled))
            denoised = den(x, x.new_full([x.shape[0]], float(sigmas[i])))
            report(callback, i, sigmas, x, denoised)
            x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i]).to(x.dtype)
        return x

    return custom_resample(call, loop, name="null_text")
