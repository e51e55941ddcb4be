"""Samplers: ComfyUI's names, k-diffusion's update rules, written to run in both directions."""
from __future__ import annotations

from .base import Callback, Denoiser, NoiseSampler, SamplerSpec, Step
from .registry import INVERTIBLE_SAMPLERS, SAMPLER_SPECS, SAMPLERS, get_sampler, on_schedule_samplers

__all__ = [
    "Callback", "Denoiser", "NoiseSampler", "SamplerSpec", "Step",
    "INVERTIBLE_SAMPLERS", "SAMPLER_SPECS", "SAMPLERS", "get_sampler", "on_schedule_samplers",
]
