"""What users pass, checked and converted once: latent and mask, seed, cfg, on/off flags, normalize.

Each function takes the value as given and returns it in the one form the engine works with (Python
numbers, the latent on the CPU, the mask at the latent's size), or raises an `UnsamplingError` that names
the value and says what to do. Nothing here runs a model.
"""
from __future__ import annotations

import math
import numbers
import warnings
import weakref
from collections.abc import Sequence
from typing import Any, Literal, Union

import torch
from torch import Tensor

from .errors import UnsamplingError, UnsamplingWarning, check_choice, check_int

Latent = Union[dict[str, Any], Tensor]
Normalize = Literal["disable", "enable", "per_sample", "sigma"]
NORMALIZE_MODES: tuple[str, ...] = ("disable", "enable", "per_sample", "sigma")

#: ComfyUI's seed widget range (0 to 0xffffffffffffffff).
MAX_SEED = 2**64 - 1


# -- the model and the latent -----------------------------------------------------------------------
def check_model(model: Any) -> None:
    """The engine runs adapters from `ul.load_model`; anything else gets told how to make one."""
    if all(hasattr(model, a) for a in ("model_sampling", "latent_format", "forward", "device")):
        return
    if hasattr(model, "scheduler") and (hasattr(model, "unet") or hasattr(model, "transformer")):
        raise UnsamplingError(f"model is a raw diffusers {type(model).__name__}; wrap it first: model = ul.load_model(pipe)")
    raise UnsamplingError(
        f"model must be a loaded model (model = ul.load_model() for the bundled one, or ul.load_model(path)), "
        f"got {type(model).__name__}"
    )


def read_latent(latent: Latent, model: Any) -> tuple[Tensor, Tensor | None]:
    """Validate the model and a LATENT dict or tensor; return (samples on the CPU, prepared mask or None).

    Never mutates the input. A latent on another device than the CPU is copied to it (the engine keeps
    the source latent on the CPU and moves only the sampler state to the model's device).
    """
    check_model(model)
    if isinstance(latent, dict):
        if "samples" not in latent:
            raise UnsamplingError("a LATENT dict needs a 'samples' tensor [B, C, H, W] (ComfyUI's convention)")
        samples, raw_mask = latent["samples"], latent.get("noise_mask")
    elif isinstance(latent, Tensor):
        samples, raw_mask = latent, None
    elif hasattr(latent, "resample_side"):  # an Inversion given to engine.resample, which runs LATENTs only
        raise UnsamplingError(f"latent is an {type(latent).__name__}; resample it with ul.resample(model, inversion, ...), "
                              "which applies its method's resampling side")
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
    warn_if_costly(model, samples)
    return samples, mask


#: A latent at least this many times the area of the one the network was made for is warned about before any work.
COSTLY_AREA_RATIO = 16
_WARNED: "weakref.WeakKeyDictionary[Any, set[tuple[int, int]]]" = weakref.WeakKeyDictionary()


def native_latent_size(model: Any) -> tuple[int, int] | None:
    """The latent size (H, W) the model's network was made for: its diffusers config's `sample_size`
    (SD1.5: 64, SDXL: 128, the bundled model: 8), or None where the config does not say (Flux)."""
    net = getattr(model, "unet", None)
    net = net if net is not None else getattr(model, "transformer", None)
    size = getattr(getattr(net, "config", None), "sample_size", None)
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return size, size
    if isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size):
        return int(size[0]), int(size[1])
    return None


