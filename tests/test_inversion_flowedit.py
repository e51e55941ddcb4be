"""FlowEdit (`method="flowedit"`): target = source gives the source back, and on an exact Gaussian flow model the
edit converges to the closed form of the paper's ODE."""
from __future__ import annotations

import pytest
import torch

import unsampling_lab as ul
from exact_gaussian import rel
from unsampling_lab.inversion.flowedit import closed_form_edit
from unsampling_lab.models.analytic import AnalyticModel
from unsampling_lab.models.gaussian import GaussianData

F64 = torch.float64
STD = torch.tensor([0.5, 1.0, 0.8, 1.5], dtype=F64)
MEANS = {"": torch.tensor([0.0, 0.0, 0.0, 0.0], dtype=F64), "src": torch.tensor([0.3, -0.5, 1.0, 0.0], dtype=F64),
         "tar": torch.tensor([-0.4, 0.6, 0.2, 1.0], dtype=F64)}
X0 = torch.tensor([[0.1, 0.4, -1.2, 2.0], [1.0, -2.0, 0.5, 0.3]], dtype=F64)[:, :, None, None]


def flow_classes() -> AnalyticModel:
    """x0 ~ N(MEANS[prompt], STD²) per dimension, exact flow denoiser per class label (−1: "")."""
    data = [GaussianData(MEANS[k], STD) for k in ("", "src", "tar")]

    def denoise(x, sigma, label):
        s = sigma[:, None]
        out = torch.stack([d.denoise_flow(x, s) for d in data])  # [3, B, D]
        return out[label + 1, torch.arange(x.shape[0])]

    return AnalyticModel(denoise, dim=4, labels=("src", "tar"), prediction="flow")



def test_target_equal_to_source_returns_the_source_unchanged():
    m = flow_classes()
    inv = ul.invert(m, X0, method="flowedit", steps=10, cfg=2.0, positive="src", n_max=7, n_avg=2, progress=False)
    assert inv.nfe == 0 and torch.equal(inv.samples, X0)
    out = ul.resample(m, inv, steps=10, cfg=2.0, positive="src", progress=False)
    assert torch.equal(out, X0)


def test_edit_converges_to_the_closed_form_of_the_papers_ode():
    m = flow_classes()
    cfg_src, cfg_tar = 2.0, 3.0
    mu_src = MEANS[""] + cfg_src * (MEANS["src"] - MEANS[""])
    mu_tar = MEANS[""] + cfg_tar * (MEANS["tar"] - MEANS[""])
    errs = []
    for steps in (50, 100, 200):
        n_max = int(steps * 0.66)
        inv = ul.invert(m, X0, method="flowedit", steps=steps, cfg=cfg_src, positive="src", n_max=n_max, progress=False)
        out = ul.resample(m, inv, steps=steps, cfg=cfg_tar, positive="tar", scheduler="simple", progress=False)
        sigma0 = float(ul.resample_sigmas(m, steps=steps, scheduler="simple")[steps - n_max])
        exact = closed_form_edit(X0, mu_src[None, :, None, None], mu_tar[None, :, None, None],
                                 STD[None, :, None, None], sigma0)
        errs.append(rel(out - X0, exact - X0))
    print("flowedit vs closed form, 50/100/200 steps:", errs)
    assert errs[-1] < 2e-2 and 1.7 < errs[0] / errs[1] < 2.3 and 1.7 < errs[1] / errs[2] < 2.3, errs  # first order


def test_the_difference_does_not_depend_on_the_noise_here_and_bad_calls():
    m = flow_classes()
    kw = dict(steps=10, cfg=2.0, positive="src", n_max=6, progress=False)
    one = ul.resample(m, ul.invert(m, X0, method="flowedit", **kw), steps=10, cfg=3.0, positive="tar", progress=False)
    many = ul.resample(m, ul.invert(m, X0, method="flowedit", **{**kw, "n_avg": 3, "seed": 4}), steps=10, cfg=3.0,
                       positive="tar", progress=False)
    assert rel(one, many) < 1e-12  # A(σ) is shared by both prompts: the noise cancels (module docstring)
    with pytest.raises(ul.UnsamplingError, match="n_max=6 is more than the 5 steps"):
        ul.resample(m, ul.invert(m, X0, method="flowedit", **kw), steps=5, cfg=3.0, positive="tar", progress=False)
    with pytest.raises(ul.UnsamplingError, match="serves flow models"):
        ul.invert(_vp(), X0,
                  method="flowedit", progress=False)


def _vp():
    from unsampling_lab.models.analytic import gaussian_model

    return gaussian_model(GaussianData(MEANS["src"], STD))


def test_runs_on_a_tiny_sd3_transformer(one_thread):
    from unsampling_lab.models.base import Conditioning
    from unsampling_lab.testing import tiny_flow_model

    m = tiny_flow_model("sd3")
    g = torch.Generator().manual_seed(0)
    latent = {"samples": torch.randn(1, 4, 8, 8, generator=g)}
    src, tar = (Conditioning(torch.randn(1, 3, 16, generator=g), torch.randn(1, 8, generator=g)) for _ in range(2))
    kw = dict(steps=6, scheduler="simple", negative=Conditioning(torch.zeros(1, 3, 16), torch.zeros(1, 8)),
              progress=False)
    inv = ul.invert(m, latent, method="flowedit", cfg=2.0, positive=src, n_max=4, **kw)
    same = ul.resample(m, inv, cfg=2.0, positive=src, **kw)
    assert torch.equal(same["samples"], latent["samples"])
    edited = ul.resample(m, inv, cfg=4.0, positive=tar, **kw)["samples"]
    assert torch.isfinite(edited).all() and rel(edited, latent["samples"]) > 1e-3
