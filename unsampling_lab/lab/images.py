"""`load_images`: the user's own pictures (PNG, JPEG, WebP files or folders) as one ComfyUI IMAGE batch.

Size policy, stated once:
- `size=None` keeps every pixel's value: each image is centre-cropped (never resampled) down to the
  nearest multiple of `multiple_of` in height and width, dropping at most `multiple_of - 1` rows and
  columns, split evenly between the two sides. All images must then have one size.
- `size=S` or `size=(H, W)`: each image is scaled (Pillow's Lanczos filter, on 8-bit pixels so the
  result stays in 0..255) to the smallest size that covers the target while keeping its aspect
  ratio, then centre-cropped to it. `S` means a square S x S. The target must be a multiple of
  `multiple_of`.
`multiple_of` is the model's pixel grid: the VAE downsampling factor (`model.vae_scale_factor`, 8 for
SD, SDXL, SD3 and Flux). An image that is not a multiple of it cannot round-trip through the VAE.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union

import torch
from torch import Tensor

from ..errors import UnsamplingError, check_int, user_path
from ..pixels import _from_pil, _pixels_to_float, read_image

#: What a folder is scanned for (case-insensitive); a file named explicitly may be any format Pillow reads.
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp")

PathsOrFolder = Union[str, Path, Sequence[Union[str, Path]]]


def list_images(paths_or_folder: PathsOrFolder) -> list[Path]:
    """The image files named by `paths_or_folder`: files as given, folders' PNG/JPEG/WebP files sorted by name.

    Folders are not searched recursively; hidden files (".name") are skipped.
    """
    if not isinstance(paths_or_folder, (str, Path, Sequence)):
        raise UnsamplingError(f"load_images takes a file, a folder or a list of them (str or Path), got "
                              f"{type(paths_or_folder).__name__} ({paths_or_folder!r:.60})")
    items = [paths_or_folder] if isinstance(paths_or_folder, (str, Path)) else list(paths_or_folder)
    if not items:
        raise UnsamplingError("no image paths given; pass a file, a folder, or a list of them")
    files: list[Path] = []
    for item in items:
        if not isinstance(item, (str, Path)):
            raise UnsamplingError(f"image paths must be str or Path, got {type(item).__name__} ({item!r:.60})")
        path = user_path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir()
                           if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
            if not found:
                raise UnsamplingError(f"folder {path} has no {'/'.join(IMAGE_SUFFIXES)} images")
            files.extend(found)
        elif path.exists():
            files.append(path)
        else:
            raise UnsamplingError(f"image file or folder not found: {path}")
    return files


def load_images(
    paths_or_folder: PathsOrFolder,
    *,
    size: int | tuple[int, int] | None = None,
    multiple_of: int = 8,
) -> Tensor:
    """Files or folders of images -> float32 [B, H, W, 3] in 0..1 (ComfyUI IMAGE), ready for `model.encode`.

    size: None (centre-crop to a multiple of `multiple_of`, no resampling), S (square S x S), or (H, W);
    see the module docstring for the exact rule. Alpha is dropped; 16-bit greyscale PNGs keep their precision,
    16-bit RGB PNGs are read at 8 bits per channel (Pillow's limit; a warning says so).
    """
    multiple_of = check_int("multiple_of", multiple_of, minimum=1)
    target = _target_size(size, multiple_of)
    files = list_images(paths_or_folder)
    batch = []
    for path in files:
        img = read_image(path)
        img = _crop_to_multiple(img, multiple_of) if target is None else _cover_and_crop(img, target)
        if min(img.size) == 0:
            raise UnsamplingError(f"{path} is {_size_text(read_image(path))}, smaller than the pixel grid "
                                  f"multiple_of={multiple_of}; pass size=... to scale it up")
        batch.append((path, _pixels_to_float(_from_pil(img), str(path))))
    sizes = {tuple(t.shape[1:3]) for _, t in batch}
    if len(sizes) > 1:
        first = {}
        for path, t in batch:
            first.setdefault(tuple(t.shape[1:3]), path.name)
        listed = ", ".join(f"{name} {h}x{w}" for (h, w), name in first.items())
        raise UnsamplingError(
            f"images have different sizes after cropping to multiples of {multiple_of} (H x W: {listed}); "
            "pass size=S or size=(H, W) to scale them all to one size"
        )
    return torch.cat([t for _, t in batch])


def _target_size(size: int | tuple[int, int] | None, multiple_of: int) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, (tuple, list)):
        if len(size) != 2:
            raise UnsamplingError(f"size must be S or (H, W), got {size!r}")
        h, w = (check_int("size", s, minimum=1) for s in size)
    else:
        h = w = check_int("size", size, minimum=1)
    if h % multiple_of or w % multiple_of:
        near = lambda v: max(multiple_of, round(v / multiple_of) * multiple_of)  # noqa: E731
        raise UnsamplingError(
            f"size {h}x{w} is not a multiple of the pixel grid multiple_of={multiple_of}; use {near(h)}x{near(w)}"
        )
    return h, w


def _crop_to_multiple(img: Any, multiple_of: int) -> Any:
    w, h = img.size
    new_w, new_h = w - w % multiple_of, h - h % multiple_of
    left, top = (w - new_w) // 2, (h - new_h) // 2
    return img if (new_w, new_h) == (w, h) else img.crop((left, top, left + new_w, top + new_h))


def _cover_and_crop(img: Any, target: tuple[int, int]) -> Any:
    from PIL import Image

    th, tw = target
    w, h = img.size
    scale = max(tw / w, th / h)
    new_w, new_h = max(tw, round(w * scale)), max(th, round(h * scale))
    if img.mode not in ("RGB", "L", "I;16", "I;16B", "I;16L", "I", "F"):
        img = img.convert("RGB")
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.Resampling.LANCZOS)
    left, top = (new_w - tw) // 2, (new_h - th) // 2
    return img.crop((left, top, left + tw, top + th))


def _size_text(img: Any) -> str:
    w, h = img.size
    return f"{h}x{w} (H x W)"
