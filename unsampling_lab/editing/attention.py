"""Attention control on a diffusers UNet through attention processors and one conv forward hook.

The network batch is `g` groups of 2B rows, uncond first when there is an uncond pass (the engine's
order), each group [source B, target B]. A processor that has nothing to do at this layer and step calls
the UNet's own processor; otherwise it runs the same operations (so untouched rows keep their bits) and
replaces the target rows of the controlled groups:

    maps / q,k injection:   out_tgt = softmax(Q_src K_srcᵀ/√d) V_tgt   (one scaled_dot_product_attention)
    refine:                 out_tgt = (α · M_src[:, mapper] + (1 − α) · M_tgt) · w V_tgt
    reweight:               out_tgt = (M_src · w) V_tgt      (w = scale on the chosen tokens, 1 elsewhere)

(refine's w is 1 unless it reweights: P2P's AttentionReweight multiplies its wrapped controller's map by the
equalizer, the refined map here, before the time-word alpha.)

With target == source every replacement hands a row its own value, so the output is bit for bit the
uncontrolled one (checked by tests/test_editing.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from .controls import in_window


@dataclass
class EditState:
    """What the processors read and write during one edit: the step, the layout, the recorded maps."""

    b: int  # items per branch
    n_steps: int
    control: str
    options: dict[str, Any]
    cond_only: bool
    step: int = 0
    first_call_of_step: bool = True
    record: bool = False
    mapper: Tensor | None = None  # refine
    alpha: Tensor | None = None  # refine
    weights: Tensor | None = None  # reweight (and refine's), [B, 1, 1, K]
    blend_tokens: Tensor | None = None  # [2B, K] 1 on the blend words (rows: source B, target B)
    maps: dict[str, dict[int, Tensor]] = field(default_factory=dict)  # layer -> step -> [2B, Q, K] (cond rows)
    blend_sum: dict[str, Tensor] = field(default_factory=dict)  # layer -> [2B, Q], summed over steps

    def groups(self, rows: int) -> list[int]:
        """The groups whose target rows are controlled (P2P: the cond group only, the last)."""
        g = rows // (2 * self.b)
        return [g - 1] if self.cond_only else list(range(g))

    def cross_window(self) -> bool:
        return self.control.startswith("p2p") and in_window(self.step, self.n_steps, self.options["cross_steps"])

    def self_window(self, name: str) -> bool:
        if self.control.startswith("p2p"):
            return in_window(self.step, self.n_steps, self.options["self_steps"])
        if self.control == "pnp":
            layers = self.options["qk_layers"]
            return any(name.startswith(p) for p in layers) and in_window(self.step, self.n_steps, self.options["qk_steps"])
        return False

    def blending(self) -> bool:
        return self.blend_tokens is not None


class EditAttnProcessor:
    """One attention layer's processor during an edit (`name`: the module path, e.g. 'up_blocks.1.attentions.0...')."""

    def __init__(self, name: str, original: Any, state: EditState) -> None:
        self.name, self.original, self.state = name, original, state

    def __call__(self, attn: Any, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, temb: Tensor | None = None, **kwargs: Any) -> Tensor:
        s = self.state
        cross = encoder_hidden_states is not None
        inject = s.cross_window() if cross else s.self_window(self.name)
        want_maps = cross and ((s.record and s.first_call_of_step) or s.blending())
        if not inject and not want_maps:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
        return self._attend(attn, hidden_states, encoder_hidden_states, attention_mask, temb, inject, want_maps)

    def _attend(self, attn: Any, hidden_states: Tensor, context: Tensor | None, attention_mask: Tensor | None,
                temb: Tensor | None, inject: bool, want_maps: bool) -> Tensor:
        """diffusers' AttnProcessor2_0, operation for operation, with the target rows replaced."""
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        ndim = hidden_states.ndim
        if ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch, seq, _ = hidden_states.shape if context is None else context.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, seq, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if context is None:
            context = hidden_states
        elif attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        key, value = attn.to_k(context), attn.to_v(context)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False)
        probs = None
        if want_maps or (inject and self._explicit()):
            logits = query @ key.transpose(-1, -2) * attn.scale
            probs = (logits if attention_mask is None else logits + attention_mask).softmax(dim=-1)  # [R, H, Q, K]
        if want_maps:
            self._observe(probs)
        if inject:
            out = self._inject(out, query, key, value, probs, attention_mask, cross=context is not hidden_states)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if ndim == 4:
            out = out.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor

    def _explicit(self) -> bool:
        """Refine and reweight need the maps themselves (unless they reduce to a plain swap)."""
        s = self.state
        return s.mapper is not None or s.weights is not None  # set only for p2p_refine / p2p_reweight

    def _inject(self, out: Tensor, q: Tensor, k: Tensor, v: Tensor, probs: Tensor | None, mask: Tensor | None, *,
                cross: bool) -> Tensor:
        s, b = self.state, self.state.b
        out = out.clone()
        for g in s.groups(out.shape[0]):
            src, tgt = slice(2 * b * g, 2 * b * g + b), slice(2 * b * g + b, 2 * b * (g + 1))
            if cross and probs is not None and s.mapper is not None:
                index = s.mapper.to(probs.device).expand(*probs[src].shape[:-1], -1)
                m = probs[src].gather(-1, index) * s.alpha.to(probs) + probs[tgt] * (1 - s.alpha.to(probs))
                out[tgt] = (m if s.weights is None else m * s.weights.to(probs)) @ v[tgt]
            elif cross and probs is not None and s.weights is not None:
                out[tgt] = (probs[src] * s.weights.to(probs)) @ v[tgt]
            else:
                m_src = None if mask is None else mask[src]
                out[tgt] = F.scaled_dot_product_attention(q[src], k[src], v[tgt], attn_mask=m_src, dropout_p=0.0,
                                                          is_causal=False)
        return out

    def _observe(self, probs: Tensor) -> None:
        """Record the cond rows' head-averaged maps (first call of a step) and sum the blend words' maps."""
        s, b = self.state, self.state.b
        g = probs.shape[0] // (2 * b)
        cond = probs[2 * b * (g - 1):].mean(dim=1)  # [2B, Q, K]
        if s.record and s.first_call_of_step:
            s.maps.setdefault(self.name, {})[s.step] = cond.detach().float().cpu()
        if s.blending():
            word = (cond * s.blend_tokens.to(cond)[:, None, :]).sum(-1)  # [2B, Q]
            s.blend_sum[self.name] = s.blend_sum.get(self.name, 0) + word.detach().float()


