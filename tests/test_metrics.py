"""Metrics against known answers; metrics.trajectory_frame; Trajectory save / load."""
from __future__ import annotations

import math

import pytest
import torch

from unsampling_lab.analysis import metrics as M
from unsampling_lab.model_sampling import ModelSampling
from unsampling_lab.trajectory import Trajectory


def test_latent_errors_known_values():
    x = torch.ones(2, 4, 3, 3)
    x_hat = x.clone()
    x_hat[1] += 0.5
    assert M.latent_mse(x_hat, x).tolist() == [0.0, 0.25]
    assert M.relative_error(x_hat, x).tolist() == pytest.approx([0.0, 0.5])


def test_psnr_of_known_mse():
    assert float(M.psnr_from_mse(0.01)) == pytest.approx(20.0)
    assert float(M.psnr_from_mse(0.01, data_range=2.0)) == pytest.approx(20.0 + 20 * math.log10(2))
    ref = torch.full((1, 8, 8, 3), 0.5)
    assert float(M.psnr(ref + 0.1, ref)[0]) == pytest.approx(20.0)  # mse = 0.01
    assert math.isinf(float(M.psnr(ref, ref)[0]))


def test_ssim_identical_is_one_and_noise_lowers_it():
    g = torch.Generator().manual_seed(0)
    img = torch.rand(2, 16, 16, 3, generator=g)
    assert M.ssim(img, img).tolist() == pytest.approx([1.0, 1.0])
    noisy = (img + 0.3 * torch.randn(img.shape, generator=g)).clamp(0, 1)
    s = M.ssim(noisy, img)
    assert (s < 0.9).all() and (s > -1).all()
    assert M.ssim(img[:, :5, :5], img[:, :5, :5]).tolist() == pytest.approx([1.0, 1.0])  # window shrinks


