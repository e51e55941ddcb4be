"""Scheduler invariants, and sigma tables against independent references (k-diffusion, diffusers)."""
from __future__ import annotations

import pytest
import torch

import unsampling_lab as ul
from unsampling_lab.model_sampling import ModelSampling

from kdiffusion_ref import kdiffusion_sampling

TABLES = {
    "sd15_eps": ModelSampling.discrete(),
    "sd2_v": ModelSampling.discrete(prediction="v"),
    "sd3_flow": ModelSampling.flow(shift=3.0),
    "flux": ModelSampling.flux(shift=1.15),
}


@pytest.mark.parametrize("table", list(TABLES))
@pytest.mark.parametrize("scheduler", ul.SCHEDULERS)
@pytest.mark.parametrize("steps", [1, 2, 20])
def test_every_scheduler_gives_a_finite_descending_schedule_ending_in_zero(table, scheduler, steps):
    ms = TABLES[table]
    sigmas = ul.calculate_sigmas(ms, scheduler, steps)
    assert sigmas.dtype == torch.float32 and sigmas.ndim == 1
    assert torch.isfinite(sigmas).all(), sigmas
    assert float(sigmas[-1]) == 0.0
    # `beta` drops repeated timesteps, so it may return fewer steps; every other one returns exactly N
    assert len(sigmas) == steps + 1 or (scheduler == "beta" and 2 <= len(sigmas) <= steps + 1)
    assert bool((sigmas[:-1] > sigmas[1:]).all()), f"not strictly descending: {sigmas}"
    assert float(sigmas[0]) <= ms.sigma_max * (1 + 1e-6)


@pytest.mark.parametrize("steps", [1, 2, 7, 20])
def test_karras_and_exponential_match_kdiffusion(steps):
    k = kdiffusion_sampling()
    ms = TABLES["sd15_eps"]
    torch.testing.assert_close(ul.calculate_sigmas(ms, "karras", steps),
                               k.get_sigmas_karras(steps, ms.sigma_min, ms.sigma_max).float(), rtol=1e-6, atol=0)
    torch.testing.assert_close(ul.calculate_sigmas(ms, "exponential", steps),
                               k.get_sigmas_exponential(steps, ms.sigma_min, ms.sigma_max).float(), rtol=1e-6, atol=0)


@pytest.mark.parametrize("config", [
    dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="epsilon"),
    dict(beta_schedule="linear", beta_start=0.0001, beta_end=0.02, prediction_type="v_prediction"),
    dict(beta_schedule="squaredcos_cap_v2", prediction_type="epsilon"),
])
def test_discrete_table_matches_diffusers(config):
    """diffusers computes the table in float32; ours is float64-built (as ComfyUI): they agree up to
    diffusers' float32 rounding of 1 - alphas_cumprod at the smallest sigmas."""
    from diffusers import EulerDiscreteScheduler

    sched = EulerDiscreteScheduler(num_train_timesteps=1000, **config)
    expected = ((1 - sched.alphas_cumprod) / sched.alphas_cumprod) ** 0.5
    ms = ModelSampling.from_scheduler_config(sched.config)
    torch.testing.assert_close(ms.sigmas, expected.float(), rtol=5e-5, atol=3e-6)
    assert ms.prediction == {"epsilon": "eps", "v_prediction": "v"}[config["prediction_type"]]


def test_timestep_and_sigma_maps():
    ms = TABLES["sd15_eps"]
    assert int(ms.timestep(torch.tensor(ms.sigma_max))) == 999 and int(ms.timestep(torch.tensor(1e-4))) == 0
    t = torch.tensor([0.0, 10.5, 999.0])
    torch.testing.assert_close(ms.sigma(t)[[0, 2]], ms.sigmas[[0, 999]])
    cont = ModelSampling.continuous(sigma_min=0.01, sigma_max=50.0)
    s = torch.tensor([0.01, 0.37, 12.0, 50.0], dtype=torch.float64)
    torch.testing.assert_close(cont.sigma(cont.timestep(s)), s, rtol=1e-9, atol=0)
    sd3 = TABLES["sd3_flow"]
    torch.testing.assert_close(sd3.timestep_to_sigma(sd3.timestep(torch.tensor([0.3]))), torch.tensor([0.3]))


def test_bad_scheduler_input():
    ms = TABLES["sd15_eps"]
    with pytest.raises(ul.UnsamplingError, match="did you mean 'kl_optimal'"):
        ul.calculate_sigmas(ms, "kl_optimall", 10)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ul.UnsamplingError, match="steps must be (a whole number|>= 1)"):
            ul.calculate_sigmas(ms, "normal", bad)
    with pytest.raises(ul.UnsamplingError, match="prediction_type"):
        ModelSampling.from_scheduler_config({"prediction_type": "sample"})


def test_discard_penultimate_sigma():
    ms = TABLES["sd15_eps"]
    full = ul.calculate_sigmas(ms, "karras", 11)
    ours = ul.schedulers.sigma_schedule(ms, "karras", 10, discard_penultimate=True)
    assert len(ours) == 11 and torch.equal(ours, torch.cat([full[:-2], full[-1:]]))
