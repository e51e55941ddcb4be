"""The inversion-method registry: each method's promises as data (predictions, samplers, options, cost)."""
from __future__ import annotations

from ..errors import check_choice
from . import exact_pair, fixed_point, flow, null_text, prompts
from . import bdia, belm, edit_friendly, flowedit, proxedit, uni_inv
from .base import MethodSpec

ALL_PREDICTIONS = ("eps", "v", "flow")
#: samplers whose step depends only on the current state (no history), so one step can be solved alone
ONE_STEP_SAMPLERS = ("euler", "ddim", "heun", "dpm_2", "exp_heun_2_x0")

_FLOW_ONLY = "its update rule is written for the straight paths of a flow model (x = (1 - sigma) x0 + sigma n)"

_SPECS: list[MethodSpec] = [
    MethodSpec(
        "unsampler", prompts.invert_unsampler, predictions=ALL_PREDICTIONS, samplers=None, options={},
        cost="the sampler's evaluations per step", paper="ComfyUI_Noise's Unsampler (ComfyUI's KSampler run on flipped sigmas)",
        records_path=True,
    ),
    MethodSpec(
        "fixed_point", fixed_point.invert_fixed_point, predictions=ALL_PREDICTIONS, samplers=ONE_STEP_SAMPLERS,
        options=fixed_point.FIXED_POINT_OPTIONS,
        cost="up to `iterations` (+1 with averaging) sampler steps per step", paper="Meiri et al. 2023; Pan et al. ICCV 2023 (AIDI); Garibi et al. ECCV 2024 (ReNoise)",
        why_samplers="it solves one resampler step at a time, so the step must depend on the current state only "
                     "(multistep samplers such as lms or dpmpp_2m carry history)",
        records_path=True,
    ),
    MethodSpec(
        "negative_prompt", prompts.invert_negative_prompt, predictions=ALL_PREDICTIONS, samplers=None, options={},
        cost="the Unsampler's at cfg 1 (no uncond pass)", paper="Miyake et al. 2023 (arXiv 2305.16807)",
        resample=prompts.resample_negative_prompt, records_path=True,
    ),
    MethodSpec(
        "edict", exact_pair.invert_edict, predictions=ALL_PREDICTIONS, samplers=("euler", "ddim"),
        options=exact_pair.EDICT_OPTIONS, cost="2 evaluations per step, both ways", paper="Wallace et al. CVPR 2023 (arXiv 2211.12446)",
        resample=exact_pair.resample_edict,
        why_samplers="EDICT couples two latents through the DDIM/Euler step; its sampling side is its own",
        why_no_path="EDICT's resampling is exact, so its source branch is its inversion path already (and it "
                    "evaluates the network at its coupled latents, not at the path)",
    ),
    MethodSpec(
        "null_text", null_text.invert_null_text, predictions=ALL_PREDICTIONS, samplers=("euler", "ddim"),
        options=null_text.NULL_TEXT_OPTIONS, gradients=True,
        cost="pivot: pivot_iterations per step at cfg 1; then per step up to inner_steps forward+backward passes "
             "(grad_steps) and 2 evaluations", paper="Mokady et al. CVPR 2023",
        resample=null_text.resample_null_text,
        why_samplers="its embeddings are optimised for the Euler/DDIM step, one per step",
        records_path=True,
    ),
    MethodSpec(
        "rf_solver", flow.invert_rf_solver, predictions=("flow",), samplers=("euler",), options=flow.RF_SOLVER_OPTIONS,
        cost="2 evaluations per step, both ways", paper="Wang et al. ICML 2025", resample=flow.resample_rf_solver,
        why_samplers="RF-Solver is its own (midpoint) step; leave sampler_name='euler'",
        why_no_path="its own midpoint step evaluates the network between the schedule's sigmas, where no "
                    "inversion state exists to pin the source branch to",
        why_predictions=_FLOW_ONLY,
    ),
    MethodSpec(
        "fireflow", flow.invert_fireflow, predictions=("flow",), samplers=("euler",), options=flow.FIREFLOW_OPTIONS,
        cost="1 evaluation per step (+1), both ways", paper="Deng et al. ICML 2025", resample=flow.resample_fireflow,
        why_samplers="FireFlow is its own (midpoint) step; leave sampler_name='euler'",
        why_no_path="its own midpoint step evaluates the network between the schedule's sigmas, where no "
                    "inversion state exists to pin the source branch to",
        why_predictions=_FLOW_ONLY,
    ),
    MethodSpec(
        "rf_inversion", flow.invert_rf_inversion, predictions=("flow",), samplers=("euler",),
        options=flow.RF_INVERSION_OPTIONS, cost="1 evaluation per step, both ways", paper="Rout et al. ICLR 2025",
        resample=flow.resample_rf_inversion,
        why_samplers="RF-Inversion's controlled ODE is integrated with its own Euler steps; leave sampler_name='euler'",
        why_predictions="its controlled drift (xi - x)/(1 - sigma) is the straight path of a flow model to the noise at sigma = 1",
    ),
    MethodSpec(
        "edit_friendly", edit_friendly.invert_edit_friendly, predictions=ALL_PREDICTIONS,
        samplers=edit_friendly.EDIT_FRIENDLY_SAMPLERS, options=edit_friendly.EDIT_FRIENDLY_OPTIONS,
        cost="one sampling run's evaluations (no network call inverts anything); resampling the same",
        paper="Huberman-Spiegelglas, Kulikov & Michaeli CVPR 2024 (arXiv 2304.06140)",
        resample=edit_friendly.resample_edit_friendly,
        why_samplers="it records the noise each step of a stochastic sampler needs; for deterministic samplers use "
                     "fixed_point or edict",
    ),
    MethodSpec(
        "bdia", bdia.invert_bdia, predictions=ALL_PREDICTIONS, samplers=("euler", "ddim"), options=bdia.BDIA_OPTIONS,
        cost="1 evaluation per step, both ways", paper="Zhang, Lewis & Kleijn ECCV 2024 (arXiv 2307.10829)",
        resample=bdia.resample_bdia,
        why_samplers="BDIA is its own two-state DDIM step; leave sampler_name='euler' (or 'ddim')",
    ),
    MethodSpec(
        "belm", belm.invert_belm, predictions=ALL_PREDICTIONS, samplers=("euler", "ddim"), options=belm.BELM_OPTIONS,
        cost="1 evaluation per step, both ways", paper="Wang et al. NeurIPS 2024 (O-BELM)",
        resample=belm.resample_belm,
        why_samplers="O-BELM is its own two-step linear multistep rule; leave sampler_name='euler' (or 'ddim')",
    ),
    MethodSpec(
        "flowedit", flowedit.invert_flowedit, predictions=("flow",), samplers=("euler",), options=flowedit.FLOWEDIT_OPTIONS,
        cost="no inversion; the edit 2 * n_avg evaluations per step over its n_max steps",
        paper="Kulikov et al. ICCV 2025 (arXiv 2412.08629)", resample=flowedit.resample_flowedit,
        why_samplers="FlowEdit is its own Euler integration of a velocity difference; leave sampler_name='euler'",
        why_predictions=_FLOW_ONLY,
    ),
    MethodSpec(
        "uni_inv", uni_inv.invert_uni_inv, predictions=ALL_PREDICTIONS, samplers=("euler", "ddim"),
        options=uni_inv.UNI_INV_OPTIONS, cost="1 evaluation per step (+1); resampling is plain Euler",
        paper="Jiao et al. 2025, UniEdit-Flow (arXiv 2504.13109)",
        why_samplers="its corrector inverts the Euler step, which the plain resample then takes",
    ),
    MethodSpec(
        "proxedit", proxedit.invert_proxedit, predictions=ALL_PREDICTIONS, samplers=("euler", "ddim"),
        options=proxedit.PROXEDIT_OPTIONS, cost="NPI's inversion (cfg 1); resampling 1 evaluation (cond + source) per step",
        paper="Han et al. WACV 2024 (arXiv 2306.05414)", resample=proxedit.resample_proxedit,
        why_samplers="its edit side is its own DDIM step with proximal guidance; leave sampler_name='euler'",
    ),
]

METHOD_SPECS: dict[str, MethodSpec] = {s.name: s for s in _SPECS}
INVERSION_METHODS: tuple[str, ...] = tuple(METHOD_SPECS)


def get_method(name: str) -> MethodSpec:
    """The registry entry for `name` (an unknown name gets the nearest ones suggested)."""
    check_choice(name, INVERSION_METHODS, what="inversion method")
    return METHOD_SPECS[name]
