"""Edit-friendly noise-map inversion (`method="edit_friendly"`): every stochastic sampler passes through the drawn
states, the recorded draws against independent transcriptions (k-diffusion's samplers, the paper's DDPM z)."""
from __future__ import annotations

import pytest
import torch
from kdiffusion_ref import kdiffusion_sampling

import unsampling_lab as ul
from exact_gaussian import DATA, X0, denoise, rel
from unsampling_lab.inversion.edit_friendly import EDIT_FRIENDLY_SAMPLERS, replay_noise
from unsampling_lab.models.analytic import gaussian_flow_model, gaussian_model
from unsampling_lab.samplers import get_sampler

KW = dict(steps=6, progress=False)




def passes(m, inv, sampler: str, **kw) -> tuple[float, list[torch.Tensor]]:
    """Resample the inversion; return the worst relative distance of its step states from the drawn states."""
    xs: list[torch.Tensor] = []
    out = ul.resample(m, inv, sampler_name=sampler, callback=lambda s: xs.append(s.x), **KW, **kw)
    states = inv.resampling["states"]
    assert len(xs) == len(states) - 1
    return max(rel(x, s) for x, s in zip(xs, states)), out


@pytest.mark.parametrize("family", ["vp", "flow"])
def test_every_sampler_lands_on_every_drawn_state_and_reproduces_the_latent(family):
    m = gaussian_model(DATA) if family == "vp" else gaussian_flow_model(DATA)
    for sampler in EDIT_FRIENDLY_SAMPLERS:
        if sampler == "ddpm" and family == "flow":
            continue
        inv = ul.invert(m, X0, method="edit_friendly", sampler_name=sampler, **KW)
        worst, back = passes(m, inv, sampler)
        assert worst < 1e-10, (sampler, worst)
        assert rel(back, X0) < 1e-14, sampler
        assert inv.nfe == get_sampler(sampler).evals_per_step * 6 - (get_sampler(sampler).evals_per_step - 1)
        # a state drawn at sigma from x0 + sigma eps (VP) or (1 - sigma) x0 + sigma eps (flow): eps is standard normal-ish
        sig = inv.resampling["sigmas"]
        eps = torch.stack([(s - (1 - float(t) if family == "flow" else 1.0) * X0) / float(t)
                           for s, t in zip(inv.resampling["states"][1:-1], sig[1:-1])])
        assert 0.4 < float(eps.std()) < 1.8


def test_draws_match_k_diffusions_samplers_fed_the_same_noise():
    """k-diffusion's own sample_* (VP), given the recorded draws as its noise_sampler, pass through the drawn states."""
    K = kdiffusion_sampling()
    m = gaussian_model(DATA)
    for sampler, fn in [("euler_ancestral", K.sample_euler_ancestral), ("dpm_2_ancestral", K.sample_dpm_2_ancestral),
                        ("dpmpp_2s_ancestral", K.sample_dpmpp_2s_ancestral), ("dpmpp_sde", K.sample_dpmpp_sde),
                        ("dpmpp_2m_sde", K.sample_dpmpp_2m_sde), ("dpmpp_3m_sde", K.sample_dpmpp_3m_sde)]:
        inv = ul.invert(m, X0, method="edit_friendly", sampler_name=sampler, **KW)
        data = inv.resampling
        sigmas = data["sigmas"]
        seen: list[torch.Tensor] = []
        fn(denoise, data["states"][0], sigmas, disable=True,
           noise_sampler=replay_noise(data["draws"]), callback=lambda d: seen.append(d["x"]))
        assert len(seen) == len(sigmas) - 1
        worst = max(rel(x, s) for x, s in zip(seen, data["states"]))
        # the SDE samplers take lambda = -log sigma and h of the schedule's float32 sigmas, as ComfyUI does;
        # k-diffusion rounds them differently (dpmpp_sde's stage sigma 9.608997 vs 9.608996), ~1e-7 on the states
        assert worst < (1e-9 if "ancestral" in sampler else 1e-6), (sampler, worst)


def test_ddpm_draws_are_the_papers_z():
    """The paper's zₜ = (xₜ₋₁ − μₜ(xₜ)) / σₜ in its code's (DDIM, eta 1) form, transcribed in VP variables:
    ᾱ = 1/(1 + σ²), x_vp = x/√(1 + σ²), x̂0 = (x_vp − √(1 − ᾱ) ε)/√ᾱ, var = (1 − ᾱ′)/(1 − ᾱ) (1 − ᾱ/ᾱ′),
    μ = √ᾱ′ x̂0 + √(1 − ᾱ′ − var) ε."""
    m = gaussian_model(DATA)
    inv = ul.invert(m, X0, method="edit_friendly", sampler_name="ddpm", **KW)
    sig, states, draws = inv.resampling["sigmas"], inv.resampling["states"], inv.resampling["draws"]
    assert len(draws) == len(sig) - 2 and inv.resampling["correction"] is not None
    for i, z in enumerate(draws):
        s = float(sig[i])
        a, a_prev = (float(1 / (sig[j] * sig[j] + 1)) for j in (i, i + 1))  # ᾱ rounded as ddpm's (float32 sigmas)
        eps = (states[i] - denoise(states[i], s)) / s
        x_vp, x_prev_vp = states[i] * a**0.5, states[i + 1] * a_prev**0.5
        x0_pred = (x_vp - (1 - a) ** 0.5 * eps) / a**0.5
        var = (1 - a_prev) / (1 - a) * (1 - a / a_prev)
        mu = a_prev**0.5 * x0_pred + (1 - a_prev - var) ** 0.5 * eps
        assert rel(z, (x_prev_vp - mu) / var**0.5) < 1e-5, i  # ddpm's ᾱ from float32 sigmas, as ComfyUI's


