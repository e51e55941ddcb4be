"""unsampling_lab: diffusion inversion ("unsampling") outside ComfyUI, on diffusers models.

    import unsampling_lab as ul
    model = ul.load_model()                       # the bundled shapes model
    latent = model.encode(images)                 # ComfyUI LATENT dict
    noise = ul.unsample(model, latent, steps=20)  # ComfyUI's Unsampler
    out = ul.resample(model, noise, steps=20)     # ComfyUI's KSamplerAdvanced

Layers (a module imports its own layer and those above it in this list, never below; tests/test_layout.py):
    core      errors, inputs, model_sampling, schedulers, samplers/, guidance, trajectory, engine, models/,
              inversion/, editing/, latent_files, pixels
    bundled   the shapes model (data, detector, tokenizer, training, weights); testing: tiny seeded models
    analysis  analysis/ (metrics, evaluate, grid, running, runners, sweeps, store, executors, plots, piebench/)
    lab       lab/ (widgets, cli, args, bench, report, teaching, toy, images, comfyui_flow, comfy)
Heavy libraries (diffusers, matplotlib, pandas, ipywidgets) load only where used.
"""
from __future__ import annotations

import signal as _signal
import sys as _sys
import threading as _threading


def _interrupted_while_starting(signum: int, frame: object) -> None:
    """Exit at once: an exception raised inside a half-imported library (numpy, scipy) can make it retry its own
    import and end in an unrelated traceback; nothing has run yet, so there is nothing to clean up."""
    import os

    print("unsampling-lab: interrupted while starting; nothing was run", file=_sys.stderr, flush=True)
    os._exit(130)


def _cli_starting() -> bool:
    """`python -m unsampling_lab ...` (argv[0] is "-m" while the package imports; orig_argv names the module) or
    the `unsampling-lab` script."""
    if _sys.argv[:1] == ["-m"]:
        words = list(getattr(_sys, "orig_argv", []))
        for i, word in enumerate(words):
            module = words[i + 1] if word == "-m" and i + 1 < len(words) else word[2:] if word.startswith("-m") else ""
            if module:
                return module.split(".")[0] == "unsampling_lab"
    return str((_sys.argv or [""])[0]).endswith("unsampling-lab")


# Ctrl-C while the CLI starts, during the heavy imports below, is one line and exit status 130, not a traceback;
# only for this import, only from the main thread (where signal.signal may be called), only over Python's handler.
_STARTING = _cli_starting() and _signal.getsignal(_signal.SIGINT) is _signal.default_int_handler \
    and _threading.current_thread() is _threading.main_thread()
if _STARTING:
    _signal.signal(_signal.SIGINT, _interrupted_while_starting)

from .analysis.executors import ModelSource, close_cluster, local_cluster
from .analysis.store import load_results
from .analysis.sweeps import sweep
from .editing import CONTROLS, edit, edit_image
from .engine import NORMALIZE_MODES, resample_sigmas, unsample, unsample_sigmas, unsample_trajectory, unsampled
from .errors import UnsamplingError, UnsamplingWarning
from .inversion import INVERSION_METHODS, Inversion, invert, resample
from .latent_files import load_latent, save_latent
from .model_sampling import ModelSampling
from .models.base import Conditioning, DiffusionModel, LatentFormat
from .models.loading import load_model
from .samplers import INVERTIBLE_SAMPLERS, SAMPLERS
from .schedulers import SCHEDULERS, calculate_sigmas
from .trajectory import Trajectory

__version__ = "0.1.0"
if _STARTING:  # imported: from here on the CLI's main() answers Ctrl-C itself
    _signal.signal(_signal.SIGINT, _signal.default_int_handler)


#: Submodules reachable as attributes (`ul.metrics`, `ul.widgets`, ...), imported on first use.
_SUBMODULES: dict[str, str] = {
    "metrics": ".analysis.metrics", "plots": ".analysis.plots", "sweeps": ".analysis.sweeps",
    "widgets": ".lab.widgets", "teaching": ".lab.teaching", "cli": ".lab.cli", "report": ".lab.report", "comfy": ".lab.comfy",
    "analytic": ".models.analytic", "detector": ".bundled.detector", "shapes": ".bundled.shapes", "testing": ".testing",
}


def __getattr__(name: str):  # lazy: the bundled model's path and heavier submodules
    if name == "BUNDLED_MODEL":
        from .bundled import BUNDLED_MODEL

        return BUNDLED_MODEL
    if name == "benchmark":  # PIE-Bench-style runner (analysis layer, loads torchmetrics)
        from .analysis.piebench.runner import benchmark

        return benchmark
    if name == "load_images":  # lab/ is the user layer; the core never imports it
        from .lab.images import load_images

        return load_images
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(_SUBMODULES[name], __name__)
    raise AttributeError(f"module 'unsampling_lab' has no attribute {name!r}")


__all__ = [
    "BUNDLED_MODEL", "CONTROLS", "INVERSION_METHODS", "benchmark", "INVERTIBLE_SAMPLERS", "NORMALIZE_MODES", "SAMPLERS", "SCHEDULERS",
    "Conditioning", "DiffusionModel", "Inversion", "LatentFormat", "ModelSampling", "ModelSource", "Trajectory",
    "UnsamplingError", "UnsamplingWarning", "calculate_sigmas", "close_cluster", "edit", "edit_image", "invert", "load_images", "load_latent", "load_model", "load_results",
    "local_cluster", "resample", "resample_sigmas", "save_latent", "sweep", "unsample", "unsample_sigmas",
    "unsample_trajectory", "unsampled",
]
