"""Single-file checkpoints (ComfyUI's `models/checkpoints/*.safetensors`): SD1.x, SD2.x, SDXL, SD3, Flux, offline.

The architecture is read from the key names (as ComfyUI and diffusers do), its diffusers configs ship in
`models/configs/<arch>.json` (a file written by `ldm_layout.write_single_file` carries its own), the weights
go through diffusers' converters (`diffusers.loaders.single_file_utils`), and the tokenizers, which a
checkpoint does not hold, come from the Hugging Face cache or a ComfyUI installation (`comfy/sd1_tokenizer`,
`comfy/text_encoders/t5_tokenizer`), found above the checkpoint's path or given as `comfyui=PATH`.

SD2 eps or v: ComfyUI's rule (`supported_models.SD20.model_type`): v-prediction when the standard deviation
of `output_blocks.11.1.transformer_blocks.0.norm1.bias` exceeds 0.09. SDXL: v when the file has a `v_pred` key.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import torch
from torch import Tensor

from ..errors import UnsamplingError

Architecture = Literal["sd1", "sd2", "sdxl", "sd3", "flux"]
ARCHITECTURES: tuple[Architecture, ...] = ("sd1", "sd2", "sdxl", "sd3", "flux")
CONFIGS = Path(__file__).parent / "configs"

#: One key that names each architecture (checked in this order; diffusers' CHECKPOINT_KEY_NAMES has the same).
_MARKERS: tuple[tuple[Architecture, str], ...] = (
    ("flux", "model.diffusion_model.double_blocks.0.img_attn.norm.key_norm.scale"),
    ("sd3", "model.diffusion_model.joint_blocks.0.context_block.adaLN_modulation.1.bias"),
    ("sdxl", "conditioner.embedders.1.model.positional_embedding"),
    ("sd2", "cond_stage_model.model.token_embedding.weight"),
    ("sd1", "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"),
)
_SD2_V_KEY = "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias"


def detect_architecture(keys: Any) -> Architecture:
    """The architecture a single file's keys name; a one-line error for anything else."""
    keys = set(keys)
    for arch, marker in _MARKERS:
        if marker in keys:
            return arch
    if any(k.startswith(("model.diffusion_model.", "double_blocks.", "joint_blocks.", "input_blocks.")) for k in keys):
        raise UnsamplingError(
            "this file holds a diffusion network without its text encoder(s) (ComfyUI's models/diffusion_models or "
            "models/unet kind); load_model needs a checkpoint that contains every part (models/checkpoints)")
    sample = ", ".join(sorted(keys)[:3]) or "no tensors"
    raise UnsamplingError(f"not a Stable Diffusion / SDXL / SD3 / Flux checkpoint (keys start {sample}); "
                          "expected a ComfyUI models/checkpoints file")


def prediction_type(state: Mapping[str, Tensor], arch: Architecture) -> str:
    """'v_prediction' or 'epsilon', as ComfyUI decides for a file without a config."""
    if arch == "sd2" and _SD2_V_KEY in state and torch.std(state[_SD2_V_KEY].float(), unbiased=False) > 0.09:
        return "v_prediction"
    if arch == "sdxl" and "v_pred" in state:
        return "v_prediction"
    return "epsilon"


def architecture_configs(arch: Architecture) -> dict[str, Any]:
    """The diffusers configs shipped for `arch` (unet or transformer, vae, text encoders, scheduler, tokenizers)."""
    return json.loads((CONFIGS / f"{arch}.json").read_text(encoding="utf-8"))


