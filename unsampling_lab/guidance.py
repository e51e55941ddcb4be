"""Classifier-free guidance: prompts -> conditioning -> the denoiser a sampler calls (network + cfg + inpainting
mask, as ComfyUI wires it). "Guidance" here is cfg only; Flux's distilled guidance is a model input
(`FlowTransformerModel.flux_guidance`).

Prompts: a string, a list of strings (one per batch item), a tensor of prompt embeddings shaped like the
pipeline's `prompt_embeds` [B, L, D] (or [L, D]), ComfyUI CONDITIONING (`[[embeds, {"pooled_output": pooled}]]`),
or a `Conditioning`; `to_conditioning` checks them against the model and repeats them to the batch.

Guidance:

    denoised(x, sigma) = uncond + cfg * (cond - uncond)        (in x0 space; at cfg == 1 only cond)
    with a noise mask m (1 = may change):  input x*m + noised(latent)*(1-m),  output out*m + latent*(1-m)

cond and uncond go through the network as one batch, uncond first as in ComfyUI (two separate calls
change results by ~1e-4 relative).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence, Union

import torch
from torch import Tensor

from .errors import UnsamplingError
from .inputs import cfg_is_one, unguided
from .models.base import Conditioning, DiffusionModel

Prompt = Union[str, Sequence[str], Tensor, Conditioning, list]

#: ComfyUI's KSampler cfg widget goes up to 100; far beyond it guidance overflows float32.
MAX_SENSIBLE_CFG = 100.0


def _bad_parameters(model: DiffusionModel) -> str:
    """'3 weight tensors contain NaN/Inf, e.g. unet.conv_in.weight' for the model's networks, or ''."""
    bad: list[str] = []
    for part in ("unet", "transformer"):
        net = getattr(model, part, None)
        if net is None or not hasattr(net, "named_parameters"):
            continue
        bad += [f"{part}.{name}" for name, p in net.named_parameters() if not bool(torch.isfinite(p).all())]
    if not bad:
        return ""
    return f"{len(bad)} of its weight tensors contain NaN/Inf (e.g. {bad[0]})" if len(bad) > 1 else f"its weight {bad[0]} contains NaN/Inf"



# -- prompts -> Conditioning ------------------------------------------------------------------
def to_conditioning(model: DiffusionModel, prompt: Prompt, *, batch_size: int, name: str) -> Conditioning:
    """`prompt` as the model's Conditioning, checked against the model and repeated to `batch_size`."""
    if isinstance(prompt, Conditioning):
        cond = prompt
    elif isinstance(prompt, str):
        cond = _encode(model, [prompt], name)
    elif isinstance(prompt, Tensor):
        embeds = prompt if prompt.ndim == 3 else prompt.unsqueeze(0) if prompt.ndim == 2 else None
        if embeds is None:
            raise UnsamplingError(f"{name}: prompt embeddings must be [B, L, D] or [L, D], got shape {tuple(prompt.shape)}")
        cond = Conditioning(embeds)
    elif _is_comfy_conditioning(prompt):
        cond = _from_comfy(prompt, name)
    elif isinstance(prompt, (list, tuple)) and all(isinstance(p, str) for p in prompt) and len(prompt) > 0:
        if len(prompt) not in (1, batch_size):
            raise UnsamplingError(
                f"{name}: got {len(prompt)} prompts for a batch of {batch_size}; pass one prompt, or one per batch item"
            )
        cond = _encode(model, list(prompt), name)
    else:
        raise UnsamplingError(
            f"{name}: expected a prompt string, a list of strings, a [B, L, D] embedding tensor, ComfyUI "
            f"CONDITIONING [[embeds, {{'pooled_output': ...}}]] or a Conditioning; got {type(prompt).__name__}"
        )
    if not torch.isfinite(cond.embeds).all() or (cond.pooled is not None and not torch.isfinite(cond.pooled).all()):
        raise UnsamplingError(f"{name}: the prompt embeddings contain NaN or Inf")
    try:
        model.check_conditioning(cond)
    except UnsamplingError as e:
        raise UnsamplingError(f"{name}: {e}") from None
    return repeat_to_batch(cond, batch_size, name=name)


def repeat_to_batch(cond: Conditioning, batch_size: int, *, name: str = "conditioning") -> Conditioning:
    """Repeat a batch-1 conditioning to `batch_size`; a batch of another size is an error."""
    b = cond.batch_size
    if b == batch_size:
        return cond
    if b != 1:
        raise UnsamplingError(f"{name}: conditioning has batch {b} but the latent has batch {batch_size}; use 1 or {batch_size}")
    pooled = None if cond.pooled is None else cond.pooled.expand(batch_size, *cond.pooled.shape[1:])
    return Conditioning(cond.embeds.expand(batch_size, *cond.embeds.shape[1:]), pooled, dict(cond.extra))


