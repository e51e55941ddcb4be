"""What the engine needs from a model, whatever network is inside.

A `DiffusionModel` carries data (its sigma table, its latent format) and three operations: turn
prompts into `Conditioning`, run the network on one batch, and (optionally) encode/decode images.
The engine does everything else; it never asks which kind of network it runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor

from ..model_sampling import ModelSampling


@dataclass(frozen=True)
class LatentFormat:
    """How raw VAE latents (ComfyUI's LATENT convention) map into the space the network works in.

    process_in: (x - shift) * scale;  process_out: x / scale + shift.
    SD1.x/2.x scale 0.18215, SDXL 0.13025, SD3 scale 1.5305 shift 0.0609, Flux 0.3611 / 0.1159.
    """

    channels: int
    scale: float = 1.0
    shift: float = 0.0

    def process_in(self, latent: Tensor) -> Tensor:
        # ComfyUI leaves an all-zero latent (an "empty latent") as it is.
        if self.shift != 0.0 and not bool(latent.any()):
            return latent.clone()
        return (latent - self.shift) * self.scale

    def process_out(self, latent: Tensor) -> Tensor:
        return latent / self.scale + self.shift


@dataclass(frozen=True)
class Conditioning:
    """Prompt conditioning in the network's own form.

    embeds: [B or 1, L, D] cross-attention embeddings (diffusers' `prompt_embeds`).
    pooled: [B or 1, P] pooled text embedding (SDXL, SD3, Flux) or None.
    """

    embeds: Tensor
    pooled: Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return int(self.embeds.shape[0])

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "Conditioning":
        pooled = None if self.pooled is None else self.pooled.to(device=device, dtype=dtype)
        return Conditioning(self.embeds.to(device=device, dtype=dtype), pooled, dict(self.extra))


@runtime_checkable
class DiffusionModel(Protocol):
    """The adapter interface (diffusers UNets, flow transformers, analytic toys)."""

    model_sampling: ModelSampling
    latent_format: LatentFormat
    device: torch.device
    dtype: torch.dtype

    def encode_prompt(self, prompts: Sequence[str]) -> Conditioning:
        """Encode one prompt per batch item (raises if the model has no text encoder)."""
        ...

    def check_conditioning(self, cond: Conditioning) -> None:
        """Raise a clear error if `cond` does not fit this network (width, pooled, ...)."""
        ...

    def forward(self, x: Tensor, timestep: Tensor, cond: Conditioning) -> Tensor:
        """Raw network output (eps, v or velocity) for network input `x`, as float32."""
        ...
