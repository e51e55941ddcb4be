"""The notebooks' helpers (lab/teaching.py) against independent answers: textbook intervals, exact rates,
and the engine called by hand."""
from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

import unsampling_lab as ul
from unsampling_lab.errors import UnsamplingError
from unsampling_lab.lab import teaching

pytestmark = pytest.mark.usefixtures("one_thread")


def test_wilson_interval_matches_the_textbook_values():
    # 5 of 10: Wilson 95% interval 0.2366-0.7634 (Brown, Cai & DasGupta 2001, Table 1 style check by hand)
    df = pd.DataFrame({"g": 0, "hit": [1.0] * 5 + [0.0] * 5})
    r = teaching.rates(df, by=["g"], columns=["hit"]).iloc[0]
    assert (r["hit"], r["n"]) == (0.5, 10)
    assert r["hit_lo"] == pytest.approx(0.2366, abs=1e-4) and r["hit_hi"] == pytest.approx(0.7634, abs=1e-4)
    # 12 of 12: the upper end stays 1, the lower end is n / (n + z^2)
    r = teaching.rates(pd.DataFrame({"g": 0, "hit": [1.0] * 12}), by=["g"], columns=["hit"]).iloc[0]
    assert r["hit_hi"] == pytest.approx(1.0) and r["hit_lo"] == pytest.approx(12 / (12 + 1.96**2))


def test_loglog_slopes_recover_known_rates():
    rows = [dict(steps=n, cfg=c, relative_error=3.0 * c * n ** (-1.0 if c == 1.0 else -2.0))
            for n in (5, 10, 20, 40) for c in (1.0, 2.0)]
    slopes = teaching.loglog_slopes(pd.DataFrame(rows))
    assert slopes[1.0] == pytest.approx(-1.0) and slopes[2.0] == pytest.approx(-2.0)


def test_steps_for_budget_counts_network_evaluations():
    assert teaching.steps_for_budget("euler", 20) == 20
    assert teaching.steps_for_budget("heun", 20) == 10
    assert teaching.steps_for_budget("heun", 1) == 1
    with pytest.raises(UnsamplingError):
        teaching.steps_for_budget("eulr", 20)


def test_noise_report_tells_noise_from_scaled_noise():
    """A trajectory whose last state is exact N(0, sigma^2) noise scores |z| small; half of it shows the std deficit."""
    ms = ul.ModelSampling.discrete()
    g = torch.Generator().manual_seed(0)
    x0 = torch.zeros(1, 4, 16, 16)
    sigma = float(ms.sigma_max)

    class Model:
        model_sampling = ms

    for scale, deficit in ((1.0, False), (0.5, True)):
        last = scale * sigma * torch.randn(1, 4, 16, 16, generator=g)
        traj = ul.Trajectory(sigmas=torch.tensor([1e-4, sigma]), xs=torch.stack([x0, last]), denoised=x0[None],
                             params={"steps": 1})
        report = teaching.noise_report(Model(), traj)
        std, std_z = report.loc["unsampled", ["std", "std_z"]]
        assert std == pytest.approx(scale, rel=0.05)
        assert (abs(std_z) > 10) == deficit, report


def test_noise_spread_is_one_for_an_exact_model_with_many_steps():
    mixture, toy = teaching.toy_model()
    x0, _ = teaching.toy_data(mixture, 400, seed=0)
    table = teaching.noise_spread(toy, x0, steps=[5, 100])
    assert table["ratio"].iloc[0] < table["ratio"].iloc[1] and abs(table["ratio"].iloc[1] - 1) < 0.1


@pytest.fixture(scope="module")
def bundled():
    try:
        return ul.load_model(device="cpu")
    except UnsamplingError:
        pytest.skip("the bundled model is missing")


def test_edit_grid_is_invert_then_resample_by_hand(bundled):
    from unsampling_lab.bundled.shapes import make_shapes

    shapes = make_shapes(2, seed=5)
    rows, images = teaching.edit_grid(bundled, shapes.images, source=shapes.captions, edit=["blue circle", "red cross"],
                                      end_at_steps=[2], invert_cfgs=[1.0], resample_cfgs=[3.0], steps=4)
    latent = bundled.encode(shapes.images)
    noise = ul.unsample(bundled, latent, steps=4, end_at_step=2, cfg=1.0, positive=shapes.captions, progress=False)
    out = ul.resample(bundled, noise, steps=4, start_at_step=2, cfg=3.0, positive=["blue circle", "red cross"],
                      progress=False)
    decoded = bundled.decode(out)
    assert torch.allclose(images[(1.0, 3.0, 2)], decoded, atol=1e-5)
    psnr = ul.metrics.psnr(decoded, shapes.images)
    assert rows["psnr"].tolist() == pytest.approx(psnr.tolist(), rel=1e-5)
    assert rows["edit"].tolist() == ["blue circle", "red cross"] and set(rows["resample_cfg"]) == {3.0}
    assert rows["colour_match"].notna().all(), "per-item edit prompts reach the detector"
    assert not math.isnan(rows["fg_iou"].iloc[0])


