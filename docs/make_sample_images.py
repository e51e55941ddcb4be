"""Draw the sample pictures notebook 05 ships (unsampling_lab/bundled/images/*.png), seeded, 64 x 64.

    python docs/make_sample_images.py

Two drawings close to the bundled model's world (one saturated shape on a dark ground) and two
photograph-like scenes it never saw (shading, texture, a landscape): inversion must cope with both.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

OUT = Path(__file__).resolve().parents[1] / "unsampling_lab" / "bundled" / "images"
SIZE = 64


def _noise(rng: np.random.Generator, scale: float) -> np.ndarray:
    return rng.normal(0.0, scale, (SIZE, SIZE, 1))


def drawing_red_circle(rng: np.random.Generator) -> Image.Image:
    """A hand-drawn red disc (wobbly outline) on near-black paper."""
    im = Image.new("RGB", (SIZE * 4, SIZE * 4), (12, 10, 14))
    t = np.linspace(0, 2 * np.pi, 90, endpoint=False)
    r = 80 * (1 + 0.04 * np.sin(5 * t + 1.0) + 0.02 * rng.normal(size=t.size))
    pts = [(110 + ri * np.cos(a), 130 + ri * np.sin(a)) for ri, a in zip(r, t)]
    ImageDraw.Draw(im).polygon(pts, fill=(225, 30, 25))
    return im.resize((SIZE, SIZE), Image.LANCZOS)


def drawing_cyan_cross(rng: np.random.Generator) -> Image.Image:
    """A marker-drawn cyan plus sign, slightly rotated, on black."""
    im = Image.new("RGB", (SIZE * 4, SIZE * 4), (0, 0, 0))
    d = ImageDraw.Draw(im)
    d.rectangle([60, 112, 196, 150], fill=(20, 230, 235))
    d.rectangle([110, 60, 148, 196], fill=(20, 230, 235))
    return im.rotate(9, resample=Image.BICUBIC).resize((SIZE, SIZE), Image.LANCZOS)


def photo_blue_box(rng: np.random.Generator) -> Image.Image:
    """A shaded blue box with a soft shadow on a textured grey table (photograph-like)."""
    y, x = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    table = 0.35 + 0.25 * y[..., None] + _noise(rng, 0.03)
    img = np.repeat(table, 3, axis=2)
    shadow = np.exp(-(((x - 0.58) / 0.22) ** 4 + ((y - 0.62) / 0.22) ** 4))[..., None]
    img *= 1 - 0.5 * shadow
    box = (np.abs(x - 0.5) < 0.2) & (np.abs(y - 0.5) < 0.2)
    shade = 0.55 + 0.45 * (1 - x) * (1 - 0.5 * y)
    img[box] = np.stack([0.1 * shade, 0.25 * shade, 0.95 * shade], -1)[box]
    img = np.clip(img + _noise(rng, 0.02), 0, 1)
    return Image.fromarray((img * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.6))


def photo_sunset(rng: np.random.Generator) -> Image.Image:
    """A sunset: orange-to-purple sky, a yellow sun, dark hills."""
    y, x = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    sky = np.stack([0.95 - 0.5 * y, 0.55 - 0.45 * y, 0.35 + 0.25 * y], -1)
    sun = ((x - 0.62) ** 2 + (y - 0.45) ** 2) < 0.12 ** 2
    sky[sun] = (1.0, 0.9, 0.3)
    hills = y > 0.68 + 0.06 * np.sin(7 * x + 0.5)
    sky[hills] = (0.12, 0.08, 0.12)
    img = np.clip(sky + _noise(rng, 0.015), 0, 1)
    return Image.fromarray((img * 255).astype(np.uint8))


PICTURES = {"drawing_red_circle": drawing_red_circle, "drawing_cyan_cross": drawing_cyan_cross,
            "photo_blue_box": photo_blue_box, "photo_sunset": photo_sunset}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for i, (name, draw) in enumerate(PICTURES.items()):
        draw(np.random.default_rng(i)).save(OUT / f"{name}.png", optimize=True)
        print(OUT / f"{name}.png")


if __name__ == "__main__":
    main()
