"""`to_workflow`: a setting, a sweep row, an `Inversion` or a read workflow -> a ComfyUI workflow in both formats.

    CheckpointLoaderSimple -> CLIPTextEncode (positive, negative[, edit])
    LoadImage -> VAEEncode -> Unsampler -> KSamplerAdvanced -> VAEDecode -> SaveImage

with the Unsampler's and KSamplerAdvanced's inputs set from the setting (`resample(steps=N,
start_at_step=k, add_noise=False)` after `unsample(steps=N, end_at_step=k)`). What ComfyUI cannot run
(other inversion methods; normalize 'per_sample' / 'sigma') is exported as its noise in a `.latent`
file with a workflow that loads and resamples it (LoadLatent -> KSamplerAdvanced -> ...), and the
result's `note` says so.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import UnsamplingError
from .nodes import LINK_TYPES, NODE_INPUTS, NODE_OUTPUTS, widget_names
from .read import ComfyWorkflow

COMFY_NORMALIZE = ("disable", "enable")


@dataclass
class ExportedWorkflow:
    """The written files: `ui` (open in ComfyUI's editor), `api` (POST to /prompt), and `latent` for exported noise."""

    api: dict[str, Any]
    ui: dict[str, Any]
    ui_path: Path
    api_path: Path
    latent_path: Path | None
    note: str


def parameters(source: Any) -> tuple[dict[str, Any] | None, dict[str, Any], str | None]:
    """(unsample keywords or None, resample keywords, why the Unsampler cannot express it or None) of a
    sweep row / setting dict, an `Inversion`, a `Setting` or a `ComfyWorkflow`."""
    from ...inversion import Inversion

    if isinstance(source, ComfyWorkflow):
        if source.resample is None:
            raise UnsamplingError("the workflow has no KSampler / KSamplerAdvanced to export")
        return source.unsample, dict(source.resample), None
    if isinstance(source, Inversion):
        row = {**source.params, "method": source.method}
    elif hasattr(source, "identity") and hasattr(source, "method_options"):  # analysis.sweeps.Setting
        row = source.identity()
    elif isinstance(source, Mapping):
        row = dict(source)
    else:
        raise UnsamplingError(f"to_workflow takes a sweep row (dict), a Setting, an Inversion or a read workflow, "
                              f"not {type(source).__name__}")
    control, direct = row.get("control") or "prompt_swap", str(row.get("direct", False)).lower() in ("true", "1")
    if control != "prompt_swap" or direct:  # a sweep's controlled setting (ul.edit): nothing in ComfyUI edits so
        raise UnsamplingError(f"this row edits with control {control!r}{' and Direct Inversion' if direct else ''} "
                              "(ul.edit: source and target branch under attention control), which no ComfyUI node "
                              "reproduces; export its control='prompt_swap' row instead")
    steps, k = int(row.get("steps", 20)), int(row.get("end_at_step", 0))
    cfg = float(row.get("cfg", 1.0))
    positive, negative = _text(row.get("positive", "")), _text(row.get("negative", ""))
    edit = row.get("edit")
    resample_cfg = row.get("resample_cfg")
    unsample = {"steps": steps, "end_at_step": k, "cfg": cfg, "sampler_name": row.get("sampler_name", "euler"),
                "scheduler": row.get("scheduler", "normal"), "normalize": row.get("normalize", "disable"),
                "positive": positive, "negative": negative}
    resample = {"steps": steps, "cfg": cfg if _missing(resample_cfg) else float(resample_cfg),
                "sampler_name": unsample["sampler_name"], "scheduler": unsample["scheduler"],
                "start_at_step": k, "end_at_step": 10000, "add_noise": False,
                "noise_seed": int(row.get("seed", 0) or 0), "return_with_leftover_noise": False,
                "positive": positive if _missing(edit) else _text(edit), "negative": negative}
    method = row.get("method", "unsampler") or "unsampler"
    why = None
    if method != "unsampler":
        why = f"method {method!r} has no ComfyUI node"
    elif unsample["normalize"] not in COMFY_NORMALIZE:
        why = f"normalize={unsample['normalize']!r} is not one of the Unsampler's ({', '.join(COMFY_NORMALIZE)})"
    return unsample, resample, why


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)  # None or NaN (a pandas row)