def warn_if_costly(model: Any, samples: Tensor) -> None:
    """Warn once per model and latent size, before any work, when the latent is COSTLY_AREA_RATIO or more times
    the area of the model's native latent (a 2048 px image on the 32 px bundled model ran for hours without a
    word). The estimate is the work of one network evaluation against a native one, from the config alone:
    the area ratio for the convolutions, its square for self-attention over the latent's cells; nothing is timed
    (on small latents fixed costs make the seconds grow slower than the work)."""
    native = native_latent_size(model)
    if native is None:
        return
    h, w = int(samples.shape[-2]), int(samples.shape[-1])
    ratio = h * w / (native[0] * native[1])
    if ratio < COSTLY_AREA_RATIO:
        return
    try:
        seen = _WARNED.setdefault(model, set())
    except TypeError:  # a model that cannot be weakly referenced: warn every time
        seen = set()
    if (h, w) in seen:
        return
    seen.add((h, w))
    warnings.warn(
        f"latent is {h}x{w}, {ratio:.0f}x the area of the {native[0]}x{native[1]} latent this model was made for (its "
        f"sample_size): each network evaluation does {ratio:.0f}x (convolutions) to {ratio ** 2:.0f}x (self-attention) "
        "the work of one at that size, for every step and evaluation; to make it cheaper, scale the images down "
        "(ul.load_images(..., size=S), the CLI's --size S)", UnsamplingWarning, stacklevel=4)


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


# -- numbers and switches ---------------------------------------------------------------------------
def check_callback(callback: Any) -> None:
    """A step callback is None or callable (it is called with each `Step`)."""
    if callback is not None and not callable(callback):
        raise UnsamplingError(f"callback must be a function called with each Step (or None), got "
                              f"{type(callback).__name__} {callback!r}")


def check_seed(name: str, seed: Any) -> int:
    """A seed in ComfyUI's range 0..2**64-1, used as ComfyUI's prepare_noise uses it (torch.manual_seed(seed)).

    As in ComfyUI, torch's CPU generator keeps only the low 32 bits of the seed for its Mersenne
    twister: seeds 0 and 2**32 draw the same noise there and here (measured: identical tensors).
    """
    return check_int(name, seed, minimum=0, maximum=MAX_SEED)


def check_cfg(cfg: float | Sequence[float], *, name: str = "cfg") -> float | list[float]:
    """cfg as a Python float, or a list of floats (one per batch item: a packed batch of settings); each a
    finite number >= 0. numpy scalars are accepted. The only place a user's cfg is checked (`name`: how the
    caller calls it, e.g. resample_cfg)."""
    many = isinstance(cfg, (list, tuple)) and len(cfg) > 0
    for c in (cfg if many else [cfg]):
        if isinstance(c, bool) or not isinstance(c, numbers.Real) or not math.isfinite(float(c)) or c < 0:
            raise UnsamplingError(f"{name} must be a finite number >= 0 (1.0 = no guidance), or a list of them (one "
                                  f"per batch item), got {cfg!r}")
    return [float(c) for c in cfg] if many else float(cfg)  # type: ignore[union-attr, arg-type]


def cfg_is_one(cfg: float) -> bool:
    """ComfyUI's cfg-1 rule: at cfg 1 the guided denoiser is the cond output and no uncond pass runs.
    The one place "is this cfg 1?" is decided."""
    return math.isclose(float(cfg), 1.0)


def unguided(cfg: float | Sequence[float] | Tensor) -> bool:
    """True when every cfg (one, a list, or a [B] tensor of per-item values) is 1: no uncond pass is needed."""
    scales = cfg.tolist() if isinstance(cfg, Tensor) else list(cfg) if isinstance(cfg, (list, tuple)) else [cfg]
    return all(cfg_is_one(c) for c in scales)


def on_off(name: str, value: bool | str) -> bool:
    """A switch as True/False, or ComfyUI's 'enable'/'disable'."""
    if isinstance(value, bool):
        return value
    if value in ("enable", "disable"):
        return value == "enable"
    raise UnsamplingError(f"{name} must be True/False or 'enable'/'disable', got {value!r}")


def normalize_mode(normalize: Normalize | bool) -> str:
    """One of NORMALIZE_MODES (True/False mean 'enable'/'disable', as ComfyUI's toggle)."""
    if isinstance(normalize, bool):
        return "enable" if normalize else "disable"
    return check_choice(normalize, NORMALIZE_MODES, what="normalize mode")


def describe_prompt(prompt: Any) -> Any:
    """A prompt as recorded in a call's params: its text, or `<Tensor>` / `<Conditioning>` for embeddings."""
    if isinstance(prompt, str) or (isinstance(prompt, (list, tuple)) and all(isinstance(p, str) for p in prompt)):
        return prompt
    return f"<{type(prompt).__name__}>"
