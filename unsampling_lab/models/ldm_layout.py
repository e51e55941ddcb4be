"""Write a diffusers SD1 / SD2 / SDXL pipeline as one single-file checkpoint (the LDM key layout ComfyUI reads).

diffusers reads single files (`diffusers.loaders.single_file_utils`) but has no writer. The layout:

    model.diffusion_model.*     the UNet: input_blocks.{i}.{0: resnet | downsample op, 1: attention},
                                middle_block.{0, 1, 2}, output_blocks.{i}.{0: resnet, 1: attention, 1|2: upsample}
                                with i = 1 + block * (layers_per_block + 1) + layer (down) or
                                block * (layers_per_block + 1) + layer (up), time_embed.{0,2}, out.{0,2}
    first_stage_model.*         the VAE: encoder.down.{i}.block.{j}, decoder.up.{n-1-i}.block.{j}, mid.block_{1,2},
                                mid.attn_1.{norm, q, k, v, proj_out} as 1x1 convolutions
    cond_stage_model.transformer.text_model.*           SD1's CLIP text model (Hugging Face names)
    cond_stage_model.model.*                            SD2's OpenCLIP text model (fused in_proj qkv)
    conditioner.embedders.{0.transformer, 1.model}.*    SDXL's CLIP-L and OpenCLIP-bigG

The fixed names come from diffusers' own table (`DIFFUSERS_TO_LDM_MAPPING`, read in the other direction);
the block numbering is the rule its converter undoes. Every write is checked by running diffusers' converters on the result:
they must give back exactly the tensors we started from, so a file this writes is one diffusers reads.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from ..errors import UnsamplingError

Layout = Literal["sd1", "sd2", "sdxl"]
UNET_PREFIX, VAE_PREFIX = "model.diffusion_model.", "first_stage_model."
CLIP_PREFIX = {"sd1": "cond_stage_model.transformer.", "sdxl": "conditioner.embedders.0.transformer."}
OPEN_CLIP_PREFIX = {"sd2": "cond_stage_model.model.", "sdxl": "conditioner.embedders.1.model."}
#: safetensors metadata key under which the writer keeps the diffusers configs (tiny models need them:
#: their shapes are not one of the architectures shipped in models/configs/).
CONFIG_METADATA_KEY = "unsampling_lab.configs"

_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
           "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_OPEN_CLIP = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
              "self_attn.out_proj": "attn.out_proj"}


def _mapping() -> dict[str, Any]:
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    return DIFFUSERS_TO_LDM_MAPPING


def unet_to_ldm(state: Mapping[str, Tensor], config: Mapping[str, Any]) -> dict[str, Tensor]:
    """A diffusers UNet2DConditionModel state dict under LDM names (without the `model.diffusion_model.` prefix)."""
    fixed = {**_mapping()["unet"]["layers"], **_mapping()["unet"]["addition_embed_type"]}
    per = int(config["layers_per_block"]) + 1
    up_with_attention = {int(k.split(".")[1]) for k in state if k.startswith("up_blocks.") and ".attentions." in k}
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        p = key.split(".")
        if key in fixed:
            name = fixed[key]
        elif p[0] == "down_blocks" and p[2] == "downsamplers":
            name = f"input_blocks.{1 + int(p[1]) * per + per - 1}.0.op.{p[-1]}"
        elif p[0] == "down_blocks":
            index = 1 + int(p[1]) * per + int(p[3])
            name = f"input_blocks.{index}.{_part(p[2], p[4:])}"
        elif p[0] == "mid_block":
            name = f"middle_block.{2 * int(p[2]) + (p[1] == 'attentions')}.{_part(p[1], p[3:])[2:]}"
        elif p[0] == "up_blocks" and p[2] == "upsamplers":
            slot = 2 if int(p[1]) in up_with_attention else 1
            name = f"output_blocks.{int(p[1]) * per + per - 1}.{slot}.conv.{p[-1]}"
        elif p[0] == "up_blocks":
            name = f"output_blocks.{int(p[1]) * per + int(p[3])}.{_part(p[2], p[4:])}"
        else:
            raise UnsamplingError(f"UNet weight {key!r} has no place in the single-file layout (SD1/SD2/SDXL UNets only)")
        out[name] = value
    return out


def _part(kind: str, rest: list[str]) -> str:
    """'0.<resnet names>' or '1.<attention names>' inside one LDM block."""
    if kind == "resnets":
        return "0." + ".".join([_RESNET.get(rest[0], rest[0]), *rest[1:]])
    return "1." + ".".join(rest)


def vae_to_ldm(state: Mapping[str, Tensor], config: Mapping[str, Any]) -> dict[str, Tensor]:
    """A diffusers AutoencoderKL state dict under LDM names (without `first_stage_model.`)."""
    fixed = {d: l for d, l in _mapping()["vae"].items()}
    n_up = len(config["up_block_types"])
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key in fixed:
            out[fixed[key]] = value
            continue
        side, block, *p = key.split(".")
        if block == "mid_block" and p[0] == "resnets":
            name = f"mid.block_{int(p[1]) + 1}." + _vae_resnet(p[2:])
        elif block == "mid_block":
            rest = ".".join(p[2:])
            for new, old in _VAE_ATTN.items():
                if rest.startswith(new + "."):
                    rest = old + rest[len(new):]
                    break
            name = "mid.attn_1." + rest
            if value.ndim == 2:  # linear -> 1x1 convolution
                value = value[:, :, None, None]
        else:
            i = int(p[0]) if side == "encoder" else n_up - 1 - int(p[0])
            where = "down" if side == "encoder" else "up"
            if p[1] in ("downsamplers", "upsamplers"):
                name = f"{where}.{i}.{'downsample' if where == 'down' else 'upsample'}.conv.{p[-1]}"
            else:
                name = f"{where}.{i}.block.{p[2]}." + _vae_resnet(p[3:])
        out[f"{side}.{name}"] = value
    return out


def _vae_resnet(rest: list[str]) -> str:
    return ".".join(["nin_shortcut" if rest[0] == "conv_shortcut" else rest[0], *rest[1:]])


def clip_to_ldm(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A Hugging Face CLIPTextModel state dict under the names SD1 checkpoints use (always `text_model.*`)."""
    return {(k if k.startswith(("text_model.", "text_projection")) else "text_model." + k): v for k, v in state.items()}