def test_ks_statistic_normal_small_shifted_large():
    z = torch.randn(100_000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    d = M.ks_statistic(z)
    assert d < 0.01 and math.sqrt(z.numel()) * d < 2.0
    assert M.ks_statistic(z + 0.5) > 0.15  # Phi(0.25) - Phi(-0.25) ~ 0.197


def test_moments_of_normal_sample_near_zero_with_small_z_scores():
    z = torch.randn(4, 8, 64, 64, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    s = M.noise_stats(z, per_channel=True)
    assert abs(s["skew"]) < 0.03 and abs(s["kurtosis"]) < 0.05 and abs(s["std"] - 1) < 0.01
    for key in ("mean_z", "std_z", "skew_z", "kurtosis_z"):
        assert abs(s[key]) < 4.0, key
    assert s["ks_z"] < 2.0 and s["ks_p"] > 0.001
    assert {"std_c0", "skew_z_c7", "ks_c3"} <= set(s)
    shifted = M.noise_stats(z * 1.2 + 0.1)
    assert shifted["mean_z"] > 20 and shifted["std_z"] > 20


def test_autocorrelation_iid_small_smoothed_large():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(4, 64, 64, generator=g, dtype=torch.float64)
    ac = M.autocorrelation(z, lags=(1, 2, 4, 100))
    assert "autocorr_100" not in ac
    assert all(abs(ac[f"autocorr_{d}_z"]) < 4 for d in (1, 2, 4))
    smooth = torch.nn.functional.avg_pool2d(z[:, None], 3, stride=1, padding=1)[:, 0]
    assert M.autocorrelation(smooth, lags=(1,))["autocorr_1"] > 0.5
    m = M.autocorrelation_map(z, max_lag=3)
    assert m.shape == (7, 7) and float(m[3, 3]) == pytest.approx(1.0) and float(m[3, 4]) == pytest.approx(ac["autocorr_1"], abs=0.05)


def test_standardize_noise_uses_the_models_expected_std():
    ms = ModelSampling.discrete()
    x = torch.full((4, 2, 2), 3.0)
    z = M.standardize_noise(x, 14.6, ms)
    assert float(z[0, 0, 0]) == pytest.approx(3.0 / math.sqrt(14.6**2 + 1))
    flow = ModelSampling.flow()
    assert float(M.standardize_noise(x, 1.0, flow)[0, 0, 0]) == pytest.approx(3.0)


def _toy_trajectory() -> Trajectory:
    g = torch.Generator().manual_seed(4)
    sigmas = torch.tensor([0.03, 1.0, 5.0, 14.6])
    x0 = torch.randn(2, 4, 8, 8, generator=g)
    xs = torch.stack([x0] + [x0 + s * torch.randn(2, 4, 8, 8, generator=g) for s in sigmas[1:].tolist()])
    den = torch.stack([x0 + 0.1 * i for i in range(3)])
    return Trajectory(sigmas=sigmas, xs=xs, denoised=den, params={"steps": 3, "sampler_name": "euler", "cfg": 1.0,
                                                                 "prefix_consistent": True}, nfe=3)


def test_trajectory_to_frame_per_step_metrics():
    traj = _toy_trajectory()
    df = M.trajectory_frame(traj)
    assert len(df) == 4 * 2 and list(df["end_at_step"].unique()) == [3, 2, 1, 0]
    first = df[(df.step == 0) & (df.item == 0)].iloc[0]
    assert first.denoised_drift == pytest.approx(0.0)
    last = df[df.step == 3]
    assert last.denoised_drift.isna().all()
    d = float(traj.xs[0, 1].std())
    row = df[(df.step == 3) & (df.item == 1)].iloc[0]
    assert row.expected_std == pytest.approx(math.sqrt(float(traj.sigmas[3]) ** 2 + d**2), rel=1e-6)
    assert 0.7 < row.std_ratio < 1.3


def test_trajectory_save_load_round_trip(tmp_path):
    traj = _toy_trajectory()
    path = traj.save(tmp_path / "run")
    assert path.suffix == ".safetensors" and path.with_suffix(".json").exists()
    back = Trajectory.load(path)
    assert torch.equal(back.xs, traj.xs) and torch.equal(back.denoised, traj.denoised)
    assert back.params == traj.params and back.nfe == 3
    with pytest.raises(ValueError, match="no saved trajectory"):
        Trajectory.load(tmp_path / "missing")


def test_detector_metrics_on_shapes():
    shapes = pytest.importorskip("unsampling_lab.bundled.shapes")
    pytest.importorskip("unsampling_lab.bundled.detector")
    batch = shapes.make_shapes(3, seed=0)
    rows = M.detector_metrics(batch.images, batch.images, prompts=batch.captions)
    assert [r["fg_iou"] for r in rows] == pytest.approx([1.0, 1.0, 1.0])
    assert all(r["colour_kept"] == 1.0 and r["colour_match"] == 1.0 for r in rows)
    blank = M.detector_metrics(torch.zeros_like(batch.images), batch.images, prompts=["", "", ""])
    assert all(r["fg_iou"] == 0.0 and math.isnan(r["colour_match"]) for r in blank)


def test_psnr_floor_is_the_best_constant_image_and_beats_black():
    from unsampling_lab.analysis.metrics import psnr, psnr_floor

    g = torch.Generator().manual_seed(0)
    ref = torch.rand(3, 8, 8, 3, generator=g) ** 3
    best = ref.mean(dim=(1, 2), keepdim=True).expand_as(ref)  # each channel's mean: the MSE-optimal constant
    assert torch.allclose(psnr_floor(ref), psnr(best, ref), atol=1e-9)
    assert (psnr_floor(ref) >= psnr(torch.zeros_like(ref), ref)).all()
    shifted = best + 0.01
    assert (psnr(shifted, ref) < psnr_floor(ref)).all()


def test_psnr_over_kept_pixels_is_the_mean_over_those_pixels_only():
    """keep=: the squared error averaged over the kept pixels (every channel), by hand on a 2x2 image."""
    ref = torch.zeros(1, 2, 2, 3, dtype=torch.float64)
    img = ref.clone()
    img[0, 0, 0] = 0.5  # an error on one pixel, which keep drops
    img[0, 1, 1, 0] = 0.1  # and one on a kept pixel, one channel
    keep = torch.tensor([[[0.0, 1.0], [1.0, 1.0]]])
    want = 10 * math.log10(1 / (0.1**2 / (3 * 3)))
    assert float(M.psnr(img, ref, keep=keep)[0]) == pytest.approx(want, rel=1e-12)
    assert float(M.psnr(img, ref, keep=torch.ones(1, 2, 2))[0]) == pytest.approx(float(M.psnr(img, ref)[0]))
    with pytest.raises(ValueError, match=r"keep must be \[B, H, W\] = \(1, 2, 2\)"):
        M.psnr(img, ref, keep=torch.ones(2, 2))
