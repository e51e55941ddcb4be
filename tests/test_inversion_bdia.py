"""BDIA (`method="bdia"`): exact round trips on the exact Gaussian models, one step against the authors' code
(transcribed in VP variables), better noise than the Unsampler's at the same evaluations."""
from __future__ import annotations

import pytest
import torch

import unsampling_lab as ul
from exact_gaussian import DATA, F64, X0, denoise, rel
from unsampling_lab.inversion.bdia import bdia_down, bdia_up
from unsampling_lab.models.analytic import gaussian_flow_model, gaussian_model





@pytest.mark.parametrize("family", ["vp", "flow"])
@pytest.mark.parametrize("gamma", [1.0, 0.5])
def test_round_trip_to_float64_precision(family, gamma):
    m = gaussian_model(DATA) if family == "vp" else gaussian_flow_model(DATA)
    kw = dict(steps=10, cfg=1.0, progress=False)
    inv = ul.invert(m, X0, method="bdia", gamma=gamma, **kw)
    assert inv.nfe == 10
    assert rel(ul.resample(m, inv, **kw), X0) < 1e-13


def test_one_step_matches_the_authors_code():
    """bdia_edict_functions.py, reverse mode: new = latent_prev/γ − forward_step(t → t_prev)/γ + reverse_step(t → t_next),
    with DDIM's alpha_quotient form in VP latents u = x √ᾱ, ᾱ = 1/(1 + σ²), ε = (x − D)/σ."""
    g = torch.Generator().manual_seed(0)
    lo, mid, hi, gamma = torch.tensor(0.7, dtype=F64), torch.tensor(1.3, dtype=F64), torch.tensor(2.4, dtype=F64), 0.8
    x_lo, x = X0 + lo * torch.randn(X0.shape, generator=g, dtype=F64), X0 + mid * torch.randn(X0.shape, generator=g, dtype=F64)
    abar = lambda s: 1 / (1 + float(s) ** 2)  # noqa: E731
    eps = (x - denoise(x, mid)) / mid
    latent, latent_prev = x * abar(mid) ** 0.5, x_lo * abar(lo) ** 0.5

    def ddim(to):
        q = (abar(to) / abar(mid)) ** 0.5
        return q * latent + (1 - abar(to)) ** 0.5 * eps - q * (1 - abar(mid)) ** 0.5 * eps

    expected = latent_prev / gamma - ddim(lo) / gamma + ddim(hi)
    got = bdia_up(denoise, x_lo, x, lo, mid, hi, gamma=gamma) * abar(hi) ** 0.5
    assert rel(got, expected) < 1e-13
    back, _ = bdia_down(denoise, bdia_up(denoise, x_lo, x, lo, mid, hi, gamma=gamma), x, hi, mid, lo, gamma=gamma)
    assert rel(back, x_lo) < 1e-13


def test_noise_is_second_order_and_beats_the_unsampler():
    m = gaussian_model(DATA)
    errs = {}
    for method in ("unsampler", "bdia"):
        for steps in (20, 40):
            inv = ul.invert(m, X0, method=method, steps=steps, scheduler="karras", progress=False)
            top = float(ul.resample_sigmas(m, steps=steps, scheduler="karras")[0])
            exact = DATA.ode_solution(X0.flatten(1), 0.0, top).reshape(X0.shape)
            errs[method, steps] = rel(inv.samples, exact)
    assert errs["bdia", 20] / errs["bdia", 40] > 3.5  # second order (the Unsampler's ratio is 2)
    assert errs["bdia", 20] * 10 < errs["unsampler", 20]


def test_float32_round_trip_on_the_tiny_unet_and_bad_gamma(sd_model, one_thread):
    m = sd_model  # its tiny UNet, conditioned by embeddings given directly
    latent = {"samples": torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))}
    kw = dict(steps=6, cfg=3.0, positive=torch.randn(1, 5, 32, generator=torch.Generator().manual_seed(1)),
              negative=torch.zeros(1, 5, 32), progress=False)
    inv = ul.invert(m, latent, method="bdia", **kw)
    assert rel(ul.resample(m, inv, **kw)["samples"], latent["samples"]) < 1e-3  # measured 6.6e-5
    with pytest.raises(ul.UnsamplingError, match="gamma must be in"):
        ul.invert(m, latent, method="bdia", gamma=0.0, **kw)
    with pytest.raises(ul.UnsamplingError, match="start_at_step"):
        ul.resample(m, inv, **{**kw, "steps": 5})
