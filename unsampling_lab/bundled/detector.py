"""A rule-based judge for shapes images: colour from the foreground's hue, shape from its geometry.

    foreground:  max(R, G, B) > threshold, largest 8-connected component
    colour:      hue of the foreground's mean RGB, nearest of the six hues (0, 60, ..., 300 degrees);
                 "unknown" when the saturation (max - min) / max < min_saturation, "none" without foreground
    shape:       render every template of `shapes.py` in the foreground's square bbox (centre, half-side r)
                 and pick the largest IoU with the foreground
    a shape at all: the judged foreground must be one solid object, or the shape is "unknown" (never credited):
                 its area >= MIN_AREA_FRACTION of the smallest shape the generator draws, it holds
                 >= MIN_COMPONENT_FRACTION of all lit pixels (scattered specks fail), and its best template
                 IoU >= MIN_TEMPLATE_IOU. On 64 generated images and their VAE round trips the smallest
                 values were area 49 px, fraction 1.0, IoU 0.71; on images of scattered red specks, 3-5 px,
                 0.05-0.08 and 0.29-0.67 (tests/test_detector.py measures both).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .shapes import COLOURS, R_MIN, SHAPES, SIZE, shape_masks

HUES: dict[str, float] = {"red": 0.0, "yellow": 60.0, "green": 120.0, "cyan": 180.0, "blue": 240.0, "magenta": 300.0}
assert set(HUES) == set(COLOURS)


MIN_AREA_FRACTION = 0.5
MIN_COMPONENT_FRACTION = 0.5
MIN_TEMPLATE_IOU = 0.5


@dataclass(frozen=True)
class Detection:
    """Per-image colour, shape, centroid (x, y) [B, 2], area in pixels [B], foreground mask [B, H, W], template
    IoU [B] and whether the foreground is one solid object (`solid` [B] bool; when False the shape is "unknown")."""

    colours: list[str]
    shapes: list[str]
    centroids: Tensor
    areas: Tensor
    masks: Tensor
    shape_iou: Tensor
    solid: Tensor


def hue_degrees(rgb: Tensor) -> Tensor:
    """HSV hue in [0, 360) of rgb [..., 3]."""
    r, g, b = rgb.unbind(-1)
    mx, mn = rgb.max(-1).values, rgb.min(-1).values
    d = (mx - mn).clamp_min(1e-8)
    h = torch.where(mx == r, ((g - b) / d) % 6, torch.where(mx == g, (b - r) / d + 2, (r - g) / d + 4))
    return (60 * h) % 360


def nearest_colour(rgb: Tensor, *, min_saturation: float = 0.5) -> list[str]:
    """Name of the nearest of the six hues for each rgb [B, 3]; "unknown" if too grey."""
    hue = hue_degrees(rgb)
    mx = rgb.max(-1).values
    sat = (mx - rgb.min(-1).values) / mx.clamp_min(1e-8)
    names, ref = list(HUES), torch.tensor(list(HUES.values()))
    dist = ((hue[:, None] - ref[None]).abs() % 360)
    dist = torch.minimum(dist, 360 - dist)
    idx = dist.argmin(-1)
    return [names[i] if s >= min_saturation else "unknown" for i, s in zip(idx.tolist(), sat.tolist())]


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """Largest 8-connected component of a boolean mask [H, W]."""
    from scipy import ndimage

    labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
    if n <= 1:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    return labels == (1 + sizes.argmax())


def foreground_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU |a & b| / |a | b| of boolean masks [B, H, W] (1 where both are empty)."""
    a, b = a.bool().flatten(1), b.bool().flatten(1)
    inter, union = (a & b).sum(1).float(), (a | b).sum(1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def detect(images: Tensor, *, threshold: float = 0.5, min_saturation: float = 0.5) -> Detection:
    """Judge images float [B, H, W, 3] in 0..1: colour, shape, centroid, area and foreground mask."""
    images = images.detach().float().cpu().clamp(0, 1)
    b, h, w, _ = images.shape
    raw = (images.max(-1).values > threshold).numpy()
    masks = torch.from_numpy(np.stack([_largest_component(m) for m in raw])) if b else torch.zeros(0, h, w, dtype=torch.bool)
    areas = masks.flatten(1).sum(1).float()
    has = areas > 0
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32) + 0.5, torch.arange(w, dtype=torch.float32) + 0.5,
                            indexing="ij")
    m = masks.float()
    safe = areas.clamp_min(1)
    centroids = torch.stack([(m * xs).flatten(1).sum(1) / safe, (m * ys).flatten(1).sum(1) / safe], -1)
    mean_rgb = (images * m[..., None]).flatten(1, 2).sum(1) / safe[:, None]
    colours = [c if ok else "none" for c, ok in zip(nearest_colour(mean_rgb, min_saturation=min_saturation), has.tolist())]

    # square bbox fit: centre = bbox centre, r = mean half-extent (pixel i spans [i, i + 1))
    rows, cols = masks.any(2), masks.any(1)
    idx_h, idx_w = torch.arange(h).float(), torch.arange(w).float()
    y0 = torch.where(rows, idx_h, torch.inf).min(1).values
    y1 = torch.where(rows, idx_h + 1, -torch.inf).max(1).values
    x0 = torch.where(cols, idx_w, torch.inf).min(1).values
    x1 = torch.where(cols, idx_w + 1, -torch.inf).max(1).values
    centres = torch.stack([(x0 + x1) / 2, (y0 + y1) / 2], -1).nan_to_num(w / 2, w / 2, w / 2)
    radii = ((x1 - x0 + y1 - y0) / 4).nan_to_num(1.0, 1.0, 1.0).clamp_min(0.5)
    n_s = len(SHAPES)
    templates = shape_masks(torch.arange(n_s).repeat(b), centres.repeat_interleave(n_s, 0),
                            radii.repeat_interleave(n_s), size=h, supersample=3) > 0.5  # [B * S, H, W]
    ious = foreground_iou(templates, masks.repeat_interleave(n_s, 0)).reshape(b, n_s)
    best = ious.max(1)
    lit = torch.from_numpy(raw).flatten(1).sum(1).float()
    solid = (has & (areas >= MIN_AREA_FRACTION * smallest_shape_area(h)) & (areas >= MIN_COMPONENT_FRACTION * lit)
             & (best.values >= MIN_TEMPLATE_IOU))
    shapes = [("none" if not ok else SHAPES[i] if good else "unknown")
              for i, ok, good in zip(best.indices.tolist(), has.tolist(), solid.tolist())]
    return Detection(colours=colours, shapes=shapes, centroids=centroids, areas=areas, masks=masks,
                     shape_iou=torch.where(has, best.values, torch.zeros_like(best.values)), solid=solid)


def smallest_shape_area(size: int = SIZE) -> float:
    """Pixels (coverage > 1/2) of the smallest shape the generator draws at image size `size`: each template at
    the minimum half-side R_MIN (scaled to the image), the least of them."""
    r = R_MIN * size / SIZE
    centre = torch.full((len(SHAPES), 2), size / 2)
    cover = shape_masks(torch.arange(len(SHAPES)), centre, torch.full((len(SHAPES),), r), size=size, supersample=3)
    return float((cover > 0.5).flatten(1).sum(1).min())