class FeatureInjection:
    """PnP's residual-feature injection: a forward hook on a ResNet block's conv2 (the residual branch,
    before the skip connection is added) that hands the target rows the source rows' output."""

    def __init__(self, state: EditState) -> None:
        self.state = state

    def __call__(self, module: Any, inputs: Any, output: Tensor) -> Tensor | None:
        s = self.state
        if not in_window(s.step, s.n_steps, s.options["feature_steps"]):
            return None
        out, b = output.clone(), s.b
        for g in s.groups(out.shape[0]):
            out[2 * b * g + b: 2 * b * (g + 1)] = output[2 * b * g: 2 * b * g + b]
        return out


def install(unet: Any, state: EditState) -> Any:
    """Put the edit's processors (and PnP's hook) on `unet`; returns a function that restores it."""
    originals = dict(unet.attn_processors)
    unet.set_attn_processor({name: EditAttnProcessor(name.removesuffix(".processor"), proc, state)
                             for name, proc in originals.items()})
    handles = []
    if state.control == "pnp":
        from ..errors import UnsamplingError

        layer = state.options["feature_layer"]
        modules = dict(unet.named_modules())
        if layer not in modules or not hasattr(modules[layer], "conv2"):
            blocks = [n for n, m in modules.items() if hasattr(m, "conv2") and n.startswith("up_blocks")]
            unet.set_attn_processor(originals)
            raise UnsamplingError(f"pnp: feature_layer {layer!r} is not a ResNet block of this UNet; decoder blocks: "
                                  f"{', '.join(blocks)}")
        handles.append(modules[layer].conv2.register_forward_hook(FeatureInjection(state)))

    def restore() -> None:
        unet.set_attn_processor(originals)
        for h in handles:
            h.remove()

    return restore
