"""The sampler registry: ComfyUI's names mapped to our functions and what they promise."""
from __future__ import annotations

from ..errors import UnsamplingError, check_choice
from . import cfg_pp, ddim_inverse, dpm_solver, ode, sa_solver, stochastic, unipc
from ..model_sampling import FAMILIES, Family
from .base import SamplerSpec

# ComfyUI's KSampler.SAMPLERS (comfy/samplers.py: KSAMPLER_NAMES + ["ddim", "uni_pc", "uni_pc_bh2"]), in its order.
COMFYUI_SAMPLERS: tuple[str, ...] = (
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2", "exp_heun_2_x0",
    "exp_heun_2_x0_sde", "dpm_2", "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral",
    "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde",
    "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm",
    "lcm", "ipndm", "ipndm_v", "deis", "res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral",
    "res_multistep_ancestral_cfg_pp", "gradient_estimation", "gradient_estimation_cfg_pp", "er_sde", "seeds_2",
    "seeds_3", "sa_solver", "sa_solver_pece", "ddim", "uni_pc", "uni_pc_bh2",
)

_ODE = dict(deterministic=True)
_SDE = dict(deterministic=False)
_VP = dict(families=frozenset({"vp"}))
_CFG_PP = dict(needs_uncond=True)
#: where a sampler evaluates the model off the schedule (measured: tests/test_sampler_evaluations.py)
_BETWEEN = dict(evaluates_between_sigmas=frozenset(FAMILIES))
_BETWEEN_ON_FLOW = dict(evaluates_between_sigmas=frozenset({"flow"}))

