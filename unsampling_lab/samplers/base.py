"""What every sampler shares: the denoiser it calls, the step record it reports, its registry entry.

A sampler is a plain function (k-diffusion's shape, typed and keyword-only):

    fn(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: Callback | None = None,
       noise: NoiseSampler | None = None) -> Tensor

`model(x, sigma)` returns the denoised estimate x0; `sigma` is a tensor of shape [B].
`sigmas` may ascend (unsampling) or descend (sampling) and need not end at 0: update rules are
written direction-agnostic. Samplers hold no state between calls, draw no randomness except
from `noise`, and never look inside the model.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from ..errors import UnsamplingError

Denoiser = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Step:
    """One step as a sampler reports it: the state `x` at `sigma` (before the update), the model's
    denoised estimate at that point, and the sigma the step goes to."""

    i: int
    sigma: float
    sigma_next: float
    x: Tensor
    denoised: Tensor


Callback = Callable[[Step], None]


class NoiseSampler(Protocol):
    """Seeded noise for stochastic samplers: a fresh standard-normal tensor shaped like the state."""

    def __call__(self, sigma: Tensor, sigma_next: Tensor) -> Tensor: ...


class SamplerFn(Protocol):
    def __call__(
        self,
        model: Denoiser,
        x: Tensor,
        sigmas: Tensor,
        *,
        callback: Callback | None = None,
        noise: NoiseSampler | None = None,
    ) -> Tensor: ...


@dataclass(frozen=True)
class SamplerSpec:
    """A sampler's registry entry.

    deterministic: injects no noise, so it can run backwards (unsample accepts it).
    discard_penultimate_sigma: ComfyUI computes steps + 1 sigmas and drops the second-to-last.
    prefix_consistent: running it on sigmas[:k+1] gives exactly the state after k steps of a run on
        the full sigmas (no rule looks at the total length), so one trajectory serves every
        end_at_step.
    evals_per_step: model evaluations per step (first-step and last-step exceptions aside).
    """

    name: str
    fn: SamplerFn
    deterministic: bool
    order: int
    evals_per_step: int = 1
    discard_penultimate_sigma: bool = False
    prefix_consistent: bool = True
    note: str = ""


def report(callback: Callback | None, i: int, sigmas: Tensor, x: Tensor, denoised: Tensor) -> None:
    """Call `callback` with step i's record (no-op without a callback)."""
    if callback is not None:
        callback(Step(i, float(sigmas[i]), float(sigmas[i + 1]), x, denoised))


def to_d(x: Tensor, sigma: Tensor | float, denoised: Tensor) -> Tensor:
    """The probability-flow ODE's derivative dx/dsigma = (x - denoised) / sigma (k-diffusion's `to_d`)."""
    return (x - denoised) / (sigma.to(x.dtype) if isinstance(sigma, Tensor) else sigma)


# -- helpers shared by the samplers (additions; the interfaces above are fixed) -------------------------


def sigma_list(sigmas: Tensor) -> list[float]:
    """The sigmas as Python floats, for the scalar coefficient algebra (exact for float32 and float64)."""
    return [float(s) for s in sigmas.detach().cpu().reshape(-1)]


def denoise_at(model: Denoiser, x: Tensor, sigma: Tensor | float) -> Tensor:
    """The model's denoised estimate at a scalar `sigma` (given to the model as a [B] tensor in x's dtype)."""
    return model(x, x.new_full([x.shape[0]], sigma))


def require_noise(noise: NoiseSampler | None, name: str) -> NoiseSampler:
    """Stochastic samplers draw all their randomness from `noise`; refuse to run without it."""
    if noise is None:
        raise UnsamplingError(
            f"sampler {name!r} injects noise at every step and needs a noise sampler: pass "
            f"noise=seeded_noise(x, seed) (unsampling_lab.samplers.base.seeded_noise) to make the run reproducible"
        )
    return noise


def seeded_noise(x: Tensor, seed: int) -> NoiseSampler:
    """Reproducible noise for stochastic samplers: standard normals drawn on the CPU in float32 from
    `torch.Generator().manual_seed(seed)`, then moved to x's device and dtype, so CPU and CUDA runs agree.
    Each call draws the next tensor of the stream (one generator for the whole run)."""
    generator = torch.Generator().manual_seed(int(seed))
    shape, device, dtype = x.shape, x.device, x.dtype

    def sample(sigma: Tensor, sigma_next: Tensor) -> Tensor:
        return torch.randn(shape, generator=generator, dtype=torch.float32).to(device=device, dtype=dtype)

    return sample
