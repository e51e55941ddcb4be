"""matplotlib figures for inversions. Each function takes `ax=None` (or `axes=`) and returns what it drew on.

Nothing here computes more than a reshape: the numbers come from `unsampling_lab.analysis.metrics` and
`unsampling_lab.sweep`, so a notebook, a widget and the command line show the same values.
Never calls plt.show().
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes

    from ..trajectory import Trajectory

__all__ = ["autocorrelation_map", "ensure_ax", "error_heatmaps", "image_strip", "latent_stats", "noise_histogram", "noise_qq"]


def ensure_ax(ax: "Axes | None", **fig_kw: Any) -> "Axes":
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    return plt.subplots(**fig_kw)[1]


def latent_stats(trajectory: "Trajectory | pd.DataFrame", *, model_sampling: Any = None, ax: "Axes | None" = None) -> "Axes":
    """Each state's std along the inversion against the schedule's prediction sqrt(sigma^2 + d^2), over sigma.

    Takes a Trajectory or its `metrics.trajectory_frame`; one line per batch item, the prediction dashed.
    """
    from ..trajectory import Trajectory
    from .metrics import trajectory_frame

    frame = trajectory_frame(trajectory, model_sampling=model_sampling) if isinstance(trajectory, Trajectory) else trajectory
    ax = ensure_ax(ax, figsize=(5, 3.5))
    for item, part in frame.groupby("item"):
        part = part.sort_values("sigma")
        line, = ax.plot(part["sigma"], part["x_std"], marker="o", ms=3, label=f"item {item}: std(x)")
        ax.plot(part["sigma"], part["expected_std"], ls="--", color=line.get_color(), alpha=0.7,
                label=f"item {item}: schedule")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("sigma")
    ax.set_ylabel("latent std")
    ax.set_title("latent std along the inversion")
    ax.legend(fontsize=7)
    return ax


def error_heatmaps(df: "pd.DataFrame", *, value: str = "latent_mse", row: str = "end_at_step", col: str = "cfg",
                   facet: str = "normalize", axes: Sequence["Axes"] | None = None, log: bool = True) -> list["Axes"]:
    """Heatmaps of `value` (mean over batch items and other parameters) over row x col, one panel per `facet` value."""
    import matplotlib.pyplot as plt

    if value not in df.columns:
        raise KeyError(f"no column {value!r} in the sweep table; available: {', '.join(map(str, df.columns))}")
    facets = list(dict.fromkeys(df[facet])) if facet in df.columns else [None]
    if axes is None:
        fig, axs = plt.subplots(1, len(facets), figsize=(3.6 * len(facets), 3.2), squeeze=False)
        axes = list(axs[0])
    axes = list(axes)
    if len(axes) < len(facets):
        raise ValueError(f"need {len(facets)} axes (one per {facet} value), got {len(axes)}")
    for ax, f in zip(axes, facets):
        part = df if f is None else df[df[facet] == f]
        table = part.pivot_table(index=row, columns=col, values=value, aggfunc="mean").sort_index()
        data = table.to_numpy(dtype=float)
        shown = np.log10(np.clip(data, 1e-300, None)) if log else data
        im = ax.imshow(shown, aspect="auto", origin="lower", cmap="viridis")
        ax.set_xticks(range(table.shape[1]), [f"{c:g}" if isinstance(c, float) else str(c) for c in table.columns])
        ax.set_yticks(range(table.shape[0]), [str(r) for r in table.index])
        ax.set_xlabel(col)
        ax.set_ylabel(row)
        ax.set_title(f"{facet}={f}" if f is not None else value, fontsize=9)
        for (i, j), v in np.ndenumerate(data):
            ax.text(j, i, f"{v:.3g}", ha="center", va="center", fontsize=7, color="w")
        ax.figure.colorbar(im, ax=ax, label=f"log10 {value}" if log else value)
    return axes


def _to_rgb(t: Tensor, *, latent: bool) -> np.ndarray:
    """An image [H, W, 3] in 0..1 as is; a latent [C, H, W] as its first three channels, each min-max scaled."""
    t = t.detach().float().cpu()
    if not latent:
        return t.clamp(0, 1).numpy()
    c = t[:3] if t.shape[0] >= 3 else t[:1].expand(3, *t.shape[1:])
    lo = c.flatten(1).min(1).values[:, None, None]
    hi = c.flatten(1).max(1).values[:, None, None]
    return ((c - lo) / (hi - lo).clamp_min(1e-8)).permute(1, 2, 0).numpy()


def image_strip(original: Tensor, noise: Tensor | None = None, reconstruction: Tensor | None = None,
                edit: Tensor | None = None, *, axes: Any = None, titles: Sequence[str] | None = None) -> Any:
    """Rows of original | unsampled noise | reconstruction | edit, one row per batch item.

    Images are [B, H, W, 3] in 0..1; the noise is a latent [B, C, h, w] shown as its first three channels.
    Returns the 2-D array of Axes.
    """
    import matplotlib.pyplot as plt

    columns = [(t, n) for t, n in ((original, "original"), (noise, "unsampled noise"),
                                   (reconstruction, "reconstruction"), (edit, "edit")) if t is not None]
    if titles is not None:
        columns = [(t, title) for (t, _), title in zip(columns, titles)]
    b = int(original.shape[0])
    if axes is None:
        _, axes = plt.subplots(b, len(columns), figsize=(1.8 * len(columns), 1.8 * b), squeeze=False)
    axes = np.asarray(axes).reshape(b, len(columns))
    for j, (t, name) in enumerate(columns):
        for i in range(b):
            ax = axes[i, j]
            ax.imshow(_to_rgb(t[i], latent=t is noise), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=8)
    return axes


def noise_histogram(z: Tensor, *, bins: int = 60, ax: "Axes | None" = None) -> "Axes":
    """Histogram of standardized noise z against the N(0, 1) density."""
    ax = ensure_ax(ax, figsize=(4, 3))
    x = z.detach().double().cpu().reshape(-1).numpy()
    ax.hist(x, bins=bins, density=True, alpha=0.6, label="noise")
    grid = np.linspace(min(-4.0, x.min()), max(4.0, x.max()), 200)
    ax.plot(grid, np.exp(-grid**2 / 2) / math.sqrt(2 * math.pi), "k--", label="N(0, 1)")
    ax.set_xlabel("z")
    ax.set_ylabel("density")
    ax.legend(fontsize=7)
    return ax


def noise_qq(z: Tensor, *, ax: "Axes | None" = None, max_points: int = 4000) -> "Axes":
    """Q-Q plot of standardized noise z against N(0, 1): sorted z over Phi^-1((i - 0.5) / n)."""
    ax = ensure_ax(ax, figsize=(3.5, 3.5))
    x = z.detach().double().cpu().reshape(-1).sort().values
    n = x.numel()
    theory = torch.special.ndtri((torch.arange(1, n + 1, dtype=torch.float64) - 0.5) / n)
    idx = torch.linspace(0, n - 1, min(n, max_points)).long()
    ax.plot(theory[idx].numpy(), x[idx].numpy(), ".", ms=2)
    lim = float(max(theory.abs().max(), x.abs().max()))
    ax.plot([-lim, lim], [-lim, lim], "k--", lw=1)
    ax.set_xlabel("N(0, 1) quantile")
    ax.set_ylabel("noise quantile")
    ax.set_title("Q-Q against N(0, 1)", fontsize=9)
    return ax


def autocorrelation_map(z: Tensor, *, max_lag: int = 4, ax: "Axes | None" = None) -> "Axes":
    """The spatial autocorrelation map of z (`metrics.autocorrelation_map`), lag 0 in the centre."""
    from .metrics import autocorrelation_map as ac_map

    ax = ensure_ax(ax, figsize=(3.5, 3))
    m = ac_map(z, max_lag=max_lag).numpy()
    k = m.shape[0] // 2
    im = ax.imshow(m, cmap="RdBu_r", vmin=-1, vmax=1, extent=(-k - 0.5, k + 0.5, k + 0.5, -k - 0.5))
    ax.set_xlabel("lag x")
    ax.set_ylabel("lag y")
    ax.set_title("autocorrelation", fontsize=9)
    ax.figure.colorbar(im, ax=ax)
    return ax
