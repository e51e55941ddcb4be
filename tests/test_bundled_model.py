"""The bundled shapes model: a real StableDiffusionPipeline folder that loads offline and draws what it is told."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from unsampling_lab.bundled import BUNDLED_MODEL, RECOMMENDED_CFG
from unsampling_lab.bundled.detector import detect
from unsampling_lab.bundled.shapes import CAPTIONS

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def pipe():
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline
    from diffusers.utils import logging

    logging.set_verbosity_error()
    pipe = StableDiffusionPipeline.from_pretrained(BUNDLED_MODEL)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_folder_layout_and_size() -> None:
    index = json.loads((BUNDLED_MODEL / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline" and index["requires_safety_checker"] is False
    assert "safety_checker" not in index and "feature_extractor" not in index
    weights = list(BUNDLED_MODEL.rglob("*.safetensors"))
    assert {w.parent.name for w in weights} == {"vae", "text_encoder", "unet"}
    assert sum(w.stat().st_size for w in weights) <= 10 * 2**20
    assert not list(BUNDLED_MODEL.rglob("*.bin"))
    assert (BUNDLED_MODEL / "MODEL_CARD.md").exists()


def test_sd15_schedule(pipe) -> None:
    c = pipe.scheduler.config
    assert (c.beta_start, c.beta_end, c.beta_schedule) == (0.00085, 0.012, "scaled_linear")
    assert (c.num_train_timesteps, c.prediction_type, c.steps_offset) == (1000, "epsilon", 1)


def test_components(pipe) -> None:
    assert pipe.safety_checker is None and pipe.feature_extractor is None
    for m in (pipe.vae, pipe.text_encoder, pipe.unet):
        assert next(m.parameters()).dtype == torch.float32
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    z = pipe.vae.encode(torch.zeros(1, 3, 32, 32)).latent_dist.mean
    assert z.shape == (1, 4, 8, 8) and 0 < pipe.vae.config.scaling_factor != 0.18215


def test_tokenizer(pipe) -> None:
    tok = pipe.tokenizer
    for caption in CAPTIONS:
        ids = tok(caption).input_ids
        assert len(ids) == 4 and ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id, caption
        assert tok.decode(ids[1:3]).strip() == caption
    ids = tok("", padding="max_length", max_length=tok.model_max_length).input_ids
    assert ids[0] == tok.bos_token_id and set(ids[1:]) == {tok.eos_token_id}
    assert len(tok("Red CIRCLE, please!!", truncation=True).input_ids) <= tok.model_max_length


def test_generations_follow_the_prompt(pipe) -> None:
    prompts = ["red circle", "green square", "blue triangle", "yellow cross", "magenta circle", "cyan square"]
    gens = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
    with torch.inference_mode():
        images = pipe(prompts, num_inference_steps=20, guidance_scale=RECOMMENDED_CFG, height=32, width=32,
                      generator=gens, output_type="pt").images
    assert images.shape == (6, 3, 32, 32)
    det = detect(images.permute(0, 2, 3, 1))
    colour = sum(d == p.split()[0] for d, p in zip(det.colours, prompts))
    shape = sum(d == p.split()[1] for d, p in zip(det.shapes, prompts))
    assert colour >= 6 and shape >= 5, (det.colours, det.shapes)


@pytest.mark.slow  # a subprocess
def test_import_stays_light() -> None:
    code = ("import sys, unsampling_lab.bundled, unsampling_lab.bundled.shapes, unsampling_lab.bundled.detector;"
            "print(any(m in sys.modules for m in ('diffusers', 'transformers')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