def _text(value: Any) -> str:
    if isinstance(value, str) and re.fullmatch(r"<\w+>", value):  # how an Inversion records embeddings
        raise UnsamplingError(f"the prompt was given as embeddings ({value}); a workflow needs its text: invert with "
                              "prompt strings to export it")
    if isinstance(value, (list, tuple)):
        if len(set(value)) > 1:
            raise UnsamplingError("a ComfyUI workflow has one prompt per CLIPTextEncode; this setting has one per "
                                  "batch item: export one sweep row (one item) instead")
        value = value[0] if value else ""
    return "" if _missing(value) else str(value)


def to_workflow(source: Any, path: str | Path, *, checkpoint: str = "model.safetensors", image: str = "source.png",
                latent: str | None = None, noise: Any = None, filename_prefix: str = "unsampling_lab") -> ExportedWorkflow:
    """Write `path` (UI format) and `<stem>_api.json` (API format) for `source`; returns both and a note.

    checkpoint: the ckpt_name ComfyUI should load (a file in its models/checkpoints); image: the LoadImage
    file (in its input/ folder); latent: a `.latent` file to start from instead (LoadLatent; a read
    workflow that started from one keeps it). noise: the LATENT (or `Inversion`) to export when ComfyUI
    cannot run the inversion itself; an `Inversion` source brings its own.
    """
    from ...inversion import Inversion

    unsample, resample, why = parameters(source)
    if latent is None and isinstance(source, ComfyWorkflow):
        latent = source.latent
    path = Path(path)
    if path.suffix != ".json":
        path = path.with_suffix(".json")
    api_path = path.with_name(path.stem + "_api.json")
    latent_path = None
    if isinstance(source, Inversion) and noise is None:
        noise = source.noise
    if why is not None:
        if noise is None:
            raise UnsamplingError(f"{why}, so the workflow must load its noise: pass noise= (the LATENT of ul.invert / "
                                  "ul.unsample for this setting, or the Inversion) to export it as a .latent")
        from ...latent_files import save_latent

        latent_path = save_latent(noise.noise if isinstance(noise, Inversion) else noise, path.with_suffix(".latent"))
        note = (f"{why}: its noise is exported as {latent_path.name} (put it in ComfyUI's input/ folder); the workflow "
                f"loads it and resamples with KSamplerAdvanced from step {resample['start_at_step']} (plain resampling: "
                "a method's own resampling side, e.g. null-text embeddings, is not in ComfyUI)")
        api = _graph(None, resample, checkpoint=checkpoint, source=("LoadLatent", latent_path.name),
                     filename_prefix=filename_prefix)
    else:
        note = "the Unsampler (ComfyUI_Noise) inverts the source and KSamplerAdvanced resamples it"
        if unsample is None:
            note = "no Unsampler in the source: the workflow samples from the image's latent with KSamplerAdvanced"
        start = ("LoadImage", image) if latent is None else ("LoadLatent", latent)
        api = _graph(unsample, resample, checkpoint=checkpoint, source=start, filename_prefix=filename_prefix)
    check_api(api)
    ui = api_to_ui(api)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(ui, indent=1), encoding="utf-8")
    api_path.write_text(json.dumps(api, indent=1), encoding="utf-8")
    return ExportedWorkflow(api, ui, path, api_path, latent_path, note)


def workflow_for_row(row: Mapping[str, Any], path: str | Path, *, noise: Any = None, **options: Any) -> ExportedWorkflow:
    """`to_workflow` for one row of `ul.sweep`'s table (a dict or a pandas row): the CLI's best-row export."""
    return to_workflow(dict(row), path, noise=noise, **options)