_SPECS: tuple[SamplerSpec, ...] = (
    SamplerSpec("euler", ode.sample_euler, order=1, **_ODE),
    SamplerSpec("euler_cfg_pp", cfg_pp.sample_euler_cfg_pp, order=1, **_ODE, **_CFG_PP),
    SamplerSpec("euler_ancestral", stochastic.sample_euler_ancestral, order=1, **_SDE,
                note="flow models: ComfyUI's rectified-flow ancestral step"),
    SamplerSpec("euler_ancestral_cfg_pp", cfg_pp.sample_euler_ancestral_cfg_pp, order=1, **_SDE, **_CFG_PP),
    SamplerSpec("heun", ode.sample_heun, order=2, evals_per_step=2, **_ODE,
                note="a plain Euler step (one call) into sigma 0"),
    SamplerSpec("heunpp2", ode.sample_heunpp2, order=2, evals_per_step=3, prefix_consistent=False,
                runs_upwards=False, **_ODE,
                note="weights sigma_(i+1) / 3 sigma_0 read the first sigma: on the Unsampler's (1e-4) they explode"),
    SamplerSpec("exp_heun_2_x0", ode.sample_exp_heun_2_x0, order=2, evals_per_step=2, **_ODE, **_BETWEEN_ON_FLOW,
                note="half-logSNR lambda: -log sigma (VP), log((1 - sigma) / sigma) (flow)"),
    SamplerSpec("exp_heun_2_x0_sde", stochastic.sample_exp_heun_2_x0_sde, order=2, evals_per_step=2, **_SDE,
                **_BETWEEN_ON_FLOW),
    SamplerSpec("dpm_2", ode.sample_dpm_2, order=2, evals_per_step=2, discard_penultimate_sigma=True, **_ODE,
                **_BETWEEN),
    SamplerSpec("dpm_2_ancestral", stochastic.sample_dpm_2_ancestral, order=2, evals_per_step=2,
                discard_penultimate_sigma=True, **_SDE),
    SamplerSpec("lms", ode.sample_lms, order=4, **_ODE, note="coefficients by quadrature of the Lagrange basis"),
    SamplerSpec("dpm_fast", dpm_solver.sample_dpm_fast, order=3, prefix_consistent=False, steps_follow_sigmas=False,
                **_ODE, **_BETWEEN,
                note="DPM-Solver-fast: len(sigmas) - 1 evaluations on uniform steps in -log sigma between the "
                     "ends; stops at the last nonzero sigma"),
    SamplerSpec("dpm_adaptive", dpm_solver.sample_dpm_adaptive, order=3, evals_per_step=3, prefix_consistent=False,
                steps_follow_sigmas=False, **_ODE, **_BETWEEN,
                note="DPM-Solver-23 with adaptive steps (rtol 0.05, atol 0.0078) between the ends; ignores the "
                     "schedule in between"),
    SamplerSpec("dpmpp_2s_ancestral", stochastic.sample_dpmpp_2s_ancestral, order=2, evals_per_step=2, **_SDE,
                **_BETWEEN_ON_FLOW),
    SamplerSpec("dpmpp_2s_ancestral_cfg_pp", stochastic.sample_dpmpp_2s_ancestral_cfg_pp, order=2, evals_per_step=2,
                **_SDE, **_BETWEEN_ON_FLOW, **_CFG_PP),
    SamplerSpec("dpmpp_sde", stochastic.sample_dpmpp_sde, order=2, evals_per_step=2, **_SDE, **_BETWEEN),
    SamplerSpec("dpmpp_sde_gpu", stochastic.sample_dpmpp_sde_gpu, order=2, evals_per_step=2, **_SDE, **_BETWEEN,
                note="Brownian tree on the latent's device"),
    SamplerSpec("dpmpp_2m", ode.sample_dpmpp_2m, order=2, **_ODE),
    SamplerSpec("dpmpp_2m_cfg_pp", cfg_pp.sample_dpmpp_2m_cfg_pp, order=2, **_ODE, **_CFG_PP),
    SamplerSpec("dpmpp_2m_sde", stochastic.sample_dpmpp_2m_sde, order=2, **_SDE, **_BETWEEN_ON_FLOW),
    SamplerSpec("dpmpp_2m_sde_gpu", stochastic.sample_dpmpp_2m_sde_gpu, order=2, **_SDE, **_BETWEEN_ON_FLOW),
    SamplerSpec("dpmpp_2m_sde_heun", stochastic.sample_dpmpp_2m_sde_heun, order=2, **_SDE, **_BETWEEN_ON_FLOW),
    SamplerSpec("dpmpp_2m_sde_heun_gpu", stochastic.sample_dpmpp_2m_sde_heun_gpu, order=2, **_SDE, **_BETWEEN_ON_FLOW),
    SamplerSpec("dpmpp_3m_sde", stochastic.sample_dpmpp_3m_sde, order=3, **_SDE, **_BETWEEN_ON_FLOW),
    SamplerSpec("dpmpp_3m_sde_gpu", stochastic.sample_dpmpp_3m_sde_gpu, order=3, **_SDE, **_BETWEEN_ON_FLOW),
    SamplerSpec("ddpm", stochastic.sample_ddpm, order=1, **_SDE, **_VP,
                note="VP arithmetic only (ComfyUI runs it on flow models too, and draws the wrong distribution)"),
    SamplerSpec("lcm", stochastic.sample_lcm, order=1, **_SDE),
    SamplerSpec("ipndm", ode.sample_ipndm, order=2, **_ODE,
                note="fourth-order Adams-Bashforth weights for equal steps; on smoothly varying sigmas it converges at order 2"),
    SamplerSpec("ipndm_v", ode.sample_ipndm_v, order=1, **_ODE,
                note="ComfyUI's variable-step weights: order 3 is exact only to first order on unequal steps and the "
                     "order-4 weights do not sum to 1 there, so the error stalls (~1e-4 relative) instead of converging"),
    SamplerSpec("deis", ode.sample_deis, order=3, **_ODE, note="tAB weights, max_order 3"),
    SamplerSpec("res_multistep", ode.sample_res_multistep, order=2, **_ODE),
    SamplerSpec("res_multistep_cfg_pp", ode.sample_res_multistep_cfg_pp, order=2, **_ODE, **_CFG_PP),
    SamplerSpec("res_multistep_ancestral", ode.sample_res_multistep_ancestral, order=2, **_SDE, **_VP,
                note="VP ancestral split (ComfyUI has no flow form)"),
    SamplerSpec("res_multistep_ancestral_cfg_pp", ode.sample_res_multistep_ancestral_cfg_pp, order=2, **_SDE,
                **_VP, **_CFG_PP, note="VP ancestral split (ComfyUI has no flow form)"),
    SamplerSpec("gradient_estimation", ode.sample_gradient_estimation, order=1, **_ODE,
                note="ge_gamma 2; the extrapolated slope 2 d_i - d_(i-1) keeps it first order"),
    SamplerSpec("gradient_estimation_cfg_pp", ode.sample_gradient_estimation_cfg_pp, order=1, **_ODE, **_CFG_PP),
    SamplerSpec("er_sde", stochastic.sample_er_sde, order=3, **_SDE, **_BETWEEN_ON_FLOW),
    SamplerSpec("seeds_2", stochastic.sample_seeds_2, order=2, evals_per_step=2, **_SDE, **_BETWEEN),
    SamplerSpec("seeds_3", stochastic.sample_seeds_3, order=3, evals_per_step=3, **_SDE, **_BETWEEN),
    SamplerSpec("sa_solver", sa_solver.sample_sa_solver, order=3, prefix_consistent=False, **_SDE, **_BETWEEN_ON_FLOW,
                note="noise (tau 1) only for sigma between percent_to_sigma(0.8) and (0.2); lower orders at the end"),
    SamplerSpec("sa_solver_pece", sa_solver.sample_sa_solver_pece, order=3, evals_per_step=2, prefix_consistent=False,
                **_SDE, **_BETWEEN_ON_FLOW, note="sa_solver with the corrected state evaluated again"),
    # ComfyUI's "ddim" is euler (plus an inpainting-noise seed the Unsampler never passes).
    SamplerSpec("ddim", ode.sample_euler, order=1, note="ComfyUI's ddim is euler", **_ODE),
    SamplerSpec("uni_pc", unipc.sample_uni_pc, order=3, discard_penultimate_sigma=True, prefix_consistent=False,
                note="order and final steps depend on the number of sigmas; ends at sigma 0.001 when sampling to 0",
                **_ODE),
    SamplerSpec("uni_pc_bh2", unipc.sample_uni_pc_bh2, order=3, discard_penultimate_sigma=True,
                prefix_consistent=False, inversion_caveats={"flow": (
                    "uni_pc_bh2 inverts flow models poorly: its B(h) = e^h - 1 weights grow on the last steps into "
                    "sigma 1 (alpha 0), where the denoised estimate changes fastest in log-SNR. Measured on an exact "
                    "Gaussian flow model ('simple' schedule), noise error relative to the exact PF-ODE noise: 16 at "
                    "20 steps, 1.9 at 40, 0.24 at 80 (uni_pc: 0.10, 0.022, 0.0045). Unsample with uni_pc or euler"),
                    "vp": (
                    "uni_pc_bh2 inverts eps / v models with SD's sigma table poorly: the Unsampler's first step, sigma "
                    "1e-4 to sigma_min + 1e-4 (SD: 0.0293), spans 5.7 in log-SNR whatever the number of steps, and its "
                    "weight B(h) = e^|h| - 1 (uni_pc: |h|) amplifies it, so the error does not fall with more steps. Measured on an exact "
                    "Gaussian with SD1.5's table ('normal' schedule), noise error relative to the exact PF-ODE noise: "
                    "303 at 10 steps, 26.8 at 50 (started after that first step: 0.0126, 0.00183; uni_pc: 0.632, 0.124; "
                    "euler: 0.161, 0.0351; dpmpp_2m: 0.0948, 0.0143). Unsample with dpmpp_2m or euler")},
                note="order and final steps depend on the number of sigmas; ends at sigma 0.001 when sampling to 0",
                **_ODE),
    SamplerSpec("ddim_inverse", ddim_inverse.sample_ddim_inverse, order=1, **_ODE, **_VP,
                note="diffusers' DDIMInverseScheduler: eps at the next timestep (VP models)"),
)

