"""PIE-Bench as distributed, read into `PieCase`s (nothing is bundled: the user points at a folder).

Two layouts are read, both as published:
- the original release (PnP Inversion): `<root>/mapping_file.json` + `<root>/annotation_images/<image_path>`;
  each entry {"image_path", "original_prompt", "editing_prompt", "editing_instruction", "editing_type_id",
  "blended_word", "mask"} with the mask as run-length pairs (`masks.decode_mask`);
- the parquet mirror (PIE-Bench++ layout, one folder per category `<id>_<name>_<count>/`, columns id, image,
  source_prompt, target_prompt, edit_action, aspect_mapping, blended_words, mask).
Prompts keep their brackets in `*_raw` (they mark the edited words); the evaluation strips them, and so do
`source_prompt` / `target_prompt`.
"""
from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .masks import decode_mask, encode_mask, parse_runs

__all__ = ["EDITING_TYPES", "PieCase", "load_pie_bench", "write_pie_bench"]

#: PIE-Bench's ten editing types, by `editing_type_id`.
EDITING_TYPES: dict[int, str] = {
    0: "random", 1: "change object", 2: "add object", 3: "delete object", 4: "change attribute content",
    5: "change attribute pose", 6: "change attribute color", 7: "change attribute material",
    8: "change background", 9: "change style",
}
MAPPING_FILE = "mapping_file.json"
IMAGE_FOLDER = "annotation_images"


def _strip(prompt: str) -> str:
    return prompt.replace("[", "").replace("]", "")


@dataclass(frozen=True)
class PieCase:
    """One PIE-Bench case: the source image, both prompts, the editing type and the edited region's runs."""

    key: str
    source_prompt_raw: str
    target_prompt_raw: str
    editing_type: int
    mask_runs: tuple[int, ...]
    image_path: Path | None = None
    image_bytes: bytes | None = field(default=None, repr=False)
    instruction: str = ""
    blended_words: tuple[str, ...] = ()

    @property
    def source_prompt(self) -> str:
        return _strip(self.source_prompt_raw)

    @property
    def target_prompt(self) -> str:
        return _strip(self.target_prompt_raw)

    @property
    def category(self) -> str:
        return EDITING_TYPES.get(self.editing_type, str(self.editing_type))

    def image(self) -> Tensor:
        """The source image, float [H, W, 3] in 0..1 (8-bit RGB as distributed)."""
        from PIL import Image

        src = self.image_path if self.image_bytes is None else io.BytesIO(self.image_bytes)
        if src is None:
            raise ValueError(f"PIE-Bench case {self.key} has neither an image path nor image bytes")
        with Image.open(src) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
        return torch.from_numpy(arr.copy())

    def mask(self, shape: tuple[int, int] | None = None, *, border: bool = True) -> np.ndarray:
        """Boolean [H, W] edited region (the image's size unless `shape` is given); `border` as the released code."""
        if shape is None:
            shape = tuple(self.image().shape[:2])  # type: ignore[assignment]
        return decode_mask(self.mask_runs, shape, border=border)


def load_pie_bench(path: str | Path, *, categories: Sequence[int] | None = None) -> list[PieCase]:
    """Cases from a PIE-Bench folder (mapping_file.json + annotation_images/), a parquet file, or a folder of
    the parquet mirror; `categories` keeps only those editing types. Sorted by key."""
    root = Path(path).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"no PIE-Bench data at {root}: point at the folder holding {MAPPING_FILE} "
                                f"and {IMAGE_FOLDER}/, or at the parquet mirror's folder")
    if root.is_dir() and (root / MAPPING_FILE).is_file():
        cases = _from_mapping(root)
    else:
        files = [root] if root.is_file() else sorted(root.rglob("*.parquet"))
        if not files or any(f.suffix != ".parquet" for f in files):
            raise ValueError(f"{root} is neither a PIE-Bench folder (no {MAPPING_FILE}) nor parquet data")
        cases = [c for f in files for c in _from_parquet(f)]
    if categories is not None:
        wanted = {int(c) for c in categories}
        cases = [c for c in cases if c.editing_type in wanted]
    return sorted(cases, key=lambda c: c.key)


def _from_mapping(root: Path) -> list[PieCase]:
    with open(root / MAPPING_FILE, encoding="utf-8") as f:
        mapping = json.load(f)
    cases = []
    for key, item in mapping.items():
        try:
            cases.append(PieCase(
                key=str(key), source_prompt_raw=item["original_prompt"], target_prompt_raw=item["editing_prompt"],
                editing_type=int(item["editing_type_id"]), mask_runs=tuple(parse_runs(item["mask"])),
                image_path=root / IMAGE_FOLDER / item["image_path"], instruction=item.get("editing_instruction", ""),
                blended_words=tuple(str(item.get("blended_word", "")).split()),
            ))
        except KeyError as e:
            raise ValueError(f"{root / MAPPING_FILE}: entry {key!r} lacks {e.args[0]!r} (not PIE-Bench's mapping file?)") from None
    return cases


def _from_parquet(file: Path) -> list[PieCase]:
    import pandas as pd

    frame = pd.read_parquet(file)
    missing = {"id", "image", "source_prompt", "target_prompt", "mask"} - set(frame.columns)
    if missing:
        raise ValueError(f"{file}: not PIE-Bench's parquet mirror (no column {sorted(missing)})")
    folder = next((p.name for p in [file.parent, *file.parents] if p.name[:1].isdigit() and "_" in p.name), None)
    if folder is None:
        raise ValueError(f"{file}: the editing type comes from the category folder '<id>_<name>_<count>', none found")
    editing_type = int(folder.split("_", 1)[0])
    cases = []
    for row in frame.itertuples(index=False):
        image = row.image["bytes"] if isinstance(row.image, dict) else row.image
        words = getattr(row, "blended_words", "") or ""
        if not isinstance(words, str):
            words = " ".join(map(str, words))
        cases.append(PieCase(key=str(row.id), source_prompt_raw=row.source_prompt, target_prompt_raw=row.target_prompt,
                             editing_type=editing_type, mask_runs=tuple(parse_runs(row.mask)), image_bytes=image,
                             blended_words=tuple(words.replace(",", " ").split())))
    return cases


def write_pie_bench(folder: str | Path, cases: Sequence[tuple[str, Tensor, str, str, int, np.ndarray, str]]) -> Path:
    """Write cases (key, image [H, W, 3] in 0..1, source prompt, target prompt, editing type, edited mask [H, W],
    blended words) in the original release's layout, so `load_pie_bench` reads them like the real data."""
    from PIL import Image

    root = Path(folder).expanduser()
    (root / IMAGE_FOLDER).mkdir(parents=True, exist_ok=True)
    mapping = {}
    for key, image, source, target, editing_type, mask, words in cases:
        rel = f"{editing_type}_{EDITING_TYPES[editing_type].replace(' ', '_')}/{key}.png"
        (root / IMAGE_FOLDER / rel).parent.mkdir(parents=True, exist_ok=True)
        pixels = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        Image.fromarray(pixels).save(root / IMAGE_FOLDER / rel)
        mapping[key] = {"image_path": rel, "original_prompt": source, "editing_prompt": target,
                        "editing_instruction": "", "editing_type_id": str(editing_type), "blended_word": words,
                        "mask": encode_mask(mask)}
    with open(root / MAPPING_FILE, "w", encoding="utf-8") as f:
        json.dump(mapping, f, indent=1)
    return root
