"""Tiny seeded diffusers models for the analysis tests (metrics, sweeps, plots, CLI); no downloads.

Import the fixtures into a test module with `from fixtures_analysis import *  # noqa: F403` (pytest puts tests/ on the path).
"""
from __future__ import annotations

import pytest
import torch

from unsampling_lab.testing import TINY_WORDS as WORDS, tiny_sd_pipeline as make_tiny_pipeline  # noqa: F401


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