SAMPLER_SPECS: dict[str, SamplerSpec] = {s.name: s for s in _SPECS}
SAMPLERS: tuple[str, ...] = tuple(s.name for s in _SPECS)
INVERTIBLE_SAMPLERS: tuple[str, ...] = tuple(s.name for s in _SPECS
                                             if s.deterministic and s.runs_upwards and s.steps_follow_sigmas)
NOT_IMPLEMENTED: tuple[str, ...] = tuple(n for n in COMFYUI_SAMPLERS if n not in SAMPLER_SPECS)


def on_schedule_samplers(family: Family | None = None) -> tuple[str, ...]:
    """The invertible samplers that evaluate the model only at the schedule's sigmas on a model `family`
    (`SamplerSpec.evaluates_between_sigmas`, measured by tests/test_sampler_evaluations.py): those Direct
    Inversion can pin the source branch for. family None (no model at hand): those that do so on some family
    they serve."""
    def ok(spec: SamplerSpec) -> bool:
        between = spec.evaluates_between_sigmas
        if family is None:
            return not spec.families <= between
        return family in spec.families and family not in between

    return tuple(name for name in INVERTIBLE_SAMPLERS if ok(SAMPLER_SPECS[name]))


def get_sampler(name: str, *, invertible: bool = False, family: Family | None = None) -> SamplerSpec:
    """The registry entry for `name`; with `invertible`, refuse samplers that cannot run backwards; with
    `family` (the model's `model_sampling.family`), refuse samplers that have no form for that model family."""
    if name in NOT_IMPLEMENTED:
        choices = INVERTIBLE_SAMPLERS if invertible else SAMPLERS
        raise UnsamplingError(
            f"sampler {name!r} is one of ComfyUI's but not implemented in unsampling_lab; use one of "
            f"{', '.join(choices)}"
        )
    check_choice(name, SAMPLERS, what="sampler")
    spec = SAMPLER_SPECS[name]
    if invertible and not spec.deterministic:
        raise UnsamplingError(
            f"sampler {name!r} injects random noise at every step, so it cannot run backwards: on increasing "
            f"sigmas it yields an x0 estimate, fresh noise or NaN instead of the inverted latent. Unsample with a "
            f"deterministic sampler instead: {', '.join(INVERTIBLE_SAMPLERS)}, or record the noise {name!r} needs with ul.invert(..., method='edit_friendly', sampler_name={name!r}). (resample accepts {name!r}.)"
        )
    if invertible and not spec.steps_follow_sigmas:
        raise UnsamplingError(
            f"sampler {name!r} chooses its own steps between the first and last sigma ({spec.note}), so the "
            f"Unsampler's steps and end_at_step do not apply to it; unsample with one of "
            f"{', '.join(INVERTIBLE_SAMPLERS)}. (resample accepts {name!r}.)"
        )
    if invertible and not spec.runs_upwards:
        raise UnsamplingError(
            f"sampler {name!r} is deterministic but cannot run backwards ({spec.note}); unsample with one of "
            f"{', '.join(INVERTIBLE_SAMPLERS)}. (resample accepts {name!r}.)"
        )
    if family is not None and family not in spec.families:
        check_choice(family, FAMILIES, what="model family")
        serving = [n for n in (INVERTIBLE_SAMPLERS if invertible else SAMPLERS) if family in SAMPLER_SPECS[n].families]
        kind = {"flow": "flow (CONST: SD3, Flux)", "vp": "eps / v-prediction (SD1.x, SD2.x, SDXL)"}[family]
        raise UnsamplingError(
            f"sampler {name!r} has no form for {kind} models: it would draw the wrong distribution ({spec.note}). "
            f"Use one of {', '.join(serving)}"
        )
    return spec
