"""matplotlib figures for inversions. Each function takes `ax=None` (or `axes=`) and returns what it drew on.

Nothing here computes more than a reshape: the numbers come from `unsampling_lab.analysis.metrics` and
`unsampling_lab.sweep`, so a notebook, a widget and the command line show the same values.
Never calls plt.show().
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes

    from ..trajectory import Trajectory

__all__ = ["attention_by_step", "attention_map", "autocorrelation_map", "ensure_ax", "error_along_inversion", "error_heatmaps", "error_vs_steps", "image_grid",
           "image_strip", "psnr_against_reference", "latent_stats", "noise_histogram", "noise_qq", "rate_plot", "text_colour"]


# axis and colourbar labels with what a column measures and its unit (raw column names otherwise)
_LABELS = {"psnr": "PSNR (dB)", "psnr_vae": "VAE-only PSNR (dB)", "latent_mse": "latent MSE",
           "relative_error": "relative latent error", "fg_iou": "foreground IoU", "colour_match": "colour match rate",
           "shape_match": "shape match rate"}


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
                   facet: str = "normalize", axes: Sequence["Axes"] | None = None, log: bool = True,
                   cmap: str = "viridis", fmt: str = "{:.3g}") -> list["Axes"]:
    """Heatmaps of `value` (mean over batch items and other parameters) over row x col, one panel per `facet` value.

    All panels share one colour scale and one colour bar (a colour means the same number in every
    panel); each cell is annotated with its value in black on light colours and white on dark ones.
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import Normalize

    if value not in df.columns:
        raise KeyError(f"no column {value!r} in the sweep table; available: {', '.join(map(str, df.columns))}")
    facets = list(dict.fromkeys(df[facet])) if facet in df.columns else [None]
    if axes is None:
        fig, axs = plt.subplots(1, len(facets), figsize=(3.2 * len(facets) + 1.0, 3.2), squeeze=False,
                                layout="constrained")
        axes = list(axs[0])
    axes = list(axes)
    if len(axes) < len(facets):
        raise ValueError(f"need {len(facets)} axes (one per {facet} value), got {len(axes)}")
    tables = []
    for f in facets:
        part = df if f is None else df[df[facet] == f]
        table = part.pivot_table(index=row, columns=col, values=value, aggfunc="mean").sort_index()
        data = table.to_numpy(dtype=float)
        tables.append((table, data, np.log10(np.clip(data, 1e-300, None)) if log else data))
    finite = np.concatenate([t[2][np.isfinite(t[2])].ravel() for t in tables] or [np.zeros(1)])
    norm = Normalize(vmin=float(finite.min()) if finite.size else 0.0, vmax=float(finite.max()) if finite.size else 1.0)
    colormap = plt.get_cmap(cmap)
    im = None
    for ax, f, (table, data, shown) in zip(axes, facets, tables):
        im = ax.imshow(shown, aspect="auto", origin="lower", cmap=colormap, norm=norm)
        ax.set_xticks(range(table.shape[1]), [f"{c:g}" if isinstance(c, float) else str(c) for c in table.columns])
        ax.set_yticks(range(table.shape[0]), [str(r) for r in table.index])
        ax.set_xlabel(col)
        ax.set_ylabel(row)
        ax.set_title(f"{facet}={f}" if f is not None else value, fontsize=9)
        for (i, j), v in np.ndenumerate(data):
            ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=7,
                    color=text_colour(colormap(norm(shown[i, j]))))
    if im is not None:
        label = _LABELS.get(value, value)
        axes[0].figure.colorbar(im, ax=axes[: len(facets)], label=f"log10 {label}" if log else label, shrink=0.9)
    return axes


def text_colour(rgba: Sequence[float]) -> str:
    """"black" on light backgrounds, "white" on dark ones (relative luminance 0.2126 R + 0.7152 G + 0.0722 B > 0.5)."""
    r, g, b = rgba[:3]
    return "black" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.5 else "white"


