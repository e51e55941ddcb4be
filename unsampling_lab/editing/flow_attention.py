"""Value injection on SD3/Flux transformers (RF-Solver-Edit, Wang et al. 2024; FireFlow, Deng et al. 2024).

Both papers edit Flux by handing the denoising pass the self-attention values V of the inversion pass, in the
single-stream blocks from index 20 to the last (37), for the first `inject` steps. Here the source branch runs
in the same network batch as the target (g groups of 2B rows, [source B, target B], as editing/attention.py),
so in block j ∈ [first_block, last_block] and step i < int(value_steps n):

    V_tgt := V_src     (the rows of every cfg group: the values are the image's structure in both passes)

Defaults (value_steps=0.8, first_block=20, last_block=-1: the last) are both repositories' code defaults
(`--inject 20` of `--num_steps 25`; single-stream blocks 20..37 of Flux's 38). Their READMEs run fewer
injected steps: RF-Solver-Edit suggests 2 to 8 of its steps, FireFlow 1 of 8 steps in all single-stream
blocks (first_block=0), both at Flux guidance 2.

Where it happens: a forward hook on the block's V projection (Flux: `attn.to_v` of the single-stream block,
whose rows are [text tokens, image tokens]; SD3: `attn.to_v` for the image tokens and `attn.add_v_proj` for
the text tokens of its joint blocks) copies the source rows' output into the target rows. diffusers' own
attention processor (FluxAttnProcessor, JointAttnProcessor2_0) then runs unchanged, whatever attention
backend it uses: no model code is forked, rows that are not replaced keep their bits, and target == source
gives the plain resample bit for bit.

Tokens: tokens="all" (the papers') replaces the V of the text tokens as well (in the papers the stored V is
the whole single-stream sequence of the inversion pass, whose text is the source prompt); tokens="image"
replaces the image tokens' V only and leaves each branch its own prompt's text values.

SD3 (our extension; the papers are Flux-only): SD3 has joint blocks only, so the same block indices count
its `transformer_blocks` (their number is `transformer.config.num_layers`); first_block=20 injects its last
blocks, in the same place as in Flux when the network is as deep.

What the source branch's V is. Without Direct Inversion the source branch resamples the inverted noise with
the source prompt, so its V is that of the reconstruction, not of the inversion pass. With direct=True (a
sampler that evaluates only at the schedule's sigmas, e.g. euler) the source rows' network input at step i
is c_in(σᵢ) x*ᵢ of the recorded path, the state at which an Euler unsample evaluated the network, with the
same prompt and flux_guidance; so their V is the V the inversion computed there, for steps 1..n-1 (step 0,
the top, was never evaluated by the inversion), up to one offset: `ul.unsample` (as ComfyUI's Unsampler)
evaluates at σᵢ + 1e-4 and the edit at σᵢ (tests/test_editing_flow.py bounds the difference, and shows the
source branch without direct much farther off). The papers pair by step, not by state: their denoising
step i (at σᵢ) reads the V their inversion computed at σᵢ₊₁, the other end of the same interval (for the
midpoint evaluations of RF-Solver/FireFlow, the same mid sigma at a different state). They also invert at
Flux guidance 1 and edit at 2-5; here both branches run at the model's one flux_guidance
(`model.with_options(flux_guidance=...)`).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from ..errors import UnsamplingError
from .attention import EditState
from .controls import in_window

#: Which blocks carry the injection, per model kind: (the transformer's attribute, what they are called)
BLOCKS = {"flux": ("single_transformer_blocks", "single-stream"), "sd3": ("transformer_blocks", "joint")}


def inject_values(v: Tensor, groups: list[int], b: int, tokens: slice = slice(None)) -> Tensor:
    """V with each controlled group's target rows := its source rows (on the token positions `tokens`)."""
    out = v.clone()
    for g in groups:
        src, tgt = slice(2 * b * g, 2 * b * g + b), slice(2 * b * g + b, 2 * b * (g + 1))
        out[tgt, tokens] = v[src, tokens]
    return out


def value_projections(transformer: Any, kind: str, *, first_block: int, last_block: int,
                      tokens: str) -> list[tuple[str, nn.Module, str]]:
    """The V projections to hook: (module path, module, part) with part 'stream' (Flux single-stream rows:
    text then image tokens), 'image' or 'text' (SD3 joint blocks)."""
    if kind not in BLOCKS:
        raise UnsamplingError(f"value_injection: unknown transformer kind {kind!r}; expected 'sd3' or 'flux'")
    attr, what = BLOCKS[kind]
    blocks = getattr(transformer, attr)
    n = len(blocks)
    last = n - 1 if last_block == -1 else last_block
    if not 0 <= first_block <= last < n:
        raise UnsamplingError(f"value_injection: blocks {first_block}..{last_block} are not among this {kind.upper()} "
                              f"transformer's {n} {what} blocks (0..{n - 1}); give first_block <= last_block in that "
                              "range (last_block=-1: the last)")
    sites = []
    for j in range(first_block, last + 1):
        attn, path = blocks[j].attn, f"{attr}.{j}.attn"
        if getattr(attn, "fused_projections", False):
            raise UnsamplingError(f"value_injection: {path} has fused q/k/v projections; call "
                                  "transformer.unfuse_qkv_projections() before editing")
        if kind == "flux":
            sites.append((f"{path}.to_v", attn.to_v, "stream"))
            continue
        sites.append((f"{path}.to_v", attn.to_v, "image"))
        if tokens == "all" and getattr(attn, "add_v_proj", None) is not None:
            sites.append((f"{path}.add_v_proj", attn.add_v_proj, "text"))
    return sites


class ValueInjection:
    """Forward hook on a V projection: in the step window, the target rows' output := the source rows'."""

    def __init__(self, state: EditState, part: str, text_len: Callable[[], int] | None = None) -> None:
        self.state, self.part, self.text_len = state, part, text_len

    def __call__(self, module: nn.Module, inputs: Any, output: Tensor) -> Tensor | None:
        s = self.state
        if not in_window(s.step, s.n_steps, s.options["value_steps"]):
            return None
        tokens = slice(None)
        if self.part == "stream" and s.options["tokens"] == "image":
            tokens = slice(self.text_len(), None)  # Flux single-stream rows: [text, image]
        return inject_values(output, s.groups(output.shape[0]), s.b, tokens)


def install(transformer: Any, kind: str, state: EditState) -> Callable[[], None]:
    """Hook the chosen blocks' V projections for `state` (options of the value_injection control); returns the
    function that removes the hooks."""
    opts = state.options
    sites = value_projections(transformer, kind, first_block=opts["first_block"], last_block=opts["last_block"],
                              tokens=opts["tokens"])
    seen: dict[str, int] = {}

    def read_text_len(module: nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
        seen["text"] = int(kwargs["encoder_hidden_states"].shape[1])

    handles = [transformer.register_forward_pre_hook(read_text_len, with_kwargs=True)]
    handles += [module.register_forward_hook(ValueInjection(state, part, lambda: seen["text"]))
                for _, module, part in sites]

    def restore() -> None:
        for h in handles:
            h.remove()

    return restore
