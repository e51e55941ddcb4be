"""Methods that change only what the network is told: the plain Unsampler and negative-prompt inversion.

unsampler: ComfyUI's Unsampler, the explicit step xᵢ₊₁ = xᵢ + Δᵢ d(xᵢ, σᵢ) (for euler) on the flipped
    schedule + 1e-4; exactly `ul.unsample`.
negative_prompt (NPI; Miyake et al., "Negative-prompt inversion: fast image inversion for editing with
    text-guided diffusion models", arXiv 2305.16807, 2023): set the unconditional prompt ∅ := c, the
    source prompt. Then D_w = D_∅ + w (D_c − D_∅) = D_c for every w, so inversion and reconstruction
    follow the cfg-1 path at any cfg: inversion runs the Unsampler at cfg 1 (the uncond pass would
    return D_c again), and the resampling side passes the source prompt as the negative, so an edit
    with target prompt c′ samples D_c + w (D_c′ − D_c).
"""
from __future__ import annotations

from typing import Any

from ..engine import run_unsample
from .base import MethodResult, Problem, ResampleCall


def _unsample(problem: Problem, *, cfg: float, negative: Any) -> MethodResult:
    """The engine's Unsampler on the problem's checked inputs; its evaluations count into `problem.counter`.
    The recorded states are kept as the inversion path (descending sigma), which `ul.edit(direct=True)` pins
    the source branch to."""
    noise, traj = run_unsample(problem.model, problem.latent, problem.samples, problem.mask, steps=problem.steps,
                               end_at_step=problem.end_at_step, cfg=cfg, sampler_name=problem.sampler_name,
                               scheduler=problem.scheduler, normalize="disable", positive=problem.positive,
                               negative=negative, progress=problem.progress, counter=problem.counter, record=True)
    return MethodResult(noise, resampling={"path": traj.xs.flip(0).cpu()})


def invert_unsampler(problem: Problem) -> MethodResult:
    """`ul.unsample` itself."""
    return _unsample(problem, cfg=problem.cfg, negative=problem.negative)


def invert_negative_prompt(problem: Problem) -> MethodResult:
    """NPI: the Unsampler with ∅ := c, i.e. at cfg 1 (see the module docstring)."""
    out = _unsample(problem, cfg=1.0, negative=problem.positive)
    out.resampling["source_prompt"] = problem.positive
    return out


def resample_negative_prompt(call: ResampleCall) -> Any:
    """Resample with the source prompt as the negative (∅ := c)."""
    return call.plain(negative=call.inversion.resampling["source_prompt"])
