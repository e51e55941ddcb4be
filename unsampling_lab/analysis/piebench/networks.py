"""The networks behind PIE-Bench's learned metrics, loaded from local files only (never downloaded here).

    lpips  LPIPS v0.1 on SqueezeNet 1.1 (Zhang et al. CVPR 2018), torchmetrics' `net_type="squeeze"`:
           d(x, y) = sum_l mean_hw( w_l . (f_l(x)/|f_l(x)| - f_l(y)/|f_l(y)|)^2 ), inputs in -1..1 shifted
           and scaled per channel, |f| = sqrt(1e-8 + sum_c f^2), seven feature slices of the backbone.
           The backbone is defined here (torchvision does not import beside our torch) and reads torchvision's
           ImageNet checkpoint file; the linear heads ship inside the torchmetrics package.
    dino   facebook/dino-vitb8 (transformers ViTModel; layer-norm eps 1e-6 as the original DINO code): the
           last layer's keys for the structure distance. The resize is torchvision's Resize(224, max_size=480)
           on a tensor, bilinear; the released code ran it with the torchvision of 2023 (< 0.17), whose tensor
           resize did not antialias, so `antialias=False` is the default (pass True for torchvision >= 0.17).
    clip   openai/clip-vit-large-patch14 (transformers CLIPModel + CLIPProcessor), as torchmetrics' CLIPScore.

Each network says which weights it needs (`WEIGHTS`); a missing one raises `MissingWeights`, one line naming
the model id and the command that fetches it on a machine with internet.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ...errors import UnsamplingError

__all__ = ["WEIGHTS", "Clip", "Dino", "Lpips", "MissingWeights", "SqueezeFeatures", "Weights"]


class MissingWeights(UnsamplingError):
    """A metric's weights are not on this machine."""


@dataclass(frozen=True)
class Weights:
    metric: str
    model_id: str
    fetch: str


WEIGHTS: dict[str, Weights] = {
    "lpips": Weights("lpips", "squeezenet1_1-b8a52dc0.pth (torchvision ImageNet SqueezeNet 1.1)",
                     "python -c \"import torch; torch.hub.load_state_dict_from_url("
                     "'https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth')\""),
    "dino": Weights("structure_distance", "facebook/dino-vitb8", "hf download facebook/dino-vitb8"),
    "clip": Weights("clip_similarity", "openai/clip-vit-large-patch14", "hf download openai/clip-vit-large-patch14"),
}


def _missing(kind: str, where: str) -> MissingWeights:
    w = WEIGHTS[kind]
    return MissingWeights(f"{w.metric} needs {w.model_id}, not found in {where}; on a machine with internet run: {w.fetch}")


