"""Tiny seeded models for tests, benchmarks and notebooks: built from small configs, never downloaded.

- `tiny_unet`, `tiny_vae`, `char_tokenizer`, `tiny_text_encoder`: diffusers/transformers parts (random
  weights from `torch.manual_seed(seed)`), assembled by the test fixtures into SD1 / SD2-v / SDXL adapters.
- `tiny_sd_pipeline`: a whole StableDiffusionPipeline (UNet 32/64, cross-attention 32, 8x8 latents, 16 px images).
- `tiny_flow_model`: an SD3 or Flux transformer adapter (4 latent channels, one block).
- `benchmark_model`: what the benchmarks measure (the bundled model, else the tiny pipeline).
- `CountingModel`: a model whose network calls are counted, to check the engine's own accounting
  (`EvalCounter`, `Trajectory.nfe`) against an independent count.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from .errors import UnsamplingError
from .model_sampling import FlowKind
from .models.base import DiffusionModel

if TYPE_CHECKING:
    from .models.flow import FlowTransformerModel

#: SD1.5's scheduler config (scaled_linear 0.00085..0.012, 1000 steps, epsilon).
SD15_SCHEDULER = {
    "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
    "num_train_timesteps": 1000, "prediction_type": "epsilon", "steps_offset": 1,
}


def tiny_unet(*, seed: int = 0, sdxl: bool = False, cross_attention_dim: int = 32):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    kwargs = dict(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim, attention_head_dim=8, norm_num_groups=8,
    )
    if sdxl:
        kwargs.update(addition_embed_type="text_time", addition_time_embed_dim=8,
                      projection_class_embeddings_input_dim=16 + 6 * 8, transformer_layers_per_block=1)
    return UNet2DConditionModel(**kwargs).eval()


def tiny_vae(*, seed: int = 0):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32),
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         norm_num_groups=8, sample_size=16).eval()


def char_tokenizer(tmp_path: Path):
    """A character-level CLIPTokenizer written to `tmp_path` (bytes-to-unicode vocabulary, no merges)."""
    from transformers import CLIPTokenizer

    # GPT-2/CLIP byte-to-unicode alphabet: printable bytes map to themselves, the rest above 255.
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    extra = [b for b in range(256) if b not in printable]
    chars = [chr(b) for b in printable] + [chr(256 + i) for i in range(len(extra))]
    vocab = {c: i for i, c in enumerate(chars)}
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"), model_max_length=16)


def tiny_text_encoder(*, seed: int, hidden: int, vocab_size: int, projection: int | None = None):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = CLIPTextConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                            num_attention_heads=2, max_position_embeddings=16, projection_dim=projection or hidden,
                            bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1)
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return cls(config).eval()


#: The tiny pipeline's word-level vocabulary.
TINY_WORDS = ("red", "blue", "circle", "square")


def tiny_sd_pipeline(folder: Path | None = None, *, seed: int = 0):
    """A StableDiffusionPipeline of seeded random tiny parts (UNet 32/64, cross-attention 32, 8x8 latents, 16 px images)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from .bundled.tokenizer import write_tokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
    )
    vae = AutoencoderKL(
        block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"), up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        norm_num_groups=8, sample_size=16,
    )
    with tempfile.TemporaryDirectory() as tmp:
        write_tokenizer(Path(tmp), TINY_WORDS, model_max_length=8)
        tokenizer = CLIPTokenizer.from_pretrained(tmp)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        vocab_size=len(tokenizer), max_position_embeddings=8, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1)
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    if folder is not None:
        pipe.save_pretrained(str(folder))
    return pipe


def tiny_flow_model(kind: FlowKind, *, seed: int = 0, embed_width: int = 16, pooled_width: int = 8,
                    device: torch.device | str = "cpu") -> "FlowTransformerModel":
    """A seeded, randomly initialised SD3 or Flux transformer from a tiny config (4 latent channels,
    one block; no download), for tests and teaching. Conditioning: embeds [B, L, 16], pooled [B, 8]."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel, SD3Transformer2DModel

    from .models.flow import load_flow_model

    torch.manual_seed(seed)
    if kind == "sd3":
        net = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=1, attention_head_dim=8,
                                    num_attention_heads=2, joint_attention_dim=embed_width, caption_projection_dim=16,
                                    pooled_projection_dim=pooled_width, out_channels=4, pos_embed_max_size=16)
        sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    elif kind == "flux":
        net = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8,
                                     num_attention_heads=2, joint_attention_dim=embed_width, pooled_projection_dim=pooled_width,
                                     guidance_embeds=True, axes_dims_rope=(2, 2, 4))
        sched = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True)
    else:
        raise UnsamplingError(f"unknown flow model kind {kind!r}; expected 'sd3' or 'flux'")
    return load_flow_model({"transformer": net.eval(), "scheduler": sched}, device=device)


def benchmark_model(kind: Literal["auto", "bundled", "tiny"] = "auto") -> tuple[DiffusionModel, dict[str, Any], str]:
    """(model, latent dict, description) for the benchmarks: the bundled model with two shapes images
    (kind "auto" or "bundled"), or the tiny seeded pipeline ("tiny", or "auto" when the weights are missing)."""
    from .bundled import BUNDLED_MODEL
    from .models.loading import load_model

    if kind in ("auto", "bundled") and Path(BUNDLED_MODEL, "model_index.json").exists():
        from .bundled.shapes import make_shapes

        model = load_model(device="cpu")
        batch = make_shapes(2, seed=0)
        return model, model.encode(batch.images), "bundled shapes model, 2 images"
    if kind == "bundled":
        raise UnsamplingError("the bundled model is not installed; run with --model tiny")
    model = load_model(tiny_sd_pipeline(), device="cpu")
    images = torch.rand(2, 16, 16, 3, generator=torch.Generator().manual_seed(0))
    return model, model.encode(images), "tiny seeded SD pipeline (UNet 32/64, 8x8 latents), 2 images"


class CountingModel:
    """`model` with its network calls counted in `calls` (cond and uncond batched together are one call):
    an independent check of the engine's own accounting; everything else is the wrapped model's."""

    def __init__(self, model: DiffusionModel) -> None:
        self._model = model
        self.calls = 0

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, cond: Any) -> torch.Tensor:
        self.calls += 1
        return self._model.forward(x, timestep, cond)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)
