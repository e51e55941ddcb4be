"""The one home of the shared fixtures: tiny seeded diffusers models built from small configs (no downloads).

Which tiny model to ask for (all session-scoped, built once):
- `sd_model`, `sd2v_model`, `sdxl_model`: UNet adapters assembled from parts (char-level tokenizer), one per
  conditioning family: SD1 eps with a VAE and a CLIP encoder; SD2 v-prediction without encoder; SDXL with two.
- `tiny_pipe` / `tiny_model`: a whole StableDiffusionPipeline (word tokenizer, VAE 32/64) and that pipeline
  loaded the way users load one (`ul.load_model(pipe)`); `tiny_pipeline_dir` is it saved for `--model PATH`,
  `tiny_latent` two 16 px images encoded by it. The sweep, store and CLI tests use these.
- `comfy_reference`: ComfyUI's own outputs on its tiny UNet (the parity tests).
- `shapes_pair` (module-scoped): the bundled model on one thread with two shapes images (seed 7, two different
  shapes), their latents and colour-swap targets: the editing and controlled-sweep tests' input.
Threads: the session runs on UL_TEST_THREADS (default 2, what ComfyUI's reference outputs were made with);
a module that wants one thread (tiny models run faster on one, and subprocess workers use one) says so
with `pytestmark = pytest.mark.usefixtures("one_thread")`.
Tests marked `slow` (subprocesses, Dask, notebooks, the browser) are left out by `pytest -m "not slow"`;
every notebook collected by nbmake is marked here.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from unsampling_lab.testing import SD15_SCHEDULER, char_tokenizer, tiny_sd_pipeline, tiny_text_encoder, tiny_unet, tiny_vae

# ComfyUI's reference outputs were made with 2 threads (lms is sensitive to it). UL_TEST_THREADS=1
# helps on a machine whose cores are busy with other work: 2 threads then stall each other.
torch.set_num_threads(int(os.environ.get("UL_TEST_THREADS", "2")))

# ComfyUI's reference outputs ship with the tests (tests/data/comfy_reference); ../shared is the fallback.
_BUNDLED_REFERENCE = Path(__file__).resolve().parent / "data" / "comfy_reference"
COMFY_REFERENCE = (_BUNDLED_REFERENCE if (_BUNDLED_REFERENCE / "cases.json").exists()
                   else Path(__file__).resolve().parents[1].parent / "shared" / "comfy_reference")


def pytest_collection_modifyitems(items):
    """Every notebook run (nbmake's items) is slow: each starts a kernel and runs its whole notebook."""
    for item in items:
        if item.path.suffix == ".ipynb":
            item.add_marker(pytest.mark.slow)


@pytest.fixture()
def two_threads():
    """The thread count ComfyUI's reference outputs were made with (for the parity tests); restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def shapes_pair():
    """(model, batch, latent, source captions, target captions): the bundled model on one thread (restored after
    the module), two shapes images of seed 7 and their colour word swaps ("red circle" -> "green circle")."""
    import unsampling_lab as ul
    from unsampling_lab.bundled import shapes

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the bundled UNet runs far faster on one thread when the cores are shared
    model = ul.load_model(device="cpu")
    batch = shapes.make_shapes(2, seed=7)
    yield model, batch, model.encode(batch.images), list(batch.captions), list(shapes.recolour_captions(batch))
    torch.set_num_threads(threads)


@pytest.fixture()
def one_thread():
    """Tiny networks run as fast on one thread, and far faster when the cores are shared; restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def sd_model(tmp_path_factory):
    """An SD1-like eps model: tiny UNet + VAE + CLIP text encoder and tokenizer."""
    from unsampling_lab.models.unet import UNetModel

    tok = char_tokenizer(tmp_path_factory.mktemp("tok"))
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

    tok = char_tokenizer(tmp_path_factory.mktemp("tokxl"))
    enc1 = tiny_text_encoder(seed=2, hidden=16, vocab_size=len(tok))
    enc2 = tiny_text_encoder(seed=3, hidden=16, vocab_size=len(tok), projection=16)
    return UNetModel(tiny_unet(seed=4, sdxl=True), SD15_SCHEDULER, text_encoder=enc1, tokenizer=tok,
                     text_encoder_2=enc2, tokenizer_2=tok, device="cpu")


@pytest.fixture(scope="session")
def comfy_reference():
    """ComfyUI's own outputs on a tiny seeded UNet (tests/data/comfy_reference, made by ComfyUI itself)."""
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


@pytest.fixture(scope="session")
def tiny_pipe():
    """The tiny StableDiffusionPipeline object (unsampling_lab.testing.tiny_sd_pipeline, seed 0)."""
    return tiny_sd_pipeline()


@pytest.fixture(scope="session")
def tiny_model(tiny_pipe):
    """The tiny pipeline loaded as users load a pipeline (`ul.load_model`), on the CPU."""
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
