"""O-BELM (`method="belm"`): exact round trips on the exact Gaussian models, one step against the authors' code
(transcribed in VP variables), its local error against the exact ODE."""
from __future__ import annotations

import pytest
import torch

import unsampling_lab as ul
from exact_gaussian import DATA, F64, X0, denoise, rel
from unsampling_lab.inversion.belm import belm_down, belm_up
from unsampling_lab.models.analytic import gaussian_flow_model, gaussian_model





@pytest.mark.parametrize("family", ["vp", "flow"])
def test_round_trip_to_float64_precision(family):
    m = gaussian_model(DATA) if family == "vp" else gaussian_flow_model(DATA)
    for steps in (3, 12):
        kw = dict(steps=steps, progress=False)
        inv = ul.invert(m, X0, method="belm", **kw)
        assert inv.nfe == steps
        assert rel(ul.resample(m, inv, **kw), X0) < 1e-13


def test_one_step_matches_the_authors_code():
    """BELM.py's sampling step in VP latents (ᾱ = 1/(1 + σ²), α = √ᾱ, t = σ_vp/α): with p, t, s the previous,
    current and next levels, δ₁ = t_t − t_p, δ₂ = t_s − t_t, δ₃ = t_s − t_p,
    x_s = δ₂δ₃α_s/δ₁ ε + (δ₂/δ₁)² (α_s/α_p) x_p + (δ₁ − δ₂)δ₃/δ₁² (α_s/α_t) x_t."""
    g = torch.Generator().manual_seed(0)
    hi, mid, lo = (torch.tensor(v, dtype=F64) for v in (2.4, 1.3, 0.7))
    x_hi = X0 + hi * torch.randn(X0.shape, generator=g, dtype=F64)
    x = X0 + mid * torch.randn(X0.shape, generator=g, dtype=F64)
    alpha = lambda s: (1 / (1 + float(s) ** 2)) ** 0.5  # noqa: E731
    eps = (x - denoise(x, mid)) / mid
    a_p, a_t, a_s = alpha(hi), alpha(mid), alpha(lo)
    t_p, t_t, t_s = float(hi), float(mid), float(lo)  # σ_vp / α is the VE sigma
    d1, d2, d3 = t_t - t_p, t_s - t_t, t_s - t_p
    expected = (d2 * d3 * a_s / d1 * eps + (d2 / d1) ** 2 * (a_s / a_p) * (x_hi * a_p)
                + (d1 - d2) * d3 / d1**2 * (a_s / a_t) * (x * a_t))
    got, _ = belm_down(denoise, x_hi, x, hi, mid, lo)
    assert rel(got * a_s, expected) < 1e-13
    assert rel(belm_up(denoise, got, x, lo, mid, hi), x_hi) < 1e-13


def test_local_error_is_third_order():
    """From the exact ODE states at σ + h and σ, one step to σ − h misses the exact state by O(h³)."""
    x1 = DATA.ode_solution(X0.flatten(1), 0.0, 1.0)
    misses = []
    for h in (0.2, 0.1, 0.05):
        s = torch.tensor(1.0, dtype=F64)
        up, down = DATA.ode_solution(x1, 1.0, 1.0 + h), DATA.ode_solution(x1, 1.0, 1.0 - h)
        got, _ = belm_down(lambda x, sg: DATA.denoise(x, sg), up, x1, s + h, s, s - h)
        misses.append(float((got - down).norm()))
    assert 7.0 < misses[0] / misses[1] < 9.5 and 7.0 < misses[1] / misses[2] < 9.0, misses


def test_float32_round_trip_on_the_tiny_unet(sd_model, one_thread):
    m = sd_model  # its tiny UNet, conditioned by embeddings given directly
    latent = {"samples": torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))}
    kw = dict(steps=6, cfg=7.5, positive=torch.randn(1, 5, 32, generator=torch.Generator().manual_seed(1)),
              negative=torch.zeros(1, 5, 32), progress=False)
    inv = ul.invert(m, latent, method="belm", **kw)
    assert rel(ul.resample(m, inv, **kw)["samples"], latent["samples"]) < 3e-4  # measured 3.4e-5 (edict: 5.9e-3)
    with pytest.raises(ul.UnsamplingError, match="at least 2 steps"):
        ul.invert(m, latent, method="belm", **{**kw, "steps": 1})
