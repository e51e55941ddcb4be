"""Uni-Inv (`method="uni_inv"`): its loop against the authors' `denoise_uniinv` transcribed, and better round trips
than the Unsampler at the same cost on the exact Gaussian flow model."""
from __future__ import annotations

import torch

import unsampling_lab as ul
from exact_gaussian import rel
from unsampling_lab.inversion.uni_inv import sample_uni_inv
from unsampling_lab.models.analytic import gaussian_flow_model, gaussian_model
from unsampling_lab.models.gaussian import GaussianData

F64 = torch.float64
DATA = GaussianData(torch.tensor([0.3, -0.5, 1.0, 0.0], dtype=F64), torch.tensor([0.5, 1.0, 0.8, 1.5], dtype=F64))
X0 = torch.tensor([[0.1, 0.4, -1.2, 2.0], [1.0, -2.0, 0.5, 0.3]], dtype=F64)



def test_loop_matches_the_authors_denoise_uniinv():
    """UniEdit-Flow_FLUX/src/flux/sampling.py, inverse: pred = the previous step's pred_next (the model at the first
    step), img_next = img + (t_prev − t_curr) pred, pred_next = v(img_next, t_prev), img += (t_prev − t_curr) pred_next."""
    v = lambda x, t: (x - DATA.denoise_flow(x, t)) / t  # noqa: E731
    ts = [0.05, 0.2, 0.45, 0.7, 0.9]
    sigmas = torch.tensor([0.0] + ts, dtype=F64)  # ours: the first predictor's velocity at (x0, sigma_1)
    ours = sample_uni_inv(lambda x, s: DATA.denoise_flow(x, s[:, None]), X0.clone(), sigmas)
    # the first step differs only in where the first predictor is evaluated; from the same first state on they agree
    first = X0 + 0.05 * v(X0 + 0.05 * v(X0, 0.05), 0.05)
    img2, pred_next = first, v(X0 + 0.05 * v(X0, 0.05), 0.05)
    for t_curr, t_prev in zip(ts[:-1], ts[1:]):
        img_next = img2 + (t_prev - t_curr) * pred_next
        pred_next = v(img_next, t_prev)
        img2 = img2 + (t_prev - t_curr) * pred_next
    assert rel(ours, img2) < 1e-14


def test_round_trip_beats_the_unsampler():
    for m in (gaussian_flow_model(DATA), gaussian_model(DATA)):
        x0 = X0[:, :, None, None]
        kw = dict(steps=20, scheduler="simple", progress=False)
        errs = {}
        for method in ("unsampler", "uni_inv"):
            inv = ul.invert(m, x0, method=method, **kw)
            errs[method] = rel(ul.resample(m, inv, **kw), x0)
        print(m.model_sampling.prediction, errs)
        assert inv.nfe == 21 and errs["uni_inv"] * 2.5 < errs["unsampler"], errs
