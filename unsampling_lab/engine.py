"""`unsample` (ComfyUI's Unsampler) and `resample` (ComfyUI's KSamplerAdvanced), outside ComfyUI.

unsample, for steps N and end_at_step k (ComfyUI_Noise's Unsampler node, in its own order):
    end = min(k, N - 1);  sigmas = flip(schedule(N)) + 1e-4;  keep sigmas[: N - end + 1]
    x = latent (zero noise);  run the sampler up the ascending sigmas;  optional normalize.
resample: sigmas = schedule(N)[start_at_step : end_at_step + 1] (last set to 0 unless leftover
noise is kept); start from latent (+ seeded noise with add_noise). unsample(N, k) pairs with
resample(N, start_at_step=k, add_noise=False).

What users pass is checked in `inputs`; the public functions here check it, then run the engine's core
(`run_unsample`, `run_sampler`), which other packages (inversion/) call on inputs they have checked.
An `Inversion` is resampled by `ul.resample` (unsampling_lab.inversion.resample); this module runs LATENTs.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor

from .errors import UnsamplingError, UnsamplingWarning, check_int
from .guidance import EvalCounter, GuidedDenoiser, Prompt, to_conditioning
from .inputs import (  # noqa: F401 (MAX_SEED, prepare_mask: re-exported, engine.prepare_mask)
    MAX_SEED, NORMALIZE_MODES, Latent, Normalize, check_callback, check_cfg, check_model, check_seed, describe_prompt,
    normalize_mode, on_off, prepare_mask, read_latent, unguided,
)
from .models.base import DiffusionModel
from .samplers import Step, get_sampler
from .samplers.base import NoiseSeed, SamplerSpec
from .schedulers import sigma_schedule
from .trajectory import Trajectory, TrajectoryRecorder, end_at_step_for, state_index, stop_step  # noqa: F401 (re-exported)

#: ComfyUI's Unsampler adds this to every sigma of the flipped schedule.
UNSAMPLE_SIGMA_OFFSET = 1e-4


# -- public API -------------------------------------------------------------------------------------
def unsample(
    model: DiffusionModel,
    latent: Latent,
    steps: int = 20,
    end_at_step: int = 0,
    cfg: float | Sequence[float] = 1.0,
    sampler_name: str = "euler",
    scheduler: str = "normal",
    normalize: Normalize | bool = "disable",
    positive: Prompt = "",
    negative: Prompt = "",
    *,
    callback: Callable[[Step], None] | None = None,
    progress: bool = True,
) -> Latent:
    """Run the sampler backwards from `latent` to the noise that regenerates it (ComfyUI's Unsampler).

    Returns the same type as `latent` (a LATENT dict copy with `samples` replaced, or a tensor).
    `callback(step)` sees every step (index, sigma, sigma_next, state x, denoised estimate).
    """
    samples, mask = read_latent(latent, model)
    return run_unsample(model, latent, samples, mask, steps=check_int("steps", steps, minimum=1),
                        end_at_step=check_int("end_at_step", end_at_step, minimum=0), cfg=check_cfg(cfg),
                        sampler_name=sampler_name, scheduler=scheduler, normalize=normalize_mode(normalize),
                        positive=positive, negative=negative, callback=callback, progress=progress)[0]


def unsample_trajectory(
    model: DiffusionModel,
    latent: Latent,
    steps: int = 20,
    cfg: float | Sequence[float] = 1.0,
    sampler_name: str = "euler",
    scheduler: str = "normal",
    positive: Prompt = "",
    negative: Prompt = "",
    *,
    end_at_step: int = 0,
    progress: bool = True,
) -> Trajectory:
    """The whole inversion, every step kept: `unsampled(traj, k)` equals `unsample(end_at_step=k)`."""
    samples, mask = read_latent(latent, model)
    return run_unsample(model, latent, samples, mask, steps=check_int("steps", steps, minimum=1),
                        end_at_step=check_int("end_at_step", end_at_step, minimum=0), cfg=check_cfg(cfg),
                        sampler_name=sampler_name, scheduler=scheduler, normalize="disable", positive=positive,
                        negative=negative, progress=progress, record=True)[1]  # type: ignore[return-value]


def unsampled(
    model: DiffusionModel, trajectory: Trajectory, end_at_step: int = 0, normalize: Normalize | bool = "disable",
    *, like: Latent | None = None,
) -> Latent:
    """What `unsample(end_at_step=end_at_step, normalize=normalize)` returns, read off a recorded trajectory.

    like: the LATENT the trajectory was recorded from; the result takes its type and keys, and the
    region outside its `noise_mask` comes back bit for bit, as from `unsample`.
    """
    check_model(model)
    end_at_step = check_int("end_at_step", end_at_step, minimum=0)
    state = trajectory.state(end_at_step)
    source, mask = read_latent(like, model) if like is not None else (None, None)
    out = finish_unsample(model, state, sigma_final=float(trajectory.sigmas[trajectory.index(end_at_step)]),
                          normalize=normalize_mode(normalize), source=source, mask=None if mask is None else mask.cpu())
    return wrap(out, like if like is not None else out)


def resample(
    model: DiffusionModel,
    latent: Latent,
    steps: int = 20,
    start_at_step: int = 0,
    end_at_step: int = 10000,
    cfg: float | Sequence[float] = 1.0,
    sampler_name: str = "euler",
    scheduler: str = "normal",
    positive: Prompt = "",
    negative: Prompt = "",
    add_noise: bool | Literal["enable", "disable"] = False,
    noise_seed: int = 0,
    return_with_leftover_noise: bool | Literal["enable", "disable"] = False,
    *,
    callback: Callable[[Step], None] | None = None,
    progress: bool = True,
    counter: EvalCounter | None = None,
) -> Latent:
    """Sample forward from `latent` (ComfyUI's KSamplerAdvanced); stochastic samplers are seeded by `noise_seed`.

    cfg: one value, or one per batch item (a packed batch of settings). counter: an EvalCounter that
    this call's model evaluations are added to. `latent` is a LATENT dict or tensor; `ul.resample` also
    takes an `Inversion` (from `ul.invert`) and applies its method's resampling side.
    """
    check_callback(callback)
    add_noise = on_off("add_noise", add_noise)
    leftover = on_off("return_with_leftover_noise", return_with_leftover_noise)
    samples, mask = read_latent(latent, model)
    spec = get_sampler(sampler_name, family=model.model_sampling.family)
    steps = check_int("steps", steps, minimum=1)
    cfg = check_cfg(cfg)
    start_at_step = check_int("start_at_step", start_at_step, minimum=0)
    end_at_step = check_int("end_at_step", end_at_step, minimum=0)
    noise_seed = check_seed("noise_seed", noise_seed)
    ms = model.model_sampling
    sigmas = resample_sigmas(model, steps=steps, start_at_step=start_at_step, end_at_step=end_at_step,
                             sampler_name=sampler_name, scheduler=scheduler, return_with_leftover_noise=leftover)
    if len(sigmas) < 2:
        return wrap(samples.clone(), latent)  # nothing to do: ComfyUI returns the input latent

    latent_in = model.latent_format.process_in(samples.to(model.device, state_dtype(samples)))
    noise = _seeded_randn(samples.shape, noise_seed).to(model.device, latent_in.dtype) if add_noise else torch.zeros_like(latent_in)
    if add_noise:
        x = ms.noise_scaling(sigmas[0], noise, latent_in, max_denoise=ms.is_max_denoise(float(sigmas[0])))
    else:  # the latent is a state in LATENT form (e.g. unsample's output): ComfyUI's zero-noise start, except
        x = ms.latent_to_state(sigmas[0], latent_in)  # at flow sigma 1, where ComfyUI's 0 * latent loses it
    denoiser = guided_denoiser(model, latent_in, mask, cfg=cfg, positive=positive, negative=negative, noise=noise,
                               always_uncond=spec.needs_uncond, counter=counter)
    x = run_sampler(spec, denoiser, x, sigmas.to(model.device), callback=callback, progress=progress,
                    noise_seed=noise_seed if not spec.deterministic else None, desc="resample")
    x = ms.inverse_noise_scaling(sigmas[-1], x)
    return wrap(keep_unmasked(model.latent_format.process_out(x).cpu(), samples, mask), latent)


def resample_sigmas(model: DiffusionModel, *, steps: int, start_at_step: int = 0, end_at_step: int = 10000,
                    sampler_name: str = "euler", scheduler: str = "normal",
                    return_with_leftover_noise: bool = False) -> Tensor:
    """The descending sigmas `resample` integrates: schedule(N)[start_at_step : end_at_step + 1], the last
    set to 0 unless leftover noise is kept. Fewer than 2 entries: nothing to sample."""
    spec = get_sampler(sampler_name)
    sigmas = sigma_schedule(model.model_sampling, scheduler, steps, discard_penultimate=spec.discard_penultimate_sigma)
    if end_at_step < len(sigmas) - 1:
        sigmas = sigmas[: end_at_step + 1].clone()
        if not return_with_leftover_noise:
            sigmas[-1] = 0.0
    return sigmas[start_at_step:]


# -- the inversion ----------------------------------------------------------------------------------
def trajectory_state(trajectory: Trajectory, end_at_step: int) -> Tensor:
    """`trajectory.state(end_at_step)`: the processed-space state `unsample(..., end_at_step)` stops at."""
    return trajectory.state(end_at_step)


def unsample_sigmas(model: DiffusionModel, *, steps: int, end_at_step: int, sampler_name: str, scheduler: str) -> Tensor:
    """The ascending sigmas the Unsampler integrates: flip(schedule) + 1e-4, cut at end_at_step.

    Flow models: clamped to `sigma_limit` = 1, so a full unsample ends on the pure-noise state
    x = noise (ComfyUI ends at 1.0001, past the data/noise endpoint, and then divides by -1e-4);
    VP models have no limit and keep ComfyUI's sigmas bit for bit.
    """
    spec = get_sampler(sampler_name, invertible=True, family=model.model_sampling.family)
    ms = model.model_sampling
    sigmas = sigma_schedule(ms, scheduler, steps, discard_penultimate=spec.discard_penultimate_sigma)
    sigmas = sigmas.flip(0) + UNSAMPLE_SIGMA_OFFSET
    if math.isfinite(ms.sigma_limit):
        if int((sigmas[:-1] >= ms.sigma_limit).sum()):  # a tie at sigma 1: a zero step, and no consistent LATENT
            raise UnsamplingError(
                f"scheduler {scheduler!r} with {steps} steps puts a second sigma within 1e-4 of 1 (pure noise), which "
                "the Unsampler's +1e-4 pushes past it; use fewer steps or another scheduler (e.g. 'simple')"
            )
        sigmas = sigmas.clamp(max=ms.sigma_limit)
    return sigmas[: state_index(steps, end_at_step) + 1]


def run_unsample(
    model: DiffusionModel, latent: Latent, samples: Tensor, mask: Tensor | None, *, steps: int, end_at_step: int,
    cfg: float | list[float], sampler_name: str, scheduler: str, normalize: str, positive: Prompt, negative: Prompt,
    callback: Callable[[Step], None] | None = None, progress: bool = True, record: bool = False,
    counter: EvalCounter | None = None,
) -> tuple[Latent, Trajectory | None]:
    """The Unsampler on inputs already checked (`samples, mask = inputs.read_latent(latent, model)`, steps and
    end_at_step ints, cfg from `inputs.check_cfg`, normalize from `inputs.normalize_mode`).

    Returns (the LATENT `unsample` returns, the Trajectory when `record`); evaluations are added to `counter`.
    """
    check_callback(callback)
    spec = get_sampler(sampler_name, invertible=True, family=model.model_sampling.family)
    if model.model_sampling.family in spec.inversion_caveats:
        warnings.warn(spec.inversion_caveats[model.model_sampling.family], UnsamplingWarning, stacklevel=3)
    sigmas = unsample_sigmas(model, steps=steps, end_at_step=end_at_step, sampler_name=sampler_name, scheduler=scheduler)

    latent_in = model.latent_format.process_in(samples.to(model.device, state_dtype(samples)))
    x = model.model_sampling.noise_scaling(sigmas[0], torch.zeros_like(latent_in), latent_in)
    denoiser = guided_denoiser(model, latent_in, mask, cfg=cfg, positive=positive, negative=negative,
                               always_uncond=spec.needs_uncond, counter=counter)
    recorder = TrajectoryRecorder() if record else None
    hooks = [h for h in (callback, recorder) if h is not None]
    nfe_before = denoiser.counter.nfe
    x = run_sampler(spec, denoiser, x, sigmas.to(model.device), callback=_fanout(hooks), progress=progress,
                    noise_seed=None, desc="unsample")
    traj = None
    if recorder is not None:
        params = dict(steps=steps, end_at_step=end_at_step, cfg=cfg, sampler_name=sampler_name, scheduler=scheduler,
                      positive=describe_prompt(positive), negative=describe_prompt(negative),
                      prefix_consistent=spec.prefix_consistent, evals_per_step=spec.evals_per_step)
        traj = recorder.finish(x, sigmas, params, nfe=denoiser.counter.nfe - nfe_before)
    out = finish_unsample(model, x, sigma_final=float(sigmas[-1]), normalize=normalize, source=samples, mask=mask)
    return wrap(out, latent), traj


def finish_unsample(model: DiffusionModel, x: Tensor, *, sigma_final: float, normalize: str,
                    source: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
    """State at the last sigma -> the node's output: back to raw latents, then normalize (ComfyUI order)."""
    if normalize == "sigma":
        return (x / sigma_final).cpu()
    samples = model.latent_format.process_out(model.model_sampling.inverse_noise_scaling(torch.tensor(sigma_final), x))
    return normalize_latent(keep_unmasked(samples.cpu(), source, mask), normalize).cpu()


def keep_unmasked(out: Tensor, source: Tensor | None, mask: Tensor | None) -> Tensor:
    """Where the mask is exactly 0 the sampler never moved the latent; return the input bits there
    (the scale in and out of the model's latent space would otherwise round them by one ulp)."""
    if mask is None or source is None:
        return out
    return torch.where(mask.cpu() == 0, source.to(out.dtype), out)


def normalize_latent(samples: Tensor, mode: str) -> Tensor:
    """ComfyUI's normalize ("enable": one mean/std over the whole batch tensor) and our per-sample mode."""
    if mode == "enable":
        return (samples - samples.mean()) / samples.std()
    if mode == "per_sample":
        dims = tuple(range(1, samples.ndim))
        return (samples - samples.mean(dim=dims, keepdim=True)) / samples.std(dim=dims, keepdim=True)
    return samples


# -- pieces ---------------------------------------------------------------------------------------
def run_sampler(spec: SamplerSpec, denoiser: GuidedDenoiser, x: Tensor, sigmas: Tensor, *,
                callback: Callable[[Step], None] | None, progress: bool, noise_seed: int | None, desc: str) -> Tensor:
    """Run one sampler over `sigmas` with a progress bar; a NaN/Inf result is an error that says so."""
    from tqdm.auto import tqdm

    n = len(sigmas) - 1
    with tqdm(total=n, desc=f"{desc} ({spec.name})", disable=_progress_disable(progress), leave=False) as bar:
        def hook(step: Step) -> None:
            if callback is not None:
                callback(step)
            bar.update(1)

        # the noise seed reaches the sampler as data; it builds ComfyUI's stream from it (per-step
        # Gaussians seeded like `default_noise_sampler`, or a Brownian tree like `BrownianTreeNoiseSampler`)
        noise = None if noise_seed is None else NoiseSeed(noise_seed)
        with torch.inference_mode():
            out = spec.fn(denoiser, x, sigmas, callback=hook, noise=noise)
    if not torch.isfinite(out).all():
        raise UnsamplingError(
            f"sampler {spec.name!r} produced NaN/Inf on this input; try another sampler or scheduler and report it"
        )
    return out


def guided_denoiser(model: DiffusionModel, latent_in: Tensor, mask: Tensor | None, *, cfg: float | Sequence[float],
                    positive: Prompt, negative: Prompt, noise: Tensor | None = None,
                    always_uncond: bool = False, counter: EvalCounter | None = None) -> GuidedDenoiser:
    """The denoiser the samplers call for this model, prompts and checked cfg (`inputs.check_cfg`): one cfg,
    or one per batch item (packed sweeps). The negative prompt is not encoded at cfg 1, unless
    `always_uncond`: the CFG++ samplers read the uncond estimate at every cfg."""
    b = latent_in.shape[0]
    pos = to_conditioning(model, positive, batch_size=b, name="positive").to(model.device)
    neg = None
    scale: float | Tensor = float(cfg) if not isinstance(cfg, (list, tuple)) else torch.tensor([float(c) for c in cfg])
    if isinstance(scale, Tensor) and scale.shape[0] != b:
        raise UnsamplingError(f"cfg has {scale.shape[0]} values but the latent has batch {b}; give one cfg or {b}")
    if always_uncond or not unguided(cfg):
        neg = to_conditioning(model, negative, batch_size=b, name="negative").to(model.device)  # at cfg 1 it is skipped
    return GuidedDenoiser(model, pos, neg, scale, latent=latent_in, mask=mask, noise=noise,
                          counter=counter if counter is not None else EvalCounter(), always_uncond=always_uncond)


def _fanout(hooks: list[Callable[[Step], None]]) -> Callable[[Step], None] | None:
    if not hooks:
        return None
    if len(hooks) == 1:
        return hooks[0]

    def every(step: Step) -> None:
        for hook in hooks:
            hook(step)

    return every


def state_dtype(samples: Tensor) -> torch.dtype:
    """The sampler state is float32 (as in ComfyUI) whatever the network's dtype; float64 stays float64."""
    return torch.float64 if samples.dtype == torch.float64 else torch.float32


def _seeded_randn(shape: torch.Size, seed: int) -> Tensor:
    """ComfyUI's prepare_noise: the whole batch drawn at once on the CPU from manual_seed(seed)."""
    return torch.randn(tuple(shape), generator=torch.Generator().manual_seed(seed), dtype=torch.float32)


def wrap(samples: Tensor, like: Latent) -> Latent:
    """`samples` in the form of `like`: a copy of a LATENT dict with `samples` replaced, or the tensor itself."""
    if isinstance(like, dict):
        out = dict(like)
        out["samples"] = samples
        return out
    return samples


def _progress_disable(progress: bool) -> bool | None:
    """tqdm's `disable`: None turns the bar off when stderr is not a terminal (logs, CI) and on in notebooks."""
    return None if progress else True
