"""Shared by the benchmarks: the model to measure (bundled when installed, else a tiny seeded pipeline)."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def benchmark_model(kind: str = "auto"):
    """(model, latent dict, description): the bundled model with two shapes images, or the tiny test pipeline."""
    import unsampling_lab as ul

    if kind in ("auto", "bundled") and Path(ul.BUNDLED_MODEL, "model_index.json").exists():
        from unsampling_lab import shapes

        model = ul.load_model(device="cpu")
        batch = shapes.make_shapes(2, seed=0)
        return model, model.encode(batch.images), "bundled shapes model, 2 images"
    if kind == "bundled":
        raise SystemExit("the bundled model is not installed; run with --model tiny")
    from fixtures_analysis import make_tiny_pipeline

    model = ul.load_model(make_tiny_pipeline(), device="cpu")
    images = torch.rand(2, 16, 16, 3, generator=torch.Generator().manual_seed(0))
    return model, model.encode(images), "tiny seeded SD pipeline (UNet 32/64, 8x8 latents), 2 images"
