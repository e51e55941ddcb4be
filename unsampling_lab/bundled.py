"""Where the bundled shapes model lives: a StableDiffusionPipeline folder shipped inside the package."""
from __future__ import annotations

from pathlib import Path

BUNDLED_MODEL: Path = Path(__file__).resolve().parent / "bundled_model"
RECOMMENDED_CFG: float = 6.0  # classifier-free guidance scale measured best in MODEL_CARD.md
