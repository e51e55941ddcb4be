"""Sigma schedules, named as ComfyUI's `KSampler.SCHEDULERS`.

Each scheduler is a pure function `(model_sampling, steps) -> sigmas`: `steps + 1` (or fewer for
`beta`) descending float32 sigmas ending in 0. `sigma_schedule` adds what ComfyUI's KSampler adds
on top: the extra step that some samplers take and throw away.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .errors import check_choice, check_int
from .model_sampling import ModelSampling

SchedulerFn = Callable[[ModelSampling, int], Tensor]


def _append_zero(sigmas: list[float] | Tensor) -> Tensor:
    sigmas = torch.as_tensor(sigmas, dtype=torch.float32)
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def normal(ms: ModelSampling, steps: int) -> Tensor:
    """Uniform in timestep from timestep(sigma_max) to timestep(sigma_min), mapped through sigma(t)."""
    start = ms.timestep(torch.tensor(ms.sigma_max))
    end = ms.timestep(torch.tensor(ms.sigma_min))
    append_zero = True
    if math.isclose(float(ms.sigma(end)), 0.0, abs_tol=1e-5):
        steps, append_zero = steps + 1, False
    timesteps = torch.linspace(float(start), float(end), steps)
    sigmas = [float(ms.sigma(t)) for t in timesteps]
    return _append_zero(sigmas) if append_zero else torch.tensor(sigmas, dtype=torch.float32)


def sgm_uniform(ms: ModelSampling, steps: int) -> Tensor:
    """Like `normal` over steps + 1 timesteps with the last one dropped (SGM's uniform spacing)."""
    start = ms.timestep(torch.tensor(ms.sigma_max))
    end = ms.timestep(torch.tensor(ms.sigma_min))
    timesteps = torch.linspace(float(start), float(end), steps + 1)[:-1]
    return _append_zero([float(ms.sigma(t)) for t in timesteps])


def simple(ms: ModelSampling, steps: int) -> Tensor:
    """Every (len/steps)-th entry of the table, from the top: sigma_i = table[-(1 + int(i * len / N))]."""
    stride = len(ms.sigmas) / steps
    return _append_zero([float(ms.sigmas[-(1 + int(i * stride))]) for i in range(steps)])


def ddim_uniform(ms: ModelSampling, steps: int) -> Tensor:
    """Table entries 1, 1 + stride, ... (stride = len // N), reversed; the first is below sigma_max."""
    sigmas: list[float] = []
    if math.isclose(float(ms.sigmas[1]), 0.0, abs_tol=1e-5):
        steps += 1
    else:
        sigmas = [0.0]
    stride = max(len(ms.sigmas) // steps, 1)
    sigmas += [float(s) for s in ms.sigmas[1::stride]]
    return torch.tensor(sigmas[::-1], dtype=torch.float32)


def karras(ms: ModelSampling, steps: int, *, rho: float = 7.0) -> Tensor:
    """Karras et al. (2022): sigma_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho."""
    ramp = torch.linspace(0, 1, steps)
    min_inv_rho, max_inv_rho = ms.sigma_min ** (1 / rho), ms.sigma_max ** (1 / rho)
    return _append_zero((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho)


def exponential(ms: ModelSampling, steps: int) -> Tensor:
    """Uniform in log sigma from sigma_max to sigma_min."""
    return _append_zero(torch.linspace(math.log(ms.sigma_max), math.log(ms.sigma_min), steps).exp())


def beta(ms: ModelSampling, steps: int, *, alpha: float = 0.6, beta_: float = 0.6) -> Tensor:
    """Timesteps at the Beta(alpha, beta) quantiles (Lee et al. 2024); repeated timesteps dropped."""
    import numpy as np
    from scipy import stats

    total = len(ms.sigmas) - 1
    ts = np.rint(stats.beta.ppf(1 - np.linspace(0, 1, steps, endpoint=False), alpha, beta_) * total)
    sigmas, last = [], None
    for t in ts:
        if t != last:
            sigmas.append(float(ms.sigmas[int(t)]))
        last = t
    return _append_zero(sigmas)


def linear_quadratic(ms: ModelSampling, steps: int, *, threshold_noise: float = 0.025) -> Tensor:
    """Linear then quadratic in 1 - sigma/sigma_max (Movie Gen / Mochi); half the steps linear."""
    if steps == 1:
        schedule = [1.0, 0.0]
    else:
        linear_steps = steps // 2
        linear = [i * threshold_noise / linear_steps for i in range(linear_steps)]
        diff = linear_steps - threshold_noise * steps
        quadratic_steps = steps - linear_steps
        quadratic_coef = diff / (linear_steps * quadratic_steps**2)
        linear_coef = threshold_noise / linear_steps - 2 * diff / (quadratic_steps**2)
        const = quadratic_coef * linear_steps**2
        quadratic = [quadratic_coef * i**2 + linear_coef * i + const for i in range(linear_steps, steps)]
        schedule = [1.0 - x for x in linear + quadratic + [1.0]]
    return torch.tensor(schedule, dtype=torch.float32) * torch.tensor(ms.sigma_max, dtype=torch.float32)


def kl_optimal(ms: ModelSampling, steps: int) -> Tensor:
    """sigma_i = tan(r atan(sigma_min) + (1 - r) atan(sigma_max)), r = i/(N-1) (Align Your Steps).

    At N = 1 ComfyUI divides 0 by 0 and returns NaN; the one-step schedule is [sigma_max, 0].
    """
    if steps == 1:
        return _append_zero([ms.sigma_max])
    r = torch.arange(steps, dtype=torch.float32) / (steps - 1)
    return _append_zero((r * math.atan(ms.sigma_min) + (1 - r) * math.atan(ms.sigma_max)).tan())


@dataclass(frozen=True)
class SchedulerSpec:
    name: str
    fn: SchedulerFn
    uses_table: bool  # reads the model's sigma table beyond sigma_min / sigma_max


_SPECS = (
    SchedulerSpec("simple", simple, True),
    SchedulerSpec("sgm_uniform", sgm_uniform, True),
    SchedulerSpec("karras", karras, False),
    SchedulerSpec("exponential", exponential, False),
    SchedulerSpec("ddim_uniform", ddim_uniform, True),
    SchedulerSpec("beta", beta, True),
    SchedulerSpec("normal", normal, True),
    SchedulerSpec("linear_quadratic", linear_quadratic, False),
    SchedulerSpec("kl_optimal", kl_optimal, False),
)
SCHEDULER_SPECS: dict[str, SchedulerSpec] = {s.name: s for s in _SPECS}
SCHEDULERS: tuple[str, ...] = tuple(SCHEDULER_SPECS)


def calculate_sigmas(ms: ModelSampling, scheduler: str, steps: int) -> Tensor:
    """`scheduler`'s descending sigmas for `steps` steps (ComfyUI `calculate_sigmas`)."""
    check_choice(scheduler, SCHEDULERS, what="scheduler")
    return SCHEDULER_SPECS[scheduler].fn(ms, check_int("steps", steps, minimum=1))


def sigma_schedule(ms: ModelSampling, scheduler: str, steps: int, *, discard_penultimate: bool = False) -> Tensor:
    """The sigmas ComfyUI's KSampler uses: for some samplers (dpm_2, uni_pc, ...) the schedule for
    steps + 1 with the second-to-last sigma removed. Memoized per table (sweeps and sliders ask
    for the same schedule again and again); the caller gets its own copy."""
    return _sigma_schedule(ms, scheduler, steps, discard_penultimate).clone()


@functools.lru_cache(maxsize=256)
def _sigma_schedule(ms: ModelSampling, scheduler: str, steps: int, discard_penultimate: bool) -> Tensor:
    if discard_penultimate:
        sigmas = calculate_sigmas(ms, scheduler, steps + 1)
        return torch.cat([sigmas[:-2], sigmas[-1:]])
    return calculate_sigmas(ms, scheduler, steps)
