"""ComfyUI's flow (CONST) arithmetic as it is, for comparison with ours (teaching and notebook 06).

ComfyUI's Unsampler ends a full unsample of a flow model at sigma 1 + 1e-4 and divides by 1 - sigma:
its output is about -1e4 x the noise, and the paired resample restarts from 0 * latent. `comfyui_flow`
gives a model with that arithmetic, so `ul.unsample(comfyui_flow(model), ...)` reproduces it.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..engine import resample, unsample
from ..errors import UnsamplingError
from ..model_sampling import ModelSampling, _view
from ..models.base import DiffusionModel


@dataclass(frozen=True, eq=False)
class ComfyUIFlowSampling(ModelSampling):
    """ComfyUI's CONST model sampling as it is: no sigma limit (the Unsampler ends at 1 + 1e-4),
    LATENT = x / (1 - sigma) at every sigma, and the zero-noise start (1 - sigma) * latent."""

    @property
    def sigma_limit(self) -> float:
        return math.inf

    def inverse_noise_scaling(self, sigma: Tensor, x: Tensor) -> Tensor:
        return x / (1.0 - _view(sigma, x))

    def latent_to_state(self, sigma: Tensor, latent: Tensor) -> Tensor:
        return self.noise_scaling(sigma, torch.zeros_like(latent), latent)


def comfyui_flow(model: DiffusionModel) -> DiffusionModel:
    """`model` with ComfyUI's flow arithmetic, so `ul.unsample(comfyui_flow(model), ...)` gives what
    ComfyUI's Unsampler gives (-1e4 x the noise on a full unsample). A shallow copy: the networks are shared."""
    ms = model.model_sampling
    if ms.prediction != "flow":
        raise UnsamplingError("comfyui_flow is for flow models; on eps/v models ul.unsample already matches ComfyUI")
    out = copy.copy(model)
    out.model_sampling = ComfyUIFlowSampling(sigmas=ms.sigmas, prediction=ms.prediction, timestep_map=ms.timestep_map,
                                             shift=ms.shift, multiplier=ms.multiplier)
    return out



def compare_with_comfyui(
    model: DiffusionModel,
    latent: Tensor | dict[str, Any],
    *,
    noise: Tensor,
    steps: int = 20,
    sampler_name: str = "euler",
    scheduler: str = "simple",
    end_at_step: int = 0,
) -> dict[str, dict[str, float]]:
    """Unsample and resample (add_noise off) with ComfyUI's flow arithmetic and ours, against the true `noise`.

    Per method: `ratio` = <out, noise> / <noise, noise> (1 is right; ComfyUI gives about -1e4 on a
    full unsample), `noise_error` = |out - noise| / |noise|, `roundtrip_error` = |resample - x0| / |x0|.
    `noise` is the exact unsampled latent (e.g. `GaussianData.ode_solution_flow` of the start state).
    """
    x0 = latent["samples"] if isinstance(latent, dict) else latent
    rows: dict[str, dict[str, float]] = {}
    for name, m in (("comfyui", comfyui_flow(model)), ("unsampling_lab", model)):
        kw = dict(steps=steps, sampler_name=sampler_name, scheduler=scheduler, progress=False)
        out = unsample(m, latent, end_at_step=end_at_step, **kw)
        back = resample(m, out, start_at_step=end_at_step, add_noise=False, **kw)
        out_t = out["samples"] if isinstance(out, dict) else out
        back_t = back["samples"] if isinstance(back, dict) else back
        ref = noise.to(out_t)
        rows[name] = {
            "ratio": float((out_t * ref).sum() / (ref * ref).sum()),
            "noise_error": float((out_t - ref).norm() / ref.norm()),
            "roundtrip_error": float((back_t - x0.to(back_t)).norm() / x0.norm()),
        }
    return rows
