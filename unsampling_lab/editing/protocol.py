"""The standard editing protocol as one call (the field's: prompt-to-prompt, null-text, PIE-Bench).

    invert the image with the source prompt at cfg 1 (null-text: at the edit cfg, which its embeddings are
    optimised for), then edit at cfg w with a control; 50 steps unless told. PIE-Bench uses w = 7.5 for SD;
    the bundled model's card recommends 6.

The inversion is `ul.invert` for every method; the Inversions that keep their path (`MethodSpec.records_path`:
the Unsampler, NPI, fixed_point, null_text) serve `direct=True`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from collections.abc import Mapping, Sequence
from typing import Any

from .edit import EditResult, edit

#: PIE-Bench's edit cfg for Stable Diffusion (Ju et al. 2024)
PIE_BENCH_CFG = 7.5


@dataclass
class EditInput:
    """An inversion ready for `edit`: what to resample (`run_on`), the negative its method resamples with, its cost."""

    run_on: Any
    negative: str | Sequence[str]
    nfe: int
    seconds: float
    grad_steps: int = 0  # of the nfe, the gradient steps (null-text's forward + backward passes)


def invert_for_edit(model: Any, latent: Any, *, source: str | Sequence[str], method: str = "unsampler",
                    cfg: float = PIE_BENCH_CFG, inversion_cfg: float = 1.0, steps: int = 50, sampler_name: str = "euler",
                    scheduler: str = "normal", negative: str | Sequence[str] = "",
                    method_options: Mapping[str, Any] | None = None, progress: bool = False) -> EditInput:
    """The protocol's inversion: source prompt at `inversion_cfg` (null_text at the edit `cfg`), the path recorded."""
    from ..inversion import invert

    opts = dict(method_options or {})
    t0 = time.perf_counter()
    common = dict(steps=steps, sampler_name=sampler_name, scheduler=scheduler, progress=progress)
    inv = invert(model, latent, method=method, cfg=cfg if method == "null_text" else inversion_cfg, positive=source,
                 negative=negative, **common, **opts)
    return EditInput(inv, negative, inv.nfe + inv.grad_steps, time.perf_counter() - t0, grad_steps=inv.grad_steps)


def edit_image(
    model: Any,
    latent: Any,
    *,
    source: str | Sequence[str],
    target: str | Sequence[str],
    method: str = "unsampler",
    control: str = "p2p",
    cfg: float = PIE_BENCH_CFG,
    inversion_cfg: float = 1.0,
    steps: int = 50,
    direct: bool = False,
    sampler_name: str = "euler",
    scheduler: str = "normal",
    negative: str | Sequence[str] = "",
    record_attention: bool = False,
    method_options: Mapping[str, Any] | None = None,
    progress: bool = False,
    **control_options: Any,
) -> EditResult:
    """Invert `latent` with `method` (source prompt, `inversion_cfg`; null_text at `cfg`) and edit it at `cfg`.

    The result's `inversion_nfe` / `inversion_seconds` count the inversion (gradient steps included);
    `nfe` / `seconds` the edit.
    """
    inp = invert_for_edit(model, latent, source=source, method=method, cfg=cfg, inversion_cfg=inversion_cfg, steps=steps,
                          sampler_name=sampler_name, scheduler=scheduler, negative=negative,
                          method_options=method_options, progress=progress)
    res = edit(model, inp.run_on, source=source, target=target, control=control, cfg=cfg, direct=direct,
               record_attention=record_attention, negative=inp.negative, progress=progress, **control_options)
    res.inversion_nfe, res.inversion_seconds, res.inversion_grad_steps = inp.nfe, inp.seconds, inp.grad_steps
    if isinstance(latent, dict):  # the LATENT's other keys back (a Trajectory input gives tensors)
        res.target = {**latent, "samples": res.target["samples"] if isinstance(res.target, dict) else res.target}
        res.source = {**latent, "samples": res.source["samples"] if isinstance(res.source, dict) else res.source}
    return res