# -- reading the file -----------------------------------------------------------------------------
def read_single_file(path: Path, *, allow_pickle: bool = False) -> tuple[dict[str, Tensor], dict[str, str]]:
    """(tensors, metadata) of a checkpoint file; one-line errors for pickles, empty or truncated files."""
    if not path.exists():
        raise UnsamplingError(f"checkpoint file not found: {path.resolve()}")
    if path.stat().st_size == 0:
        raise UnsamplingError(f"checkpoint {path} is empty (0 bytes); the download or copy was cut short: fetch it again")
    if path.suffix not in (".safetensors", ".sft"):
        if not allow_pickle:
            raise UnsamplingError(
                f"{path.name} is a pickled checkpoint; pickle files can run code when loaded, so unsampling_lab loads "
                "safetensors only: use the .safetensors version, or pass allow_pickle=True (CLI: --allow-pickle) if you trust the file")
        state = torch.load(str(path), map_location="cpu", weights_only=False)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        if not isinstance(state, dict):
            raise UnsamplingError(f"{path} holds a {type(state).__name__}, not a checkpoint's state dict")
        return {k: v for k, v in state.items() if isinstance(v, Tensor)}, {}
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            return {k: handle.get_tensor(k) for k in handle.keys()}, metadata
    except (SafetensorError, OSError, RuntimeError) as e:
        raise UnsamplingError(f"checkpoint {path} is corrupt or truncated ({_first_line(e)}); fetch it again") from None


