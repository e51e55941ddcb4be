"""Tiny seeded diffusers models for the analysis tests (metrics, sweeps, plots, CLI); no downloads.

Import the fixtures into a test module with `from fixtures_analysis import *  # noqa: F403` (pytest puts tests/ on the path).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch

WORDS = ("red", "blue", "circle", "square")


def make_tiny_pipeline(folder: Path | None = None, *, seed: int = 0):
    """A StableDiffusionPipeline of seeded random tiny parts (UNet 32/64, cross-attention 32, 8x8 latents, 16 px images)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from unsampling_lab._tokenizer import write_tokenizer

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
        write_tokenizer(Path(tmp), WORDS, model_max_length=8)
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


@pytest.fixture(autouse=True)
def _tiny_models_on_one_thread(one_thread):  # conftest.one_thread, for every test that imports these fixtures
    yield


@pytest.fixture(scope="session")
def tiny_pipe():
    """The tiny StableDiffusionPipeline object (built once per session)."""
    return make_tiny_pipeline()


@pytest.fixture(scope="session")
def tiny_model(tiny_pipe):
    """The tiny pipeline wrapped as an unsampling_lab model on the CPU."""
    import unsampling_lab as ul

    return ul.load_model(tiny_pipe, device="cpu")


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tiny_pipe, tmp_path_factory):
    """The tiny pipeline saved with save_pretrained, for `--model PATH` in the CLI tests."""
    folder = tmp_path_factory.mktemp("tiny_pipe")
    tiny_pipe.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def tiny_latent(tiny_model):
    """Two 16 px images encoded by the tiny VAE: (LATENT dict, images [2, 16, 16, 3])."""
    g = torch.Generator().manual_seed(1)
    images = torch.rand(2, 16, 16, 3, generator=g)
    return tiny_model.encode(images), images
