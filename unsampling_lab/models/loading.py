"""`load_model`: a diffusers pipeline object, a local pipeline folder, a cached hub id, or the bundled model."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..errors import UnsamplingError, user_path
from .base import DiffusionModel


def default_device() -> torch.device:
    """CUDA when available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(
    source: Any = None, *, device: torch.device | str | None = None, dtype: torch.dtype | str | None = None,
    allow_pickle: bool = False, comfyui: str | Path | None = None,
) -> DiffusionModel:
    """Wrap `source` as a model the engine runs.

    source: None (the bundled model), a diffusers pipeline object (anything with `.unet` and
    `.scheduler`; `vae`, `text_encoder`, `tokenizer` may be absent), a local pipeline folder, or a
    hub id already in the local cache (nothing is downloaded). dtype: the network's dtype, a
    torch.dtype or its name ("float16", "bfloat16", "fp16", ...; fp16 on CUDA is fine, the sampler
    state stays float32). Weights load from safetensors files only: pickled `.bin`/`.ckpt` weights
    can run code when loaded, so they need `allow_pickle=True`. A single-file checkpoint (SD1.x, SD2.x,
    SDXL, SD3, Flux; `models/single_file.py`) loads too; its tokenizers come from the Hugging Face cache
    or the ComfyUI installation it sits in (or `comfyui=PATH`).
    """
    if not isinstance(allow_pickle, bool):  # "no", 0, "false" must never read as consent to run a pickle
        raise UnsamplingError(f"allow_pickle must be True or False, got {allow_pickle!r}; pass allow_pickle=True only "
                              "if you trust the pickled weights (they can run code when loaded)")
    device = resolve_device(device)
    dtype = resolve_dtype(dtype)
    if source is None:
        from ..bundled import BUNDLED_MODEL

        if not Path(BUNDLED_MODEL, "model_index.json").exists():
            raise UnsamplingError(f"the bundled model is missing at {BUNDLED_MODEL}; reinstall unsampling_lab")
        source = BUNDLED_MODEL
    if isinstance(source, (str, Path)) and user_path(source).suffix in SINGLE_FILE_SUFFIXES:
        from .single_file import load_single_file

        source = load_single_file(source, dtype=dtype, allow_pickle=allow_pickle, comfyui=comfyui)
    if isinstance(source, (str, Path)):
        source = _load_pipeline(source, dtype, allow_pickle=allow_pickle)
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


def resolve_device(device: torch.device | str | None) -> torch.device:
    """`device` as a torch.device that exists on this machine; None: CUDA when available, else the CPU."""
    if device is None:
        return default_device()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise UnsamplingError(f"device {device!r} is not a torch device; use 'cpu', 'cuda', 'cuda:1' or 'mps'") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            built = "this torch has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise UnsamplingError(f"device {str(device)!r}: {built}; use device='cpu' (or leave device unset)")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise UnsamplingError(f"device {str(device)!r}: there are {count} CUDA devices (cuda:0..cuda:{count - 1})")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UnsamplingError(f"device {str(device)!r}: MPS is not available on this machine; use device='cpu'")
    return dev


_DTYPE_ALIASES = {"fp16": "float16", "half": "float16", "bf16": "bfloat16", "fp32": "float32", "float": "float32",
                  "fp64": "float64", "double": "float64"}
_FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """A floating torch.dtype from a torch.dtype or its name ("float16", "torch.bfloat16", "fp16")."""
    if dtype is None:
        return None
    if isinstance(dtype, str):
        name = dtype.strip().lower().removeprefix("torch.")
        name = _DTYPE_ALIASES.get(name, name)
        if name not in _FLOAT_DTYPES:
            from ..errors import suggest

            raise suggest(dtype, _FLOAT_DTYPES, what="dtype")
        return getattr(torch, name)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise UnsamplingError(f"dtype must be a floating torch.dtype or its name ({', '.join(_FLOAT_DTYPES)}), got {dtype!r}")
    return dtype


def _load_pipeline(source: str | Path, dtype: torch.dtype | None, *, allow_pickle: bool) -> Any:
    with _quiet_libraries():
        return _from_pretrained(source, dtype, allow_pickle=allow_pickle)


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


#: Pipeline components that hold network weights (the rest are configs: scheduler, tokenizers).
WEIGHT_COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2", "text_encoder_3", "transformer")
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth")
#: What a single-file checkpoint is called (ComfyUI's models/checkpoints/).
SINGLE_FILE_SUFFIXES = (".safetensors", ".sft", ".ckpt", ".pt", ".pth")


def _looks_like_path(source: str | Path) -> bool:
    """A Path, or a string that names a file system location rather than a hub id 'org/name'."""
    if isinstance(source, Path):
        return True
    text = str(source)
    return (text.startswith((".", "/", "~", "\\")) or "\\" in text or text.count("/") > 1 or text.endswith("/")
            or (len(text) > 1 and text[1] == ":") or Path(text).suffix in (".safetensors", ".ckpt", ".json"))


