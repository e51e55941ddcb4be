"""The inversion-method registry: each method's promises as data (families, samplers, options, cost)."""
from __future__ import annotations

from ..errors import check_choice
from . import exact_pair, fixed_point, null_text, prompts
from .base import MethodSpec

ALL_FAMILIES = ("eps", "v", "flow")
#: samplers whose step depends only on the current state (no history), so one step can be solved alone
ONE_STEP_SAMPLERS = ("euler", "ddim", "heun", "dpm_2", "exp_heun_2_x0")

_SPECS: list[MethodSpec] = [
    MethodSpec(
        "unsampler", prompts.invert_unsampler, families=ALL_FAMILIES, samplers=None, options={},
        cost="the sampler's evaluations per step", paper="ComfyUI_Noise's Unsampler (ComfyUI's KSampler run on flipped sigmas)",
    ),
    MethodSpec(
        "fixed_point", fixed_point.invert_fixed_point, families=ALL_FAMILIES, samplers=ONE_STEP_SAMPLERS,
        options=fixed_point.FIXED_POINT_OPTIONS,
        cost="up to `iterations` (+1 with averaging) sampler steps per step", paper="Meiri et al. 2023; Pan et al. ICCV 2023 (AIDI); Garibi et al. ECCV 2024 (ReNoise)",
        why_samplers="it solves one resampler step at a time, so the step must depend on the current state only "
                     "(multistep samplers such as lms or dpmpp_2m carry history)",
    ),
    MethodSpec(
        "negative_prompt", prompts.invert_negative_prompt, families=ALL_FAMILIES, samplers=None, options={},
        cost="the Unsampler's at cfg 1 (no uncond pass)", paper="Miyake et al. 2023 (arXiv 2305.16807)",
        resample=prompts.resample_negative_prompt,
    ),
    MethodSpec(
        "edict", exact_pair.invert_edict, families=ALL_FAMILIES, samplers=("euler", "ddim"),
        options=exact_pair.EDICT_OPTIONS, cost="2 evaluations per step, both ways", paper="Wallace et al. CVPR 2023 (arXiv 2211.12446)",
        resample=exact_pair.resample_edict,
        why_samplers="EDICT couples two latents through the DDIM/Euler step; its sampling side is its own",
    ),
    MethodSpec(
        "null_text", null_text.invert_null_text, families=ALL_FAMILIES, samplers=("euler", "ddim"),
        options=null_text.NULL_TEXT_OPTIONS, gradients=True,
        cost="pivot: pivot_iterations per step at cfg 1; then per step up to inner_steps forward+backward passes "
             "(grad_steps) and 2 evaluations", paper="Mokady et al. CVPR 2023",
        resample=null_text.resample_null_text,
        why_samplers="its embeddings are optimised for the Euler/DDIM step, one per step",
    ),
]

METHOD_SPECS: dict[str, MethodSpec] = {s.name: s for s in _SPECS}
INVERSION_METHODS: tuple[str, ...] = tuple(METHOD_SPECS)


def get_method(name: str) -> MethodSpec:
    """The registry entry for `name` (an unknown name gets the nearest ones suggested)."""
    check_choice(name, INVERSION_METHODS, what="inversion method")
    return METHOD_SPECS[name]
