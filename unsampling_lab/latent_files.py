"""ComfyUI `.latent` files (its SaveLatent / LoadLatent nodes), so a LATENT can move between ComfyUI and us.

The format is a safetensors file with
- `latent_tensor`: the raw VAE latents [B, C, H, W] (LATENT["samples"], ComfyUI's convention), and
- `latent_format_version_0`: an empty tensor that marks the current format.
A file without the marker is ComfyUI's old format, which stored latents already multiplied by SD's
scale 0.18215; LoadLatent multiplies those by 1 / 0.18215 (whatever the model), and so do we.
ComfyUI writes the workflow as string metadata ("prompt"); we write what the caller passes.
A `noise_mask` is kept as an extra `noise_mask` tensor: ComfyUI's LoadLatent ignores keys it does not
know, so the file still loads there (without the mask), and `load_latent` gives it back.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .errors import UnsamplingError, user_path

#: ComfyUI's LoadLatent: files without the version marker are scaled by 1 / this.
OLD_FORMAT_SCALE = 0.18215
VERSION_KEY = "latent_format_version_0"


def save_latent(latent: Mapping[str, Any] | Tensor, path: str | Path, *,
                metadata: Mapping[str, str] | None = None) -> Path:
    """Write `latent` (a LATENT dict or a [B, C, H, W] tensor) as a ComfyUI `.latent` file; returns the path.

    Put it in ComfyUI's `input/` folder and its LoadLatent node lists it (it lists `.latent` files only).
    """
    samples = latent.get("samples") if isinstance(latent, Mapping) else latent
    if not isinstance(samples, Tensor) or samples.ndim != 4 or not samples.is_floating_point():
        got = f"shape {tuple(samples.shape)} {samples.dtype}" if isinstance(samples, Tensor) else type(samples).__name__
        raise UnsamplingError(f"save_latent needs a LATENT dict {{'samples': float [B, C, H, W]}} or such a tensor, got {got}")
    path = user_path(path)
    if path.is_dir():
        raise UnsamplingError(f"save_latent: {path} is a folder; pass a file name ending in .latent")
    tensors = {"latent_tensor": samples.detach().cpu().contiguous(), VERSION_KEY: torch.tensor([])}
    mask = latent.get("noise_mask") if isinstance(latent, Mapping) else None
    if isinstance(mask, Tensor):
        tensors["noise_mask"] = mask.detach().cpu().float().contiguous()
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata=meta or None)
    except OSError as e:
        raise UnsamplingError(f"cannot write {path}: {e.strerror or e}") from None
    except SafetensorError as e:  # safetensors reports the OS error (a read-only folder, a full disk) in its own type
        raise UnsamplingError(f"cannot write {path} ({e}); check that its folder is writable") from None
    return path


def load_latent(path: str | Path) -> dict[str, Tensor]:
    """Read a ComfyUI `.latent` file as a LATENT dict {"samples": float32 [B, C, H, W]} (+ "noise_mask" if saved).

    Old-format files (no `latent_format_version_0`) are scaled by 1 / 0.18215, as ComfyUI's LoadLatent does.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = user_path(path)
    if not path.is_file():
        what = "is a folder, not a .latent file" if path.is_dir() else "not found"
        raise UnsamplingError(f"latent file {path} {what}")
    if path.stat().st_size == 0:
        raise UnsamplingError(f"latent file {path} is empty (0 bytes); save it again from ComfyUI's SaveLatent")
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as e:
        raise UnsamplingError(f"{path} is not a safetensors .latent file ({e}); save it with ComfyUI's SaveLatent "
                              "or ul.save_latent") from None
    if "latent_tensor" not in tensors:
        raise UnsamplingError(f"{path} has no 'latent_tensor' (keys: {', '.join(sorted(tensors)) or 'none'}); "
                              "it is a safetensors file but not a ComfyUI .latent file")
    samples = tensors["latent_tensor"]
    if samples.ndim != 4 or not samples.is_floating_point():
        raise UnsamplingError(f"{path}: latent_tensor is {tuple(samples.shape)} {samples.dtype}; expected float "
                              "[B, C, H, W] (video latents [B, C, T, H, W] are not supported)")
    multiplier = 1.0 if VERSION_KEY in tensors else 1.0 / OLD_FORMAT_SCALE
    out = {"samples": samples.float() * multiplier}
    if "noise_mask" in tensors:
        out["noise_mask"] = tensors["noise_mask"]
    return out