def check_pipeline_folder(path: Path, *, allow_pickle: bool = False) -> None:
    """Raise a one-line error naming the file or folder if a diffusers pipeline folder cannot load.

    Checks: model_index.json readable; every weight component it lists (unet, vae, text encoders,
    transformer) has its subfolder and a non-empty safetensors file whose header parses (or, with
    `allow_pickle`, a pickled one).
    """
    import json

    if path.is_file():
        raise UnsamplingError(
            f"{path} is a file; load_model needs a diffusers pipeline folder (with model_index.json). Single-file "
            "checkpoints can be converted with diffusers' StableDiffusionPipeline.from_single_file(...).save_pretrained(folder)"
        )
    index = path / "model_index.json"
    if not index.exists():
        raise UnsamplingError(f"{path} is not a diffusers pipeline folder (no model_index.json)")
    try:
        components = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UnsamplingError(f"{index} is not valid JSON ({e}); restore it from the model's original files") from None
    for name, spec in components.items():
        if name.startswith("_") or name not in WEIGHT_COMPONENTS or not isinstance(spec, list) or spec[0] is None:
            continue
        folder = path / name
        if not folder.is_dir():
            raise UnsamplingError(f"pipeline folder {path} has no {name}/ subfolder, which model_index.json lists; "
                                  f"copy {folder} from the original model")
        _check_weights(folder, allow_pickle=allow_pickle)


def _check_weights(folder: Path, *, allow_pickle: bool) -> None:
    from safetensors import SafetensorError, safe_open

    files = sorted(p for p in folder.iterdir() if p.is_file())
    safe = [p for p in files if p.suffix == ".safetensors"]
    pickled = [p for p in files if p.suffix in PICKLE_SUFFIXES]
    for f in safe + (pickled if allow_pickle else []):
        if f.stat().st_size == 0:
            raise UnsamplingError(f"weights file {f} is empty (0 bytes); the download or copy was cut short: fetch it again")
    if not safe:
        if pickled and not allow_pickle:
            raise UnsamplingError(
                f"{folder} has only pickled weights ({pickled[0].name}); pickle files can run code when loaded, so "
                "unsampling_lab loads safetensors only: convert them, or pass allow_pickle=True (CLI: --allow-pickle) "
                "if you trust the file"
            )
        if not pickled:
            raise UnsamplingError(f"{folder} has no weights file (*.safetensors); copy it from the original model")
        return
    for f in safe:
        try:
            with safe_open(str(f), framework="pt") as handle:
                handle.keys()
        except (SafetensorError, OSError) as e:
            raise UnsamplingError(f"weights file {f} is corrupt or truncated ({e}); fetch it again") from None


def _from_pretrained(source: str | Path, dtype: torch.dtype | None, *, allow_pickle: bool) -> Any:
    from diffusers import DiffusionPipeline

    path = user_path(source)
    kwargs: dict[str, Any] = {"local_files_only": True, "use_safetensors": None if allow_pickle else True}
    if dtype is not None:  # diffusers renamed torch_dtype to dtype (and warns on the old name)
        import diffusers.utils.deprecation_utils as d

        kwargs["dtype" if hasattr(d, "_TORCH_DTYPE_DEPRECATION_MESSAGE") else "torch_dtype"] = dtype
    if path.exists():
        check_pipeline_folder(path, allow_pickle=allow_pickle)
        try:
            return DiffusionPipeline.from_pretrained(str(path), **kwargs)
        except Exception as e:  # whatever diffusers raises, the user needs to know which folder and why
            raise UnsamplingError(f"could not load the pipeline folder {path}: {e.__class__.__name__}: "
                                  f"{_first_line(e)}") from e
    if _looks_like_path(source):
        raise UnsamplingError(f"model folder not found: {path.resolve()} (check the path; load_model takes a "
                              "diffusers pipeline folder, a cached hub id 'org/name', or None for the bundled model)")
    try:
        return DiffusionPipeline.from_pretrained(str(source), **kwargs)
    except Exception as e:  # diffusers raises several types for "not cached"
        raise UnsamplingError(
            f"could not load {str(source)!r}: there is no local folder of that name and it is not in the local "
            f"Hugging Face cache (unsampling_lab never downloads at run time). Download it once with "
            f"`huggingface-cli download {source}` on a machine with internet, or pass a folder or a pipeline object. "
            f"({e.__class__.__name__})"
        ) from None


def _first_line(e: BaseException) -> str:
    """The error's first line; for weights that do not fit their config, the first mismatch and what to do."""
    import re

    text = str(e).strip()
    mismatch = re.search(r"loading state_dict for (\w+):\s*size mismatch for (\S+): copying a param with shape "
                         r"torch\.Size\((\[[^]]*\])\) from checkpoint, the shape in current model is torch\.Size\((\[[^]]*\])\)", text)
    if mismatch:
        cls, name, stored, built = mismatch.groups()
        more = text.count("size mismatch for") - 1
        return (f"the {cls} weights do not fit its config.json: {name} is {stored} in the weights file but {built} as "
                f"the config builds it{f' (and {more} more tensors)' if more > 0 else ''}; the config and the weights come "
                "from different models (e.g. an edited cross_attention_dim): restore config.json from the model's "
                "original files")
    return text.splitlines()[0] if text else repr(e)
