"""`read_workflow`: a ComfyUI workflow (UI or API format, or the PNG ComfyUI saved) -> unsample / resample keywords.

Both formats become one graph `{node_id: {"class_type": ..., "inputs": {name: value | [source_id, slot]}}}`
(the API format itself); from there we find the Unsampler and the sampler fed by it, and follow links
back to the prompts (CLIPTextEncode), the checkpoint (CheckpointLoaderSimple) and the source image
(LoadImage through VAEEncode, or LoadLatent). Several candidates are listed, never guessed; custom nodes
met on those paths are named in one warning.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ...errors import UnsamplingError, UnsamplingWarning
from .nodes import ALIASES, NODE_INPUTS, PASS_THROUGH, widget_names

Graph = dict[str, dict[str, Any]]
SAMPLERS = ("KSamplerAdvanced", "KSampler")


@dataclass
class ComfyWorkflow:
    """What a workflow says, in the lab's names.

    unsample: keywords of `ul.unsample` (None without an Unsampler); resample: keywords of `ul.resample`
    (KSamplerAdvanced's names; a KSampler's seed is `noise_seed`, its denoise is kept as `denoise`).
    checkpoint: CheckpointLoaderSimple's ckpt_name; image / latent: LoadImage's / LoadLatent's file.
    unsamplers, samplers: every such node id in the graph; unknown_nodes: custom nodes met on the paths followed.
    """

    unsample: dict[str, Any] | None
    resample: dict[str, Any] | None
    checkpoint: str | None = None
    image: str | None = None
    latent: str | None = None
    unsamplers: list[str] = field(default_factory=list)
    samplers: list[str] = field(default_factory=list)
    unknown_nodes: list[str] = field(default_factory=list)
    source_format: Literal["ui", "api"] = "api"

    def sweep_base(self, *, without: Any = ()) -> dict[str, Any]:
        """The fixed keywords of `ul.sweep` for this workflow (edit / resample_cfg / seed from the sampler),
        less the names in `without` (pass the grid: what it varies cannot also be fixed)."""
        if self.unsample is None:
            raise UnsamplingError("this workflow has no Unsampler node, so there is no inversion to sweep around")
        base = {k: self.unsample[k] for k in ("steps", "cfg", "sampler_name", "scheduler", "positive", "negative",
                                             "end_at_step", "normalize")}
        if self.resample is not None:
            if self.resample["positive"] != base["positive"]:
                base["edit"] = self.resample["positive"]
            if self.resample["cfg"] != base["cfg"]:
                base["resample_cfg"] = self.resample["cfg"]
            base["seed"] = self.resample["noise_seed"]
        return {k: v for k, v in base.items() if k not in set(without)}


def read_workflow(path: str | Path | dict[str, Any], *, unsampler: str | int | None = None,
                  sampler: str | int | None = None) -> ComfyWorkflow:
    """Read a ComfyUI workflow: a UI-format `.json` (nodes + links), an API-format `.json` (the prompt),
    or a `.png` ComfyUI saved (its `prompt` / `workflow` text chunks); a dict of either format works too.

    unsampler, sampler: the node id to use where the graph has several (the error lists them).
    """
    graph, fmt = load_graph(path)
    unsamplers = sorted((i for i, n in graph.items() if n["class_type"] == "BNK_Unsampler"), key=_id_order)
    samplers = sorted((i for i, n in graph.items() if n["class_type"] in SAMPLERS), key=_id_order)
    unsampler_id = _choose(unsamplers, unsampler, "Unsampler", "unsampler", graph)
    if unsampler_id is not None:  # the sampler that resamples this Unsampler's noise, if the graph says
        fed = [s for s in samplers if _source(graph, s, "latent_image") == unsampler_id]
        sampler_id = _choose(fed or samplers, sampler, "sampler", "sampler", graph)
    else:
        sampler_id = _choose(samplers, sampler, "sampler", "sampler", graph)
    unknown: set[str] = set()
    out = ComfyWorkflow(None, None, unsamplers=unsamplers, samplers=samplers, source_format=fmt)
    if unsampler_id is not None:
        out.unsample = _unsample_keywords(graph, unsampler_id, unknown)
    if sampler_id is not None:
        out.resample = _resample_keywords(graph, sampler_id, unknown)
    start = unsampler_id or sampler_id
    if start is not None:
        ckpt = _follow(graph, start, "model", "CheckpointLoaderSimple", unknown)
        out.checkpoint = graph[ckpt]["inputs"].get("ckpt_name") if ckpt else None
        source = _follow(graph, start, "latent_image", ("LoadImage", "LoadLatent"), unknown)
        if source is not None:
            node = graph[source]
            out.image, out.latent = (node["inputs"].get("image"), None) if node["class_type"] == "LoadImage" else (
                None, node["inputs"].get("latent"))
    out.unknown_nodes = sorted(unknown)
    if unknown:
        warnings.warn(f"custom nodes on the workflow's paths (not read; their effect is not in these parameters): "
                      f"{', '.join(out.unknown_nodes)}", UnsamplingWarning, stacklevel=2)
    return out


# -- formats ------------------------------------------------------------------------------------------
def load_graph(source: str | Path | dict[str, Any]) -> tuple[Graph, Literal["ui", "api"]]:
    """The API-format graph of a workflow file, PNG or dict, and which format it came in."""
    if isinstance(source, dict):
        data: Any = source
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise UnsamplingError(f"workflow file not found: {path.resolve()}")
        data = _read_png(path) if path.suffix.lower() == ".png" else _read_json(path)
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict) and "nodes" not in data:
        data = data["prompt"]  # the body of a /prompt request, or our PNG reader's choice
    if isinstance(data, dict) and "nodes" in data and "links" in data:
        return ui_to_graph(data), "ui"
    if isinstance(data, dict) and data and all(isinstance(n, dict) and "class_type" in n for n in data.values()):
        return {str(k): {"class_type": ALIASES.get(n["class_type"], n["class_type"]), "inputs": dict(n.get("inputs", {}))}
                for k, n in data.items()}, "api"
    raise UnsamplingError(f"{source if not isinstance(source, dict) else 'this dict'} is not a ComfyUI workflow: expected "
                          "the UI format (with 'nodes' and 'links') or the API format ({id: {'class_type', 'inputs'}})")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UnsamplingError(f"{path} is not a readable JSON workflow ({e.__class__.__name__}: {e})") from None


def _read_png(path: Path) -> Any:
    """The API prompt of a ComfyUI PNG if it has one (values by name), else its UI workflow."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            chunks = dict(getattr(im, "text", {}) or im.info)
    except OSError as e:
        raise UnsamplingError(f"{path} is not a readable PNG ({e})") from None
    for key in ("prompt", "workflow"):
        if isinstance(chunks.get(key), str):
            try:
                return json.loads(chunks[key])
            except ValueError:
                raise UnsamplingError(f"{path}: its '{key}' text chunk is not valid JSON") from None
    raise UnsamplingError(f"{path} has no ComfyUI workflow in it (no 'prompt' or 'workflow' text chunk; "
                          "ComfyUI writes them unless started with --disable-metadata)")


