"""The explorer's pictures (no widgets, no maths): the statistics plot with its end_at_step marker, the image
strip, and the attention view (token x step) of an edit. Each returns PNG bytes for an `ipywidgets.Image`."""
from __future__ import annotations

import io
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from .. import engine

if TYPE_CHECKING:
    from ..trajectory import Trajectory

TILE = 128  # pixels per image in the strip


class StatsFigure:
    """`plots.latent_stats` of the trajectory with the current end_at_step marked; drawn once per
    trajectory, an update only paints the marker."""

    def __init__(self, traj: "Trajectory", model_sampling: Any) -> None:
        from matplotlib.figure import Figure

        from ..analysis.plots import latent_stats

        self.steps = int(traj.params["steps"])
        self.sigmas = [float(v) for v in traj.sigmas]
        w, h = self.pixel_size()
        self.fig = Figure(figsize=(w / self.DPI, h / self.DPI), dpi=self.DPI, layout="constrained")
        ax = latent_stats(traj, model_sampling=model_sampling, ax=self.fig.add_subplot())
        ax.set_title("latent std along the inversion", fontsize=9)
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from PIL import Image

        canvas = FigureCanvasAgg(self.fig)
        canvas.draw()  # drawn once: an update only paints the end_at_step marker on a copy (milliseconds)
        self.base = Image.fromarray(np.asarray(canvas.buffer_rgba())).convert("RGB")
        height = self.base.height
        self.xs = [float(ax.transData.transform((s, 1.0))[0]) for s in self.sigmas]
        self.y0, self.y1 = height - float(ax.bbox.y1), height - float(ax.bbox.y0)

    DPI = 100
    WIDTH, HEIGHT = 360, 260  # pixels, drawn and shown 1:1

    @classmethod
    def pixel_size(cls) -> tuple[int, int]:
        return cls.WIDTH, cls.HEIGHT

    def render(self, end_at_step: int) -> bytes:
        from PIL import ImageDraw

        index = min(engine.state_index(self.steps, end_at_step), len(self.sigmas) - 1)
        im = self.base.copy()
        x = self.xs[index]
        ImageDraw.Draw(im).line([(x, self.y0), (x, self.y1)], fill=(214, 39, 40), width=2)
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        return buf.getvalue()


def attention_png(attention: Any, *, item: int = 0, width: int = 360, height: int = 260, dpi: int = 100) -> bytes:
    """`ul.plots.attention_by_step` of the target branch (tokens x steps) as PNG bytes of `width` x `height` pixels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ..analysis.attention_plots import attention_by_step

    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi, layout="constrained")
    ax = attention_by_step(attention, branch="target", item=item, ax=fig.add_subplot())
    ax.set_title("target cross-attention per token", fontsize=9)
    ax.tick_params(labelsize=7)
    buf = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buf)
    return buf.getvalue()


def latent_preview(latent: Tensor) -> Tensor:
    """A latent [C, H, W] as an image [H, W, 3] in 0..1: channels 0-2 (or repeated), min-max scaled."""
    x = latent.detach().float().cpu()
    x = x[:3] if x.shape[0] >= 3 else x[:1].expand(3, *x.shape[1:])
    x = (x - x.min()) / (x.max() - x.min()).clamp_min(1e-8)
    return x.permute(1, 2, 0)


def tile_png(images: Sequence[Tensor], *, tile: int = TILE, gap: int = 4) -> bytes:
    """PNG bytes of images [H, W, 3] in 0..1 side by side, each scaled to `tile` pixels (nearest)."""
    from PIL import Image

    canvas = Image.new("RGB", (len(images) * (tile + gap) - gap, tile), (255, 255, 255))
    for i, im in enumerate(images):
        arr = (im.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        canvas.paste(Image.fromarray(arr).resize((tile, tile), Image.NEAREST), (i * (tile + gap), 0))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()
