"""The 2-D toy: a two-class Gaussian mixture run as a model, drawn in the plane.

The toy is `GaussianMixture.two_class_2d()` run as a model (`models.analytic.mixture_model`): a latent
is a [B, 2, 1, 1] tensor and the prompts are the class names, "" the unconditional mixture. Points are
drawn in the VP view

    u = x / sqrt(1 + sigma^2)

(what the network sees), so data (sigma ~ 0) and noise (sigma = 80, u ~ N(0, I)) share one frame.
Everything calls the engine; matplotlib loads only inside the plotting functions.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .. import engine
from ..analysis.plots import ensure_ax

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from ..models.analytic import AnalyticModel
    from ..models.gaussian import GaussianMixture

TOY_LABELS: tuple[str, str] = ("left", "right")
CLASS_COLOURS: tuple[str, str] = ("tab:blue", "tab:orange")


def toy_model() -> tuple["GaussianMixture", "AnalyticModel"]:
    """The two-class 2-D mixture and the model the engine runs on it (prompts "left", "right", "")."""
    from ..models.gaussian import GaussianMixture
    from ..models.analytic import mixture_model

    mixture = GaussianMixture.two_class_2d()
    return mixture, mixture_model(mixture, labels=TOY_LABELS)


def toy_data(mixture: "GaussianMixture", n: int, *, seed: int = 0) -> tuple[Tensor, Tensor]:
    """n points [n, 2, 1, 1] (float64 latents) and their class labels [n]."""
    x, labels = mixture.sample(n, generator=torch.Generator().manual_seed(seed))
    return x[:, :, None, None], labels


def toy_prompts(labels: Tensor) -> list[str]:
    """Each point's own class name as its prompt ("left" / "right"), for per-item conditioning."""
    return [TOY_LABELS[int(c)] for c in labels]


def plane(latents: Tensor) -> Tensor:
    """[..., B, 2, 1, 1] latents as [..., B, 2] points."""
    return latents.reshape(*latents.shape[:-3], latents.shape[-3])


def vp_view(xs: Tensor, sigmas: Tensor) -> Tensor:
    """States [n, B, 2, 1, 1] at sigmas [n] as points u = x / sqrt(1 + sigma^2), [n, B, 2]."""
    return plane(xs) / torch.sqrt(1 + sigmas.double() ** 2)[:, None, None]


def sample_path(model: Any, latent: Tensor, **resample_kwargs: Any) -> tuple[Tensor, Tensor]:
    """`resample` with every state kept: (states [n+1, B, ...], sigmas [n+1])."""
    xs: list[Tensor] = []
    sigmas: list[float] = []

    def keep(step: Any) -> None:
        xs.append(step.x.detach().cpu())
        sigmas.append(step.sigma)

    out = engine.resample(model, latent, callback=keep, progress=False, **resample_kwargs)
    sigmas.append(0.0 if not resample_kwargs.get("return_with_leftover_noise") else float("nan"))
    return torch.stack(xs + [out.detach().cpu()]), torch.tensor(sigmas, dtype=torch.float64)


def plot_density(mixture: "GaussianMixture", *, sigma: float = 0.0, ax: "Axes | None" = None,
                 lim: float = 3.5, label: int | None = None) -> "Axes":
    """Filled contours of the (noised) data density log p_sigma in the plane; class means marked."""
    ax = ensure_ax(ax, figsize=(4, 4))
    g = torch.linspace(-lim, lim, 150, dtype=torch.float64)
    xx, yy = torch.meshgrid(g, g, indexing="xy")
    pts = torch.stack([xx.reshape(-1), yy.reshape(-1)], -1)
    logp = mixture.log_prob(pts, sigma).reshape(xx.shape)
    ax.contourf(xx.numpy(), yy.numpy(), logp.clamp_min(float(logp.max()) - 12).numpy(), levels=14, cmap="Greys")
    for k in range(mixture.means.shape[0]):
        c = int(mixture.classes[k])
        ax.plot(*mixture.means[k].tolist(), "+", color=CLASS_COLOURS[c % 2], ms=9, mew=2)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_xlabel("u1 = x1 / sqrt(1 + sigma^2)")
    ax.set_ylabel("u2")
    return ax