def error_vs_steps(df: "pd.DataFrame", *, value: str = "relative_error", x: str = "steps", hue: str = "cfg",
                   slopes: Sequence[float] = (-1.0,), ax: "Axes | None" = None, label: str = "",
                   marker: str = "o", linestyle: str = "-") -> "Axes":
    """log-log plot of `value` (mean over items) against `x`, one line per `hue` value, with slope lines.

    A reference line of slope p through each curve's first point shows the rate error ~ x^p that the
    curve would keep (p = -1: first-order, halving the error needs twice the steps). `label` prefixes
    every legend entry (e.g. the model's name when two models share the axes).
    """
    ax = ensure_ax(ax, figsize=(5, 3.6))
    if value not in df.columns:
        raise KeyError(f"no column {value!r} in the table; available: {', '.join(map(str, df.columns))}")
    table = df.pivot_table(index=x, columns=hue, values=value, aggfunc="mean").sort_index()
    xs = table.index.to_numpy(dtype=float)
    styles = (":", "--", "-.")
    for h in table.columns:
        ys = table[h].to_numpy(dtype=float)
        name = f"{label}{hue} {h:g}" if isinstance(h, float) else f"{label}{hue} {h}"
        line, = ax.plot(xs, ys, marker=marker, ls=linestyle, ms=4, label=name)
        for j, p in enumerate(slopes):
            ax.plot(xs, ys[0] * (xs / xs[0]) ** p, ls=styles[j % len(styles)], lw=1, color=line.get_color())
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(xs, [f"{v:g}" for v in xs])  # ticks at the step counts, not 6x10^0
    from matplotlib.ticker import NullLocator

    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel({"steps": "steps (log scale)", "nfe": "network evaluations (log scale)"}.get(x, x))
    ax.set_ylabel({"relative_error": "relative latent error ||x' - x|| / ||x|| (log)",
                   "noise_error": "relative noise error (log)"}.get(value, value))
    handles, labels = ax.get_legend_handles_labels()
    if slopes:
        from matplotlib.lines import Line2D

        for j, p in enumerate(slopes):  # one legend entry per slope, each with its own line style
            handles.append(Line2D([], [], ls=styles[j % len(styles)], color="0.3"))
            labels.append(f"slope {p:g} through the first point")
    ax.legend(handles, labels, fontsize=7)
    return ax


def psnr_against_reference(df: "pd.DataFrame", *, x: str = "nfe_budget", hue: str = "sampler_name",
                         ax: "Axes | None" = None) -> "Axes":
    """Mean reconstruction PSNR against `x`, one line per `hue`, beside the VAE's own round trip (mean `psnr_vae`, dashed: a reference, not a bound).

    `psnr_vae` is PSNR(decode(encode(x)), x), the VAE's own loss: a reference, not a bound (a round trip decodes
    another latent and can land at or a little above it). The function and legend keep their old names.
    """
    ax = ensure_ax(ax, figsize=(5, 3.4))
    table = df.pivot_table(index=x, columns=hue, values="psnr", aggfunc="mean").sort_index()
    for h in table.columns:
        ax.plot(table.index.to_numpy(dtype=float), table[h].to_numpy(dtype=float), "o-", ms=4, label=str(h))
    ax.axhline(float(df["psnr_vae"].mean()), color="k", ls="--", lw=1, label="VAE reference: decode(encode(x))")
    ax.set_xscale("log")
    from matplotlib.ticker import NullLocator

    ax.set_xticks(table.index.to_numpy(dtype=float), [f"{v:g}" for v in table.index])  # ticks at the budgets
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("network evaluations per inversion (log scale)" if x == "nfe_budget" else x)
    ax.set_ylabel("PSNR of the round trip (dB)")
    ax.legend(fontsize=7)
    return ax


#: The old name (it called the VAE round trip a ceiling; it is a reference, not a bound).
psnr_against_ceiling = psnr_against_reference


