"""Shared fixtures: tiny seeded diffusers models built from small configs (no downloads)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import os

# ComfyUI's reference outputs were made with 2 threads (lms is sensitive to it). UL_TEST_THREADS=1
# helps on a machine whose cores are busy with other work: 2 threads then stall each other.
torch.set_num_threads(int(os.environ.get("UL_TEST_THREADS", "2")))

# ComfyUI's reference outputs ship with the tests (tests/data/comfy_reference); ../shared is the fallback.
_BUNDLED_REFERENCE = Path(__file__).resolve().parent / "data" / "comfy_reference"
COMFY_REFERENCE = (_BUNDLED_REFERENCE if (_BUNDLED_REFERENCE / "cases.json").exists()
                   else Path(__file__).resolve().parents[1].parent / "shared" / "comfy_reference")

@pytest.fixture()
def two_threads():
    """The thread count ComfyUI's reference outputs were made with (bit-exact parity needs it); restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


@pytest.fixture()
def one_thread():
    """Tiny networks run as fast on one thread, and far faster when the cores are shared; restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


def tiny_tokenizer(tmp_path: Path):
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


@pytest.fixture(scope="session")
def sd_model(tmp_path_factory):
    """An SD1-like eps model: tiny UNet + VAE + CLIP text encoder and tokenizer."""
    from unsampling_lab.models.unet import UNetModel

    tok = tiny_tokenizer(tmp_path_factory.mktemp("tok"))
    enc = tiny_text_encoder(seed=1, hidden=32, vocab_size=len(tok))
    return UNetModel(tiny_unet(), SD15_SCHEDULER, vae=tiny_vae(), text_encoder=enc, tokenizer=tok, device="cpu")


@pytest.fixture(scope="session")
def sd2v_model():
    """An SD2-like v-prediction model without a text encoder (conditioning as embeddings)."""
    from unsampling_lab.models.unet import UNetModel

    return UNetModel(tiny_unet(seed=5), {**SD15_SCHEDULER, "prediction_type": "v_prediction"}, device="cpu")


@pytest.fixture(scope="session")
def sdxl_model(tmp_path_factory):
    """An SDXL-like model: two text encoders (penultimate hidden states concatenated), pooled embeds, time ids."""
    from unsampling_lab.models.unet import UNetModel

    tok = tiny_tokenizer(tmp_path_factory.mktemp("tokxl"))
    enc1 = tiny_text_encoder(seed=2, hidden=16, vocab_size=len(tok))
    enc2 = tiny_text_encoder(seed=3, hidden=16, vocab_size=len(tok), projection=16)
    return UNetModel(tiny_unet(seed=4, sdxl=True), SD15_SCHEDULER, text_encoder=enc1, tokenizer=tok,
                     text_encoder_2=enc2, tokenizer_2=tok, device="cpu")


@pytest.fixture(scope="session")
def comfy_reference():
    """ComfyUI's own outputs on a tiny seeded UNet (../shared/comfy_reference)."""
    if not (COMFY_REFERENCE / "cases.json").exists():
        pytest.skip(f"ComfyUI reference data not found at {COMFY_REFERENCE}")
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file

    from unsampling_lab.models.unet import UNetModel

    unet = UNet2DConditionModel.from_pretrained(str(COMFY_REFERENCE / "tiny_sd" / "unet"))
    config = json.loads((COMFY_REFERENCE / "tiny_sd" / "scheduler" / "scheduler_config.json").read_text())
    return {
        "model": UNetModel(unet, config, device="cpu"),
        "inputs": load_file(str(COMFY_REFERENCE / "inputs.safetensors")),
        "outputs": load_file(str(COMFY_REFERENCE / "outputs.safetensors")),
        "cases": json.loads((COMFY_REFERENCE / "cases.json").read_text())["cases"],
        "sigmas": json.loads((COMFY_REFERENCE / "sigmas.json").read_text()),
    }