def plot_paths(xs: Tensor, sigmas: Tensor, *, ax: "Axes | None" = None, colour: Any = "C3", alpha: float = 0.6,
               start: str = "o", end: str = "x", label: str | None = None,
               start_label: str = "start", end_label: str = "end") -> "Axes":
    """Paths of states [n+1, B, 2, 1, 1] at sigmas [n+1] in the VP view u = x / sqrt(1 + sigma^2).

    The legend names the markers: `start_label` for the first state, `end_label` for the last; the
    grey contours are the data density and the + marks the class means (blue "left", orange "right").
    """
    ax = ensure_ax(ax, figsize=(4, 4))
    u = vp_view(xs, torch.nan_to_num(sigmas, nan=0.0)).numpy()
    for b in range(u.shape[1]):
        ax.plot(u[:, b, 0], u[:, b, 1], "-", color=colour, lw=0.8, alpha=alpha, label=label if b == 0 else None)
    ax.plot(u[0, :, 0], u[0, :, 1], start, color=colour, ms=3, label=start_label)
    ax.plot(u[-1, :, 0], u[-1, :, 1], end, color=colour, ms=4, label=end_label)
    ax.legend(fontsize=7, loc="lower left")
    return ax


def plot_round_trip(original: Tensor, noise: Tensor, sigma_max: float, reconstruction: Tensor, *,
                    ax: "Axes | None" = None) -> "Axes":
    """Originals (dots), the unsampled noise in the VP view (grey) and each reconstruction joined to its original."""
    ax = ensure_ax(ax, figsize=(4, 4))
    a, r = plane(original).numpy(), plane(reconstruction).numpy()
    z = (plane(noise) / math.sqrt(1 + sigma_max**2)).numpy()
    ax.plot(z[:, 0], z[:, 1], ".", color="0.6", ms=3, label="noise u")
    ax.plot(a[:, 0], a[:, 1], "o", color="k", ms=3, label="original")
    ax.plot(r[:, 0], r[:, 1], "x", color="C3", ms=4, label="reconstruction")
    for p, q in zip(a, r):
        ax.plot([p[0], q[0]], [p[1], q[1]], "-", color="C3", lw=0.8)
    ax.set_aspect("equal")
    ax.legend(fontsize=7, loc="lower left")
    return ax


def cfg_endpoints(model: Any, noise: Tensor, cfgs: Sequence[float], *, prompt: str, steps: int = 30,
                  sampler_name: str = "euler") -> dict[float, Tensor]:
    """Where the same noise [B, 2, 1, 1] (at sigma_max) lands for each cfg: {cfg: points [B, 2]}."""
    return {float(c): plane(engine.resample(model, noise, steps=steps, cfg=float(c), positive=prompt,
                                            sampler_name=sampler_name, progress=False)) for c in cfgs}


def plot_cfg_endpoints(mixture: "GaussianMixture", endpoints: dict[float, Tensor], *, ax: "Axes | None" = None,
                       lim: float = 5.0) -> "Axes":
    """The data density with each cfg's end points in its own colour."""
    ax = plot_density(mixture, ax=ax, lim=lim)
    for i, (c, pts) in enumerate(endpoints.items()):
        ax.plot(pts[:, 0].numpy(), pts[:, 1].numpy(), ".", color=f"C{i + 2}", ms=4, label=f"cfg {c:g}")
    ax.legend(fontsize=7, loc="lower left")
    return ax


__all__ = [
    "CLASS_COLOURS", "TOY_LABELS", "cfg_endpoints", "plane", "plot_cfg_endpoints", "plot_density", "plot_paths",
    "plot_round_trip", "sample_path", "toy_data", "toy_model", "toy_prompts", "vp_view",
]
