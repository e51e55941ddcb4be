"""Hostile and careless inputs: every one gets a one-line UnsamplingError naming what was wrong (issue 13)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import unsampling_lab as ul
from unsampling_lab.errors import UnsamplingError


def _pixels(h: int = 35, w: int = 50, seed: int = 0) -> np.ndarray:
    return (np.random.RandomState(seed).rand(h, w, 3) * 255).astype(np.uint8)


def _gradient(h: int = 35, w: int = 50) -> np.ndarray:
    """Smooth, so that JPEG keeps it within a few levels."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([yy * 255 // (h - 1), xx * 255 // (w - 1), (yy + xx) * 255 // (h + w - 2)], -1).astype(np.uint8)


@pytest.fixture()
def image_files(tmp_path: Path) -> Path:
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(_pixels()).save(folder / "a.png")
    Image.fromarray(_pixels(seed=1)).save(folder / "b.webp", lossless=True)
    Image.fromarray(_gradient()).save(folder / "c.jpg", quality=95)
    (folder / "notes.txt").write_text("not an image, and not picked from a folder")
    return folder


# -- load_images --------------------------------------------------------------------------------
def test_load_images_folder_keeps_pixels_and_crops_to_the_grid(image_files: Path) -> None:
    x = ul.load_images(image_files)
    assert x.shape == (3, 32, 48, 3) and x.dtype == torch.float32
    # 35x50 -> 32x48: rows 1..32 and columns 1..48 (3 rows: 1 top, 2 bottom; 2 columns: 1 each side)
    for i, seed in enumerate((0, 1)):  # PNG and lossless WebP are exact
        expected = torch.from_numpy(_pixels(seed=seed)[1:33, 1:49].astype(np.float32) / 255)
        assert torch.equal(x[i], expected)
    assert (x[2] - torch.from_numpy(_gradient()[1:33, 1:49] / 255).float()).abs().max() < 0.05  # JPEG: close


def test_load_images_size_scales_and_centre_crops(image_files: Path) -> None:
    x = ul.load_images([image_files / "a.png", image_files / "c.jpg"], size=(16, 24))
    assert x.shape == (2, 16, 24, 3) and 0 <= float(x.min()) and float(x.max()) <= 1
    assert ul.load_images(image_files / "a.png", size=16).shape == (1, 16, 16, 3)


def test_load_images_is_lazy_and_not_in_the_core() -> None:
    import subprocess
    import sys

    code = "import sys, unsampling_lab as ul; assert 'unsampling_lab.lab' not in sys.modules; ul.load_images"
    subprocess.run([sys.executable, "-c", code], check=True)
