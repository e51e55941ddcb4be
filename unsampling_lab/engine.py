"""`unsample` (ComfyUI's Unsampler) and `resample` (ComfyUI's KSamplerAdvanced), outside ComfyUI.

unsample, for steps N and end_at_step k (SPEC §3):
    end = min(k, N - 1);  sigmas = flip(schedule(N)) + 1e-4;  keep sigmas[: N - end + 1]
    x = latent (zero noise);  run the sampler up the ascending sigmas;  optional normalize.
resample: sigmas = schedule(N)[start_at_step : end_at_step + 1] (last set to 0 unless leftover
noise is kept); start from latent (+ seeded noise with add_noise). unsample(N, k) pairs with
resample(N, start_at_step=k, add_noise=False).
"""
from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal, Union

import numpy as np
import torch
from torch import Tensor

from .errors import UnsamplingError, UnsamplingWarning, check_choice
from .guidance import EvalCounter, GuidedDenoiser, Prompt, to_conditioning
from .models.base import DiffusionModel
from .samplers import Step, get_sampler
from .samplers.base import NoiseSeed, SamplerSpec
from .schedulers import sigma_schedule
from .trajectory import Trajectory, TrajectoryRecorder

Latent = Union[dict[str, Any], Tensor]
Normalize = Literal["disable", "enable", "per_sample", "sigma"]
NORMALIZE_MODES: tuple[str, ...] = ("disable", "enable", "per_sample", "sigma")

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
    return _unsample(model, latent, steps=steps, end_at_step=end_at_step, cfg=cfg, sampler_name=sampler_name,
                     scheduler=scheduler, normalize=normalize, positive=positive, negative=negative,
                     callback=callback, progress=progress, record=False)[0]


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
    return _unsample(model, latent, steps=steps, end_at_step=end_at_step, cfg=cfg, sampler_name=sampler_name,
                     scheduler=scheduler, normalize="disable", positive=positive, negative=negative,
                     callback=None, progress=progress, record=True)[1]  # type: ignore[return-value]


