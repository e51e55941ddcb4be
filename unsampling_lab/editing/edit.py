"""`edit`: the source and the target branch resampled together, one network batch per step.

    res = ul.edit(model, inversion, source="red circle", target="blue circle", control="p2p", cfg=3.0)
    res.target, res.source            # LATENTs, like ul.resample's output
    res.attention.token_by_step()     # recorded cross-attention (record_attention=True)

The batch is [source B, target B] (2B items; cond and uncond rows as the engine packs them). The inversion's
own resampling side runs on it (null-text's per-step embeddings, NPI's negative, EDICT's pair, ...), so
every control composes with every inversion method; the controls act inside the network (editing.attention;
on flow transformers editing.flow_attention) and Direct Inversion and local blend at its input and output
(editing.model).
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..engine import resample_sigmas, unsampled, wrap
from ..errors import UnsamplingError
from ..guidance import EvalCounter
from ..inputs import check_cfg, read_latent
from ..inversion import resample
from ..samplers import get_sampler, on_schedule_samplers
from ..trajectory import Trajectory, stop_step
from . import flow_attention
from .attention import EditState, install
from .controls import CONTROL_SPECS, control_options, get_control
from .model import EditedModel
from .tokens import refine_mapper, token_strings, word_positions

#: Inversion.resampling entries with a batch dimension (doubled for the two branches)
BATCHED = ("state", "second", "null_embeds", "pooled", "source_prompt", "reconstruction")


@dataclass
class AttentionMaps:
    """Recorded cross-attention of the cond rows, head-averaged, at the first network call of each step.

    maps[layer]: [S, 2B, Q, K] (S recorded steps, rows [source B, target B], Q latent cells, K tokens), each
    branch's own maps before any injection (as prompt-to-prompt's AttentionStore records them);
    each row sums to 1 over K. tokens: the token strings of each row's prompt.
    """

    maps: dict[str, Tensor]
    steps: list[int]
    tokens: list[list[str]]

    def token_by_step(self, *, branch: str = "target", item: int = 0) -> Tensor:
        """[K, S]: the attention each token receives, averaged over the latent cells and the layers."""
        if branch not in ("source", "target"):
            raise UnsamplingError(f"branch must be 'source' or 'target', got {branch!r}")
        b = next(iter(self.maps.values())).shape[1] // 2
        row = item + (b if branch == "target" else 0)
        return torch.stack([m[:, row].mean(dim=1) for m in self.maps.values()]).mean(0).T


@dataclass
class EditResult:
    """What `edit` returns. target, source: LATENTs (the input's type). mask: the local-blend mask [B, 1, H, W]
    (None without blend). nfe: denoiser evaluations; network_calls / network_rows: counted at the network."""

    target: Any
    source: Any
    control: str
    options: dict[str, Any]
    direct: bool
    nfe: int
    network_calls: int
    network_rows: int
    seconds: float
    attention: AttentionMaps | None = None
    mask: Tensor | None = field(default=None, repr=False)
    inversion_nfe: int = 0  # set by edit_image (the protocol), which also inverts
    inversion_seconds: float = 0.0
    inversion_grad_steps: int = 0  # of inversion_nfe, the gradient steps (null-text)


def edit(
    model: Any,
    inversion_or_noise: Any,
    *,
    source: str | Sequence[str],
    target: str | Sequence[str],
    control: str = "p2p",
    cfg: float = 1.0,
    direct: bool | Trajectory | Tensor = False,
    record_attention: bool = False,
    steps: int | None = None,
    sampler_name: str | None = None,
    scheduler: str | None = None,
    start_at_step: int | None = None,
    negative: str | Sequence[str] = "",
    mask: Tensor | None = None,
    progress: bool = False,
    **options: Any,
) -> EditResult:
    """Resample the source and the target branch of `inversion_or_noise` together under `control`.

    inversion_or_noise: an `Inversion` (its method's resampling side runs), a `Trajectory` (from
    `ul.unsample_trajectory`; its end state is resampled) or a noise LATENT. steps, sampler_name, scheduler and
    start_at_step default to the inversion's. direct: pin the source branch to the inversion path (True: the
    path the input carries; or a Trajectory / a [n + 1, B, C, H, W] tensor of states, descending sigma).
    mask: a local-blend mask of your own, [B, 1, H, W] of the latent (1: the target may change, 0: it keeps the
    source), in place of the one the blend words' maps give (p2p controls; e.g. a benchmark's object mask).
    Control options (CONTROL_SPECS[control].options) are keyword arguments.
    """
    spec = get_control(control)
    opts = control_options(control, options)
    family = model.model_sampling.prediction
    if family not in spec.families:
        others = [c for c, sp in CONTROL_SPECS.items() if family in sp.families and sp.injects != "none"]
        served = "flow models (SD3/Flux transformers)" if spec.families == ("flow",) else \
            f"{'/'.join(spec.families)} models (UNets with cross-attention)"
        raise UnsamplingError(f"control {control!r} serves {served}, not this {family!r} model; use control="
                              f"{' or '.join(repr(c) for c in others + ['prompt_swap'])}")
    cfg = check_cfg(cfg)
    if not isinstance(cfg, float):
        raise UnsamplingError("edit: give one cfg for both branches")
    noise, params = _read_input(inversion_or_noise)
    steps = int(params.get("steps", 20)) if steps is None else steps
    sampler_name = params.get("sampler_name", "euler") if sampler_name is None else sampler_name
    scheduler = params.get("scheduler", "normal") if scheduler is None else scheduler
    if start_at_step is None:
        start_at_step = stop_step(steps, int(params.get("end_at_step", 0)))
    like = _noise_latent(model, noise)
    samples, _ = read_latent(like, model)
    b = samples.shape[0]
    src, tgt = _per_item(source, b, "source"), _per_item(target, b, "target")
    sigmas = resample_sigmas(model, steps=steps, start_at_step=start_at_step, sampler_name=sampler_name,
                                     scheduler=scheduler)
    if len(sigmas) < 2:
        raise UnsamplingError(f"edit: start_at_step={start_at_step} of {steps} steps leaves nothing to sample")
    n = len(sigmas) - 1
    state = EditState(b=b, n_steps=n, control=control, options=opts, cond_only=spec.cond_only, record=record_attention)
    given = None if mask is None else _given_mask(mask, opts, samples.shape, control)
    blend = _prepare_tokens(model, state, src, tgt)  # refine's and reweight's token data too
    blend = given if given is not None else blend
    path = _path(model, inversion_or_noise, direct, n, b, sampler_name)
    proxy = EditedModel(model, state, sigmas, path=path, blend=blend)
    hooks = spec.injects != "none" or record_attention or blend is not None
    on_transformer = spec.injects == "values"
    if record_attention and getattr(model, "unet", None) is None:
        raise UnsamplingError("record_attention records a UNet's cross-attention maps; this model has none (flow "
                              "transformers' joint attention is not recorded): leave record_attention off")
    if hooks and not on_transformer and getattr(model, "unet", None) is None:
        raise UnsamplingError(f"control {control!r} needs a UNet with attention processors")
    counter = EvalCounter()
    restore: Any = lambda: None
    if hooks and on_transformer:
        restore = flow_attention.install(model.transformer, model.kind, state)
    elif hooks:
        restore = install(model.unet, state)
    t0 = time.perf_counter()
    try:
        run_on = noise if callable(getattr(noise, "resample_side", None)) else like
        out = resample(proxy, _double(run_on, b), steps=steps, start_at_step=start_at_step, cfg=cfg,
                               sampler_name=sampler_name, scheduler=scheduler, positive=src + tgt,
                               negative=_per_item(negative, b, "negative") * 2, progress=progress, counter=counter)
    finally:
        restore()
    seconds = time.perf_counter() - t0
    both = out["samples"] if isinstance(out, dict) else out
    src_out, tgt_out = both[:b], both[b:]
    if path is not None:  # the source branch is the inversion path; its end is the source
        ms = model.model_sampling
        src_out = model.latent_format.process_out(ms.inverse_noise_scaling(sigmas[-1:], path[-1])).cpu().to(src_out)
    if proxy.mask is not None:
        tgt_out = torch.where(proxy.mask.cpu() > 0.5, tgt_out, src_out)
    attention = None
    if record_attention and state.maps:
        k = next(iter(next(iter(state.maps.values())).values())).shape[-1]
        tok = getattr(model, "tokenizer", None)
        tokens = [token_strings(tok, p, k) if tok is not None else [str(i) for i in range(k)] for p in src + tgt]
        steps_seen = sorted(next(iter(state.maps.values())))
        maps = {name: torch.stack([per[i] for i in steps_seen]) for name, per in state.maps.items()}
        attention = AttentionMaps(maps, steps_seen, tokens)
    return EditResult(target=wrap(tgt_out, like), source=wrap(src_out, like), control=control,
                      options=opts, direct=path is not None, nfe=counter.nfe, network_calls=proxy.calls,
                      network_rows=proxy.rows, seconds=seconds, attention=attention, mask=proxy.mask)


# -- inputs ---------------------------------------------------------------------------------------
def _read_input(value: Any) -> tuple[Any, dict[str, Any]]:
    if isinstance(value, Trajectory):
        return value, dict(value.params)
    if callable(getattr(value, "resample_side", None)):  # an Inversion
        return value, dict(value.params)
    if isinstance(value, (dict, Tensor)):
        return value, {}
    raise UnsamplingError(f"edit: expected an Inversion (ul.invert), a Trajectory (ul.unsample_trajectory) or a noise "
                          f"LATENT, got {type(value).__name__}")


def _noise_latent(model: Any, noise: Any) -> Any:
    if isinstance(noise, Trajectory):
        return unsampled(model, noise, int(noise.params.get("end_at_step", 0)))
    if callable(getattr(noise, "resample_side", None)):
        return noise.noise
    return noise


def _double(noise: Any, b: int) -> Any:
    """The input with every batched tensor repeated for the two branches."""
    if callable(getattr(noise, "resample_side", None)):
        data = {k: (_twice(v, b) if k in BATCHED else v) for k, v in noise.resampling.items()}
        return dataclasses.replace(noise, noise=_double_latent(noise.noise, b), resampling=data)
    return _double_latent(noise, b)


def _double_latent(latent: Any, b: int) -> Any:
    if isinstance(latent, dict):
        out = dict(latent)
        out["samples"] = torch.cat([latent["samples"]] * 2)
        if isinstance(latent.get("noise_mask"), Tensor) and latent["noise_mask"].ndim >= 3 and latent["noise_mask"].shape[0] == b:
            out["noise_mask"] = torch.cat([latent["noise_mask"]] * 2)
        return out
    return torch.cat([latent] * 2)


def _twice(v: Any, b: int) -> Any:
    if isinstance(v, Tensor) and v.ndim and v.shape[0] == b:
        return torch.cat([v, v])
    if isinstance(v, (list, tuple)) and v and all(isinstance(e, Tensor) for e in v):
        return [_twice(e, b) for e in v]
    if isinstance(v, (list, tuple)) and len(v) == b and all(isinstance(e, str) for e in v):
        return list(v) * 2
    return v


def _per_item(prompt: str | Sequence[str], b: int, name: str) -> list[str]:
    if isinstance(prompt, str):
        return [prompt] * b
    if isinstance(prompt, (list, tuple)) and all(isinstance(p, str) for p in prompt) and len(prompt) in (1, b):
        return list(prompt) * (b // len(prompt))
    raise UnsamplingError(f"edit: {name} must be a prompt string or one per item ({b}), got {prompt!r}")


def _prepare_tokens(model: Any, state: EditState, src: list[str], tgt: list[str]) -> dict[str, Any] | None:
    """Token data the p2p controls need (refine's alignment, reweight's weights, the blend words); the local
    blend options, or None without blend."""
    if not state.control.startswith("p2p"):
        return None
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        raise UnsamplingError(f"control {state.control!r} needs the model's tokenizer to find words; load the model "
                              "with its tokenizer, or use control='pnp'")
    k = int(tok.model_max_length)
    b, opts = state.b, state.options
    if state.control in ("p2p", "p2p_reweight"):
        for s_, t_ in zip(src, tgt):
            ns, nt = len(tok(s_).input_ids), len(tok(t_).input_ids)
            if ns != nt:
                raise UnsamplingError(f"control {state.control!r} swaps words token for token, but {s_!r} has {ns - 2} "
                                      f"tokens and {t_!r} {nt - 2}; use control='p2p_refine' for added words")
    if state.control == "p2p_refine":
        pairs = [refine_mapper(tok, s_, t_, k) for s_, t_ in zip(src, tgt)]
        mapper = torch.stack([m for m, _ in pairs])
        alpha = torch.stack([a for _, a in pairs])
        if not (bool((mapper == torch.arange(k)).all()) and bool((alpha == 1).all())):  # else: a plain swap
            state.mapper = mapper[:, None, None, :]
            state.alpha = alpha[:, None, None, :]
    if state.control in ("p2p_refine", "p2p_reweight") and opts["scale"] != 1.0:
        w = torch.ones(b, k)
        for i, (t_, item_words) in enumerate(zip(tgt, _item_words(opts["words"], b, "words", state.control))):
            pos = word_positions(tok, t_, item_words)
            if not pos:
                raise UnsamplingError(f"{state.control}: none of {list(item_words)} is a word of the target {t_!r}")
            w[i, pos] = opts["scale"]
        state.weights = w[:, None, None, :]
    if not opts["blend_words"]:
        return None
    words = _item_words(opts["blend_words"], b, "blend_words", "local blend")
    weights = torch.zeros(2 * b, k)
    for i in range(b):
        weights[i, word_positions(tok, src[i], words[i])] = 1.0
        weights[b + i, word_positions(tok, tgt[i], words[i])] = 1.0
        if not bool(weights[i].any() or weights[b + i].any()):
            raise UnsamplingError(f"local blend: none of {list(words[i])} is a word of {src[i]!r} or {tgt[i]!r}")
    state.blend_tokens = weights
    return {k: v for k, v in opts.items() if k.startswith("blend_") and k != "blend_words"}


def _item_words(value: tuple[Any, ...], b: int, option: str, what: str) -> list[tuple[str, ...]]:
    """Each item's words (blend_words, reweight's words): the same words for every item, or one tuple of words per
    item (checked: B of them)."""
    if all(isinstance(w, str) for w in value):
        return [value] * b
    if len(value) != b:
        raise UnsamplingError(f"{what}: {option} holds {len(value)} tuples of words, one per item, but the batch "
                              f"has {b} items; give one tuple per item, or a plain tuple of words for all of them")
    return list(value)


def _given_mask(mask: Any, opts: dict[str, Any], shape: Any, control: str) -> dict[str, Any]:
    """The blend options with a user's mask in place of the maps' (checked against the latent's [B, 1, H, W])."""
    if "blend_start" not in opts:
        raise UnsamplingError(f"edit: mask= is a local-blend mask; control {control!r} has no local blend "
                              "(use control='p2p', 'p2p_refine' or 'p2p_reweight')")
    if opts["blend_words"]:
        raise UnsamplingError("edit: give blend_words (a mask from their maps) or mask= (your own), not both")
    want = (shape[0], 1, shape[-2], shape[-1])
    if not isinstance(mask, Tensor) or tuple(mask.shape) != want or not bool(((mask == 0) | (mask == 1)).all()):
        got = (type(mask).__name__ if not isinstance(mask, Tensor) else f"shape {list(mask.shape)}"
               if tuple(mask.shape) != want else "values other than 0 and 1")
        raise UnsamplingError(f"edit: mask must be a tensor of 0s and 1s shaped {list(want)} (batch, 1, the latent's "
                              f"height and width), got {got}")
    return {**{k: v for k, v in opts.items() if k.startswith("blend_") and k != "blend_words"}, "mask": mask.float().cpu()}


def _path(model: Any, value: Any, direct: Any, n: int, b: int, sampler_name: str) -> Tensor | None:
    """The inversion path as [n + 1, B, C, H, W] processed states, descending sigma (None without direct)."""
    if direct is False or direct is None:
        return None
    family = model.model_sampling.family
    if family in get_sampler(sampler_name).evaluates_between_sigmas:  # (EditedModel refuses it too, at its first call)
        able = on_schedule_samplers(family)
        raise UnsamplingError(f"direct pins the source branch to the inversion path at the schedule's sigmas, and sampler "
                              f"{sampler_name!r} evaluates the model between them; use one that evaluates only at them "
                              f"({', '.join(able)}), or leave direct off")
    if direct is True:
        if isinstance(value, Trajectory):
            direct = value
        elif callable(getattr(value, "resample_side", None)) and "path" in value.resampling:
            direct = value.resampling["path"]
        elif callable(getattr(value, "resample_side", None)):  # an Inversion of a method that records no path
            from ..inversion import METHOD_SPECS, get_method

            able = [name for name, spec in METHOD_SPECS.items() if spec.records_path]
            raise UnsamplingError(f"direct=True needs the inversion path, and method {value.method!r} records none: "
                                  f"{get_method(value.method).why_no_path}; invert with one of {', '.join(able)}, "
                                  "or leave direct off")
        else:
            raise UnsamplingError("direct=True needs the inversion path: pass the Trajectory of ul.unsample_trajectory "
                                  "(as the input, or as direct=trajectory) or an Inversion that records one; a noise "
                                  "LATENT carries none")
    if isinstance(direct, Trajectory):
        direct = direct.xs.flip(0)
    if not isinstance(direct, Tensor) or direct.ndim != 5 or direct.shape[0] != n + 1 or direct.shape[1] != b:
        got = tuple(direct.shape) if isinstance(direct, Tensor) else type(direct).__name__
        raise UnsamplingError(f"direct: the inversion path must hold {n + 1} states of batch {b} ([n + 1, B, C, H, W], "
                              f"one per sigma of this resample), got {got}; invert with the same steps and end_at_step")
    return direct.to(model.device, torch.float32)
