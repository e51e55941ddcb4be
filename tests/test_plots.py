"""Plots return their Axes and render to PNG (Agg); `import unsampling_lab` stays light."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402

from unsampling_lab.analysis import plots  # noqa: E402
from unsampling_lab.analysis.metrics import trajectory_frame  # noqa: E402
from unsampling_lab.trajectory import Trajectory  # noqa: E402


@pytest.fixture
def traj():
    g = torch.Generator().manual_seed(0)
    sigmas = torch.tensor([0.03, 1.0, 5.0, 14.6])
    xs = torch.stack([s * torch.randn(2, 4, 8, 8, generator=g) + torch.randn(2, 4, 8, 8, generator=g)
                      for s in sigmas.tolist()])
    return Trajectory(sigmas=sigmas, xs=xs, denoised=xs[:3] * 0.5, params={"steps": 3})


def _png(fig, tmp_path, name):
    path = tmp_path / name
    fig.savefig(path)
    plt.close(fig)
    assert path.stat().st_size > 1000


def test_latent_stats_from_trajectory_or_frame(traj, tmp_path):
    ax = plots.latent_stats(traj)
    assert isinstance(ax, Axes) and len(ax.lines) == 4  # std and schedule per item
    _png(ax.figure, tmp_path, "stats.png")
    fig, given = plt.subplots()
    assert plots.latent_stats(trajectory_frame(traj), ax=given) is given
    plt.close(fig)


def test_error_heatmaps_faceted_by_normalize(tmp_path):
    rows = [dict(end_at_step=k, cfg=c, normalize=n, item=b, latent_mse=0.1 * (k + 1) * c)
            for k in (0, 2) for c in (1.0, 3.0) for n in ("disable", "enable") for b in (0, 1)]
    axes = plots.error_heatmaps(pd.DataFrame(rows))
    assert len(axes) == 2 and all(isinstance(a, Axes) for a in axes)
    assert axes[1].get_title() == "normalize=enable"
    _png(axes[0].figure, tmp_path, "heat.png")
    with pytest.raises(KeyError, match="psnr"):
        plots.error_heatmaps(pd.DataFrame(rows), value="psnr")


def test_image_strip_noise_histogram_qq_autocorrelation(tmp_path):
    g = torch.Generator().manual_seed(1)
    images = torch.rand(2, 16, 16, 3, generator=g)
    noise = torch.randn(2, 4, 8, 8, generator=g)
    axes = plots.image_strip(images, noise, images, images)
    assert axes.shape == (2, 4) and axes[0, 1].get_title() == "unsampled noise"
    _png(axes[0, 0].figure, tmp_path, "strip.png")
    fig, (a, b, c) = plt.subplots(1, 3)
    assert plots.noise_histogram(noise, ax=a) is a
    assert plots.noise_qq(noise, ax=b) is b
    assert plots.autocorrelation_map(noise, ax=c) is c
    _png(fig, tmp_path, "noise.png")
