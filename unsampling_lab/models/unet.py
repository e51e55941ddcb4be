"""diffusers UNet models: SD1.x, SD2.x (eps or v-prediction) and SDXL, on the same code path.

The network sees ComfyUI's inputs: `x / sqrt(sigma^2 + 1)` and the timestep of the nearest entry of
the model's sigma table; the sampler state stays float32 whatever the network's dtype.
"""
from __future__ import annotations

import warnings
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from ..errors import UnsamplingError, UnsamplingWarning
from ..model_sampling import ModelSampling
from .base import Conditioning, LatentFormat
from .vae import VAEImages

#: ComfyUI's latent scale when the VAE config does not say (SD1.x/2.x; SDXL is 0.13025).
SD_LATENT_SCALE = 0.18215


class UNetModel(VAEImages):
    """A diffusers `UNet2DConditionModel` with its scheduler's sigma table and optional VAE / text encoders."""

    def __init__(
        self,
        unet: Any,
        scheduler_config: Mapping[str, Any] | ModelSampling,
        *,
        vae: Any | None = None,
        text_encoder: Any | None = None,
        tokenizer: Any | None = None,
        text_encoder_2: Any | None = None,
        tokenizer_2: Any | None = None,
        latent_scale: float | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.device = torch.device(device) if device is not None else next(unet.parameters()).device
        self.dtype = dtype if dtype is not None else next(unet.parameters()).dtype
        if next(unet.parameters()).dtype != self.dtype:  # diffusers warns on any .to(dtype), even a no-op
            unet = unet.to(dtype=self.dtype)
        self.unet = unet.to(device=self.device).eval().requires_grad_(False)
        self.vae = None if vae is None else vae.to(self.device).eval().requires_grad_(False)
        self.text_encoder = None if text_encoder is None else text_encoder.to(self.device).eval().requires_grad_(False)
        self.text_encoder_2 = None if text_encoder_2 is None else text_encoder_2.to(self.device).eval().requires_grad_(False)
        self.tokenizer, self.tokenizer_2 = tokenizer, tokenizer_2
        self._prompt_cache: dict[tuple[str, ...], Conditioning] = {}
        self.model_sampling = (
            scheduler_config if isinstance(scheduler_config, ModelSampling)
            else ModelSampling.from_scheduler_config(scheduler_config)
        )
        self.is_sdxl = getattr(unet.config, "addition_embed_type", None) == "text_time"
        if latent_scale is None:
            latent_scale = float(getattr(getattr(vae, "config", None), "scaling_factor", 0) or 0) or (
                0.13025 if self.is_sdxl else SD_LATENT_SCALE
            )
        shift = float(getattr(getattr(vae, "config", None), "shift_factor", None) or 0.0)
        self.latent_format = LatentFormat(channels=int(unet.config.in_channels), scale=latent_scale, shift=shift)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 8

    # -- conditioning -----------------------------------------------------------------------------
    @property
    def embed_width(self) -> int:
        return int(self.unet.config.cross_attention_dim)

    def encode_prompt(self, prompts: Sequence[str]) -> Conditioning:
        """CLIP embeddings as the diffusers SD/SDXL pipelines make them (SDXL: penultimate layers + pooled).

        Remembered per prompt list (sweeps and sliders encode the same prompts again and again).
        """
        key = tuple(prompts)
        if key not in self._prompt_cache:
            if len(self._prompt_cache) >= 64:
                self._prompt_cache.pop(next(iter(self._prompt_cache)))
            self._prompt_cache[key] = self._encode_prompt(key)
        return self._prompt_cache[key]

    def _encode_prompt(self, prompts: Sequence[str]) -> Conditioning:
        if self.text_encoder is None or self.tokenizer is None:
            raise UnsamplingError(
                "this model has no text encoder/tokenizer, so prompts cannot be given as strings; pass prompt "
                f"embeddings instead (a [B, L, {self.embed_width}] tensor or ComfyUI CONDITIONING)"
            )
        with torch.no_grad():
            if not self.is_sdxl:
                ids = self._tokenize(self.tokenizer, prompts)
                embeds = self.text_encoder(ids)[0]
                return Conditioning(embeds.float())
            hidden, pooled = [], None
            for tok, enc in ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)):
                if tok is None or enc is None:
                    continue
                out = enc(self._tokenize(tok, prompts), output_hidden_states=True)
                hidden.append(out.hidden_states[-2])
                pooled = out[0] if out[0].ndim == 2 else pooled
            return Conditioning(torch.cat(hidden, dim=-1).float(), None if pooled is None else pooled.float())

    def _tokenize(self, tokenizer: Any, prompts: Sequence[str]) -> Tensor:
        """Token ids padded/cut to the tokenizer's length (as the diffusers pipelines do); a cut prompt warns."""
        limit = int(tokenizer.model_max_length)
        ids = tokenizer(list(prompts), padding="max_length", max_length=limit, truncation=True, return_tensors="pt").input_ids
        for prompt, kept in zip(prompts, ids):
            n = len(tokenizer(prompt, verbose=False).input_ids)  # uncut length; verbose=False: no transformers warning
            if n > limit:
                text = tokenizer.decode(kept, skip_special_tokens=True).strip()
                warnings.warn(
                    f"prompt {prompt!r} is {n} tokens, more than this tokenizer's {limit} (start and end included); "
                    f"the model sees only {text!r}. Shorten it or pass prompt embeddings.",
                    UnsamplingWarning, stacklevel=2,
                )
        return ids.to(self.device)

    def check_conditioning(self, cond: Conditioning) -> None:
        width = int(cond.embeds.shape[-1])
        if width != self.embed_width:
            raise UnsamplingError(
                f"prompt embeddings have width {width} but this UNet's cross-attention expects {self.embed_width}; "
                "encode the prompt with this model's text encoder(s)"
            )
        if self.is_sdxl:
            expected = self._pooled_width()
            if cond.pooled is None:
                raise UnsamplingError(
                    "an SDXL model needs a pooled text embedding; pass a prompt string or ComfyUI CONDITIONING "
                    "[[embeds, {'pooled_output': pooled}]]"
                )
            if expected is not None and int(cond.pooled.shape[-1]) != expected:
                raise UnsamplingError(f"pooled embedding has width {cond.pooled.shape[-1]}, expected {expected}")

    def _pooled_width(self) -> int | None:
        c = self.unet.config
        if c.projection_class_embeddings_input_dim is None or c.addition_time_embed_dim is None:
            return None
        return int(c.projection_class_embeddings_input_dim - 6 * c.addition_time_embed_dim)

    # -- the network ------------------------------------------------------------------------------
    def forward(self, x: Tensor, timestep: Tensor, cond: Conditioning) -> Tensor:
        kwargs: dict[str, Any] = {}
        if self.is_sdxl:
            h, w = x.shape[-2] * self.vae_scale_factor, x.shape[-1] * self.vae_scale_factor
            # SDXL micro-conditioning: original size, crop top-left, target size.
            time_ids = torch.tensor([[h, w, 0, 0, h, w]], device=self.device, dtype=self.dtype).repeat(x.shape[0], 1)
            kwargs["added_cond_kwargs"] = {"text_embeds": cond.pooled.to(self.device, self.dtype), "time_ids": time_ids}
        out = self.unet(
            x.to(self.device, self.dtype),
            timestep.to(self.device).float(),
            encoder_hidden_states=cond.embeds.to(self.device, self.dtype),
            return_dict=False,
            **kwargs,
        )[0]
        return out.float()

    def __repr__(self) -> str:
        kind = "SDXL" if self.is_sdxl else "SD"
        return (f"UNetModel({kind}, prediction={self.model_sampling.prediction!r}, "
                f"latent_scale={self.latent_format.scale}, device={self.device}, dtype={self.dtype})")