def _graph(unsample: dict[str, Any] | None, resample: dict[str, Any], *, checkpoint: str, source: tuple[str, str],
           filename_prefix: str) -> dict[str, Any]:
    g: dict[str, Any] = {}

    def add(kind: str, **inputs: Any) -> list[Any]:
        node_id = str(len(g) + 1)
        g[node_id] = {"class_type": kind, "inputs": inputs}
        return [node_id, 0]

    ckpt = add("CheckpointLoaderSimple", ckpt_name=checkpoint)
    model, clip, vae = ckpt, [ckpt[0], 1], [ckpt[0], 2]
    first = unsample or resample
    positive = add("CLIPTextEncode", text=first["positive"] or "", clip=clip)
    negative = add("CLIPTextEncode", text=first["negative"] or "", clip=clip)
    if source[0] == "LoadLatent":
        latent = add("LoadLatent", latent=source[1])
    else:
        latent = add("VAEEncode", pixels=add("LoadImage", image=source[1]), vae=vae)
    if unsample is not None:
        latent = add("BNK_Unsampler", model=model, steps=unsample["steps"], end_at_step=unsample["end_at_step"],
                     cfg=unsample["cfg"], sampler_name=unsample["sampler_name"], scheduler=unsample["scheduler"],
                     normalize=unsample["normalize"], positive=positive, negative=negative, latent_image=latent)
    edit = positive if (resample["positive"] or "") == (first["positive"] or "") else add(
        "CLIPTextEncode", text=resample["positive"] or "", clip=clip)
    edit_negative = negative if (resample["negative"] or "") == (first["negative"] or "") else add(
        "CLIPTextEncode", text=resample["negative"] or "", clip=clip)
    sampled = add("KSamplerAdvanced", model=model, add_noise="enable" if resample["add_noise"] else "disable",
                  noise_seed=resample["noise_seed"], steps=resample["steps"], cfg=resample["cfg"],
                  sampler_name=resample["sampler_name"], scheduler=resample["scheduler"], positive=edit,
                  negative=edit_negative, latent_image=latent, start_at_step=resample["start_at_step"],
                  end_at_step=resample["end_at_step"],
                  return_with_leftover_noise="enable" if resample["return_with_leftover_noise"] else "disable")
    add("SaveImage", images=add("VAEDecode", samples=sampled, vae=vae), filename_prefix=filename_prefix)
    return g


def check_api(api: Mapping[str, Any]) -> None:
    """Every node is one ComfyUI (or ComfyUI_Noise) has, with every required input, links to existing nodes."""
    for node_id, node in api.items():
        kind = node["class_type"]
        if kind not in NODE_INPUTS:
            raise UnsamplingError(f"node {node_id} is {kind!r}, which the exporter does not know")
        missing = [n for n, _ in NODE_INPUTS[kind] if n not in node["inputs"]]
        if missing:
            raise UnsamplingError(f"node {node_id} ({kind}) lacks required inputs {missing}")
        for name, value in node["inputs"].items():
            if isinstance(value, list) and str(value[0]) not in api:
                raise UnsamplingError(f"node {node_id} ({kind}) input {name!r} links to missing node {value[0]}")


def api_to_ui(api: Mapping[str, Any]) -> dict[str, Any]:
    """The UI format of an API graph of known nodes: positional widgets, typed slots, links [id, from, slot, to, slot, type]."""
    links: list[list[Any]] = []
    nodes: list[dict[str, Any]] = []
    outputs: dict[tuple[str, int], list[int]] = {}
    for node_id, node in api.items():
        kind = node["class_type"]
        slots = []
        for name, typ in NODE_INPUTS[kind]:
            if typ not in LINK_TYPES:
                continue
            src = node["inputs"][name]
            src_type = NODE_OUTPUTS[api[src[0]]["class_type"]][src[1]]
            links.append([len(links) + 1, int(src[0]), src[1], int(node_id), len(slots), src_type])
            outputs.setdefault((src[0], src[1]), []).append(len(links))
            slots.append({"name": name, "type": typ, "link": len(links)})
        widgets = []
        for name in widget_names(kind):
            widgets.append({"control_after_generate": "fixed", "upload": "image"}.get(name, node["inputs"].get(name)))
        nodes.append({"id": int(node_id), "type": kind, "pos": [300 * len(nodes), 100], "size": [300, 120], "flags": {},
                      "order": len(nodes), "mode": 0, "inputs": slots, "widgets_values": widgets, "properties": {}})
    for node in nodes:
        node["outputs"] = [{"name": t, "type": t, "links": outputs.get((str(node["id"]), i), []), "slot_index": i}
                           for i, t in enumerate(NODE_OUTPUTS[node["type"]])]
    return {"last_node_id": max(n["id"] for n in nodes), "last_link_id": len(links), "nodes": nodes, "links": links,
            "groups": [], "config": {}, "extra": {}, "version": 0.4}
