"""ComfyUI workflows in and out (`ul.comfy`).

    wf = ul.comfy.read_workflow("workflow.json")      # UI or API format, or a ComfyUI output PNG
    noise = ul.unsample(model, latent, **wf.unsample)   # the Unsampler's inputs, prompts followed to CLIPTextEncode
    out = ul.resample(model, noise, **wf.resample)      # the KSamplerAdvanced fed by it
    ul.comfy.to_workflow(row_or_inversion, "best.json") # best.json (UI) + best_api.json (API) [+ best.latent]
"""
from __future__ import annotations

from .nodes import NODE_INPUTS, NODE_OUTPUTS
from .read import ComfyWorkflow, load_graph, read_workflow
from .write import ExportedWorkflow, check_api, to_workflow, workflow_for_row

__all__ = ["NODE_INPUTS", "NODE_OUTPUTS", "ComfyWorkflow", "ExportedWorkflow", "check_api", "load_graph",
           "read_workflow", "to_workflow", "workflow_for_row"]
