"""Edit-friendly noise-map inversion for stochastic samplers (Huberman-Spiegelglas, Kulikov & Michaeli, "An Edit
Friendly DDPM Noise Space: Inversion and Manipulations", CVPR 2024, arXiv 2304.06140; CycleDiffusion, Wu & De la
Torre 2023, is the same idea).

Every stochastic sampler here takes its step from σᵢ down to σᵢ₊₁ (resample order) as

    xᵢ₊₁ = Φᵢ(xᵢ; n¹ᵢ … nᵐ⁻¹ᵢ) + cᵢ nᵐᵢ

affine in the step's last draw nᵐᵢ, which enters after the step's evaluations (ancestral: cᵢ = σ_up, or the
flow renoise std; DPM-Solver++ SDE: σᵢ₊₁ √(1 − e^{−2ηh}); DDPM: the posterior std × √(1 + σᵢ₊₁²); LCM: σᵢ₊₁).
The paper draws the states independently from the forward process,

    x̂ᵢ = noise_scaling(σᵢ, εᵢ, x₀) = x₀ + σᵢ εᵢ (VP),  (1 − σᵢ) x₀ + σᵢ εᵢ (flow),   εᵢ ~ N(0, I) independent,

and solves each step for the draw that lands exactly on the next state (its zₜ = (xₜ₋₁ − μₜ(xₜ)) / σₜ):

    nᵐᵢ = (x̂ᵢ₊₁ − Φᵢ(xᵢ; …)) / cᵢ.

A step's earlier draws (the first stage of dpmpp_sde, seeds_2/3) are drawn fresh and recorded. The step into
σ = 0 draws no noise in ComfyUI's samplers: its miss x₀ − Φ(x̂) is stored and added after it (the paper's z₁,
whose σ₁ is tiny). Resampling runs the sampler's own function with the recorded draws replayed in call order
(a `NoiseSampler`, no noise seed), so it passes through every x̂ᵢ: with the source prompt it reproduces the
latent up to rounding, with another prompt or cfg it edits it (the noise maps carry the structure).

Φᵢ and cᵢ are not written out per sampler: the sampler's own function runs on sigmas[: i + 2] with the draws so
far and the step's last draw g, then g + 1, its evaluations memoised by call order (no extra network
evaluations): cᵢ = out(g + 1) − out(g) and nᵐᵢ = g + (x̂ᵢ₊₁ − out(g)) / cᵢ. The memo checks that each replay
evaluates the model at exactly the earlier points, so a step that evaluated after its last draw would fail
loudly. The replays cost O(N²) tensor arithmetic; `nfe` is one sampling run's.

The paper's T_skip is the call's `end_at_step` (inversion stops there, resampling starts there). Options:
eta (the sampler's own eta, for the samplers that take one; 1 otherwise), seed (the εᵢ and the extra draws).
"""
from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..errors import UnsamplingError
from ..samplers import get_sampler
from .base import MethodResult, Option, Problem, ResampleCall, custom_resample

EDIT_FRIENDLY_OPTIONS = dict(eta=Option(1.0, float, low=0.0, high=math.inf, low_open=True),
                             seed=Option(0, int, low=0, high=2**64 - 1))
#: stochastic samplers whose last draw of a step is added after the step's evaluations and that are prefix-consistent
EDIT_FRIENDLY_SAMPLERS = (
    "euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m_sde",
    "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm",
    "lcm", "seeds_2", "seeds_3", "er_sde",
)  # not exp_heun_2_x0_sde: its r = 1 carries the stage's draw to sigma_next, and the step's last draw has weight 0


class _Memo:
    """The denoiser, memoised by call order: a replay must evaluate exactly where the earlier runs did."""

    def __init__(self, denoiser: Any) -> None:
        self.denoiser, self.inputs, self.outputs, self.k = denoiser, [], [], 0
        self.model_sampling = denoiser.model_sampling

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        k, self.k = self.k, self.k + 1
        if k < len(self.outputs):
            if not (torch.equal(x, self.inputs[k][0]) and torch.equal(sigma, self.inputs[k][1])):
                raise UnsamplingError("edit_friendly: the sampler evaluated the model after a step's last noise draw; "
                                      "its step is not affine in that draw, so this method cannot serve it")
            return self.outputs[k]
        out = self.denoiser(x, sigma)
        self.inputs.append((x, sigma))
        self.outputs.append(out)
        return out


def replay_noise(draws: list[Tensor], *, extra: Callable[[], Tensor] | None = None,
                 pairs: list[tuple[float, float]] | None = None,
                 log: list[tuple[float, float]] | None = None) -> Callable[[Tensor, Tensor], Tensor]:
    """A `NoiseSampler` returning `draws` in call order; past their end it calls `extra()` (or refuses).
    With `pairs`, each recorded call's (sigma, sigma_next) must match, so a draw is never fed to another step;
    `log` receives every call's (sigma, sigma_next)."""
    k = 0

    def sample(sigma: Tensor, sigma_next: Tensor) -> Tensor:
        nonlocal k
        k += 1
        if log is not None:
            log.append((float(sigma), float(sigma_next)))
        if k <= len(draws):
            if pairs is not None and not _same_pair(pairs[k - 1], (float(sigma), float(sigma_next))):
                raise UnsamplingError(f"edit_friendly: noise draw {k} was recorded between sigmas {pairs[k - 1]}, but "
                                      f"this run asks between {(float(sigma), float(sigma_next))}")
            return draws[k - 1]
        if extra is None:
            raise UnsamplingError(f"edit_friendly: this run asks for more than the {len(draws)} recorded noise draws")
        return extra()

    return sample


