"""What every sampler shares: the denoiser it calls, the step record it reports, its registry entry.

A sampler is a plain function (k-diffusion's shape, typed and keyword-only):

    fn(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: Callback | None = None,
       noise: NoiseSampler | None = None) -> Tensor

`model(x, sigma)` returns the denoised estimate x0; `sigma` is a tensor of shape [B].
`sigmas` may ascend (unsampling) or descend (sampling) and need not end at 0: update rules are
written direction-agnostic. Samplers hold no state between calls, draw no randomness except
from `noise`, and never look inside the model.

What a sampler may read off the denoiser, as data (both optional; a plain callable is a VP model
without guidance):
- `model.model_sampling`: the model's sigma table (`ModelSampling`). Its `family` ("vp" / "flow")
  picks the update rule where ComfyUI has a flow (CONST) form, and flow samplers in half-logSNR
  form read `percent_to_sigma` from it (`family_of`, `half_log_snr`, `offset_first_sigma`).
- `model.with_uncond(x, sigma) -> (denoised, uncond_denoised)`: the guided estimate and the
  unconditional one, for the CFG++ samplers (ComfyUI hands them the uncond through a post-cfg hook).
  Without it the denoiser is its own unconditional estimate (`denoise_with_uncond`).

`noise` is either a `NoiseSampler` (any callable; tests pass their own) or a `NoiseSeed`, from
which each sampler builds the noise ComfyUI builds for it from `extra_args["seed"]`: per-step
Gaussians (`default_noise_sampler`) or a Brownian tree (`BrownianTreeNoiseSampler`).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from ..errors import UnsamplingError
from ..model_sampling import FAMILIES, Family, ModelSampling

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
        noise: "NoiseSampler | NoiseSeed | None" = None,
    ) -> Tensor: ...


@dataclass(frozen=True)
class SamplerSpec:
    """A sampler's registry entry.

    deterministic: injects no noise (unsample accepts it when it also `runs_upwards`).
    discard_penultimate_sigma: ComfyUI computes steps + 1 sigmas and drops the second-to-last.
    prefix_consistent: running it on sigmas[:k+1] gives exactly the state after k steps of a run on
        the full sigmas (no rule looks at the total length), so one trajectory serves every
        end_at_step.
    evals_per_step: model evaluations per step (first-step and last-step exceptions aside).
    families: the model families it gives the right distribution on ("vp": eps / v, "flow": CONST);
        the engine refuses it on the others. Where ComfyUI has a flow form the sampler picks it from
        `model.model_sampling.family`.
    runs_upwards: a deterministic sampler whose rule also holds on ascending sigmas (all but heunpp2);
        `INVERTIBLE_SAMPLERS` are the deterministic ones that run upwards and follow the sigmas.
    steps_follow_sigmas: one step (and one reported `Step`) per interval of the given sigmas, which the
        Unsampler's end_at_step and trajectories rely on; dpm_fast / dpm_adaptive choose their own steps.
    evaluates_between_sigmas: the model families on which it calls the model at sigmas other than the given
        ones: midpoints (dpm_2, dpmpp_sde, seeds_2, ...) and steps of its own (dpm_fast, dpm_adaptive) on both;
        on flow models only, a first sigma of 1 moved to `percent_to_sigma(1e-4)` (`offset_first_sigma`:
        exp_heun_2_x0, the SDE samplers) or a flow-only midpoint. Direct Inversion (`ul.edit(direct=...)`) pins the
        source branch at the schedule's sigmas and refuses a sampler on these families. Measured per family for
        every entry (at its default options) by tests/test_sampler_evaluations.py.
    inversion_caveats: per family, why unsampling with it is poor there (measured); the engine warns
        (`UnsamplingWarning`) when it unsamples a model of that family with this sampler.
    needs_uncond: a CFG++ sampler, which reads the unconditional estimate through
        `model.with_uncond`; the engine then evaluates the negative prompt even at cfg 1, as ComfyUI's
        `disable_cfg1_optimization` does.
    """

    name: str
    fn: SamplerFn
    deterministic: bool
    order: int
    evals_per_step: int = 1
    discard_penultimate_sigma: bool = False
    prefix_consistent: bool = True
    families: frozenset[Family] = frozenset(FAMILIES)  # type: ignore[assignment]
    needs_uncond: bool = False
    inversion_caveats: Mapping[Family, str] = field(default_factory=dict)
    runs_upwards: bool = True
    steps_follow_sigmas: bool = True
    evaluates_between_sigmas: frozenset[Family] = frozenset()
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


def denoise_with_uncond(model: Denoiser, x: Tensor, sigma: Tensor | float) -> tuple[Tensor, Tensor]:
    """(denoised, uncond_denoised) at a scalar `sigma` for the CFG++ samplers (Chung et al. 2024):
    `model.with_uncond` where the denoiser has it (guidance), else the denoiser is its own uncond."""
    s = x.new_full([x.shape[0]], sigma)
    pair = getattr(model, "with_uncond", None)
    if pair is None:
        denoised = model(x, s)
        return denoised, denoised
    return pair(x, s)


def denoise_pair(model: Denoiser, x: Tensor, sigma: Tensor | float, *, cfg_pp: bool) -> tuple[Tensor, Tensor]:
    """(guided estimate, the estimate a step integrates): with `cfg_pp` (CFG++) the second is the unconditional
    one (`denoise_with_uncond`), otherwise the guided estimate itself. A variant is this flag, not a copied loop."""
    if cfg_pp:
        return denoise_with_uncond(model, x, sigma)
    denoised = denoise_at(model, x, sigma)
    return denoised, denoised


# -- model family, half-logSNR (ComfyUI's sigma_to_half_log_snr and friends) -----------------------------


def model_sampling_of(model: Denoiser) -> ModelSampling | None:
    """The sigma table the denoiser carries (`model.model_sampling`), None for a bare callable."""
    return getattr(model, "model_sampling", None)


def family_of(model: Denoiser) -> Family:
    """The denoiser's model family: its sigma table's `family`; "vp" for a bare callable."""
    ms = model_sampling_of(model)
    return "vp" if ms is None else ms.family


def half_log_snr(sigma: Tensor, family: Family) -> Tensor:
    """lambda = log(alpha / sigma_t): VP -log sigma (alpha = 1 in our VE state), flow log((1 - sigma) / sigma)."""
    return sigma.logit().neg() if family == "flow" else sigma.log().neg()


def half_log_snr_to_sigma(lam: Tensor, family: Family) -> Tensor:
    """Inverse of `half_log_snr`: VP exp(-lambda), flow sigmoid(-lambda)."""
    return lam.neg().sigmoid() if family == "flow" else lam.neg().exp()


def offset_first_sigma(model: Denoiser, sigmas: Tensor, percent_offset: float = 1e-4) -> Tensor:
    """ComfyUI's `offset_first_sigma_for_snr`: on a flow model a first sigma >= 1 (logSNR -inf) becomes
    `percent_to_sigma(1e-4)`; other sigmas and VP models are unchanged."""
    ms = model_sampling_of(model)
    if len(sigmas) <= 1 or ms is None or ms.family != "flow" or not bool(sigmas[0] >= 1):
        return sigmas
    sigmas = sigmas.clone()
    sigmas[0] = ms.percent_to_sigma(percent_offset)
    return sigmas


# -- ancestral splits (k-diffusion's get_ancestral_step and ComfyUI's rectified-flow form) ----------------------


def ancestral_step(sigma, sigma_next, eta: float = 1.0):  # type: ignore[no-untyped-def]
    """k-diffusion's `get_ancestral_step` (floats or 0-d tensors): sigma_down^2 + sigma_up^2 = sigma_next^2 with
    sigma_up = min(sigma_next, eta sqrt(sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2)); eta 0 gives (sigma_next, 0)."""
    if not eta:
        return sigma_next, 0.0
    sigma_up = min(sigma_next, eta * (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5)
    sigma_down = (sigma_next**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def _rf_ancestral_step(sigma: Tensor, sigma_next: Tensor, eta: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """ComfyUI's rectified-flow ancestral split: sigma_down = sigma_next (1 + (sigma_next / sigma - 1) eta),
    alpha = 1 - sigma, and the renoise std sqrt(sigma_next^2 - sigma_down^2 alpha_next^2 / alpha_down^2), so that
    (alpha_next / alpha_down) x_down + renoise n has the flow marginal at sigma_next.
    Returns (sigma_down, alpha_next, alpha_down, renoise)."""
    sigma_down = sigma_next * (1 + (sigma_next / sigma - 1) * eta)
    alpha_next, alpha_down = 1 - sigma_next, 1 - sigma_down
    renoise = (sigma_next**2 - sigma_down**2 * alpha_next**2 / alpha_down**2) ** 0.5
    return sigma_down, alpha_next, alpha_down, renoise


def _rf_midpoint(sigma: Tensor, sigma_down: Tensor) -> Tensor:
    """The midpoint in lambda = log((1 - sigma) / sigma) between sigma and sigma_down, as ComfyUI's RF 2S
    computes it (sigmoid written 1 / (e^lambda + 1)); 0.9999 when sigma is exactly 1 (lambda = -inf)."""
    if sigma == 1.0:
        return sigma.new_tensor(0.9999)
    t_i, t_down = ((1 - sigma) / sigma).log(), ((1 - sigma_down) / sigma_down).log()
    s = t_i + 0.5 * (t_down - t_i)
    return (s.exp() + 1) ** -1


# -- noise, seeded as ComfyUI seeds it -----------------------------------------------------------------------


@dataclass(frozen=True)
class NoiseSeed:
    """The noise seed a sampler is run with (ComfyUI's `extra_args["seed"]`, the KSampler's noise_seed).

    Each stochastic sampler turns it into the noise ComfyUI's does: `gaussian` for the ancestral
    samplers, `brownian` for the SDE samplers (dpmpp_sde, dpmpp_2m_sde, dpmpp_3m_sde and their _gpu forms).
    """

    seed: int

    def gaussian(self, x: Tensor) -> NoiseSampler:
        """ComfyUI's `default_noise_sampler(x, seed)`: one generator on x's device, seeded with seed + 1 on
        the CPU (so the stream is not the starting noise, which `prepare_noise` draws from `seed`) and seed
        on other devices; each call draws the next `torch.randn(x.size())` in x's dtype on x's device."""
        seed = self.seed + 1 if x.device == torch.device("cpu") else self.seed
        generator = torch.Generator(device=x.device).manual_seed(seed)
        size, dtype, layout, device = x.size(), x.dtype, x.layout, x.device

        def sample(sigma: Tensor, sigma_next: Tensor) -> Tensor:
            return torch.randn(size, dtype=dtype, layout=layout, device=device, generator=generator)

        return sample

    def brownian(self, x: Tensor, sigmas: Tensor, *, cpu: bool) -> NoiseSampler:
        """ComfyUI's `BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed, cpu=cpu)` over the run's sigmas
        (smallest positive to largest): a torchsde BrownianTree with entropy `seed`, on the CPU (`cpu`) or
        x's device; a call returns W(sigma_next) - W(sigma) / sqrt|sigma_next - sigma|, a standard normal."""
        import torchsde

        t0, t1 = sigmas[sigmas > 0].min(), sigmas.max()
        w0 = torch.zeros_like(x)
        if cpu:
            t0, w0, t1 = t0.detach().cpu(), w0.detach().cpu(), t1.detach().cpu()
        tree = torchsde.BrownianTree(t0, w0, t1, entropy=self.seed)

        def sample(sigma: Tensor, sigma_next: Tensor) -> Tensor:
            a, b = torch.as_tensor(sigma), torch.as_tensor(sigma_next)
            lo, hi, sign = (a, b, 1) if a < b else (b, a, -1)
            device, dtype = lo.device, lo.dtype
            if cpu:
                lo, hi = lo.detach().cpu().float(), hi.detach().cpu().float()
            w = tree(lo, hi).to(device=device, dtype=dtype) * sign
            return w / (b - a).abs().sqrt()

        return sample


