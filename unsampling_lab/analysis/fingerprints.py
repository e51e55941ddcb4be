"""Fingerprints: what makes a model's numbers, and every byte of the inputs, hashed into a results store's keys.

(Split from `analysis.store`, which re-exports these names.)
"""
from __future__ import annotations

import hashlib
import json
import weakref
from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from typing import Any

import torch
from torch import Tensor

#: Bump when a stored number would change meaning (a metric redefined); old rows are then not reused.
STORE_FORMAT = 1


def _json(value: Any, *, ordered: bool = False) -> str:
    """JSON with sorted keys (keys and digests), or in the value's own order (stored columns keep their order)."""
    return json.dumps(value, sort_keys=not ordered, default=_plain)


def _plain(value: Any) -> Any:
    if isinstance(value, Tensor) and value.numel() == 1:
        return value.item()
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in a results row")



# -- fingerprints ------------------------------------------------------------------------------------
def digest(*parts: Any) -> str:
    """SHA-256 (hex) of JSON-encoded parts: the key of a group or a row."""
    return hashlib.sha256(_json(list(parts)).encode()).hexdigest()


def tensor_digest(*tensors: Tensor | None) -> str:
    """SHA-256 over the tensors' dtype, shape and every byte (the input latents, masks and images)."""
    h = hashlib.sha256()
    for t in tensors:
        if t is None:
            h.update(b"none")
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


#: The parts of a model that make its numbers (diffusers components and the adapter's data).
MODEL_PARTS: tuple[str, ...] = ("unet", "transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3",
                                "tokenizer", "tokenizer_2", "tokenizer_3", "model_sampling", "latent_format",
                                "dtype", "device")


def model_fingerprint(model: Any) -> str:
    """A hash of what makes a model's numbers: its networks' configs and every byte of their weights,
    tokenizers, sigma table.

    Every weight byte counts (a pruned channel, one edited weight), so hashing is the cost: SHA-256 of
    Stable Diffusion 1.5's UNet in float16 (860M values, 1.7 GB) is measured in the README. It is paid
    once per loaded network: each module's digest is kept beside it (`_MODULE_DIGESTS`) with a stamp of
    its tensors (storage address and torch's version counter, which every in-place write bumps), so
    a second sweep on the same model hashes nothing and an in-place edit is hashed again (a write through
    `tensor.data` bypasses torch's version counter: load such an edited model again). The parts
    are read by name (MODEL_PARTS), so a wrapper that forwards attributes has its model's fingerprint;
    a model with none of the networks (an exact toy) is hashed by its class and public attributes.
    The device type is part of it (CPU and CUDA kernels differ in the last bits).
    """
    h = hashlib.sha256()
    h.update(f"format {STORE_FORMAT}".encode())
    parts = {name: getattr(model, name, None) for name in MODEL_PARTS}
    if not any(isinstance(v, torch.nn.Module) for v in parts.values()):
        h.update(f"{type(model).__module__}.{type(model).__qualname__}".encode())
        parts.update((k, v) for k, v in getattr(model, "__dict__", {}).items() if not k.startswith("_"))
    for name, value in parts.items():
        _feed(h, name, value, depth=0)
    return h.hexdigest()


def _feed(h: Any, name: str, value: Any, *, depth: int) -> None:
    h.update(f"|{name}:".encode())
    if value is None or isinstance(value, (bool, int, float, str)):
        h.update(repr(value).encode())
    elif isinstance(value, torch.device):
        h.update(value.type.encode())
    elif isinstance(value, torch.dtype):
        h.update(str(value).encode())
    elif isinstance(value, Tensor):
        _feed_tensor(h, value)
    elif isinstance(value, torch.nn.Module):
        h.update(module_digest(value).encode())
    elif hasattr(value, "get_vocab"):  # a tokenizer
        h.update(_json_config(sorted(value.get_vocab().items())).encode())
        h.update(repr(getattr(value, "model_max_length", None)).encode())
    elif depth > 3:
        h.update(type(value).__qualname__.encode())
    elif is_dataclass(value):
        h.update(type(value).__qualname__.encode())
        for f in fields(value):
            _feed(h, f.name, getattr(value, f.name), depth=depth + 1)
    elif isinstance(value, Mapping):
        for key in sorted(value, key=str):
            _feed(h, str(key), value[key], depth=depth + 1)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _feed(h, str(i), v, depth=depth + 1)
    elif hasattr(value, "__dict__"):
        h.update(type(value).__qualname__.encode())
        for key, v in sorted(vars(value).items()):
            if not key.startswith("_"):
                _feed(h, key, v, depth=depth + 1)
    else:
        h.update(type(value).__qualname__.encode())


def _feed_tensor(h: Any, t: Tensor) -> None:
    """dtype, shape and every byte of `t` (copied to the CPU one tensor at a time)."""
    t = t.detach()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    if t.numel():
        h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())


#: module -> (stamp of its tensors, digest): the weights are hashed once per loaded network
_MODULE_DIGESTS: "weakref.WeakKeyDictionary[torch.nn.Module, tuple[Any, str]]" = weakref.WeakKeyDictionary()


def module_digest(module: torch.nn.Module) -> str:
    """SHA-256 of a network: its class, config and every tensor of its state_dict, by name (cached, see
    `model_fingerprint`)."""
    state = module.state_dict(keep_vars=True)
    stamp = _stamp(state)
    cached = _MODULE_DIGESTS.get(module)
    if stamp is not None and cached is not None and cached[0] == stamp:
        return cached[1]
    h = hashlib.sha256()
    config = getattr(module, "config", None)
    if config is not None:
        h.update(_json_config(config).encode())
    h.update(type(module).__qualname__.encode())
    for key, t in state.items():
        h.update(key.encode())
        _feed_tensor(h, t)
    digest_ = h.hexdigest()
    if stamp is not None:
        _MODULE_DIGESTS[module] = (stamp, digest_)
    return digest_


def _stamp(state: Mapping[str, Tensor]) -> tuple[Any, ...] | None:
    """What changes when a tensor of `state` is written in place or replaced: (name, the tensor's identity,
    storage address, version counter) per tensor; None where torch keeps no version (inference tensors)."""
    try:
        return tuple((k, id(t), t.data_ptr(), t._version, t.dtype, tuple(t.shape)) for k, t in state.items())
    except RuntimeError:
        return None


_CONFIG_METADATA = frozenset({"architectures", "dtype", "torch_dtype", "transformers_version"})  # dtype: in the tensors


def _json_config(config: Any) -> str:
    """A config as sorted JSON, without its private entries (diffusers' `_name_or_path`, `_diffusers_version`,
    `_use_default_values`) and save-time metadata: where it came from, not what it computes."""
    if hasattr(config, "to_dict") and not isinstance(config, Mapping):  # a transformers config
        config = config.to_dict()
    if isinstance(config, Mapping):
        config = {k: v for k, v in config.items() if not str(k).startswith("_") and k not in _CONFIG_METADATA}
    return json.dumps(config, sort_keys=True, default=str)