# -- converting ------------------------------------------------------------------------------------
def convert_components(state: Mapping[str, Tensor], arch: str, networks: Mapping[str, Any],
                       encoders: Mapping[str, Any]) -> dict[str, dict[str, Tensor]]:
    """diffusers state dicts of every part, by diffusers' own converters (`networks`/`encoders`: built models, for configs)."""
    from diffusers.loaders import single_file_utils as sfu

    out: dict[str, dict[str, Tensor]] = {}
    if "unet" in networks:
        out["unet"] = sfu.convert_ldm_unet_checkpoint(state, dict(networks["unet"].config))
    if "transformer" in networks:
        convert = (sfu.convert_flux_transformer_checkpoint_to_diffusers if arch == "flux"
                   else sfu.convert_sd3_transformer_checkpoint_to_diffusers)
        prefix = "model.diffusion_model."
        out["transformer"] = convert({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    out["vae"] = sfu.convert_ldm_vae_checkpoint(state, dict(networks["vae"].config))
    enc, enc2, enc3 = (encoders.get(n) for n in ("text_encoder", "text_encoder_2", "text_encoder_3"))
    if arch == "sd1" or arch == "sdxl":
        out["text_encoder"] = sfu.convert_ldm_clip_checkpoint(state)
    elif arch == "sd2":
        out["text_encoder"] = sfu.convert_open_clip_checkpoint(enc, state, prefix="cond_stage_model.model.")
    else:  # SD3 / Flux all-in-one files: Hugging Face names under text_encoders.<name>.transformer.
        out["text_encoder"] = sfu.convert_ldm_clip_checkpoint(state, "text_encoders.clip_l.transformer.")
    if arch == "sdxl" and enc2 is not None:
        out["text_encoder_2"] = sfu.convert_open_clip_checkpoint(enc2, state, prefix="conditioner.embedders.1.model.")
    if arch == "sd3":
        out["text_encoder_2"] = sfu.convert_ldm_clip_checkpoint(state, "text_encoders.clip_g.transformer.")
        out["text_encoder_3"] = sfu.convert_sd3_t5_checkpoint_to_diffusers(state)
    if arch == "flux":
        out["text_encoder_2"] = sfu.convert_sd3_t5_checkpoint_to_diffusers(state)
    if arch == "sd3" and "text_projection.weight" not in out["text_encoder"] and enc is not None:
        width = enc.config.hidden_size  # ComfyUI's clip_l in SD3 files has no projection: identity (as diffusers does)
        out["text_encoder"]["text_projection.weight"] = torch.eye(width)
    for name in [n for n in out if n.startswith("text_encoder") and (encoders.get(n) is not None) and not
                 hasattr(encoders[n], "text_model") and hasattr(encoders[n], "embeddings")]:
        out[name] = {k.removeprefix("text_model."): v for k, v in out[name].items()}  # flattened CLIPTextModel
    return out


def _build(configs: Mapping[str, Any], arch: Architecture) -> tuple[dict[str, Any], dict[str, Any]]:
    import diffusers
    import transformers

    from diffusers.models.modeling_utils import no_init_weights as no_diffusers_init
    from transformers.initialization import no_init_weights as no_transformers_init

    # Random initialisation is skipped (SD1.5's parts: 53 s -> 10 s, measured once on the shared 2-core VM): every
    # parameter is then loaded from the file, and `_load_weights` refuses a file that leaves one out.
    networks: dict[str, Any] = {}
    for name in ("unet", "transformer", "vae"):
        if name in configs:
            config = dict(configs[name])
            cls_name = config.pop("_class_name", None) or {"unet": "UNet2DConditionModel", "vae": "AutoencoderKL"}[name]
            with no_diffusers_init():
                networks[name] = getattr(diffusers, cls_name).from_config(config)
    encoders: dict[str, Any] = {}
    for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
        if name in configs:
            config = dict(configs[name])
            cls_name = (config.get("architectures") or ["CLIPTextModel"])[0]
            config_cls = transformers.T5Config if cls_name.startswith("T5") else transformers.CLIPTextConfig
            with no_transformers_init():
                encoders[name] = getattr(transformers, cls_name)(config_cls(**config))
    return networks, encoders


def _load_weights(model: Any, state: dict[str, Tensor], name: str, path: Path) -> None:
    result = model.load_state_dict(state, strict=False)
    if hasattr(model, "tie_weights"):  # built without init, transformers models are not tied yet
        model.tie_weights()
    shared: dict[int, set[str]] = {}  # tied weights (T5's shared / encoder.embed_tokens) load through either name
    for key, param in model.named_parameters(remove_duplicate=False):
        shared.setdefault(id(param), set()).add(key)
    loaded = {k for names in shared.values() if names & set(state) for k in names}
    missing = [k for k in result.missing_keys if not k.endswith("position_ids") and k not in loaded]
    unexpected = [k for k in result.unexpected_keys if not k.endswith("position_ids")]  # a buffer older files saved
    if missing or unexpected:
        what = f"is missing {len(missing)} {name} weights (e.g. {missing[0]})" if missing else (
            f"has {len(unexpected)} {name} weights this architecture does not use (e.g. {unexpected[0]})")
        raise UnsamplingError(f"checkpoint {path} {what}; it is not a complete checkpoint of the detected architecture")


# -- tokenizers --------------------------------------------------------------------------------------
def find_comfyui(path: Path, comfyui: str | Path | None) -> Path | None:
    """The ComfyUI installation: `comfyui` if given, else the folder above `.../models/checkpoints/` holding `comfy/`."""
    if comfyui is not None:
        root = Path(comfyui).expanduser()
        if not (root / "comfy").is_dir():
            raise UnsamplingError(f"comfyui={str(comfyui)!r} is not a ComfyUI installation (no comfy/ folder in {root})")
        return root
    for parent in path.resolve().parents:
        if (parent / "comfy").is_dir() and (parent / "models").is_dir():
            return parent
    return None


def load_tokenizer(spec: Mapping[str, Any], name: str, arch: str, path: Path, comfyui: Path | None) -> Any:
    """A tokenizer from ComfyUI's copy (when the installation is known) or the Hugging Face cache (repos in
    `spec['hub']`); a one-line error naming both places."""
    import transformers

    cls = getattr(transformers, spec["class"])
    for rel in spec.get("comfyui", []):  # first: the copy the ComfyUI holding this file would use itself
        if comfyui is not None and (comfyui / rel).is_dir():
            return _finish(cls.from_pretrained(str(comfyui / rel), local_files_only=True), spec)
    looked: list[str] = []
    for repo, subfolder in spec.get("hub", []):
        folder = _cached_folder(repo, subfolder)
        looked.append(f"{repo}/{subfolder}".rstrip("/"))
        if folder is not None:
            return _finish(cls.from_pretrained(str(folder), local_files_only=True), spec)
    where = f"ComfyUI's {' or '.join(spec.get('comfyui', []))} under {comfyui}" if comfyui else (
        f"a ComfyUI installation above {path.parent} (none found; pass comfyui=PATH)")
    raise UnsamplingError(
        f"{arch} checkpoint {path.name} needs its {name} files, which a checkpoint does not hold: looked in the Hugging Face "
        f"cache for {', '.join(looked)} and in {where}; run `huggingface-cli download {spec['hub'][0][0]} --include "
        f"'{spec['hub'][0][1] or '*'}/*'` once, or pass comfyui=PATH")


def _cached_folder(repo: str, subfolder: str) -> Path | None:
    from huggingface_hub import snapshot_download

    try:
        root = Path(snapshot_download(repo, local_files_only=True))
    except Exception:  # not cached (huggingface_hub raises several types)
        return None
    folder = root / subfolder if subfolder else root
    has_files = any((folder / f).exists() for f in ("vocab.json", "tokenizer.json", "spiece.model"))
    return folder if has_files else None


def _finish(tokenizer: Any, spec: Mapping[str, Any]) -> Any:
    """SD2's and SDXL's second CLIP pad with '!' (their diffusers tokenizers, ComfyUI's pad_with_end=False);
    applied only where '!' is in the vocabulary (every real CLIP vocabulary has it as id 0)."""
    pad = spec.get("pad_token")
    if pad and pad in tokenizer.get_vocab() and tokenizer.pad_token != pad:
        tokenizer.pad_token = pad
    return tokenizer


# -- the entry point ----------------------------------------------------------------------------------
def load_single_file(path: str | Path, *, dtype: torch.dtype | None = None, allow_pickle: bool = False,
                     comfyui: str | Path | None = None) -> SimpleNamespace:
    """The parts of a single-file checkpoint as a pipeline-like namespace (`load_model` wraps it)."""
    path = Path(path).expanduser()
    state, metadata = read_single_file(path, allow_pickle=allow_pickle)
    arch = detect_architecture(state.keys())
    configs = architecture_configs(arch)
    written = metadata.get("unsampling_lab.configs")
    if written:  # the project's writer keeps the exact configs (tiny test models are no released architecture)
        written = json.loads(written)
        for name, pad in written.pop("pad_tokens", {}).items():
            configs["tokenizers"][name] = {**configs["tokenizers"][name], "pad_token": pad}
        configs.update({k: v for k, v in written.items() if k != "layout"})
    else:
        configs["scheduler"] = {**configs["scheduler"], **(
            {"prediction_type": prediction_type(state, arch)} if arch in ("sd1", "sd2", "sdxl") else {})}
        if arch == "flux" and "model.diffusion_model.guidance_in.in_layer.weight" not in state:  # schnell
            configs["transformer"]["guidance_embeds"] = False
            configs["scheduler"] = {**configs["scheduler"], "shift": 1.0, "use_dynamic_shifting": False}
    root = find_comfyui(path, comfyui)
    tokenizers = {name: load_tokenizer(spec, name, arch, path, root) for name, spec in configs["tokenizers"].items()}
    networks, encoders = _build(configs, arch)
    converted = convert_components(state, arch, networks, encoders)
    parts = {**networks, **encoders}
    for name, weights in converted.items():
        _load_weights(parts[name], weights, name, path)
        if next(parts[name].parameters()).dtype != (dtype or torch.float32):  # diffusers warns on any .to(dtype)
            parts[name] = parts[name].to(dtype or torch.float32)
        parts[name].eval()
    scheduler = _scheduler(configs["scheduler"])
    if arch in ("sd3", "flux"):
        import diffusers

        cls = diffusers.StableDiffusion3Pipeline if arch == "sd3" else diffusers.FluxPipeline
        return cls(scheduler=scheduler, **parts, **tokenizers)
    return SimpleNamespace(scheduler=scheduler, architecture=arch, **parts, **tokenizers)


def _scheduler(config: Mapping[str, Any]) -> Any:
    import diffusers

    config = dict(config)
    cls = getattr(diffusers, config.pop("_class_name", None) or "EulerDiscreteScheduler")
    return cls.from_config(config)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else repr(e)