def error_along_inversion(df: "pd.DataFrame", *, value: str = "relative_error", x: str = "sigma_final",
                          ax: "Axes | None" = None, label: str | None = None) -> "Axes":
    """Round-trip error of unsample(end_at_step=k) + resample(start_at_step=k) against the sigma reached.

    One point per end_at_step (mean over items): how the error builds up as the inversion climbs.
    """
    ax = ensure_ax(ax, figsize=(5, 3.4))
    table = df.groupby(x)[value].mean().sort_index()
    ax.plot(table.index.to_numpy(), table.to_numpy(), "o-", ms=3, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("sigma where the inversion stopped" if x == "sigma_final" else x)
    ax.set_ylabel(value)
    if label is not None:
        ax.legend(fontsize=7)
    return ax


def rate_plot(summary: "pd.DataFrame", *, x: str, y: str, hue: str, ax: "Axes | None" = None,
              annotate: str | None = None, annotate_label: str | None = None, xlabel: str | None = None,
              ylabel: str | None = None) -> "Axes":
    """Rates with error bars: columns `x`, `y` (means) and `{y}_lo`, `{y}_hi` (an interval), one line per `hue`.

    `annotate`: a column whose value labels each point (as `annotate_label=value`, default the column name;
    annotate_label="" writes the value alone), offset per line so that labels of neighbouring lines do not overlap.
    """
    ax = ensure_ax(ax, figsize=(5, 3.6))
    for i, (h, part) in enumerate(summary.groupby(hue, sort=True)):
        part = part.sort_values(x)
        yv = part[y].to_numpy(dtype=float)
        err = None
        if f"{y}_lo" in part and f"{y}_hi" in part:
            err = np.vstack([yv - part[f"{y}_lo"].to_numpy(dtype=float), part[f"{y}_hi"].to_numpy(dtype=float) - yv])
        name = f"{h:g}" if isinstance(h, float) else str(h)
        cont = ax.errorbar(part[x].to_numpy(dtype=float), yv, yerr=err, marker="o", ms=4, capsize=2, label=name)
        if annotate is not None:
            for j, (_, r) in enumerate(part.iterrows()):
                value = r[annotate]
                text = f"{value:g}" if isinstance(value, (int, float, np.number)) else str(value)
                label = annotate if annotate_label is None else annotate_label
                ax.annotate(f"{label}={text}" if label else text, (r[x], r[y]), xytext=(4, 4 + 7 * (i % 4)),
                            textcoords="offset points", fontsize=6, color=cont.lines[0].get_color())
    if annotate is not None:  # room for the point labels inside the axes
        ax.margins(x=0.12, y=0.18)
    ax.set_xlabel(xlabel or _LABELS.get(x, x))
    ax.set_ylabel(ylabel or _LABELS.get(y, y))
    ax.legend(fontsize=7, title=f"{hue} (bars: 95% interval)", title_fontsize=7)
    return ax


def pareto_front(cost: Sequence[float], value: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats: none costs at most as much and scores at least as
    high with one of the two strictly better. Sorted by cost."""
    pts = list(zip(cost, value))
    front = [i for i, (c, v) in enumerate(pts)
             if not any((c2 <= c and v2 >= v) and (c2 < c or v2 > v) for c2, v2 in pts)]
    return sorted(front, key=lambda i: pts[i][0])


def pareto(df: "pd.DataFrame", *, cost: str = "nfe", value: str = "psnr", label: str = "label",
           ax: "Axes | None" = None, log_cost: bool = True) -> "Axes":
    """Quality against cost, one labelled point per row, the Pareto front (`pareto_front`) drawn as a line."""
    ax = ensure_ax(ax, figsize=(5, 3.6))
    xs, ys = df[cost].to_numpy(dtype=float), df[value].to_numpy(dtype=float)
    ax.scatter(xs, ys, s=18, zorder=3)
    for x, y, name in zip(xs, ys, df[label].astype(str)):
        ax.annotate(name, (x, y), xytext=(4, 3), textcoords="offset points", fontsize=7)
    front = pareto_front(xs.tolist(), ys.tolist())
    ax.plot(xs[front], ys[front], "-", color="C3", lw=1, label="Pareto front: nothing cheaper is better")
    if log_cost:
        ax.set_xscale("log")
    ax.set_xlabel({"nfe": "network evaluations (NFE)"}.get(cost, cost))
    ax.set_ylabel({"psnr": "reconstruction PSNR vs VAE (dB)"}.get(value, value))
    ax.legend(fontsize=7)
    return ax


def image_grid(images: Mapping[tuple[Any, Any], Tensor], *, rows: Sequence[Any], cols: Sequence[Any],
               row_label: str = "", col_label: str = "", axes: Any = None, first: Tensor | None = None,
               first_title: str = "original", size: float = 1.3) -> Any:
    """Images [H, W, 3] keyed by (row value, col value) on a grid, labelled `row_label=v` / `col_label=v`.

    `first`: an image drawn in an extra leading column (e.g. the original). Returns the 2-D array of Axes.
    """
    import matplotlib.pyplot as plt

    extra = 1 if first is not None else 0
    if axes is None:
        _, axes = plt.subplots(len(rows), len(cols) + extra, figsize=(size * (len(cols) + extra), size * len(rows) + 0.4),
                               squeeze=False, layout="constrained")
    axes = np.asarray(axes).reshape(len(rows), len(cols) + extra)
    for i, r in enumerate(rows):
        if first is not None:
            axes[i, 0].imshow(_to_rgb(first, latent=False), interpolation="nearest")
            if i == 0:
                axes[i, 0].set_title(first_title, fontsize=8)
        for j, c in enumerate(cols):
            ax = axes[i, j + extra]
            ax.imshow(_to_rgb(images[(r, c)], latent=False), interpolation="nearest")
            if i == 0:
                value = f"{c:g}" if isinstance(c, float) else str(c)
                ax.set_title(f"{col_label}={value}" if col_label else value, fontsize=8)
        value = f"{r:g}" if isinstance(r, float) else str(r)
        axes[i, 0].set_ylabel(f"{row_label}={value}" if row_label else value, fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
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
    ax.figure.colorbar(im, ax=ax, label="correlation")
    return ax


from .attention_plots import attention_by_step, attention_map  # noqa: E402  (the editing view, its own module)
