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

COMFY_REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "comfy_reference"

@pytest.fixture()
def one_thread():
    """Tiny networks run as fast on one thread, and far faster when the cores are shared; restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


from unsampling_lab.testing import SD15_SCHEDULER, char_tokenizer as tiny_tokenizer, tiny_text_encoder, tiny_unet, tiny_vae  # noqa: E402,F401


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