def unsampled(
    model: DiffusionModel, trajectory: Trajectory, end_at_step: int = 0, normalize: Normalize | bool = "disable",
    *, like: Latent | None = None,
) -> Latent:
    """What `unsample(end_at_step=end_at_step, normalize=normalize)` returns, read off a recorded trajectory.

    like: the LATENT the trajectory was recorded from; the result takes its type and keys, and the
    region outside its `noise_mask` comes back bit for bit, as from `unsample`.
    """
    _check_model(model)
    end_at_step = _check_int("end_at_step", end_at_step, minimum=0)
    state = trajectory_state(trajectory, end_at_step)
    index = state_index(int(trajectory.params["steps"]), end_at_step)
    source, mask = _read_latent(like, model) if like is not None else (None, None)
    out = _finish_unsample(model, state, sigma_final=float(trajectory.sigmas[index]), normalize=_normalize_mode(normalize),
                           source=source, mask=None if mask is None else mask.cpu())
    return _wrap(out, like if like is not None else out)


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
    this call's model evaluations are added to.
    `latent` may be an `Inversion` (from `ul.invert`): its method's resampling side is applied (per-step
    null embeddings, the second latent of an exact pair, ...); for a plain LATENT nothing changes.
    """
    if not isinstance(latent, (dict, Tensor)) and callable(getattr(latent, "resample_side", None)):
        # an Inversion (unsampling_lab.inversion, which builds on this module: no import here)
        return latent.resample_side(
            model, steps=steps, start_at_step=start_at_step, end_at_step=end_at_step, cfg=cfg,
            sampler_name=sampler_name, scheduler=scheduler, positive=positive, negative=negative, add_noise=add_noise,
            noise_seed=noise_seed, return_with_leftover_noise=return_with_leftover_noise, callback=callback,
            progress=progress, counter=counter,
        )
    add_noise = _on_off("add_noise", add_noise)
    leftover = _on_off("return_with_leftover_noise", return_with_leftover_noise)
    samples, mask = _read_latent(latent, model)
    spec = get_sampler(sampler_name, family=model.model_sampling.family)
    steps, cfg = _check_common(steps=steps, cfg=cfg)
    start_at_step = _check_int("start_at_step", start_at_step, minimum=0)
    end_at_step = _check_int("end_at_step", end_at_step, minimum=0)
    noise_seed = _check_seed("noise_seed", noise_seed)
    ms = model.model_sampling
    sigmas = resample_sigmas(model, steps=steps, start_at_step=start_at_step, end_at_step=end_at_step,
                             sampler_name=sampler_name, scheduler=scheduler, return_with_leftover_noise=leftover)
    if len(sigmas) < 2:
        return _wrap(samples.clone(), latent)  # nothing to do: ComfyUI returns the input latent

    latent_in = model.latent_format.process_in(samples.to(model.device, state_dtype(samples)))
    noise = _seeded_randn(samples.shape, noise_seed).to(model.device, latent_in.dtype) if add_noise else torch.zeros_like(latent_in)
    if add_noise:
        x = ms.noise_scaling(sigmas[0], noise, latent_in, max_denoise=ms.is_max_denoise(float(sigmas[0])))
    else:  # the latent is a state in LATENT form (e.g. unsample's output): ComfyUI's zero-noise start, except
        x = ms.latent_to_state(sigmas[0], latent_in)  # at flow sigma 1, where ComfyUI's 0 * latent loses it
    denoiser = guided_denoiser(model, latent_in, mask, cfg=cfg, positive=positive, negative=negative, noise=noise,
                               always_uncond=spec.needs_uncond, counter=counter)
    x = _run(spec, denoiser, x, sigmas.to(model.device), callback=callback, progress=progress,
             noise_seed=noise_seed if not spec.deterministic else None, desc="resample")
    x = ms.inverse_noise_scaling(sigmas[-1], x)
    return _wrap(_keep_unmasked(model.latent_format.process_out(x).cpu(), samples, mask), latent)


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
def state_index(steps: int, end_at_step: int) -> int:
    """Where `unsample(steps=N, end_at_step=k)` stops, as an index into the N + 1 states of a full unsample:
    N - min(k, N - 1) (ComfyUI's `last_step`; k >= N still takes one step). The one place this rule lives."""
    return steps - min(end_at_step, steps - 1)


def end_at_step_for(steps: int, index: int) -> int:
    """The inverse of `state_index` for index 1..N: the end_at_step whose unsample stops at state `index`
    (index 0, the input latent itself, maps to N, which no unsample returns)."""
    return steps - index


def trajectory_state(trajectory: Trajectory, end_at_step: int) -> Tensor:
    """The processed-space state that `unsample(..., end_at_step=end_at_step)` stops at, read off a recorded
    full inversion (refused for samplers whose rule depends on the number of sigmas)."""
    index = state_index(int(trajectory.params["steps"]), int(end_at_step))
    if index > trajectory.n_steps:
        raise UnsamplingError(f"the trajectory has {trajectory.n_steps} steps; it does not reach end_at_step={end_at_step}")
    if not trajectory.params.get("prefix_consistent", True) and index != trajectory.n_steps:
        raise UnsamplingError(
            f"sampler {trajectory.params.get('sampler_name')!r} changes its rule with the number of steps, so a partial "
            "unsample is not a prefix of the full one; call unsample(..., end_at_step=k) for this sampler"
        )
    return trajectory.xs[index]


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


def _unsample(
    model: DiffusionModel, latent: Latent, *, steps: int, end_at_step: int, cfg: float | Sequence[float], sampler_name: str,
    scheduler: str, normalize: Normalize | bool, positive: Prompt, negative: Prompt,
    callback: Callable[[Step], None] | None, progress: bool, record: bool,
) -> tuple[Latent, Trajectory | None]:
    samples, mask = _read_latent(latent, model)
    spec = get_sampler(sampler_name, invertible=True, family=model.model_sampling.family)
    if model.model_sampling.family in spec.inversion_caveats:
        warnings.warn(spec.inversion_caveats[model.model_sampling.family], UnsamplingWarning, stacklevel=3)
    steps, cfg = _check_common(steps=steps, cfg=cfg)
    end_at_step = _check_int("end_at_step", end_at_step, minimum=0)
    mode = _normalize_mode(normalize)
    sigmas = unsample_sigmas(model, steps=steps, end_at_step=end_at_step, sampler_name=sampler_name, scheduler=scheduler)

    latent_in = model.latent_format.process_in(samples.to(model.device, state_dtype(samples)))
    x = model.model_sampling.noise_scaling(sigmas[0], torch.zeros_like(latent_in), latent_in)
    denoiser = guided_denoiser(model, latent_in, mask, cfg=cfg, positive=positive, negative=negative,
                               always_uncond=spec.needs_uncond)
    recorder = TrajectoryRecorder() if record else None
    hooks = [h for h in (callback, recorder) if h is not None]
    x = _run(spec, denoiser, x, sigmas.to(model.device), callback=_fanout(hooks), progress=progress,
             noise_seed=None, desc="unsample")
    traj = None
    if recorder is not None:
        params = dict(steps=steps, end_at_step=end_at_step, cfg=cfg, sampler_name=sampler_name, scheduler=scheduler,
                      positive=_describe(positive), negative=_describe(negative),
                      prefix_consistent=spec.prefix_consistent, evals_per_step=spec.evals_per_step)
        traj = recorder.finish(x, sigmas, params, nfe=denoiser.counter.nfe)
    out = _finish_unsample(model, x, sigma_final=float(sigmas[-1]), normalize=mode, source=samples, mask=mask)
    return _wrap(out, latent), traj


def _finish_unsample(model: DiffusionModel, x: Tensor, *, sigma_final: float, normalize: str,
                     source: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
    """State at the last sigma -> the node's output: back to raw latents, then normalize (ComfyUI order)."""
    if normalize == "sigma":
        return (x / sigma_final).cpu()
    samples = model.latent_format.process_out(model.model_sampling.inverse_noise_scaling(torch.tensor(sigma_final), x))
    return normalize_latent(_keep_unmasked(samples.cpu(), source, mask), normalize).cpu()


def _keep_unmasked(out: Tensor, source: Tensor | None, mask: Tensor | None) -> Tensor:
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
def _run(spec: SamplerSpec, denoiser: GuidedDenoiser, x: Tensor, sigmas: Tensor, *,
         callback: Callable[[Step], None] | None, progress: bool, noise_seed: int | None, desc: str) -> Tensor:
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
    """The denoiser the samplers call for this model, prompts and cfg: one cfg, or one per batch item (packed
    sweeps). The negative prompt is not encoded at cfg 1, unless `always_uncond`: the CFG++ samplers read the
    uncond estimate at every cfg."""
    b = latent_in.shape[0]
    pos = to_conditioning(model, positive, batch_size=b, name="positive").to(model.device)
    neg = None
    scale: float | Tensor = float(cfg) if isinstance(cfg, numbers.Real) else torch.tensor([float(c) for c in cfg])
    if isinstance(scale, Tensor) and scale.shape[0] != b:
        raise UnsamplingError(f"cfg has {scale.shape[0]} values but the latent has batch {b}; give one cfg or {b}")
    if always_uncond or not all(math.isclose(c, 1.0) for c in (scale.tolist() if isinstance(scale, Tensor) else [scale])):
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


def _read_latent(latent: Latent, model: DiffusionModel) -> tuple[Tensor, Tensor | None]:
    """Validate the model and a LATENT dict or tensor; return (samples on the CPU, prepared mask or None).

    Never mutates the input. A latent on another device than the CPU is copied to it (the engine keeps
    the source latent on the CPU and moves only the sampler state to the model's device).
    """
    _check_model(model)
    if isinstance(latent, dict):
        if "samples" not in latent:
            raise UnsamplingError("a LATENT dict needs a 'samples' tensor [B, C, H, W] (ComfyUI's convention)")
        samples, raw_mask = latent["samples"], latent.get("noise_mask")
    elif isinstance(latent, Tensor):
        samples, raw_mask = latent, None
    else:
        raise UnsamplingError(f"latent must be a LATENT dict {{'samples': Tensor}} or a tensor, got {type(latent).__name__}")
    if not isinstance(samples, Tensor) or samples.ndim != 4:
        shape = tuple(samples.shape) if isinstance(samples, Tensor) else type(samples).__name__
        raise UnsamplingError(f"latent samples must be a [B, C, H, W] tensor, got {shape}")
    channels = model.latent_format.channels
    if samples.shape[1] != channels:
        raise UnsamplingError(
            f"latent has {samples.shape[1]} channels but this model's latents have {channels}; encode the image "
            "with this model's VAE (model.encode(images))"
        )
    if samples.numel() == 0:
        raise UnsamplingError(
            f"latent is empty (shape {tuple(samples.shape)}); it needs at least one item of at least 1x1 latent "
            "cells (encode at least one image)"
        )
    if not samples.is_floating_point():
        raise UnsamplingError(f"latent samples must be floating point, got {samples.dtype}; use samples.float()")
    if samples.device.type == "meta":
        raise UnsamplingError("latent is on the 'meta' device and holds no values; pass a real tensor")
    samples = samples.detach().cpu()
    if not torch.isfinite(samples).all():
        raise UnsamplingError("latent contains NaN or Inf values; check the encoder output or the previous node")
    mask = None if raw_mask is None else prepare_mask(raw_mask, samples.shape).to(model.device)
    return samples, mask


def prepare_mask(mask: Tensor, shape: torch.Size | tuple[int, ...]) -> Tensor:
    """ComfyUI's prepare_mask: [H, W], [B, H, W] or [B, 1, H, W] -> bilinear to the latent size, every channel.

    Values must be floats in 0..1 (1 = may change) or booleans; uint8 0/255 masks and floats outside
    0..1 are errors (ComfyUI would scale the noise by them: a 255 mask gives outputs around 1e18).
    """
    if not isinstance(mask, Tensor) or mask.ndim not in (2, 3, 4) or (mask.ndim == 4 and mask.shape[1] != 1):
        got = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
        raise UnsamplingError(f"noise_mask must be [H, W], [B, H, W] or [B, 1, H, W], got {got}")
    if mask.numel() == 0:
        raise UnsamplingError(f"noise_mask is empty (shape {tuple(mask.shape)}); pass a mask of at least 1x1, "
                              "or no noise_mask to change the whole latent")
    mask = mask.detach().cpu()
    if mask.dtype == torch.bool:
        mask = mask.float()
    if not mask.is_floating_point():
        lo, hi = int(mask.min()), int(mask.max())
        raise UnsamplingError(
            f"noise_mask is {mask.dtype} with values {lo}..{hi}; it must be floats in 0..1 (1 = may change): "
            f"use (mask.float() / {hi if hi > 1 else 1})" + (" for a 0/255 mask" if hi == 255 else "")
        )
    if not torch.isfinite(mask).all():
        raise UnsamplingError("noise_mask contains NaN or Inf")
    lo, hi = float(mask.min()), float(mask.max())
    if lo < 0 or hi > 1:
        hint = "divide by 255" if hi > 1.5 and hi <= 255 else "clamp it with mask.clamp(0, 1)"
        raise UnsamplingError(f"noise_mask must be in 0..1 (1 = may change), got values in {lo:.4g}..{hi:.4g}; {hint}")
    b, c, h, w = shape
    m = mask.float().reshape(-1, 1, mask.shape[-2], mask.shape[-1])
    if m.shape[0] not in (1, b):
        raise UnsamplingError(f"noise_mask has batch {m.shape[0]} but the latent has batch {b}; use 1 or {b}")
    m = torch.nn.functional.interpolate(m, size=(h, w), mode="bilinear")
    return m.expand(b, c, h, w).contiguous()


def state_dtype(samples: Tensor) -> torch.dtype:
    """The sampler state is float32 (as in ComfyUI) whatever the network's dtype; float64 stays float64."""
    return torch.float64 if samples.dtype == torch.float64 else torch.float32


def _seeded_randn(shape: torch.Size, seed: int) -> Tensor:
    """ComfyUI's prepare_noise: the whole batch drawn at once on the CPU from manual_seed(seed)."""
    return torch.randn(tuple(shape), generator=torch.Generator().manual_seed(seed), dtype=torch.float32)


def _wrap(samples: Tensor, like: Latent) -> Latent:
    if isinstance(like, dict):
        out = dict(like)
        out["samples"] = samples
        return out
    return samples


def _normalize_mode(normalize: Normalize | bool) -> str:
    if isinstance(normalize, bool):
        return "enable" if normalize else "disable"
    return check_choice(normalize, NORMALIZE_MODES, what="normalize mode")


def _on_off(name: str, value: bool | str) -> bool:
    if isinstance(value, bool):
        return value
    if value in ("enable", "disable"):
        return value == "enable"
    raise UnsamplingError(f"{name} must be True/False or 'enable'/'disable', got {value!r}")


def _progress_disable(progress: bool) -> bool | None:
    """tqdm's `disable`: None turns the bar off when stderr is not a terminal (logs, CI) and on in notebooks."""
    return None if progress else True


def _check_model(model: Any) -> None:
    """The engine runs adapters from `ul.load_model`; anything else gets told how to make one."""
    if all(hasattr(model, a) for a in ("model_sampling", "latent_format", "forward", "device")):
        return
    if hasattr(model, "scheduler") and (hasattr(model, "unet") or hasattr(model, "transformer")):
        raise UnsamplingError(f"model is a raw diffusers {type(model).__name__}; wrap it first: model = ul.load_model(pipe)")
    raise UnsamplingError(
        f"model must be a loaded model (model = ul.load_model() for the bundled one, or ul.load_model(path)), "
        f"got {type(model).__name__}"
    )


#: ComfyUI's seed widget range (0 to 0xffffffffffffffff).
MAX_SEED = 2**64 - 1


def _check_int(name: str, value: Any, *, minimum: int, maximum: int | None = None) -> int:
    """`value` as a Python int: ints and numpy integers pass; bools, floats and strings are errors."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        whole = isinstance(value, numbers.Real) and not isinstance(value, bool) and float(value).is_integer()
        hint = f"; use {int(value)}" if whole else ""
        raise UnsamplingError(f"{name} must be a whole number, got {value!r}{hint}")
    value = int(value)
    if value < minimum or (maximum is not None and value > maximum):
        limits = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
        raise UnsamplingError(f"{name} must be {limits}, got {value}")
    return value


def _check_seed(name: str, seed: Any) -> int:
    """A seed in ComfyUI's range 0..2**64-1, used as ComfyUI's prepare_noise uses it (torch.manual_seed(seed)).

    As in ComfyUI, torch's CPU generator keeps only the low 32 bits of the seed for its Mersenne
    twister: seeds 0 and 2**32 draw the same noise there and here (measured: identical tensors).
    """
    return _check_int(name, seed, minimum=0, maximum=MAX_SEED)


def _check_common(*, steps: int, cfg: float | Sequence[float]) -> tuple[int, float | list[float]]:
    """(steps, cfg) as Python numbers, checked; numpy scalars are accepted; cfg may be one value per batch item."""
    steps = _check_int("steps", steps, minimum=1)
    many = isinstance(cfg, (list, tuple)) and len(cfg) > 0
    for c in (cfg if many else [cfg]):
        if isinstance(c, (bool, np.bool_)) or not isinstance(c, numbers.Real) or not math.isfinite(float(c)) or c < 0:
            raise UnsamplingError(f"cfg must be a finite number >= 0 (1.0 = no guidance), or a list of them (one per "
                                  f"batch item), got {cfg!r}")
    return steps, [float(c) for c in cfg] if many else float(cfg)


def _describe(prompt: Prompt) -> Any:
    if isinstance(prompt, str) or (isinstance(prompt, (list, tuple)) and all(isinstance(p, str) for p in prompt)):
        return prompt
    return f"<{type(prompt).__name__}>"