def open_clip_to_ldm(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A Hugging Face CLIP text state dict under OpenCLIP's names (q, k, v fused into in_proj, projection transposed)."""
    fixed = _mapping()["openclip"]["layers"]
    state = clip_to_ldm(state)
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key in fixed:
            out[fixed[key]] = value.T.contiguous() if key == "text_projection.weight" else value
        elif key.startswith("text_model.encoder.layers."):
            index, rest = key.split(".", 4)[3:]
            if rest.startswith("self_attn.") and rest.split(".")[1] in ("q_proj", "k_proj", "v_proj"):
                if rest.startswith("self_attn.q_proj."):
                    kind = rest.rsplit(".", 1)[1]
                    parts = [state[f"text_model.encoder.layers.{index}.self_attn.{n}_proj.{kind}"] for n in "qkv"]
                    out[f"transformer.resblocks.{index}.attn.in_proj_{kind}"] = torch.cat(parts)
                continue
            for new, old in _OPEN_CLIP.items():
                if rest.startswith(new + "."):
                    rest = old + rest[len(new):]
                    break
            out[f"transformer.resblocks.{index}.{rest}"] = value
        elif not key.endswith("position_ids"):
            raise UnsamplingError(f"text encoder weight {key!r} has no place in OpenCLIP's layout")
    return out


def pipeline_layout(pipeline: Any) -> Layout:
    """sdxl with two text encoders; sd2 for a v-prediction scheduler; else sd1 (what the writer picks by default)."""
    if getattr(pipeline, "text_encoder_2", None) is not None:
        return "sdxl"
    return "sd2" if dict(pipeline.scheduler.config).get("prediction_type") == "v_prediction" else "sd1"


def write_single_file(pipeline: Any, path: str | Path, *, layout: Layout | None = None,
                      dtype: torch.dtype | None = None) -> Path:
    """Write an SD1 / SD2 / SDXL diffusers pipeline (unet, vae, text encoders) as one `.safetensors` file.

    The configs ride along in the file's metadata (`unsampling_lab.configs`), so shapes that are not a
    released architecture load back too; tokenizers are not written (a ComfyUI checkpoint has none), only
    their pad tokens (SD2 / SDXL-G pad with '!' in released models, a tiny test model may not).
    """
    from safetensors.torch import save_file

    layout = layout or pipeline_layout(pipeline)
    unet, vae, enc, enc2 = (getattr(pipeline, n, None) for n in ("unet", "vae", "text_encoder", "text_encoder_2"))
    if unet is None or vae is None or enc is None or (layout == "sdxl") != (enc2 is not None):
        raise UnsamplingError(f"a {layout} single file needs unet, vae and {'two text encoders' if layout == 'sdxl' else 'a text encoder'}")
    state: dict[str, Tensor] = {}
    state.update({UNET_PREFIX + k: v for k, v in unet_to_ldm(unet.state_dict(), unet.config).items()})
    state.update({VAE_PREFIX + k: v for k, v in vae_to_ldm(vae.state_dict(), vae.config).items()})
    if layout == "sd2":
        state.update({OPEN_CLIP_PREFIX["sd2"] + k: v for k, v in open_clip_to_ldm(enc.state_dict()).items()})
    else:
        state.update({CLIP_PREFIX[layout] + k: v for k, v in clip_to_ldm(enc.state_dict()).items()
                      if not k.endswith("position_ids")})
    if layout == "sdxl":
        state.update({OPEN_CLIP_PREFIX["sdxl"] + k: v for k, v in open_clip_to_ldm(enc2.state_dict()).items()})
    state = {k: (v.to(dtype) if dtype is not None else v).detach().contiguous() for k, v in state.items()}
    check_round_trip(state, pipeline, layout)
    configs = {"layout": layout, "unet": dict(unet.config), "vae": dict(vae.config),
               "text_encoder": _encoder_config(enc), "scheduler": dict(pipeline.scheduler.config)}
    if enc2 is not None:
        configs["text_encoder_2"] = _encoder_config(enc2)
    tokenizers = {n: getattr(pipeline, n, None) for n in ("tokenizer", "tokenizer_2")}
    configs["pad_tokens"] = {n: str(t.pad_token) for n, t in tokenizers.items() if t is not None and t.pad_token}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={CONFIG_METADATA_KEY: json.dumps(configs, default=_json_default)})
    return path


