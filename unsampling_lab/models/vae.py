"""Images <-> raw VAE latents (ComfyUI's IMAGE and LATENT conventions), shared by every diffusers adapter."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..errors import UnsamplingError
from ..pixels import ImageInput, as_image_batch


class VAEImages:
    """Mixin for adapters holding `self.vae` (diffusers AutoencoderKL or None) and `self.device`."""

    vae: Any
    device: torch.device

    def encode(self, images: ImageInput) -> dict[str, Tensor]:
        """Images -> LATENT dict of raw VAE latents (the posterior mean, so unsampling stays deterministic).

        images: float [B, H, W, 3] in 0..1 (ComfyUI IMAGE), uint8 0..255, a PIL image, a path, or a list
        of those (see `unsampling_lab.pixels`); H and W must be multiples of the VAE's pixel grid.
        """
        vae = self._need_vae()
        pixels = as_image_batch(images)
        grid = self.pixel_grid
        h, w = pixels.shape[1:3]
        if h % grid or w % grid:
            raise UnsamplingError(
                f"images are {h}x{w} (H x W), not a multiple of this VAE's {grid}-pixel grid; crop or resize them, "
                f"e.g. ul.load_images(paths, multiple_of={grid})"
            )
        x = pixels.permute(0, 3, 1, 2).to(self.device, vae.dtype) * 2 - 1
        with torch.no_grad():
            latents = vae.encode(x).latent_dist.mean
        return {"samples": latents.float().cpu()}

    @property
    def pixel_grid(self) -> int:
        """Pixels per latent cell: 2 ** (number of VAE blocks - 1), 8 for SD, SDXL, SD3 and Flux."""
        vae = self._need_vae()
        return 2 ** (len(vae.config.block_out_channels) - 1)

    def decode(self, latent: dict[str, Tensor] | Tensor) -> Tensor:
        """LATENT dict or raw latent tensor -> images float [B, H, W, 3] in 0..1."""
        vae = self._need_vae()
        samples = latent["samples"] if isinstance(latent, dict) else latent
        if not isinstance(samples, Tensor) or samples.ndim != 4 or samples.shape[1] != self.latent_format.channels:
            from ..inputs import read_latent

            read_latent(latent, self)  # says what is wrong (type, shape, channels) in one line
        with torch.no_grad():
            pixels = vae.decode(samples.to(self.device, vae.dtype)).sample
        return ((pixels.float() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).cpu()

    def _need_vae(self) -> Any:
        if self.vae is None:
            raise UnsamplingError("this model has no VAE; encode/decode need one (load a full pipeline)")
        return self.vae
