"""`load_model`: a diffusers pipeline object, a local pipeline folder, a cached hub id, or the bundled model."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..errors import UnsamplingError
from .base import DiffusionModel


def default_device() -> torch.device:
    """CUDA when available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(
    source: Any = None, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> DiffusionModel:
    """Wrap `source` as a model the engine runs.

    source: None (the bundled model), a diffusers pipeline object (anything with `.unet` and
    `.scheduler`; `vae`, `text_encoder`, `tokenizer` may be absent), a local pipeline folder, or a
    hub id already in the local cache (nothing is downloaded). dtype: the network's dtype (fp16 on
    CUDA is fine; the sampler state stays float32).
    """
    device = torch.device(device) if device is not None else default_device()
    if source is None:
        from ..bundled import BUNDLED_MODEL

        if not Path(BUNDLED_MODEL, "model_index.json").exists():
            raise UnsamplingError(f"the bundled model is missing at {BUNDLED_MODEL}; reinstall unsampling_lab")
        source = BUNDLED_MODEL
    if isinstance(source, (str, Path)):
        source = _load_pipeline(source, dtype)
    if hasattr(source, "unet") and hasattr(source, "scheduler"):
        from .unet import UNetModel

        return UNetModel(
            source.unet,
            dict(source.scheduler.config),
            vae=getattr(source, "vae", None),
            text_encoder=getattr(source, "text_encoder", None),
            tokenizer=getattr(source, "tokenizer", None),
            text_encoder_2=getattr(source, "text_encoder_2", None),
            tokenizer_2=getattr(source, "tokenizer_2", None),
            device=device,
            dtype=dtype,
        )
    if hasattr(source, "transformer") and hasattr(source, "scheduler"):
        from .flow import load_flow_model  # SD3 / Flux

        return load_flow_model(source, device=device, dtype=dtype)
    if isinstance(source, DiffusionModel):
        return source
    raise UnsamplingError(
        f"cannot load a model from {type(source).__name__}: expected a diffusers pipeline (with .unet or "
        ".transformer and .scheduler), a local pipeline folder, a cached hub id, or None for the bundled model"
    )


def _load_pipeline(source: str | Path, dtype: torch.dtype | None) -> Any:
    with _quiet_libraries():
        return _from_pretrained(source, dtype)


@contextlib.contextmanager
def _quiet_libraries() -> Iterator[None]:
    """diffusers/transformers print advice on loading (accelerate, torchvision, progress bars) that
    says nothing about the model; keep their errors, drop the chatter."""
    import diffusers
    import transformers

    levels = diffusers.utils.logging.get_verbosity(), transformers.utils.logging.get_verbosity()
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        diffusers.utils.logging.set_verbosity(levels[0])
        transformers.utils.logging.set_verbosity(levels[1])
        diffusers.utils.logging.enable_progress_bar()
        transformers.utils.logging.enable_progress_bar()


def _from_pretrained(source: str | Path, dtype: torch.dtype | None) -> Any:
    from diffusers import DiffusionPipeline

    path = Path(source).expanduser()
    kwargs: dict[str, Any] = {} if dtype is None else {"torch_dtype": dtype}
    if path.exists():
        if not (path / "model_index.json").exists():
            raise UnsamplingError(f"{path} is not a diffusers pipeline folder (no model_index.json)")
        return DiffusionPipeline.from_pretrained(str(path), local_files_only=True, **kwargs)
    try:
        return DiffusionPipeline.from_pretrained(str(source), local_files_only=True, **kwargs)
    except Exception as e:  # diffusers raises several types for "not cached"
        raise UnsamplingError(
            f"could not load {str(source)!r}: it is not a local folder and not in the local Hugging Face cache "
            f"(unsampling_lab never downloads at run time). Download it once with "
            f"`huggingface-cli download {source}` on a machine with internet, or pass a pipeline object. ({e.__class__.__name__})"
        ) from None