def _encoder_config(encoder: Any) -> dict[str, Any]:
    return {**encoder.config.to_dict(), "architectures": [type(encoder).__name__]}


def _json_default(value: Any) -> Any:
    if isinstance(value, (tuple, set)):
        return list(value)
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    return str(value)


def check_round_trip(state: Mapping[str, Tensor], pipeline: Any, layout: Layout) -> None:
    """diffusers' converters applied to `state` must give back every tensor of the pipeline, equal, and nothing else."""
    from .single_file import convert_components

    converted = convert_components(state, layout, {n: getattr(pipeline, n) for n in ("unet", "vae")},
                                   {n: getattr(pipeline, n, None) for n in ("text_encoder", "text_encoder_2")})
    for name, got in converted.items():
        want = {k: v for k, v in getattr(pipeline, name).state_dict().items() if not k.endswith("position_ids")}
        got = {k: v for k, v in got.items() if not k.endswith("position_ids")}
        if name.startswith("text_encoder"):
            want, got = clip_to_ldm(want), clip_to_ldm(got)
        if set(got) != set(want):
            raise UnsamplingError(f"single-file writer: {name} keys do not round-trip through diffusers' converter "
                                  f"(missing {sorted(set(want) - set(got))[:3]}, extra {sorted(set(got) - set(want))[:3]})")
        bad = [k for k in want if not torch.equal(got[k], want[k].to(got[k].dtype))]
        if bad:
            raise UnsamplingError(f"single-file writer: {name} weights {bad[:3]} change through diffusers' converter")
