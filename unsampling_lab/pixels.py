"""The one place where user images become ComfyUI IMAGE tensors: float32 [B, H, W, 3] in 0..1.

Accepted: a float tensor/array in 0..1 ([B, H, W, 3] or [H, W, 3]); a uint8 (or other integer)
tensor/array in 0..255 (divided by 255); a PIL image; a path to an image file; or a list of PIL
images / paths / [H, W, 3] arrays of one size. Floats outside 0..1 are an error (not clamped),
because 0..255 floats or -1..1 pixels would otherwise give latents 2-3x too large without a word.
Pillow is imported only when a PIL image or a path is given.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from torch import Tensor

from .errors import UnsamplingError

ImageInput = Union[Tensor, np.ndarray, str, Path, Any, Sequence[Any]]  # Any: a PIL.Image.Image


def as_image_batch(images: ImageInput, *, name: str = "images") -> Tensor:
    """`images` in any accepted form -> float32 [B, H, W, 3] in 0..1 (the input is never changed)."""
    if isinstance(images, (str, Path)) or _is_pil(images):
        return _pixels_to_float(_from_pil(read_image(images) if isinstance(images, (str, Path)) else images), name)
    if isinstance(images, (list, tuple)):
        if not images:
            raise UnsamplingError(f"{name} is an empty list; pass at least one image")
        items = [as_image_batch(item, name=f"{name}[{i}]") for i, item in enumerate(images)]
        sizes = {tuple(t.shape[1:3]) for t in items}
        if len(sizes) > 1:
            listed = ", ".join(f"{h}x{w}" for h, w in sorted(sizes))
            raise UnsamplingError(
                f"{name} have different sizes (H x W: {listed}); a batch needs one size: resize them, "
                "or use ul.load_images(paths, size=...)"
            )
        return torch.cat(items)
    if isinstance(images, np.ndarray):
        if images.dtype == object:
            raise UnsamplingError(f"{name}: a numpy array of objects is not an image; pass a numeric [B, H, W, 3] array")
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not isinstance(images, Tensor):
        raise UnsamplingError(
            f"{name} must be a [B, H, W, 3] tensor or array (float 0..1 or uint8 0..255), a PIL image, a path, "
            f"or a list of those; got {type(images).__name__}"
        )
    return _pixels_to_float(images, name)


def read_image(path: str | Path) -> Any:
    """Open an image file with Pillow (first frame, EXIF orientation applied), fully read; errors name the file."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path).expanduser()
    if path.is_dir():
        raise UnsamplingError(f"{path} is a folder, not an image file; use ul.load_images({str(path)!r}) for a folder")
    if not path.exists():
        raise UnsamplingError(f"image file not found: {path}")
    if path.stat().st_size == 0:
        raise UnsamplingError(f"image file {path} is empty (0 bytes); re-export or re-download it")
    _warn_16bit_rgb(path)
    try:
        with Image.open(path) as img:
            img.load()
            return ImageOps.exif_transpose(img) or img.copy()
    except Image.DecompressionBombError as e:  # a tiny file that would unpack to gigabytes of pixels
        raise UnsamplingError(f"{path} is too large to open safely ({e}); if you trust it, raise "
                              "PIL.Image.MAX_IMAGE_PIXELS, or scale it down first") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise UnsamplingError(f"cannot read {path} as an image ({e.__class__.__name__}: {e}); "
                              "PNG, JPEG and WebP are supported") from None


def _warn_16bit_rgb(path: Path) -> None:
    """Pillow reads a 16-bit RGB(A) PNG at 8 bits per channel: say so rather than lose the precision silently."""
    with open(path, "rb") as f:
        head = f.read(26)
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR" and head[24] == 16 and head[25] in (2, 6):
        import warnings

        from .errors import UnsamplingWarning

        warnings.warn(f"{path} is a 16-bit RGB PNG; Pillow reads it at 8 bits per channel (steps of 1/255), so the "
                      "extra precision is lost: convert it to 16-bit greyscale or float if you need it", UnsamplingWarning,
                      stacklevel=3)


def _is_pil(obj: Any) -> bool:
    return type(obj).__module__.startswith("PIL.") and hasattr(obj, "mode") and hasattr(obj, "size")


def _from_pil(img: Any) -> Tensor:
    """A PIL image -> [H, W, 3] tensor: uint8 for 8-bit images, float32 in 0..1 for 16/32-bit ones."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit greyscale PNG: full range is 0..65535
        arr = np.asarray(img, dtype=np.float32) / 65535.0
        return torch.from_numpy(np.repeat(arr.clip(0, 1)[..., None], 3, axis=-1))
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        return torch.from_numpy(np.repeat(arr[..., None], 3, axis=-1))
    return torch.from_numpy(np.array(img.convert("RGB"), dtype=np.uint8))  # alpha dropped, as ComfyUI's LoadImage


def _pixels_to_float(images: Tensor, name: str) -> Tensor:
    """[B, H, W, 3] or [H, W, 3] tensor -> float32 [B, H, W, 3] in 0..1, integers divided by 255, ranges checked."""
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3:
        shape = tuple(images.shape)
        hint = ""
        if images.ndim == 4 and images.shape[1] == 3:
            hint = "; it looks channels-first: use images.permute(0, 2, 3, 1)"
        elif images.ndim == 4 and images.shape[-1] == 4:
            hint = "; drop the alpha channel with images[..., :3]"
        elif images.ndim == 4 and images.shape[-1] == 1:
            hint = "; repeat a grey channel with images.expand(-1, -1, -1, 3)"
        raise UnsamplingError(f"{name} must be [B, H, W, 3] (ComfyUI IMAGE, channels last), got shape {shape}{hint}")
    if min(images.shape[:3]) == 0:
        raise UnsamplingError(f"{name} is empty (shape {tuple(images.shape)}); pass at least one image of at least 1x1 pixels")
    if images.dtype == torch.bool:
        return images.float()
    if not images.is_floating_point():
        if images.is_complex():
            raise UnsamplingError(f"{name} must be real-valued, got {images.dtype}")
        lo, hi = int(images.min()), int(images.max())
        if lo < 0 or hi > 255:
            raise UnsamplingError(
                f"{name} are integers in {lo}..{hi}, outside 0..255; for 16-bit pixels divide by 65535 and pass floats in 0..1"
            )
        return images.float() / 255.0
    images = images.float()
    if not torch.isfinite(images).all():
        raise UnsamplingError(f"{name} contain NaN or Inf; pass finite pixels in 0..1")
    lo, hi = float(images.min()), float(images.max())
    if lo < 0 or hi > 1:
        if hi > 1.5:
            what = "divide by 255 (pixels look like 0..255)"
        elif lo < 0:
            what = "use (images + 1) / 2 if they are -1..1 pixels, or clamp(0, 1)"
        else:
            what = "clamp them with images.clamp(0, 1)"
        raise UnsamplingError(f"{name} must be floats in 0..1 (ComfyUI IMAGE), got values in {lo:.4g}..{hi:.4g}; {what}")
    return images
