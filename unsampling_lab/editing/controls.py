"""Editing controls as data: what each does to the target branch, its options and defaults, the families it serves.

Notation (sigma space, as in `inversion/`): the source and target branches run in one network
batch; M = softmax(Q Kᵀ/√d) an attention map (queries x keys); n the number of sampling steps, step i
in 0..n-1; a fraction τ of the steps means steps i < int(τ n) (prompt-to-prompt's `int(num_steps * τ)`).

    prompt_swap   nothing injected: the target branch is a plain resample with the target prompt.
    p2p           word swap (Hertz et al. 2022): cross-attention of the target := M_src for i < τ_c n (token
                  for token, so both prompts need the same number of tokens); self-attention := M_src for
                  i < τ_s n.
    p2p_refine    added words: M_tgt[:, j] := M_src[:, a(j)] for target tokens j aligned to a source token a(j)
                  (global alignment of the token sequences), new tokens keep M_tgt[:, j]; self as p2p.
    p2p_reweight  word swap, then M[:, j] *= scale for the tokens of `words` (no renormalisation, as P2P).
    pnp           plug-and-play (Tumanyan et al. 2023): the residual branch of one decoder ResNet block
                  (its conv2 output) := the source's for i < τ_f n; self-attention Q and K of the later
                  decoder layers := the source's for i < τ_qk n, in both the uncond and the cond rows.

Local blend (p2p family, `blend_words`): a mask from the blend words' cross-attention, averaged over the
steps so far and the layers, max-pooled 3x3, divided by its maximum and thresholded; outside it the
target's denoised estimate is the source's from step int(blend_start n) on (a denoised-space blend, as
ComfyUI's noise mask, so it holds for every sampler; P2P blends the states), and the final latent is the
source's there.
"""
from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import UnsamplingError, check_choice

_P2P_TIMES = dict(cross_steps=0.8, self_steps=0.4)
_BLEND = dict(blend_words=(), blend_threshold=0.3, blend_start=0.2)


@dataclass(frozen=True)
class ControlSpec:
    """A control's registry entry.

    injects: "none", "maps" (P2P) or "features" (PnP). cond_only: P2P controls the cond rows only (as its
    reference code); PnP both uncond and cond. families: the model predictions it serves (UNets with
    cross-attention; flow transformers are not served yet).
    """

    name: str
    injects: str
    options: Mapping[str, Any]
    families: tuple[str, ...]
    paper: str
    cond_only: bool = True


_SPECS = [
    ControlSpec("prompt_swap", "none", {}, ("eps", "v", "flow"), "a new prompt resampled from the inverted noise"),
    ControlSpec("p2p", "maps", {**_P2P_TIMES, **_BLEND}, ("eps", "v"), "Hertz et al. 2022 (arXiv 2208.01626), word swap"),
    ControlSpec("p2p_refine", "maps", {**_P2P_TIMES, **_BLEND}, ("eps", "v"), "Hertz et al. 2022, refinement"),
    ControlSpec("p2p_reweight", "maps", {**_P2P_TIMES, **_BLEND, "words": (), "scale": 1.0}, ("eps", "v"),
                "Hertz et al. 2022, attention re-weighting"),
    ControlSpec("pnp", "features", dict(feature_steps=0.8, qk_steps=0.5, feature_layer="up_blocks.0.resnets.1",
                                        qk_layers=("up_blocks.0.attentions.1", "up_blocks.1")),
                ("eps", "v"), "Tumanyan et al. CVPR 2023 (arXiv 2211.12572)", cond_only=False),
]

CONTROL_SPECS: dict[str, ControlSpec] = {s.name: s for s in _SPECS}
CONTROLS: tuple[str, ...] = tuple(CONTROL_SPECS)


def get_control(name: str) -> ControlSpec:
    """The registry entry for `name` (an unknown name gets the nearest ones suggested)."""
    check_choice(name, CONTROLS, what="editing control")
    return CONTROL_SPECS[name]


def control_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults filled in; unknown options refused (with the nearest name) and values checked."""
    spec = get_control(name)
    defaults = spec.options
    for key in options:
        if key not in defaults:
            near = difflib.get_close_matches(key, list(defaults), n=1, cutoff=0.5)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            accepted = ", ".join(f"{k}={v!r}" for k, v in defaults.items()) or "none"
            raise UnsamplingError(f"control {name!r} takes no option {key!r}{hint}; its options are: {accepted}")
    out = dict(defaults)
    for key, value in options.items():
        d = defaults[key]
        if isinstance(d, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise UnsamplingError(f"control {name!r}: {key} must be a number like {d!r}, got {value!r}")
            value = float(value)
            if key.endswith(("_steps", "_start", "_threshold")) and not 0.0 <= value <= 1.0:
                raise UnsamplingError(f"control {name!r}: {key} is a fraction in 0..1, got {value}")
        elif isinstance(d, tuple):
            value = (value,) if isinstance(value, str) else tuple(value)
            if not all(isinstance(v, str) for v in value):
                raise UnsamplingError(f"control {name!r}: {key} must be words (strings), got {value!r}")
        elif isinstance(d, str) and not isinstance(value, str):
            raise UnsamplingError(f"control {name!r}: {key} must be a module name like {d!r}, got {value!r}")
        out[key] = value
    if name == "p2p_reweight" and out["scale"] != 1.0 and not out["words"]:
        raise UnsamplingError("control 'p2p_reweight': give the words to reweight, e.g. words=('red',), scale=2.0")
    return out


def in_window(step: int, n_steps: int, fraction: float) -> bool:
    """Step i is in the first `fraction` of n steps: i < int(fraction n) (prompt-to-prompt's rule)."""
    return step < int(fraction * n_steps)