def ui_to_graph(ui: dict[str, Any]) -> Graph:
    """The UI format (nodes with positional widgets_values, links as lists) as an API-format graph."""
    links = {}
    for link in ui.get("links", []):
        link_id, src, slot = (link["id"], link["origin_id"], link["origin_slot"]) if isinstance(link, dict) else link[:3]
        links[link_id] = [str(src), int(slot)]
    primitives = {str(n["id"]): (n.get("widgets_values") or [None])[0] for n in ui["nodes"] if n.get("type") == "PrimitiveNode"}
    graph: Graph = {}
    for node in ui["nodes"]:
        kind = ALIASES.get(node.get("type", ""), node.get("type", ""))
        if node.get("mode", 0) in (2, 4):  # muted / bypassed nodes do not run
            continue
        inputs: dict[str, Any] = {}
        values = node.get("widgets_values") or []
        if isinstance(values, dict):  # some front-end versions save widgets by name
            inputs.update(values)
        elif kind in NODE_INPUTS:
            inputs.update({n: v for n, v in zip(widget_names(kind), values) if n not in ("control_after_generate", "upload")})
        for slot in node.get("inputs", []) or []:
            if slot.get("link") is not None and slot["link"] in links:
                src = links[slot["link"]]
                # a widget fed by a PrimitiveNode holds that node's value (the API format resolves it the same way)
                inputs[slot["name"]] = primitives[src[0]] if src[0] in primitives else src
        if kind != "PrimitiveNode":
            graph[str(node["id"])] = {"class_type": kind, "inputs": inputs}
    return graph


