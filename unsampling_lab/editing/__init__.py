"""The editing layer: two branches (source, target) resampled in one batch under an attention or feature
control (prompt-to-prompt, plug-and-play), with Direct Inversion and the standard protocol.

    res = ul.edit(model, inversion, source="red circle", target="blue circle", control="p2p", cfg=3.0)
    res = ul.edit_image(model, latent, source="red circle", target="blue circle", method="unsampler", direct=True)

Controls are data (`CONTROLS`, `CONTROL_SPECS[name].options`); what each does is stated in `editing/controls.py`.
"""
from __future__ import annotations

from .controls import CONTROL_SPECS, CONTROLS, ControlSpec, get_control
from .edit import AttentionMaps, EditResult, edit
from .protocol import PIE_BENCH_CFG, EditInput, edit_image, invert_for_edit

__all__ = ["CONTROLS", "CONTROL_SPECS", "AttentionMaps", "ControlSpec", "EditResult", "PIE_BENCH_CFG", "EditInput", "edit", "edit_image", "get_control", "invert_for_edit"]