def test_compare_methods_is_invert_then_resample_by_hand(bundled):
    from unsampling_lab.bundled import detector
    from unsampling_lab.bundled.shapes import make_shapes

    shapes = make_shapes(2, seed=5)
    edits = ["blue circle", "red cross"]
    settings = [("plain", "unsampler", {}), ("exact", "edict", {})]
    table, decoded = teaching.compare_methods(bundled, shapes.images, settings, source=shapes.captions, edit=edits,
                                              steps=4, cfg=3.0)
    assert table["label"].tolist() == ["plain", "exact"] and table["nfe"].tolist() == [4, 8]
    latent = bundled.encode(shapes.images)
    inv = ul.invert(bundled, latent, method="edict", steps=4, cfg=3.0, positive=shapes.captions, progress=False)
    back = ul.resample(bundled, inv, steps=4, cfg=3.0, positive=shapes.captions, progress=False)
    edited = bundled.decode(ul.resample(bundled, inv, steps=4, cfg=3.0, positive=edits, progress=False))
    exact = table.iloc[1]
    assert exact["psnr"] == pytest.approx(float(ul.metrics.psnr(bundled.decode(back), bundled.decode(latent)).mean()),
                                          rel=1e-5)
    assert torch.allclose(decoded[("exact", "edit")], edited[0], atol=1e-5)
    found = detector.detect(edited)
    want = [c == t.split()[0] and s == t.split()[1] for c, s, t in zip(found.colours, found.shapes, edits)]
    assert exact["edit_success"] == pytest.approx(sum(want) / 2)
    assert exact["fg_iou"] == pytest.approx(float(detector.foreground_iou(found.masks, detector.detect(shapes.images).masks).mean()),
                                            rel=1e-5)


def test_implicit_step_closes_in_by_q_on_a_gaussian_and_plain_inversion_misses_by_q_squared():
    from unsampling_lab.models.gaussian import GaussianData

    mu, s_u, s_c, w = 0.3, 1.2, 0.5, 3.0
    d_u, d_c = GaussianData(mean=mu, std=s_u), GaussianData(mean=mu, std=s_c)
    x = torch.tensor([[1.7], [-0.4]], dtype=torch.float64)
    for cfg, den in ((1.0, d_u.denoise), (w, lambda y, s: d_u.denoise(y, s) + w * (d_c.denoise(y, s) - d_u.denoise(y, s)))):
        q = teaching.gaussian_contraction([0.8, 1.1], data_std=s_u, cond_std=s_c if cfg != 1.0 else None, cfg=cfg).item()
        ys = teaching.implicit_step(den, x, 0.8, 1.1, iters=200)
        exact = mu + (x - mu) / (1 - q)  # the closed form
        assert ys[-1] == pytest.approx(exact, rel=1e-7)
        assert ((ys[2] - ys[1]) / (ys[1] - ys[0])) == pytest.approx(torch.full_like(x, q))
        assert ((ys[1] - exact).abs() / (exact - mu).abs()) == pytest.approx(torch.full_like(x, q**2))  # plain: 1 - q^2
    assert teaching.gaussian_contraction([0.8, 1.1], data_std=s_u).item() == pytest.approx(0.3 * 1.1 / (s_u**2 + 1.21))
    q1, q3 = (teaching.gaussian_contraction([0.8, 1.1], data_std=s_u, cond_std=s_c, cfg=c).item() for c in (1.0, 3.0))
    assert q3 > q1  # a tighter conditional: guidance raises q
    with pytest.raises(UnsamplingError, match="ascending"):
        teaching.gaussian_contraction([1.1, 0.8], data_std=1.0)


def test_measured_contraction_matches_the_gaussian_closed_form():
    from unsampling_lab.models.analytic import mixture_model
    from unsampling_lab.models.gaussian import GaussianMixture

    mix = GaussianMixture(means=torch.tensor([[0.5, -0.5]], dtype=torch.float64), stds=torch.tensor([0.7], dtype=torch.float64),
                          weights=torch.tensor([1.0], dtype=torch.float64))
    model = mixture_model(mix, labels=["a"])
    x0 = torch.randn(3, 2, 1, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    got = teaching.measured_contraction(model, x0, steps=6, positive="a")
    sig = (ul.unsample_sigmas(model, steps=6, end_at_step=0, sampler_name="euler", scheduler="normal")).tolist()
    want = teaching.gaussian_contraction(sig, data_std=0.7)
    for _, row in got.iterrows():
        assert row["q"] == pytest.approx(float(want[int(row["step"])]), rel=1e-4)
    m, lo, hi = teaching.mean_interval([1.0, 2.0, 3.0])
    assert (m, hi - m) == (2.0, pytest.approx(1.96 / math.sqrt(3)))