def test_eta_skip_and_an_edit():
    m = gaussian_model(DATA)
    inv = ul.invert(m, X0, method="edit_friendly", sampler_name="euler_ancestral", eta=0.5, end_at_step=2, **KW)
    assert len(inv.resampling["sigmas"]) == 5  # the paper's T_skip: resampling starts at step 2 of 6
    worst, back = passes(m, inv, "euler_ancestral", start_at_step=2)
    assert worst < 1e-12 and rel(back, X0) < 1e-14
    other = ul.invert(m, X0, method="edit_friendly", sampler_name="euler_ancestral", eta=0.5, end_at_step=2, seed=1, **KW)
    assert rel(other.resampling["states"][1], inv.resampling["states"][1]) > 0.1  # the seed draws other states


def test_bad_calls_are_refused_with_what_to_do():
    m, mf = gaussian_model(DATA), gaussian_flow_model(DATA)
    with pytest.raises(ul.UnsamplingError, match="method='edit_friendly'"):
        ul.unsample(m, X0, sampler_name="euler_ancestral", **KW)
    with pytest.raises(ul.UnsamplingError, match="sampler_name in .*euler_ancestral.*fixed_point"):
        ul.invert(m, X0, method="edit_friendly", sampler_name="euler", **KW)
    with pytest.raises(ul.UnsamplingError, match="no eta option.*euler_ancestral"):
        ul.invert(m, X0, method="edit_friendly", sampler_name="dpmpp_2m_sde", eta=0.5, **KW)
    with pytest.raises(ul.UnsamplingError, match="eta must be > 0"):
        ul.invert(m, X0, method="edit_friendly", sampler_name="euler_ancestral", eta=0.0, **KW)
    with pytest.raises(ul.UnsamplingError, match="ddpm"):
        ul.invert(mf, X0, method="edit_friendly", sampler_name="ddpm", **KW)
    inv = ul.invert(m, X0, method="edit_friendly", sampler_name="lcm", **KW)
    with pytest.raises(ul.UnsamplingError, match="sampler_name='lcm'"):
        ul.resample(m, inv, sampler_name="euler_ancestral", **KW)
    with pytest.raises(ul.UnsamplingError, match="steps=6"):
        ul.resample(m, inv, sampler_name="lcm", steps=5, progress=False)


@pytest.mark.parametrize("sampler", ["euler_ancestral", "dpmpp_2m_sde", "dpmpp_sde"])
def test_float32_round_trip_on_the_tiny_unet_and_an_edit_differs(sd_model, one_thread, sampler):
    g = torch.Generator().manual_seed(0)
    latent = {"samples": torch.randn(1, 4, 8, 8, generator=g)}
    kw = dict(steps=4, cfg=3.0, positive="a red square", negative="", sampler_name=sampler, progress=False)
    inv = ul.invert(sd_model, latent, method="edit_friendly", **kw)
    back = ul.resample(sd_model, inv, **kw)["samples"]
    assert rel(back, latent["samples"]) < 1e-5
    edit = ul.resample(sd_model, inv, **{**kw, "positive": "a blue circle"})["samples"]
    assert rel(edit, latent["samples"]) > 1e-3


def test_float32_round_trip_on_a_tiny_sd3_transformer(one_thread):
    from unsampling_lab.testing import tiny_flow_model

    from unsampling_lab.models.base import Conditioning

    m = tiny_flow_model("sd3")
    g = torch.Generator().manual_seed(0)
    latent = {"samples": torch.randn(1, 4, 8, 8, generator=g)}
    cond = Conditioning(torch.randn(1, 3, 16, generator=g), torch.randn(1, 8, generator=g))
    kw = dict(steps=4, cfg=2.0, positive=cond, negative=Conditioning(torch.zeros(1, 3, 16), torch.zeros(1, 8)),
              sampler_name="euler_ancestral", scheduler="simple", progress=False)
    inv = ul.invert(m, latent, method="edit_friendly", **kw)
    assert rel(ul.resample(m, inv, **kw)["samples"], latent["samples"]) < 1e-5
