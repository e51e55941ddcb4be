"""The denoiser a sampler calls: network + classifier-free guidance + inpainting mask, as ComfyUI wires it.

    denoised(x, sigma) = uncond + cfg * (cond - uncond)        (in x0 space; at cfg == 1 only cond)
    with a noise mask m (1 = may change):  input x*m + noised(latent)*(1-m),  output out*m + latent*(1-m)

cond and uncond go through the network as one batch, uncond first as in ComfyUI (two separate calls
change results by ~1e-4 relative).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .conditioning import concat
from .models.base import Conditioning, DiffusionModel


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
    cfg: float
    latent: Tensor | None = None  # the processed input latent, for the mask blend
    mask: Tensor | None = None
    noise: Tensor | None = None  # the noise sampling started from (zeros when unsampling), for the mask blend
    counter: EvalCounter = field(default_factory=EvalCounter)
    always_uncond: bool = False  # evaluate the negative even at cfg 1 (CFG++ samplers; ComfyUI's disable_cfg1_optimization)

    def __post_init__(self) -> None:
        self.use_uncond = self.negative is not None and (self.always_uncond or not math.isclose(self.cfg, 1.0))
        self._batched = concat([self.negative, self.positive]) if self.use_uncond else self.positive  # type: ignore[list-item]

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
        if self.use_uncond:
            both = self._run(torch.cat([x, x]), torch.cat([sigma, sigma]), self._batched)
            uncond, cond = both.chunk(2)
            out = uncond + (cond - uncond) * self.cfg
        else:
            out = uncond = self._run(x, sigma, self._batched)
        if m is not None:
            out = out * m + self.latent * (1.0 - m)  # the uncond stays unblended: ComfyUI's post-cfg hook sees it raw
        return out, uncond

    def _run(self, x: Tensor, sigma: Tensor, cond: Conditioning) -> Tensor:
        ms = self.model.model_sampling
        self.counter.rows += x.shape[0]
        model_output = self.model.forward(ms.calculate_input(sigma, x), ms.timestep(sigma).to(x.dtype), cond)
        return ms.calculate_denoised(sigma, model_output.to(x.dtype), x)  # timestep: float32 as ComfyUI, float64 for exact models