def concat(conds: Sequence[Conditioning]) -> Conditioning:
    """Stack conditionings along the batch, as ComfyUI does for cond + uncond in one forward pass.

    Sequence lengths that differ are repeated to their least common multiple (ComfyUI's rule).
    """
    lengths = [c.embeds.shape[1] for c in conds]
    lcm = math.lcm(*lengths)
    embeds = torch.cat([c.embeds.repeat(1, lcm // c.embeds.shape[1], 1) for c in conds])
    has_pooled = [c.pooled is not None for c in conds]
    if any(has_pooled) and not all(has_pooled):
        raise UnsamplingError("positive and negative conditioning must both have a pooled output, or neither")
    pooled = torch.cat([c.pooled for c in conds]) if all(has_pooled) else None  # type: ignore[misc]
    return Conditioning(embeds, pooled, dict(conds[0].extra))


def _rows(cond: Conditioning, rows: Tensor) -> Conditioning:
    """The conditioning of batch items `rows` (embeds [B, L, D], pooled [B, P])."""
    pooled = None if cond.pooled is None else cond.pooled[rows.to(cond.pooled.device)]
    return Conditioning(cond.embeds[rows.to(cond.embeds.device)], pooled, dict(cond.extra))


def _encode(model: DiffusionModel, prompts: list[str], name: str) -> Conditioning:
    try:
        return model.encode_prompt(prompts)
    except UnsamplingError as e:
        raise UnsamplingError(f"{name}: {e}") from None


def _is_comfy_conditioning(prompt: Any) -> bool:
    return (
        isinstance(prompt, (list, tuple)) and len(prompt) > 0
        and all(isinstance(p, (list, tuple)) and len(p) == 2 and isinstance(p[0], Tensor) for p in prompt)
    )


def _from_comfy(prompt: Sequence[Any], name: str) -> Conditioning:
    if len(prompt) != 1:
        raise UnsamplingError(
            f"{name}: ComfyUI CONDITIONING with {len(prompt)} entries (area/mask combinations) is not supported; "
            "pass a single [[embeds, {...}]] entry"
        )
    embeds, options = prompt[0]
    if embeds.ndim != 3:
        raise UnsamplingError(f"{name}: CONDITIONING embeddings must be [B, L, D], got shape {tuple(embeds.shape)}")
    return Conditioning(embeds, options.get("pooled_output"))


# -- the guided denoiser ---------------------------------------------------------------------------
@dataclass
class EvalCounter:
    """Counts denoiser evaluations (NFE: one per sigma, cond and uncond together) and network rows."""

    nfe: int = 0
    rows: int = 0


@dataclass
class GuidedDenoiser:
    """`model(x, sigma) -> x0` for the samplers; sigma is a [B] tensor."""

    model: DiffusionModel
    positive: Conditioning
    negative: Conditioning | None
    cfg: float | Tensor  # one value, or one per batch item [B] (a packed batch of settings)
    latent: Tensor | None = None  # the processed input latent, for the mask blend
    mask: Tensor | None = None
    noise: Tensor | None = None  # the noise sampling started from (zeros when unsampling), for the mask blend
    counter: EvalCounter = field(default_factory=EvalCounter)
    always_uncond: bool = False  # evaluate the negative even at cfg 1 (CFG++ samplers; ComfyUI's disable_cfg1_optimization)
    outer_cfg: float | None = None  # the cfg a caller combines this denoiser's outputs with itself (null_text's step)

    def __post_init__(self) -> None:
        self.use_uncond = self.negative is not None and (self.always_uncond or not unguided(self.cfg))
        # per-item cfg: items at cfg 1 need no uncond pass (ComfyUI's cfg-1 rule, item by item), so their
        # denoised is the cond output itself, as when they run alone
        self._uncond_rows: Tensor | None = None
        negative = self.negative
        if self.use_uncond and isinstance(self.cfg, Tensor) and not self.always_uncond:
            scales = self.cfg.tolist()
            need = [i for i, c in enumerate(scales) if not cfg_is_one(c)]
            if len(need) < len(scales) and negative is not None and negative.embeds.shape[0] == len(scales):
                self._uncond_rows = torch.tensor(need, dtype=torch.long)
                negative = _rows(negative, self._uncond_rows)
        self._batched = concat([negative, self.positive]) if self.use_uncond else self.positive  # type: ignore[list-item]

    @property
    def model_sampling(self):  # type: ignore[no-untyped-def]
        """The model's sigma table, which samplers read as data (its family, `percent_to_sigma`, `noise_scaling`)."""
        return self.model.model_sampling

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        return self.with_uncond(x, sigma)[0]

    def with_uncond(self, x: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """(guided denoised, unconditional denoised); the uncond is the network's (before the mask blend, as
        ComfyUI's post-cfg hook receives it), and is the cond estimate itself
        when no negative pass runs (cfg 1 without `always_uncond`). For the CFG++ samplers."""
        m = self.mask
        if m is not None:
            # outside the mask the network sees the input latent noised to this sigma (ComfyUI's
            # scale_latent_inpaint): latent + sigma * noise (VP), (1 - sigma) latent + sigma noise (flow)
            noise = self.noise if self.noise is not None else torch.zeros_like(self.latent)
            known = self.model.model_sampling.noise_scaling(sigma, noise, self.latent)
            x = x * m + known * (1.0 - m)
        self.counter.nfe += 1
        if self.use_uncond and self._uncond_rows is not None:
            rows = self._uncond_rows.to(x.device)
            k = int(rows.shape[0])
            both = self._run(torch.cat([x[rows], x]), torch.cat([sigma[rows], sigma]), self._batched)
            cond = both[k:]
            cfg = self.cfg.to(x)[rows].reshape(-1, *([1] * (x.ndim - 1)))  # type: ignore[union-attr]
            out, uncond = cond.clone(), cond.clone()
            uncond[rows] = both[:k]
            out[rows] = both[:k] + (cond[rows] - both[:k]) * cfg
        elif self.use_uncond:
            both = self._run(torch.cat([x, x]), torch.cat([sigma, sigma]), self._batched)
            uncond, cond = both.chunk(2)
            cfg = self.cfg if not isinstance(self.cfg, Tensor) else self.cfg.to(x).reshape(-1, *([1] * (x.ndim - 1)))
            out = uncond + (cond - uncond) * cfg
        else:
            both = out = uncond = self._run(x, sigma, self._batched)
        if not bool(torch.isfinite(out).all()) and bool(torch.isfinite(x).all()):
            raise self._non_finite(x, sigma, both)  # a NaN state is the sampler's: engine.run_sampler reports it
        if m is not None:
            out = out * m + self.latent * (1.0 - m)  # the uncond stays unblended: ComfyUI's post-cfg hook sees it raw
        return out, uncond

    def _non_finite(self, x: Tensor, sigma: Tensor, raw: Tensor) -> UnsamplingError:
        """Say what turned a finite state into NaN/Inf: the network itself (on its first call: its weights or
        dtype), the state it was given (grown by a huge cfg), or the guidance sum overflowing float32."""
        n, s = self.counter.nfe, float(sigma.flatten()[0])
        cfg = float(self.cfg.abs().max()) if isinstance(self.cfg, Tensor) else abs(self.cfg)
        big_cfg = self.use_uncond and cfg > MAX_SENSIBLE_CFG
        if self.outer_cfg is not None and abs(self.outer_cfg) > MAX_SENSIBLE_CFG:
            cfg, big_cfg = abs(self.outer_cfg), True
        if bool(torch.isfinite(raw).all()):  # cond and uncond finite: the cfg product overflowed
            return UnsamplingError(
                f"cfg={cfg:g} overflowed float32: uncond + cfg * (cond - uncond) is Inf at sigma {s:.4g}; use a "
                f"cfg within ComfyUI's range 0..{MAX_SENSIBLE_CFG:g}"
            )
        if n == 1:
            bad = _bad_parameters(self.model)
            where = f"; {bad}" if bad else ""
            return UnsamplingError(
                f"the model's own output is NaN/Inf at its first evaluation (sigma {s:.4g}, finite input), before any "
                f"sampler step: the model is broken, not the sampler{where}. Check its weights, or load it with "
                "dtype='float32' if float16 overflows"
            )
        grown = float(x.abs().max())
        if big_cfg:
            return UnsamplingError(
                f"the model's output became NaN/Inf at evaluation {n} (sigma {s:.4g}) because cfg={cfg:g} blew "
                f"the sampler state up to |x| = {grown:.3g}; use a cfg within ComfyUI's range 0..{MAX_SENSIBLE_CFG:g}"
            )
        return UnsamplingError(
            f"the model's output became NaN/Inf at evaluation {n} (sigma {s:.4g}; the state had reached |x| = "
            f"{grown:.3g}): the sampler diverged on this input; try another sampler or scheduler, or a smaller cfg"
        )

    def _run(self, x: Tensor, sigma: Tensor, cond: Conditioning) -> Tensor:
        ms = self.model.model_sampling
        self.counter.rows += x.shape[0]
        model_output = self.model.forward(ms.calculate_input(sigma, x), ms.timestep(sigma).to(x.dtype), cond)
        return ms.calculate_denoised(sigma, model_output.to(x.dtype), x)  # timestep: float32 as ComfyUI, float64 for exact models
