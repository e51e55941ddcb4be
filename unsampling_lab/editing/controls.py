"""Editing controls as data: what each does to the target branch, its options and defaults, the families it serves.

Notation (sigma space, as in `inversion/`): the source and target branches run in one network
batch; M = softmax(Q Kᵀ/√d) an attention map (queries x keys); n the number of sampling steps, step i
in 0..n-1; a fraction τ of the steps means steps i < int(τ n) (prompt-to-prompt's `int(num_steps * τ)`).

    prompt_swap   nothing injected: the target branch is a plain resample with the target prompt.
    p2p           word swap (Hertz et al. 2022): cross-attention of the target := M_src for i < τ_c n (token
                  for token, so both prompts need the same number of tokens); self-attention := M_src for
                  i < τ_s n.
    p2p_refine    added words: M_tgt[:, j] := M_src[:, a(j)] for target tokens j aligned to a source token a(j)
                  (global alignment of the token sequences), new tokens keep M_tgt[:, j]; self as p2p; then, as
                  p2p_reweight, M[:, j] *= scale for the target tokens of `words` (P2P's AttentionReweight wrapping
                  its AttentionRefine: the refined map times the equalizer; scale 1, the default, changes nothing).
    p2p_reweight  word swap, then M[:, j] *= scale for the tokens of `words` (no renormalisation, as P2P).
                  Both reweights act in the cross-attention window only (P2P blends the reweighted map in with
                  the time-word alpha), and `words` is per item like `blend_words`: one tuple of words per item
                  reweights each item's own words in its target prompt.
    pnp           plug-and-play (Tumanyan et al. 2023): the residual branch of one decoder ResNet block
                  (its conv2 output) := the source's for i < τ_f n; self-attention Q and K of the later
                  decoder layers := the source's for i < τ_qk n, in both the uncond and the cond rows.
    value_injection  RF-Solver-Edit (Wang et al. 2024) / FireFlow (Deng et al. 2024), flow transformers:
                  self-attention V of the target := V_src in blocks first_block..last_block (Flux: single-stream;
                  SD3: joint, our extension) for i < τ_v n, in both the uncond and the cond rows; tokens "all"
                  (text and image, as the papers) or "image" (editing/flow_attention.py).

Local blend (p2p family, `blend_words`: words, looked up in every item's source and target prompts, or one
tuple of words per batch item, each looked up in its own item's prompts): a mask from the blend words' cross-attention, summed over the
steps so far, averaged over the layers (`blend_layers`), max-pooled by `blend_dilation` of the latent width
(P2P's 3x3 pool on 16x16 maps of a 64x64 latent is 1/16 of it: no pooling on the bundled 8x8 latents),
scaled to [0, 1] by its range (`blend_norm`; P2P divides by the maximum, the same where the map falls to
0, but the bundled model's averaged maps keep a floor at 0.41 of their peak (benchmarks/editing.py), so
P2P's 0.3 masked every cell) and thresholded; source ∪ target maps (`blend_rows`). Outside it the
target's denoised estimate is the source's from step int(blend_start n) on (a denoised-space blend, as
ComfyUI's noise mask, so it holds for every sampler; P2P blends the states), and the final latent is the
source's there. `ul.edit(mask=...)` takes a mask of one's own instead.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import UnsamplingError, check_choice
from ..inversion.base import Option, check_option_values

_FRACTION = dict(low=0.0, high=1.0)  # of the steps (or of the map's maximum)
_P2P_TIMES = dict(cross_steps=Option(0.8, float, **_FRACTION), self_steps=Option(0.4, float, **_FRACTION))
_REWEIGHT = dict(words=Option((), tuple, per_item=True), scale=Option(1.0, float, low=0.0, high=math.inf))
_BLEND = dict(blend_words=Option((), tuple, per_item=True), blend_threshold=Option(0.3, float, **_FRACTION),
              blend_start=Option(0.2, float, **_FRACTION),
              blend_dilation=Option(1 / 16, float, low=0.0, high=0.5),  # of the latent width (P2P's 3x3 pool at 16/64)
              blend_layers=Option("all", str, choices=("all", "finest", "coarsest")),
              blend_norm=Option("range", str, choices=("range", "max")),
              blend_rows=Option("both", str, choices=("both", "source")))


@dataclass(frozen=True)
class ControlSpec:
    """A control's registry entry.

    injects: "none", "maps" (P2P), "features" (PnP) or "values" (flow value injection). options: name ->
    `Option` (type and range, checked in one place with the inversion methods' options). cond_only: P2P
    controls the cond rows only (as its reference code); PnP and value injection both uncond and cond.
    families: the model predictions it serves ("eps"/"v": UNets with cross-attention; "flow": SD3/Flux
    transformers).
    """

    name: str
    injects: str
    options: Mapping[str, Any]
    families: tuple[str, ...]
    paper: str
    cond_only: bool = True

    def __post_init__(self) -> None:
        plain = [k for k, v in self.options.items() if not isinstance(v, Option)]
        if plain:
            raise TypeError(f"control {self.name!r}: options {plain} must be declared as Option(default, kind, ...)")

    @property
    def defaults(self) -> dict[str, Any]:
        """Each option's default value."""
        return {k: o.default for k, o in self.options.items()}


_SPECS = [
    ControlSpec("prompt_swap", "none", {}, ("eps", "v", "flow"), "a new prompt resampled from the inverted noise"),
    ControlSpec("p2p", "maps", {**_P2P_TIMES, **_BLEND}, ("eps", "v"), "Hertz et al. 2022 (arXiv 2208.01626), word swap"),
    ControlSpec("p2p_refine", "maps", {**_P2P_TIMES, **_BLEND, **_REWEIGHT}, ("eps", "v"),
                "Hertz et al. 2022, refinement (and re-weighting on top)"),
    ControlSpec("p2p_reweight", "maps", {**_P2P_TIMES, **_BLEND, **_REWEIGHT}, ("eps", "v"),
                "Hertz et al. 2022, attention re-weighting"),
    ControlSpec("pnp", "features", dict(feature_steps=Option(0.8, float, **_FRACTION),
                                        qk_steps=Option(0.5, float, **_FRACTION),
                                        feature_layer=Option("up_blocks.0.resnets.1", str),
                                        qk_layers=Option(("up_blocks.0.attentions.1", "up_blocks.1"), tuple)),
                ("eps", "v"), "Tumanyan et al. CVPR 2023 (arXiv 2211.12572)", cond_only=False),
    # both papers' code defaults: --inject 20 of --num_steps 25, Flux single-stream blocks 20..37 (the last)
    ControlSpec("value_injection", "values", dict(value_steps=Option(0.8, float, **_FRACTION),
                                                  first_block=Option(20, int, low=0, high=math.inf),
                                                  last_block=Option(-1, int, low=-1, high=math.inf),
                                                  tokens=Option("all", str, choices=("all", "image"))),
                ("flow",), "Wang et al. 2024 RF-Solver-Edit (arXiv 2411.04746); Deng et al. 2024 FireFlow "
                "(arXiv 2412.07517)", cond_only=False),
]

CONTROL_SPECS: dict[str, ControlSpec] = {s.name: s for s in _SPECS}
CONTROLS: tuple[str, ...] = tuple(CONTROL_SPECS)


def get_control(name: str) -> ControlSpec:
    """The registry entry for `name` (an unknown name gets the nearest ones suggested)."""
    check_choice(name, CONTROLS, what="editing control")
    return CONTROL_SPECS[name]


def control_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults filled in; unknown options refused (with the nearest name), types and ranges checked by the
    one option checker (`inversion.base.check_option_values`)."""
    spec = get_control(name)
    out = check_option_values(name, options, spec.options, what="control")
    if name in ("p2p_refine", "p2p_reweight") and out["scale"] != 1.0 and not out["words"]:
        raise UnsamplingError(f"control {name!r}: give the words to reweight, e.g. words=('red',), scale=2.0")
    return out


def in_window(step: int, n_steps: int, fraction: float) -> bool:
    """Step i is in the first `fraction` of n steps: i < int(fraction n) (prompt-to-prompt's rule)."""
    return step < int(fraction * n_steps)
