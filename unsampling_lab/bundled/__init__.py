"""The bundled shapes model: its data (`shapes`), its judge (`detector`), its tokenizer, its training
script (`train`) and its weights (`weights/`, a diffusers StableDiffusionPipeline folder)."""
from __future__ import annotations

from pathlib import Path

BUNDLED_MODEL: Path = Path(__file__).resolve().parent / "weights"
RECOMMENDED_CFG: float = 6.0  # classifier-free guidance scale measured best in weights/MODEL_CARD.md