def hub_folder(model_id: str, path: str | Path | None) -> Path:
    """A local folder for a Hugging Face model: `path` if given, else the hub cache (offline lookup only)."""
    if path is not None:
        p = Path(path).expanduser()
        if not (p / "config.json").is_file():
            raise FileNotFoundError(f"{p} holds no config.json: not a saved {model_id}")
        return p
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(model_id, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        kind = next(k for k, w in WEIGHTS.items() if w.model_id == model_id)
        raise _missing(kind, "the Hugging Face cache") from None


# -- LPIPS ---------------------------------------------------------------------------------------------------
class _Fire(nn.Module):
    def __init__(self, inplanes: int, squeeze: int, expand1x1: int, expand3x3: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(inplanes, squeeze, kernel_size=1)
        self.expand1x1 = nn.Conv2d(squeeze, expand1x1, kernel_size=1)
        self.expand3x3 = nn.Conv2d(squeeze, expand3x3, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.squeeze(x))
        return torch.cat([torch.relu(self.expand1x1(x)), torch.relu(self.expand3x3(x))], 1)


class SqueezeFeatures(nn.Sequential):
    """SqueezeNet 1.1's feature stack (Iandola et al. 2016) with torchvision's module indices, so its
    checkpoint's `features.*` entries load as they are."""

    def __init__(self) -> None:
        pool = lambda: nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)  # noqa: E731
        super().__init__(
            nn.Conv2d(3, 64, kernel_size=3, stride=2), nn.ReLU(), pool(),
            _Fire(64, 16, 64, 64), _Fire(128, 16, 64, 64), pool(),
            _Fire(128, 32, 128, 128), _Fire(256, 32, 128, 128), pool(),
            _Fire(256, 48, 192, 192), _Fire(384, 48, 192, 192), _Fire(384, 64, 256, 256), _Fire(512, 64, 256, 256),
        )


#: LPIPS's seven SqueezeNet taps: feature indices [start, stop) of each slice, and their channels.
LPIPS_SLICES: tuple[tuple[int, int], ...] = ((0, 2), (2, 5), (5, 8), (8, 10), (10, 11), (11, 12), (12, 13))
LPIPS_CHANNELS: tuple[int, ...] = (64, 128, 256, 384, 384, 512, 512)
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


class Lpips(nn.Module):
    """LPIPS-squeeze distance [B] of images [B, 3, H, W] in -1..1."""

    def __init__(self, features: SqueezeFeatures, heads: list[Tensor]) -> None:
        super().__init__()
        if [h.shape[1] for h in heads] != list(LPIPS_CHANNELS):
            raise ValueError(f"LPIPS-squeeze needs 7 heads of {LPIPS_CHANNELS} channels")
        self.features = features.eval()
        self.heads = nn.ParameterList([nn.Parameter(h.reshape(1, -1, 1, 1).float(), requires_grad=False) for h in heads])
        self.register_buffer("shift", torch.tensor(_SHIFT)[None, :, None, None], persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE)[None, :, None, None], persistent=False)

    @classmethod
    def load(cls, backbone: str | Path | None = None) -> "Lpips":
        """Backbone from `backbone` or torch hub's checkpoint folder; heads from the torchmetrics package."""
        import torchmetrics.functional.image.lpips as tm_lpips

        path = Path(backbone).expanduser() if backbone else Path(torch.hub.get_dir()) / "checkpoints" / "squeezenet1_1-b8a52dc0.pth"
        if not path.is_file():
            raise _missing("lpips", str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
        features = SqueezeFeatures()
        features.load_state_dict({k[len("features."):]: v for k, v in state.items() if k.startswith("features.")})
        lin = torch.load(Path(tm_lpips.__file__).parent / "lpips_models" / "squeeze.pth", map_location="cpu",
                         weights_only=True)
        return cls(features, [lin[f"lin{i}.model.1.weight"] for i in range(7)])

    @torch.no_grad()
    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        x, y = (a - self.shift) / self.scale, (b - self.shift) / self.scale
        total = torch.zeros(a.shape[0])
        for (start, stop), head in zip(LPIPS_SLICES, self.heads):
            for i in range(start, stop):
                x, y = self.features[i](x), self.features[i](y)
            fx = x / torch.sqrt(1e-8 + (x**2).sum(1, keepdim=True))
            fy = y / torch.sqrt(1e-8 + (y**2).sum(1, keepdim=True))
            total = total + ((fx - fy) ** 2 * head).sum(1).mean((1, 2))
        return total


# -- DINO ----------------------------------------------------------------------------------------------------
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class Dino:
    """Last-layer keys [T, D] of a ViT (DINO ViT-B/8 for PIE-Bench) for images [H, W, 3] in 0..255."""

    def __init__(self, model: nn.Module, *, size: int = 224, max_size: int = 480, antialias: bool = False) -> None:
        self.model, self.size, self.max_size, self.antialias = model.eval(), size, max_size, antialias

    @classmethod
    def load(cls, path: str | Path | None = None) -> "Dino":
        from transformers import ViTModel

        folder = hub_folder(WEIGHTS["dino"].model_id, path)
        return cls(ViTModel.from_pretrained(folder, add_pooling_layer=False, layer_norm_eps=1e-6))

    def _resize(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        short, long = min(h, w), max(h, w)
        new_short, new_long = self.size, int(self.size * long / short)
        if new_long > self.max_size:
            new_short, new_long = int(self.max_size * new_short / new_long), self.max_size
        out = (new_short, new_long) if h <= w else (new_long, new_short)
        return torch.nn.functional.interpolate(x, size=out, mode="bilinear", align_corners=False,
                                               antialias=self.antialias)

    @torch.no_grad()
    def keys(self, image_255: Tensor) -> Tensor:
        x = self._resize(image_255.permute(2, 0, 1)[None].float())
        x = (x - torch.tensor(_IMAGENET_MEAN)[:, None, None]) / torch.tensor(_IMAGENET_STD)[:, None, None]
        captured: list[Tensor] = []
        key_layer = last_key_projection(self.model)
        handle = key_layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            self.model(pixel_values=x, interpolate_pos_encoding=True)
        finally:
            handle.remove()
        return captured[0][0]


def last_key_projection(model: nn.Module) -> nn.Module:
    """The key projection of a ViT's last layer (transformers 5 `layers[-1].attention.k_proj`, 4.x
    `encoder.layer[-1].attention.attention.key`)."""
    layers = getattr(model, "layers", None) or model.encoder.layer
    attention = layers[-1].attention
    return attention.k_proj if hasattr(attention, "k_proj") else attention.attention.key


# -- CLIP ----------------------------------------------------------------------------------------------------
class Clip:
    """CLIP score max(100 cos(E_image, E_text), 0) of an 8-bit image [H, W, 3] (uint8 numpy) and a prompt."""

    def __init__(self, model: nn.Module, processor) -> None:
        self.model, self.processor = model.eval(), processor

    @classmethod
    def load(cls, path: str | Path | None = None) -> "Clip":
        from transformers import CLIPModel, CLIPProcessor

        folder = hub_folder(WEIGHTS["clip"].model_id, path)
        return cls(CLIPModel.from_pretrained(folder), CLIPProcessor.from_pretrained(folder))

    @staticmethod
    def _tensor(out) -> Tensor:
        return out if isinstance(out, Tensor) else out.pooler_output

    @torch.no_grad()
    def score(self, image_uint8: np.ndarray, prompt: str) -> float:
        pixels = self.processor(images=[torch.from_numpy(image_uint8).permute(2, 0, 1)], return_tensors="pt")
        text = self.processor(text=[prompt], return_tensors="pt", padding=True, truncation=True)
        e_i = self._tensor(self.model.get_image_features(pixel_values=pixels["pixel_values"]))
        e_t = self._tensor(self.model.get_text_features(input_ids=text["input_ids"], attention_mask=text["attention_mask"]))
        cos = (e_i / e_i.norm(dim=-1, keepdim=True) * e_t / e_t.norm(dim=-1, keepdim=True)).sum(-1)
        return max(float(100 * cos[0]), 0.0)


def offline() -> None:
    """Make every Hugging Face lookup in this process local-only (the metrics never download)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
