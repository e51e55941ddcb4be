"""The registry's `inversion_caveats`, measured: every number a caveat quotes is computed here (exact Gaussian,
closed-form PF-ODE), so a caveat cannot drift from what the sampler does."""
from __future__ import annotations

import math

import pytest

from exact_gaussian import DATA, X0, denoise, rel
from unsampling_lab.engine import UNSAMPLE_SIGMA_OFFSET
from unsampling_lab.model_sampling import ModelSampling
from unsampling_lab.samplers import SAMPLER_SPECS
from unsampling_lab.schedulers import sigma_schedule


def noisy(sigma: float):
    """X0 carried exactly along the PF-ODE from the Unsampler's first sigma to sigma."""
    return DATA.ode_solution(X0.flatten(1), UNSAMPLE_SIGMA_OFFSET, sigma).reshape(X0.shape)


def _sd_unsampler_noise_error(name: str, steps: int, *, skip_first: bool = False) -> float:
    """The Unsampler's run on SD1.5's table ('normal' schedule, flipped, + 1e-4, as the engine builds it) from the exact
    state, float64, relative to the exact PF-ODE noise; skip_first: without the first step (1e-4 -> sigma_min + 1e-4)."""
    spec = SAMPLER_SPECS[name]
    schedule = sigma_schedule(ModelSampling.discrete(), "normal", steps, discard_penultimate=spec.discard_penultimate_sigma)
    sigmas = (schedule.flip(0) + UNSAMPLE_SIGMA_OFFSET).double()[int(skip_first):]
    return rel(spec.fn(denoise, noisy(float(sigmas[0])), sigmas), noisy(float(sigmas[-1])))


def test_uni_pc_bh2_eps_caveat_is_measured() -> None:
    """The registry's "vp" caveat for uni_pc_bh2 quotes these measurements (every number is printed here): its
    Unsampler error on SD's table does not fall with the steps, and the first step is why."""
    caveat = SAMPLER_SPECS["uni_pc_bh2"].inversion_caveats["vp"]
    sigma_1 = float(ModelSampling.discrete().sigmas[0]) + 1e-4
    quoted = [f"{sigma_1:.3g}", f"{math.log(sigma_1 / 1e-4):.2g}"]
    errors = {}
    for name, skip in (("uni_pc_bh2", False), ("uni_pc_bh2", True), ("uni_pc", False), ("euler", False),
                       ("dpmpp_2m", False)):
        errors[name, skip] = [_sd_unsampler_noise_error(name, n, skip_first=skip) for n in (10, 50)]
        quoted += [f"{e:.3g}" for e in errors[name, skip]]
    print(errors)
    assert all(q in caveat for q in quoted), (quoted, caveat)
    assert min(errors["uni_pc_bh2", False]) > 10 and max(errors["uni_pc_bh2", True]) < 0.02


def test_the_engine_warns_with_the_caveat_on_an_eps_model() -> None:
    import unsampling_lab as ul
    from unsampling_lab.models.analytic import gaussian_model

    with pytest.warns(ul.UnsamplingWarning, match="uni_pc_bh2 inverts eps / v models with SD's sigma table poorly"):
        ul.unsample(gaussian_model(DATA), X0, steps=3, sampler_name="uni_pc_bh2", progress=False)
