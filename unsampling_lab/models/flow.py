"""Flow-matching transformers from diffusers (SD3, Flux): the adapter and latent packing.

Flow models (ComfyUI's CONST): x = sigma * noise + (1 - sigma) * x0, sigma in [0, 1], the network
predicts a velocity v = noise - x0 and denoised = x - sigma * v. Their sigma tables:

    SD3:  sigma(tau) = s tau / (1 + (s - 1) tau), s = 3,          timestep = 1000 sigma
    Flux: sigma(t) = e^mu / (e^mu + 1/t - 1), mu from the size,   timestep = sigma
          mu = 0.5 + (1.15 - 0.5) (L - 256) / (4096 - 256),  L = (H/2)(W/2) latent patches

Schedulers (all of `ul.SCHEDULERS` give ComfyUI's sigma lists on these tables): `simple` is
diffusers' own flow schedule (linspace(1, 1/N, N) through the shift), `normal` and `sgm_uniform`
are uniform in timestep (on SD3 `normal` equals diffusers' default `set_timesteps`), `beta` and
`linear_quadratic` were made for flow models; `karras`, `exponential` and `kl_optimal` space
steps in log sigma, a VE idea: valid here, but they spend most steps near sigma_min; `ddim_uniform`
starts below sigma = 1, so its "full" unsample never reaches pure noise.

ComfyUI's Unsampler ends a full unsample at sigma 1 + 1e-4 and divides by 1 - sigma: output
= -1e4 x noise, and the paired resample restarts from 0 * latent. `ul.unsample` clamps the
sigmas to 1 and returns the noise itself there (see `ModelSampling.inverse_noise_scaling`);
`unsampling_lab.lab.comfyui_flow.comfyui_flow(model)` gives the same model with ComfyUI's arithmetic, to measure
the difference. The sigma tables (`flux_mu`, `flow_model_sampling`) live in `model_sampling`.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor

from ..errors import UnsamplingError
from ..model_sampling import FlowKind, ModelSampling, _shift_params, flow_model_sampling, flux_mu
from .base import Conditioning, LatentFormat
from .vae import VAEImages

#: ComfyUI's latent formats when the VAE config does not say: (scale, shift).
LATENT_SCALE_SHIFT: dict[str, tuple[float, float]] = {"sd3": (1.5305, 0.0609), "flux": (0.3611, 0.1159)}
#: Flux-dev's distilled guidance (the transformer's `guidance` input; diffusers' pipeline default and ComfyUI's
#: FluxGuidance node). A model input, not classifier-free guidance (`cfg`, unsampling_lab.guidance).
DEFAULT_FLUX_GUIDANCE = 3.5


# -- the adapter ----------------------------------------------------------------------------------
Encoder = Callable[[Sequence[str]], Conditioning]


class FlowTransformerModel(VAEImages):
    """A diffusers `SD3Transformer2DModel` or `FluxTransformer2DModel` as a DiffusionModel.

    Latents are [B, C, H, W] in both cases (Flux's 2 x 2 packing happens inside `forward`).
    Conditioning: `embeds` [B, L, joint_attention_dim] (SD3: CLIP-L/G + T5; Flux: T5) and
    `pooled` [B, pooled_projection_dim] (SD3: CLIP-L + G; Flux: CLIP-L), both required.
    Flux-dev's distilled guidance is a model option (`flux_guidance`, default 3.5; keep cfg at 1).
    """

    def __init__(
        self,
        transformer: Any,
        *,
        kind: FlowKind,
        model_sampling: ModelSampling,
        latent_format: LatentFormat,
        vae: Any | None = None,
        encoder: Encoder | None = None,
        flux_guidance: float = DEFAULT_FLUX_GUIDANCE,
        scheduler_config: Mapping[str, Any] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if model_sampling.prediction != "flow":
            raise UnsamplingError(f"a flow transformer needs a flow sigma table, got prediction {model_sampling.prediction!r}")
        self.kind = kind
        self.device = torch.device(device) if device is not None else next(transformer.parameters()).device
        self.dtype = dtype if dtype is not None else next(transformer.parameters()).dtype
        # cast only when asked: diffusers warns on any .to(dtype), even to the dtype it already has
        moved = transformer.to(self.device) if dtype is None else transformer.to(device=self.device, dtype=dtype)
        self.transformer = moved.eval().requires_grad_(False)
        self.vae = None if vae is None else vae.to(self.device).eval().requires_grad_(False)
        self.encoder = encoder
        self.model_sampling = model_sampling
        self.latent_format = latent_format
        self.flux_guidance = float(flux_guidance)
        self.scheduler_config = dict(scheduler_config or {})
        self.patch_size = int(getattr(transformer.config, "patch_size", 1)) if kind == "sd3" else 2

    # -- options ----------------------------------------------------------------------------------
    @property
    def guidance(self) -> float:
        """Deprecated name of `flux_guidance`."""
        return self.flux_guidance

    def with_options(self, *, flux_guidance: float | None = None, mu: float | None = None,
                     guidance: float | None = None) -> "FlowTransformerModel":
        """A copy (sharing the networks) with another distilled `flux_guidance` or Flux shift `mu`
        (`guidance`: the deprecated name of `flux_guidance`)."""
        out = copy.copy(self)
        flux_guidance = guidance if flux_guidance is None else flux_guidance
        if flux_guidance is not None:
            out.flux_guidance = float(flux_guidance)
        if mu is not None:
            out.model_sampling = flow_model_sampling(self.kind, self._dynamic_config(), mu=mu)
        return out

    def for_latent(self, latent: Tensor | Mapping[str, Any]) -> "FlowTransformerModel":
        """This model with the shift diffusers would use at `latent`'s size (models with dynamic shifting;
        others are returned as they are)."""
        config = self._dynamic_config(required=False)
        if config is None:
            return self
        return self.with_options(mu=flux_mu(latent, **_shift_params(config)))

    def _dynamic_config(self, *, required: bool = True) -> dict[str, Any] | None:
        config = dict(self.scheduler_config)
        if not config.get("use_dynamic_shifting", self.kind == "flux"):
            if required:
                raise UnsamplingError("this model's scheduler has a fixed shift (no use_dynamic_shifting); mu does not apply")
            return None
        return config

    # -- conditioning -----------------------------------------------------------------------------
    @property
    def embed_width(self) -> int:
        return int(self.transformer.config.joint_attention_dim)

    @property
    def pooled_width(self) -> int:
        return int(self.transformer.config.pooled_projection_dim)

    def encode_prompt(self, prompts: Sequence[str]) -> Conditioning:
        """Delegates to the diffusers pipeline's own `encode_prompt` (load a full pipeline object)."""
        if self.encoder is None:
            raise UnsamplingError(
                f"this {self.kind.upper()} model has no text encoders, so prompts cannot be given as strings; load the "
                f"full diffusers pipeline, or pass a Conditioning(embeds [B, L, {self.embed_width}], pooled "
                f"[B, {self.pooled_width}]) or ComfyUI CONDITIONING [[embeds, {{'pooled_output': pooled}}]]"
            )
        with torch.no_grad():
            cond = self.encoder(list(prompts))
        return Conditioning(cond.embeds.float(), None if cond.pooled is None else cond.pooled.float(), dict(cond.extra))

    def check_conditioning(self, cond: Conditioning) -> None:
        what = "CLIP-L/G + T5" if self.kind == "sd3" else "T5"
        width = int(cond.embeds.shape[-1])
        if width != self.embed_width:
            raise UnsamplingError(
                f"prompt embeddings have width {width} but this {self.kind.upper()} transformer expects "
                f"{self.embed_width} ({what} prompt_embeds); encode the prompt with this model's pipeline"
            )
        if cond.pooled is None:
            raise UnsamplingError(
                f"a {self.kind.upper()} model needs a pooled text embedding [B, {self.pooled_width}] as well; pass a "
                "Conditioning(embeds, pooled) or ComfyUI CONDITIONING [[embeds, {'pooled_output': pooled}]]"
            )
        if cond.pooled.ndim != 2 or int(cond.pooled.shape[-1]) != self.pooled_width:
            raise UnsamplingError(
                f"pooled embedding has shape {tuple(cond.pooled.shape)}, expected [B, {self.pooled_width}] "
                "(the pipeline's pooled_prompt_embeds)"
            )

    # -- the network ------------------------------------------------------------------------------
    def forward(self, x: Tensor, timestep: Tensor, cond: Conditioning) -> Tensor:
        """Velocity for state x [B, C, H, W] at `timestep` (SD3: 1000 sigma; Flux: sigma)."""
        h, w = x.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise UnsamplingError(
                f"latent size {h}x{w} is not a multiple of the {self.kind.upper()} patch size {self.patch_size}; "
                f"crop or resize the image to a multiple of {self.patch_size * 8} pixels"
            )
        b = x.shape[0]
        embeds = cond.embeds.to(self.device, self.dtype)
        pooled = cond.pooled.to(self.device, self.dtype)  # type: ignore[union-attr]
        t = timestep.to(self.device, torch.float32).expand(b).to(self.dtype)
        if self.kind == "sd3":
            out = self.transformer(hidden_states=x.to(self.device, self.dtype), timestep=t, encoder_hidden_states=embeds,
                                   pooled_projections=pooled, return_dict=False)[0]
            return out.float()
        guidance = None
        if getattr(self.transformer.config, "guidance_embeds", False):
            guidance = torch.full((b,), self.flux_guidance, device=self.device, dtype=torch.float32)
        out = self.transformer(
            hidden_states=pack_latents(x.to(self.device, self.dtype)), timestep=t, guidance=guidance,
            encoder_hidden_states=embeds, pooled_projections=pooled, return_dict=False,
            img_ids=latent_image_ids(h // 2, w // 2, device=self.device, dtype=self.dtype),
            txt_ids=torch.zeros(embeds.shape[1], 3, device=self.device, dtype=self.dtype),
        )[0]
        return unpack_latents(out, h, w).float()

    def __repr__(self) -> str:
        ms = self.model_sampling
        shift = f"mu={ms.shift:.4g}" if self.kind == "flux" else f"shift={ms.shift:.4g}"
        extra = f", flux_guidance={self.flux_guidance}" if self.kind == "flux" else ""
        return (f"FlowTransformerModel({self.kind.upper()}, {shift}{extra}, latent_scale={self.latent_format.scale}, "
                f"latent_shift={self.latent_format.shift}, device={self.device}, dtype={self.dtype})")


def pack_latents(x: Tensor) -> Tensor:
    """[B, C, H, W] -> [B, (H/2)(W/2), 4C]: Flux's 2 x 2 patches, channel-major within a patch (diffusers)."""
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(x: Tensor, h: int, w: int) -> Tensor:
    """Inverse of `pack_latents` for a latent of size h x w."""
    b, _, c4 = x.shape
    return x.view(b, h // 2, w // 2, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c4 // 4, h, w)


def latent_image_ids(h: int, w: int, *, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Flux's positional ids [(h w), 3] for an h x w grid of packed patches: (0, row, column)."""
    ids = torch.zeros(h, w, 3)
    ids[..., 1] = torch.arange(h)[:, None]
    ids[..., 2] = torch.arange(w)[None, :]
    return ids.reshape(h * w, 3).to(device=device, dtype=dtype)


# -- loading --------------------------------------------------------------------------------------
def load_flow_model(
    pipeline_or_components: Any,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    flux_guidance: float = DEFAULT_FLUX_GUIDANCE,
    mu: float | None = None,
) -> FlowTransformerModel:
    """Wrap an SD3 or Flux diffusers pipeline (or a dict of its components) as a model the engine runs.

    Needs `transformer`; uses `scheduler` (its config: shift, dynamic shifting), `vae` (latent
    scale/shift, encode/decode) and the pipeline's `encode_prompt` when its text encoders are there.
    mu: Flux's shift (default: a 1024 x 1024 image; `model.for_latent(latent)` adapts it to a latent).
    """
    src = SimpleNamespace(**pipeline_or_components) if isinstance(pipeline_or_components, Mapping) else pipeline_or_components
    transformer = getattr(src, "transformer", None)
    if transformer is None:
        raise UnsamplingError("a flow model needs a 'transformer' (SD3Transformer2DModel or FluxTransformer2DModel)")
    kind = flow_kind(transformer)
    scheduler = getattr(src, "scheduler", None)
    scheduler_config = dict(scheduler.config) if scheduler is not None else {}
    vae = getattr(src, "vae", None)
    default_scale, default_shift = LATENT_SCALE_SHIFT[kind]
    vae_config = getattr(vae, "config", None)
    scale = getattr(vae_config, "scaling_factor", None) or default_scale
    shift = getattr(vae_config, "shift_factor", None)
    channels = int(transformer.config.in_channels) // (4 if kind == "flux" else 1)
    latent_format = LatentFormat(channels=channels, scale=float(scale), shift=float(default_shift if shift is None else shift))
    return FlowTransformerModel(
        transformer, kind=kind, model_sampling=flow_model_sampling(kind, scheduler_config, mu=mu),
        latent_format=latent_format, vae=vae, encoder=_pipeline_encoder(src, kind), flux_guidance=flux_guidance,
        scheduler_config=scheduler_config, device=device, dtype=dtype,
    )


def flow_kind(transformer: Any) -> FlowKind:
    """'flux' or 'sd3' from the transformer's config (Flux has rotary axes, SD3 a caption projection)."""
    config = getattr(transformer, "config", None)
    if hasattr(config, "axes_dims_rope"):
        return "flux"
    if hasattr(config, "caption_projection_dim"):
        return "sd3"
    raise UnsamplingError(
        f"unsupported transformer {type(transformer).__name__}: expected diffusers' SD3Transformer2DModel or "
        "FluxTransformer2DModel"
    )


def _pipeline_encoder(src: Any, kind: FlowKind) -> Encoder | None:
    """The pipeline's `encode_prompt`, when it has one and its CLIP and T5/CLIP-G encoders are loaded."""
    if not callable(getattr(src, "encode_prompt", None)):
        return None
    if getattr(src, "text_encoder", None) is None or getattr(src, "text_encoder_2", None) is None:
        return None

    def encode(prompts: Sequence[str]) -> Conditioning:
        device = getattr(src, "_execution_device", None)
        if kind == "sd3":
            embeds, _, pooled, _ = src.encode_prompt(prompt=list(prompts), prompt_2=None, prompt_3=None, device=device,
                                                     do_classifier_free_guidance=False)
        else:
            embeds, pooled, _ = src.encode_prompt(prompt=list(prompts), prompt_2=None, device=device)
        return Conditioning(embeds, pooled)

    return encode