# -- following links -----------------------------------------------------------------------------------
def _id_order(node_id: str) -> tuple[int, str]:
    return (int(node_id), "") if node_id.isdigit() else (1 << 30, node_id)


def _choose(ids: list[str], wanted: str | int | None, what: str, keyword: str, graph: Graph) -> str | None:
    if wanted is not None:
        if str(wanted) not in ids:
            raise UnsamplingError(f"{keyword}={wanted!r} is not a {what} node of this workflow; its {what} nodes: "
                                  f"{', '.join(ids) or 'none'}")
        return str(wanted)
    if len(ids) > 1:
        listed = ", ".join(f"{i} ({graph[i]['class_type']}, steps {graph[i]['inputs'].get('steps')})" for i in ids)
        raise UnsamplingError(f"the workflow has {len(ids)} {what} nodes: {listed}; pick one with {keyword}='ID'")
    return ids[0] if ids else None


def _source(graph: Graph, node_id: str, name: str) -> str | None:
    """The node feeding input `name` of `node_id` (None when it is a value or absent)."""
    value = graph[node_id]["inputs"].get(name)
    if isinstance(value, list) and len(value) == 2 and str(value[0]) in graph:
        return str(value[0])
    return None


def _follow(graph: Graph, node_id: str, name: str, targets: str | tuple[str, ...], unknown: set[str]) -> str | None:
    """Walk up from input `name` of `node_id` through pass-through nodes to a node of class `targets`."""
    targets = (targets,) if isinstance(targets, str) else targets
    current, seen = _source(graph, node_id, name), set()
    while current is not None and current not in seen:
        seen.add(current)
        kind = graph[current]["class_type"]
        if kind in targets:
            return current
        if kind in PASS_THROUGH:
            current = _source(graph, current, PASS_THROUGH[kind])
            continue
        linked = [k for k, v in graph[current]["inputs"].items() if isinstance(v, list) and len(v) == 2 and str(v[0]) in graph]
        if kind not in NODE_INPUTS:
            unknown.add(f"{kind} (node {current})")
        if len(linked) != 1:  # nowhere clear to go on
            return None
        current = _source(graph, current, linked[0])
    return None


def _prompt(graph: Graph, node_id: str, name: str, unknown: set[str]) -> str | None:
    found = _follow(graph, node_id, name, "CLIPTextEncode", unknown)
    if found is None:
        return None
    text = graph[found]["inputs"].get("text")
    return text if isinstance(text, str) else None


def _unsample_keywords(graph: Graph, node_id: str, unknown: set[str]) -> dict[str, Any]:
    inputs = graph[node_id]["inputs"]
    out = {"steps": int(inputs.get("steps", 20)), "end_at_step": int(inputs.get("end_at_step", 0)),
           "cfg": float(inputs.get("cfg", 1.0)), "sampler_name": inputs.get("sampler_name", "euler"),
           "scheduler": inputs.get("scheduler", "normal"), "normalize": inputs.get("normalize", "disable")}
    out["positive"] = _prompt(graph, node_id, "positive", unknown)
    out["negative"] = _prompt(graph, node_id, "negative", unknown)
    return out


def _resample_keywords(graph: Graph, node_id: str, unknown: set[str]) -> dict[str, Any]:
    node = graph[node_id]
    inputs = node["inputs"]
    out: dict[str, Any] = {"steps": int(inputs.get("steps", 20)), "cfg": float(inputs.get("cfg", 8.0)),
                           "sampler_name": inputs.get("sampler_name", "euler"), "scheduler": inputs.get("scheduler", "normal")}
    if node["class_type"] == "KSamplerAdvanced":
        out.update(start_at_step=int(inputs.get("start_at_step", 0)), end_at_step=int(inputs.get("end_at_step", 10000)),
                   add_noise=inputs.get("add_noise", "enable") == "enable", noise_seed=int(inputs.get("noise_seed", 0)),
                   return_with_leftover_noise=inputs.get("return_with_leftover_noise", "disable") == "enable")
    else:  # KSampler: always adds noise from `seed`, runs steps * denoise of a longer schedule
        out.update(start_at_step=0, end_at_step=10000, add_noise=True, noise_seed=int(inputs.get("seed", 0)),
                   return_with_leftover_noise=False, denoise=float(inputs.get("denoise", 1.0)))
    out["positive"] = _prompt(graph, node_id, "positive", unknown)
    out["negative"] = _prompt(graph, node_id, "negative", unknown)
    return out