def gaussian_noise(noise: "NoiseSampler | NoiseSeed | None", x: Tensor, name: str) -> NoiseSampler:
    """The per-step Gaussian noise of an ancestral sampler: from a `NoiseSeed` as ComfyUI draws it, or the given sampler."""
    noise = require_noise(noise, name)
    return noise.gaussian(x) if isinstance(noise, NoiseSeed) else noise


def brownian_noise(noise: "NoiseSampler | NoiseSeed | None", x: Tensor, sigmas: Tensor, name: str, *,
                   cpu: bool) -> NoiseSampler:
    """The Brownian-tree noise of an SDE sampler: from a `NoiseSeed` as ComfyUI builds it, or the given sampler."""
    noise = require_noise(noise, name)
    return noise.brownian(x, sigmas, cpu=cpu) if isinstance(noise, NoiseSeed) else noise


def require_noise(noise: "NoiseSampler | NoiseSeed | None", name: str) -> "NoiseSampler | NoiseSeed":
    """Stochastic samplers draw all their randomness from `noise`; refuse to run without it."""
    if noise is None:
        raise UnsamplingError(
            f"sampler {name!r} injects noise at every step and needs a noise sampler: pass "
            f"noise=NoiseSeed(seed) (unsampling_lab.samplers.base) to make the run reproducible as ComfyUI's"
        )
    return noise


def seeded_noise(x: Tensor, seed: int) -> NoiseSampler:
    """ComfyUI's per-step noise for `seed` (`NoiseSeed(seed).gaussian(x)`, its `default_noise_sampler`)."""
    return NoiseSeed(int(seed)).gaussian(x)