def _same_pair(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return all(abs(u - v) <= 1e-6 * max(1.0, abs(u)) for u, v in zip(a, b))


def sampler_kwargs(sampler_name: str, eta: float) -> dict[str, float]:
    """{'eta': eta} where the sampler's function takes one; eta 1 (their fixed value) is accepted everywhere."""
    takes_eta = "eta" in inspect.signature(get_sampler(sampler_name).fn).parameters
    if takes_eta:
        if not eta > 0:
            raise UnsamplingError(f"edit_friendly: eta must be > 0 (at eta 0 {sampler_name!r} draws no noise to "
                                  f"record; use a deterministic inversion), got {eta}")
        return {"eta": eta}
    if eta != 1.0:
        with_eta = [n for n in EDIT_FRIENDLY_SAMPLERS if "eta" in inspect.signature(get_sampler(n).fn).parameters]
        raise UnsamplingError(f"edit_friendly: sampler {sampler_name!r} has no eta option (it runs at eta 1); "
                              f"leave eta=1.0 or use one of {', '.join(with_eta)}")
    return {}


def invert_edit_friendly(problem: Problem, *, eta: float, seed: int) -> MethodResult:
    """See the module docstring."""
    ms = problem.model.model_sampling
    spec = get_sampler(problem.sampler_name, family=ms.family)
    kwargs = sampler_kwargs(problem.sampler_name, eta)
    sigmas = problem.resampler_sigmas().flip(0)  # descending: the resample's own sigmas
    x0 = problem.latent_in
    gen = torch.Generator().manual_seed(seed)

    def gaussian() -> Tensor:
        return torch.randn(tuple(x0.shape), generator=gen, dtype=torch.float32).to(x0.device, x0.dtype)

    states = [ms.noise_scaling(sigmas[i], gaussian(), x0) if sigmas[i] > 0 else x0 for i in range(len(sigmas))]
    memo = _Memo(problem.denoiser())
    draws: list[Tensor] = []
    pairs: list[tuple[float, float]] = []
    correction: Tensor | None = None

    def run(upto: int, step_draws: list[Tensor]) -> Tensor:
        memo.k = 0
        fresh = iter(step_draws)
        noise = replay_noise(draws, extra=lambda: next(fresh))
        return spec.fn(memo, states[0], sigmas[: upto + 2], callback=None, noise=noise, **kwargs)

    with torch.inference_mode():
        for i in range(len(sigmas) - 1):
            before = len(draws)
            seen: list[tuple[float, float]] = []
            step_draws: list[Tensor] = []

            def extra() -> Tensor:
                step_draws.append(gaussian())
                return step_draws[-1]

            memo.k = 0
            out = spec.fn(memo, states[0], sigmas[: i + 2], callback=None,
                          noise=replay_noise(draws, extra=extra, log=seen), **kwargs)
            new = seen[before:]
            target = states[i + 1]
            if not new:
                if sigmas[i + 1] > 0:
                    raise UnsamplingError(f"edit_friendly: {problem.sampler_name!r} drew no noise on its step to sigma "
                                          f"{float(sigmas[i + 1]):.4g}, so no noise can place it on the next state")
                correction = target - out
                continue
            g = step_draws[-1]
            c = run(i, step_draws[:-1] + [g + 1]) - out
            if not bool((c.abs() > 0).all()):
                raise UnsamplingError(f"edit_friendly: {problem.sampler_name!r}'s last draw on the step to sigma "
                                      f"{float(sigmas[i + 1]):.4g} has no effect; cannot solve for it")
            draws.extend(step_draws[:-1] + [g + (target - out) / c])
            pairs.extend(new)
    sigma_top = float(sigmas[0])
    return MethodResult(
        problem.finish(states[0], sigma_top), nfe=len(memo.outputs),
        resampling={"draws": draws, "pairs": pairs, "correction": correction, "state": states[0],
                    "sigma_top": sigma_top, "sigmas": sigmas.cpu(), "states": states, "sampler_kwargs": kwargs},
    )


def resample_edit_friendly(call: ResampleCall) -> Any:
    """The inversion's sampler with its recorded draws replayed (any prompt and cfg), plus the final miss."""
    inv = call.inversion
    data = inv.resampling
    if call.sampler_name != inv.params["sampler_name"]:
        raise UnsamplingError(f"edit_friendly recorded the noise draws of {inv.params['sampler_name']!r}; resample with "
                              f"sampler_name={inv.params['sampler_name']!r}, not {call.sampler_name!r}")
    spec = get_sampler(call.sampler_name)

    def loop(model: Any, x: Tensor, sigmas: Tensor, *, callback=None, noise=None) -> Tensor:
        stored = data["sigmas"]
        if len(sigmas) != len(stored) or not torch.allclose(sigmas.cpu().to(stored.dtype), stored, rtol=1e-6, atol=0):
            raise UnsamplingError(
                f"edit_friendly recorded one noise map per step of its {len(stored) - 1}-step schedule; resample with "
                f"the inversion's steps={inv.params['steps']}, scheduler={inv.params['scheduler']!r} and "
                "start_at_step = its end_at_step, down to sigma 0")
        out = spec.fn(model, x, sigmas, callback=callback, noise=replay_noise(data["draws"], pairs=data["pairs"]),
                      **data["sampler_kwargs"])
        return out if data["correction"] is None else out + data["correction"].to(out)

    return custom_resample(call, loop, name=f"edit_friendly/{spec.name}", evals_per_step=spec.evals_per_step)
