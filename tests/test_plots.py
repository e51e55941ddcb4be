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


def test_heatmap_panels_share_one_colour_scale_and_readable_numbers():
    rows = [dict(end_at_step=k, cfg=c, normalize=n, item=0, psnr=(30.0 if n == "disable" else 10.0) + k - c)
            for k in (0, 2) for c in (1.0, 3.0) for n in ("disable", "enable")]
    axes = plots.error_heatmaps(pd.DataFrame(rows), value="psnr", log=False)
    norms = [(a.images[0].norm.vmin, a.images[0].norm.vmax) for a in axes]
    assert norms[0] == norms[1] == (7.0, 31.0), "both panels must map the same number to the same colour"
    fig = axes[0].figure
    assert len(fig.axes) == 3, "one shared colour bar, not one per panel"
    cmap = axes[0].images[0].get_cmap()
    for ax in axes:
        for text, im_value in zip(ax.texts, ax.images[0].get_array().ravel()):
            rgba = cmap(ax.images[0].norm(im_value))
            assert text.get_color() == plots.text_colour(rgba)
    assert plots.text_colour((1.0, 1.0, 0.0, 1.0)) == "black" and plots.text_colour((0.2, 0.0, 0.3, 1.0)) == "white"
    plt.close(fig)


def test_error_vs_steps_draws_slope_lines_through_the_first_point(tmp_path):
    rows = [dict(steps=n, cfg=c, item=0, relative_error=c / n) for n in (10, 20, 40) for c in (1.0, 3.0)]
    ax = plots.error_vs_steps(pd.DataFrame(rows), slopes=(-1.0,))
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    data, ref = ax.lines[0], ax.lines[1]  # cfg 1 and its slope line
    assert list(ref.get_ydata()) == pytest.approx(list(data.get_ydata()))  # an exact 1/N curve lies on it
    assert any("slope -1" in t.get_text() for t in ax.get_legend().get_texts())
    _png(ax.figure, tmp_path, "steps.png")


def test_rate_plot_image_grid_and_reference(tmp_path):
    summary = pd.DataFrame(dict(k=[0, 3, 0, 3], setting=["a", "a", "b", "b"], rate=[0.5, 0.25, 0.75, 1.0],
                                rate_lo=[0.2, 0.1, 0.4, 0.7], rate_hi=[0.8, 0.5, 0.9, 1.0]))
    ax = plots.rate_plot(summary, x="k", y="rate", hue="setting", annotate="k")
    assert len(ax.containers) == 2 and len(ax.texts) == 4
    _png(ax.figure, tmp_path, "rates.png")
    g = torch.Generator().manual_seed(2)
    images = {(r, c): torch.rand(8, 8, 3, generator=g) for r in ("x", "y") for c in (0, 5)}
    axes = plots.image_grid(images, rows=["x", "y"], cols=[0, 5], row_label="edit", col_label="k",
                            first=torch.rand(8, 8, 3, generator=g))
    assert axes.shape == (2, 3) and axes[0, 2].get_title() == "k=5" and axes[1, 0].get_ylabel() == "edit=y"
    _png(axes[0, 0].figure, tmp_path, "grid.png")
    df = pd.DataFrame(dict(nfe_budget=[10, 20, 10, 20], sampler_name=["euler", "euler", "heun", "heun"],
                           psnr=[20.0, 25.0, 22.0, 27.0], psnr_vae=[33.0] * 4))
    ax = plots.psnr_against_reference(df)
    assert ax.lines[-1].get_ydata()[0] == 33.0 and "VAE reference" in ax.get_legend().get_texts()[-1].get_text()
    _png(ax.figure, tmp_path, "reference.png")


def test_pareto_front_keeps_exactly_the_undominated_points():
    cost = [10, 20, 40, 40, 80, 15]
    value = [20, 90, 40, 95, 30, 20]
    # 10/20 is cheapest; 20/90 beats everything costlier except 40/95; 15/20 is dominated by 10/20
    assert plots.pareto_front(cost, value) == [0, 1, 3]
    ax = plots.pareto(pd.DataFrame({"nfe": cost, "psnr": value, "label": list("abcdef")}))
    front = ax.get_lines()[0]
    assert front.get_xdata().tolist() == [10, 20, 40] and front.get_ydata().tolist() == [20, 90, 95]
    assert {t.get_text() for t in ax.texts} == set("abcdef")


def test_error_vs_steps_ticks_at_the_step_counts_and_one_legend_entry_per_slope():
    rows = [dict(steps=n, cfg=1.0, item=0, relative_error=1 / n) for n in (6, 12, 24)]
    ax = plots.error_vs_steps(pd.DataFrame(rows), slopes=(-1.0, -2.0))
    assert [t.get_text() for t in ax.get_xticklabels()] == ["6", "12", "24"]
    assert ax.lines[1].get_linestyle() != ax.lines[2].get_linestyle()
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("slope -1 " in t for t in texts) and any("slope -2 " in t for t in texts)
    plt.close(ax.figure)
