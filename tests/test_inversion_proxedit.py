"""ProxEdit (`method="proxedit"`): one step against the authors' code transcribed (PnPInversion's
proximal_guidance_diffusion_step + DDIMSchedulerDev), and NPI's resample when the pull is off and nothing is edited."""
from __future__ import annotations

import pytest
import torch

import unsampling_lab as ul
from exact_gaussian import rel
from unsampling_lab.inversion.proxedit import proxedit_step
from unsampling_lab.models.analytic import AnalyticModel
from unsampling_lab.models.gaussian import GaussianData

F64 = torch.float64



@pytest.mark.parametrize("prox", ["l0", "l1"])
def test_one_step_matches_the_authors_code(prox):
    """In VP latents (ᾱ = 1/(1 + σ²)): score_delta = ε_text − ε_uncond, threshold = quantile(|Δ|), Δ −= clamp(Δ, ±τ)
    (l1: then ∓τ), ε = ε_uncond + w Δ, x̂0 = (x − √(1 − ᾱ) ε)/√ᾱ, x̂0 −= lr (x̂0 − ref)(1 − [|Δ| > τ]),
    prev = √ᾱ′ x̂0 + √(1 − ᾱ′) ε."""
    g = torch.Generator().manual_seed(0)
    x, src, d_a, d_b = (torch.randn(2, 4, 6, 6, generator=g, dtype=F64) for _ in range(4))
    sigma, sigma_next = torch.tensor(3.0, dtype=F64), torch.tensor(1.7, dtype=F64)
    w, q, lr = 7.5, 0.7, 0.1
    got, _ = proxedit_step(x, sigma, sigma_next, d_src=d_a, d_tar=d_b, source=src, cfg=w, prox=prox, quantile=q,
                           recon_lr=lr)
    a, a_prev = 1 / (1 + 9.0), 1 / (1 + 1.7**2)
    latents = x * a**0.5
    eps_u, eps_t = (x - d_a) / 3.0, (x - d_b) / 3.0
    delta = eps_t - eps_u
    tau = delta.abs().quantile(q)
    delta = delta - delta.clamp(-tau, tau)
    if prox == "l1":
        delta = torch.where(delta > 0, delta - tau, delta)
        delta = torch.where(delta < 0, delta + tau, delta)
    mask_edit = (delta.abs() > tau).to(F64)
    eps = eps_u + w * delta
    x0 = (latents - (1 - a) ** 0.5 * eps) / a**0.5
    x0 = x0 - lr * (x0 - src) * (1 - mask_edit)
    prev = a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * eps
    assert rel(got * a_prev**0.5, prev) < 1e-6  # the quantile is taken in float32 here as in a float32 pipeline


def test_without_the_pull_and_without_an_edit_it_is_npi():
    data = {k: GaussianData(torch.tensor(m, dtype=F64), torch.tensor([0.7, 1.2], dtype=F64))
            for k, m in (("", [0.0, 0.0]), ("c", [0.5, -0.3]))}

    def denoise(x, sigma, label):
        s = sigma[:, None]
        return torch.where(label[:, None] < 0, data[""].denoise(x, s), data["c"].denoise(x, s))

    m = AnalyticModel(denoise, dim=2, labels=("c",))
    x0 = torch.tensor([[0.4, -1.0], [1.5, 0.2]], dtype=F64)[:, :, None, None]
    kw = dict(steps=8, cfg=5.0, positive="c", progress=False)
    inv = ul.invert(m, x0, method="proxedit", recon_lr=0.0, **kw)
    npi = ul.invert(m, x0, method="negative_prompt", **kw)
    assert torch.equal(inv.samples, npi.samples)
    # equal up to rounding: Euler's step takes σ′ − σ in the schedule's float32, the DDIM form σ′ and σ apart (~1e-8)
    assert rel(ul.resample(m, inv, **kw), ul.resample(m, npi, **kw)) < 1e-6
    with pytest.raises(ul.UnsamplingError, match="option prox must be one of 'l0', 'l1'"):
        ul.invert(m, x0, method="proxedit", prox="l2", **kw)


def test_edits_on_the_tiny_unet(sd_model, one_thread):
    latent = {"samples": torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))}
    kw = dict(steps=6, cfg=7.5, progress=False)
    inv = ul.invert(sd_model, latent, method="proxedit", positive="a red square", **kw)
    same = ul.resample(sd_model, inv, positive="a red square", **kw)["samples"]
    edit = ul.resample(sd_model, inv, positive="a blue circle", **kw)["samples"]
    assert torch.isfinite(edit).all() and rel(edit, same) > 1e-4
