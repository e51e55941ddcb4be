"""Images <-> raw VAE latents (ComfyUI's IMAGE and LATENT conventions), shared by every diffusers adapter."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..errors import UnsamplingError


class VAEImages:
    """Mixin for adapters holding `self.vae` (diffusers AutoencoderKL or None) and `self.device`."""

    vae: Any
    device: torch.device

    def encode(self, images: Tensor) -> dict[str, Tensor]:
        """Images float [B, H, W, 3] in 0..1 (ComfyUI IMAGE) -> LATENT dict of raw VAE latents (the mean).

        The posterior mean, not a sample: unsampling is deterministic end to end.
        """
        vae = self._need_vae()
        if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[-1] != 3:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise UnsamplingError(f"images must be float [B, H, W, 3] in 0..1, got {shape}")
        pixels = images.permute(0, 3, 1, 2).to(self.device, vae.dtype) * 2 - 1
        with torch.no_grad():
            latents = vae.encode(pixels).latent_dist.mean
        return {"samples": latents.float().cpu()}

    def decode(self, latent: dict[str, Tensor] | Tensor) -> Tensor:
        """LATENT dict or raw latent tensor -> images float [B, H, W, 3] in 0..1."""
        vae = self._need_vae()
        samples = latent["samples"] if isinstance(latent, dict) else latent
        with torch.no_grad():
            pixels = vae.decode(samples.to(self.device, vae.dtype)).sample
        return ((pixels.float() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).cpu()

    def _need_vae(self) -> Any:
        if self.vae is None:
            raise UnsamplingError("this model has no VAE; encode/decode need one (load a full pipeline)")
        return self.vae
