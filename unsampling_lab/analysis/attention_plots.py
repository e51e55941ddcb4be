"""The attention-map view of an edit: token x step heat map, and one token's map over the latent.

Takes what `ul.edit(..., record_attention=True)` recorded (`EditResult.attention`); the numbers come from
`AttentionMaps.token_by_step` (the attention each token receives, averaged over latent cells and layers).
Each function takes `ax=None` and returns the Axes; never calls plt.show().
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from ..editing import AttentionMaps

__all__ = ["attention_by_step", "attention_map"]


def ensure_ax(ax: "Axes | None", **fig_kw: object) -> "Axes":
    """`ax`, or a new figure's Axes (plots.ensure_ax; not imported from there: plots re-exports this module)."""
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    return plt.subplots(**fig_kw)[1]  # type: ignore[arg-type]


def attention_by_step(attention: "AttentionMaps", *, branch: Literal["source", "target"] = "target", item: int = 0,
                      skip_padding: bool = True, ax: "Axes | None" = None) -> "Axes":
    """Heat map tokens (rows) x steps (columns) of the cross-attention each token receives."""
    values = attention.token_by_step(branch=branch, item=item)  # [K, S]
    b = len(attention.tokens) // 2
    tokens = attention.tokens[item + (b if branch == "target" else 0)]
    keep = list(range(len(tokens)))
    if skip_padding:  # the end token once; padding repeats it
        first_end = next((i for i, t in enumerate(tokens) if i > 0 and t == tokens[-1]), len(tokens) - 1)
        keep = keep[: first_end + 1]
    ax = ensure_ax(ax, figsize=(0.45 * values.shape[1] + 2, 0.4 * len(keep) + 1.2))
    im = ax.imshow(values[keep].numpy(), aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_yticks(range(len(keep)), [tokens[i] for i in keep])
    every = max(1, -(-len(attention.steps) // 10))  # at most ~10 step labels, so they never overlap
    ticks = list(range(0, len(attention.steps), every))
    ax.set_xticks(ticks, [str(attention.steps[i]) for i in ticks])
    ax.set_xlabel("step")
    ax.set_title(f"cross-attention per token, {branch} branch, item {item}")
    ax.figure.colorbar(im, ax=ax, fraction=0.05)
    return ax


def attention_map(attention: "AttentionMaps", token: int, *, step: int | None = None,
                  branch: Literal["source", "target"] = "target", item: int = 0, ax: "Axes | None" = None) -> "Axes":
    """One token's map over the latent cells, the layers brought to the finest one and averaged (all steps if
    `step` is None)."""
    import torch.nn.functional as F

    b = next(iter(attention.maps.values())).shape[1] // 2
    row = item + (b if branch == "target" else 0)
    rows = [attention.steps.index(step)] if step is not None else list(range(len(attention.steps)))
    per_layer = [m[rows][:, row, :, token].mean(0) for m in attention.maps.values()]  # [Q] each
    side = max(int(round(q.numel() ** 0.5)) for q in per_layer)
    grid = torch.stack([F.interpolate(q.reshape(1, 1, int(round(q.numel() ** 0.5)), -1), size=(side, side),
                                      mode="bilinear")[0, 0] for q in per_layer]).mean(0)
    ax = ensure_ax(ax)
    ax.imshow(grid.numpy(), cmap="magma", interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(f"{attention.tokens[row][token]!r}" + (f", step {step}" if step is not None else ""))
    return ax
