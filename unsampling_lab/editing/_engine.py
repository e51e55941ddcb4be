"""The engine doors the editing layer uses, in one place: the public checks of `inputs`, the engine's sigma and
noise helpers, and `inversion.resample` (a LATENT, or an Inversion's own resampling side)."""
from __future__ import annotations

from ..engine import resample_sigmas, state_dtype, unsampled, wrap  # noqa: F401
from ..inputs import check_cfg, read_latent  # noqa: F401
from ..inversion import resample  # noqa: F401
