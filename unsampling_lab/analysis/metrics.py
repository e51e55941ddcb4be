"""Metrics for inversions: tensors in, numbers out, no state.

Reconstruction (per batch item, [B] float64 tensors):
    latent_mse      mean((x_hat - x)^2)
    relative_error  ||x_hat - x|| / ||x||
    psnr            10 log10(L^2 / mse) on images in 0..L
    ssim            Wang et al. 2004 with an 11-tap Gaussian window (sigma 1.5), C1 = (0.01 L)^2, C2 = (0.03 L)^2
The unsampled noise, standardized per item as z = x / expected_std(sigma_final) (`standardized_noise`):
    moments and a Kolmogorov-Smirnov statistic against N(0, 1), each with a z-score against its
    standard error for n samples under the null hypothesis z ~ N(0, 1) iid:
        SE(mean) = 1/sqrt(n), SE(std) = 1/sqrt(2n), SE(skew) = sqrt(6/n), SE(excess kurtosis) = sqrt(24/n),
        ks_z = sqrt(n) D (Kolmogorov-distributed: 95 % of draws < 1.36)
    spatial autocorrelation at lags (pix2pix-zero's regulariser measures the same thing), SE = 1/sqrt(pairs).
Along a trajectory (`step_stats`): each state's std against sqrt(sigma^2 + data_std^2) (VP) and the
denoised estimate's drift ||denoised_i - x_0|| / ||x_0|| from the input.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..engine import end_at_step_for

if TYPE_CHECKING:
    import pandas as pd

    from ..model_sampling import ModelSampling
    from ..trajectory import Trajectory

__all__ = [
    "autocorrelation", "autocorrelation_map", "detector_metrics", "ks_statistic", "latent_mse", "noise_stats",
    "expected_noise_std", "loglog_slopes", "psnr", "psnr_floor", "psnr_from_mse", "relative_error", "ssim", "standardize_noise",
    "rates", "standardized_noise", "wilson_interval", "step_stats",
]


# -- reconstruction -----------------------------------------------------------------------------------
def _per_item(t: Tensor) -> Tensor:
    return t.detach().double().cpu().flatten(1)


def latent_mse(x_hat: Tensor, x: Tensor) -> Tensor:
    """Per-item mean squared error [B]: mean((x_hat - x)^2)."""
    return ((_per_item(x_hat) - _per_item(x)) ** 2).mean(1)


def relative_error(x_hat: Tensor, x: Tensor) -> Tensor:
    """Per-item relative error [B]: ||x_hat - x|| / ||x||."""
    a, b = _per_item(x_hat), _per_item(x)
    return (a - b).norm(dim=1) / b.norm(dim=1).clamp_min(1e-12)


def psnr_from_mse(mse: Tensor | float, *, data_range: float = 1.0) -> Tensor:
    """PSNR = 10 log10(L^2 / mse) in dB (inf when mse = 0)."""
    mse = torch.as_tensor(mse, dtype=torch.float64)
    return 10.0 * torch.log10(data_range**2 / mse)


def psnr(images: Tensor, reference: Tensor, *, data_range: float = 1.0, keep: Tensor | None = None) -> Tensor:
    """Per-item PSNR [B] in dB of images [B, ...] in 0..data_range against `reference`.

    keep: [B, H, W] (images [B, H, W, C]) 1 on the pixels to score, e.g. an edit's background: the mean squared
    error is taken over those pixels only (every channel). PIE-Bench's convention differs: it multiplies both
    images by the mask and averages over the whole image (`analysis.piebench.metrics.region_scores`)."""
    if keep is None:
        return psnr_from_mse(latent_mse(images, reference), data_range=data_range)
    if images.ndim != 4 or tuple(keep.shape) != tuple(images.shape[:3]):
        raise ValueError(f"keep must be [B, H, W] = {tuple(images.shape[:3])} for images [B, H, W, C], got "
                         f"{tuple(keep.shape)}")
    w = keep.detach().double().cpu()[..., None].expand(images.shape)
    err = ((images.detach().double().cpu() - reference.detach().double().cpu()) ** 2 * w).flatten(1).sum(1)
    return psnr_from_mse(err / w.flatten(1).sum(1), data_range=data_range)


def psnr_floor(reference: Tensor, *, data_range: float = 1.0) -> Tensor:
    """Per-item PSNR [B] of the best constant image (each channel's mean) against `reference` [B, H, W, C]:
    what an image with no structure at all scores, the floor to read every PSNR against.
    Its MSE is the per-channel variance averaged over channels; a black image scores at most this."""
    x = reference.detach().double().cpu().flatten(1, -2)  # [B, H*W, C]
    return psnr_from_mse(x.var(dim=1, unbiased=False).mean(1), data_range=data_range)


def _gaussian_window(size: int, sigma: float) -> Tensor:
    g = torch.exp(-((torch.arange(size, dtype=torch.float64) - (size - 1) / 2) ** 2) / (2 * sigma**2))
    return g / g.sum()


def ssim(images: Tensor, reference: Tensor, *, data_range: float = 1.0, window_size: int = 11,
         sigma: float = 1.5) -> Tensor:
    """Per-item SSIM [B] of images [B, H, W, C] (ComfyUI IMAGE layout) with a Gaussian window.

    SSIM = mean over the valid window positions of
        (2 mu_x mu_y + C1)(2 sigma_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(sigma_x^2 + sigma_y^2 + C2)),
    channels averaged. The window shrinks (odd size) for images smaller than it.
    """
    if images.shape != reference.shape or images.ndim != 4:
        raise ValueError(f"ssim needs two [B, H, W, C] images of the same shape, got {tuple(images.shape)} "
                         f"and {tuple(reference.shape)}")
    x = images.detach().double().cpu().permute(0, 3, 1, 2)
    y = reference.detach().double().cpu().permute(0, 3, 1, 2)
    c = x.shape[1]
    size = min(window_size, x.shape[-2], x.shape[-1])
    size -= 1 - size % 2  # odd
    g = _gaussian_window(size, sigma)
    w = (g[:, None] * g[None, :]).expand(c, 1, size, size).contiguous()

    def blur(t: Tensor) -> Tensor:
        return torch.nn.functional.conv2d(t, w, groups=c)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return s.flatten(1).mean(1)


# -- the unsampled noise -----------------------------------------------------------------------------------
def standardize_noise(state: Tensor, sigma: float, model_sampling: "ModelSampling | None" = None, *,
                      data_std: float = 1.0) -> Tensor:
    """z = state / expected_std(sigma): the processed-space state at the final sigma, scaled to unit variance.

    expected_std is the model's (`ModelSampling.expected_std`); without a model, the VP formula sqrt(sigma^2 + d^2).
    """
    if model_sampling is not None:
        expected = float(model_sampling.expected_std(sigma, data_std=data_std))
    else:
        expected = math.sqrt(sigma**2 + data_std**2)
    return state.detach().double().cpu() / expected


def expected_noise_std(model: Any, trajectory: "Trajectory", end_at_step: int = 0, *, pooled: bool = False) -> Tensor:
    """Per batch item [B]: the std proper noise would have at the state `unsample(end_at_step=k)` stops at,
    `ModelSampling.expected_std(sigma_k, data_std=d)` (sqrt(sigma^2 + d^2); on flow models
    sqrt(sigma^2 + (1 - sigma)^2 d^2)) with d the input latent's std: each item's own (a batch of
    different images), or pooled over the whole batch (points of one distribution, as the 2-D toy's)."""
    from .. import engine

    sigma = float(trajectory.sigmas[engine.state_index(int(trajectory.params["steps"]), end_at_step)])
    x0 = trajectory.xs[0].double()
    data_std = x0.std().expand(x0.shape[0]) if pooled else x0.flatten(1).std(dim=1)
    return torch.stack([torch.as_tensor(model.model_sampling.expected_std(sigma, data_std=float(d)), dtype=torch.float64)
                        for d in data_std])


def standardized_noise(model: Any, trajectory: "Trajectory", end_at_step: int = 0, *, pooled: bool = False) -> Tensor:
    """z = x_k / expected_noise_std (float64, per batch item): the state `unsample(end_at_step=k)` stops at,
    ~N(0, I) if the inversion produced x_0 + sigma_k n, n ~ N(0, I). The one standardisation the sweep's
    noise metrics, the command line's figures and the notebooks use (`pooled`: see `expected_noise_std`)."""
    from .. import engine

    state = engine.trajectory_state(trajectory, end_at_step).detach().double().cpu()
    scale = expected_noise_std(model, trajectory, end_at_step, pooled=pooled)
    return state / scale.reshape(-1, *([1] * (state.ndim - 1)))


def _normal_cdf(x: Tensor) -> Tensor:
    return torch.special.ndtr(x)


def ks_statistic(z: Tensor) -> float:
    """Kolmogorov-Smirnov D = sup |F_n(x) - Phi(x)| of the sample z (any shape) against N(0, 1)."""
    x = z.detach().double().cpu().reshape(-1).sort().values
    n = x.numel()
    cdf = _normal_cdf(x)
    i = torch.arange(1, n + 1, dtype=torch.float64)
    return float(torch.maximum(i / n - cdf, cdf - (i - 1) / n).max())


def kolmogorov_sf(t: float) -> float:
    """P(sqrt(n) D > t) for large n: 2 sum_k (-1)^(k-1) exp(-2 k^2 t^2)."""
    if t <= 0.0:
        return 1.0
    total = sum((-1) ** (k - 1) * math.exp(-2 * k * k * t * t) for k in range(1, 101))
    return float(min(max(2 * total, 0.0), 1.0))


def _moments(x: Tensor) -> dict[str, float]:
    """mean, std, skew, excess kurtosis, KS of a flat sample, with z-scores against N(0, 1)'s standard errors."""
    n = x.numel()
    mean = x.mean()
    d = x - mean
    m2 = (d**2).mean()
    std = m2.sqrt()
    skew = (d**3).mean() / m2**1.5
    kurt = (d**4).mean() / m2**2 - 3.0
    ks = ks_statistic(x)
    return {
        "mean": float(mean), "mean_z": float(mean * math.sqrt(n)),
        "std": float(std), "std_z": float((std - 1.0) * math.sqrt(2 * n)),
        "skew": float(skew), "skew_z": float(skew / math.sqrt(6.0 / n)),
        "kurtosis": float(kurt), "kurtosis_z": float(kurt / math.sqrt(24.0 / n)),
        "ks": ks, "ks_z": ks * math.sqrt(n), "ks_p": kolmogorov_sf(ks * math.sqrt(n)),
        "n": float(n),
    }


def noise_stats(z: Tensor, *, per_channel: bool = False) -> dict[str, float]:
    """Moments and KS of standardized noise z [C, H, W] or [B, C, H, W] against N(0, 1), with z-scores.

    Keys: mean, std, skew, kurtosis (excess), ks, each with `_z`; ks_p; n. With `per_channel`,
    the same keys again suffixed `_c0`, `_c1`, ... (channel = dim -3).
    """
    z = z.detach().double().cpu()
    out = _moments(z.reshape(-1))
    if per_channel:
        channels = z.shape[-3] if z.ndim >= 3 else 1
        for c in range(channels):
            for k, v in _moments(z.select(-3, c).reshape(-1)).items():
                out[f"{k}_c{c}"] = v
    return out


def autocorrelation(z: Tensor, lags: Sequence[int] = (1, 2, 4)) -> dict[str, float]:
    """Spatial autocorrelation of z [..., H, W] at each lag, rows and columns pooled, with z-scores.

    r(d) = sum(u[.., i, j] u[.., i + d, j]) + sum(u[.., i, j] u[.., i, j + d]) over pairs / (pairs * var),
    u = z - mean. Under iid noise r(d) ~ N(0, 1/pairs). Lags >= H or W are skipped.
    Keys: `autocorr_{d}` and `autocorr_{d}_z`.
    """
    u = z.detach().double().cpu()
    u = u - u.mean()
    var = (u**2).mean()
    h, w = u.shape[-2], u.shape[-1]
    out: dict[str, float] = {}
    for d in lags:
        if d >= h or d >= w or d < 1:
            continue
        prod_h = u[..., d:, :] * u[..., :-d, :]
        prod_w = u[..., :, d:] * u[..., :, :-d]
        pairs = prod_h.numel() + prod_w.numel()
        r = (prod_h.sum() + prod_w.sum()) / (pairs * var)
        out[f"autocorr_{d}"] = float(r)
        out[f"autocorr_{d}_z"] = float(r * math.sqrt(pairs))
    return out


def autocorrelation_map(z: Tensor, *, max_lag: int = 4) -> Tensor:
    """Circular autocorrelation map [2m+1, 2m+1] (m = max_lag, centre = lag 0 = 1.0), averaged over leading dims.

    r(dy, dx) = IFFT(|FFT(u)|^2) / (H W var) per map, u = map - its mean (Wiener-Khinchin).
    """
    u = z.detach().double().cpu()
    u = u.reshape(-1, u.shape[-2], u.shape[-1])
    u = u - u.mean(dim=(-2, -1), keepdim=True)
    h, w = u.shape[-2:]
    f = torch.fft.fft2(u)
    ac = torch.fft.ifft2(f * f.conj()).real / (h * w)
    ac = ac / ac[:, :1, :1].clamp_min(1e-300)
    ac = torch.fft.fftshift(ac.mean(0), dim=(-2, -1))
    m = min(max_lag, (h - 1) // 2, (w - 1) // 2)
    cy, cx = h // 2, w // 2
    return ac[cy - m: cy + m + 1, cx - m: cx + m + 1]


# -- along a trajectory -------------------------------------------------------------------------------
def trajectory_frame(trajectory: "Trajectory", *, model_sampling: "ModelSampling | None" = None) -> "pd.DataFrame":
    """`step_stats` as a tidy pandas DataFrame, one row per (state index, batch item).

    Columns: step, end_at_step, item, sigma, x_mean, x_std, expected_std, std_ratio, denoised_drift,
    denoised_mse. Pass the model's `model_sampling` for its own expected std (flow models); the default
    is the VP formula.
    """
    import pandas as pd

    return pd.DataFrame(step_stats(trajectory, model_sampling=model_sampling))


def step_stats(trajectory: "Trajectory", *, model_sampling: "ModelSampling | None" = None) -> list[dict[str, Any]]:
    """One record per (state index, batch item) of a recorded inversion.

    step: state index i (0 = the input latent); end_at_step: steps - i (what unsample(end_at_step=...) stops there);
    sigma; x_mean, x_std; expected_std = sqrt(sigma^2 + d^2) with d the input's std (the model's own
    formula given `model_sampling`); std_ratio = x_std / expected_std; denoised_drift =
    ||denoised_i - x_0|| / ||x_0|| and denoised_mse (NaN at the last state, where no estimate was made).
    """
    xs = trajectory.xs.double()
    den = trajectory.denoised.double()
    sigmas = trajectory.sigmas.double()
    steps = int(trajectory.params.get("steps", trajectory.n_steps))
    x0 = xs[0].flatten(1)
    data_std = x0.std(dim=1)
    records: list[dict[str, Any]] = []
    for i in range(xs.shape[0]):
        s = float(sigmas[i])
        x = xs[i].flatten(1)
        for b in range(x.shape[0]):
            d = float(data_std[b])
            expected = float(model_sampling.expected_std(s, data_std=d)) if model_sampling is not None \
                else math.sqrt(s * s + d * d)
            std = float(x[b].std())
            rec: dict[str, Any] = {
                "step": i, "end_at_step": end_at_step_for(steps, i), "item": b, "sigma": s,
                "x_mean": float(x[b].mean()), "x_std": std, "expected_std": expected, "std_ratio": std / expected,
                "denoised_drift": math.nan, "denoised_mse": math.nan,
            }
            if i < den.shape[0]:
                e = den[i].flatten(1)[b] - x0[b]
                rec["denoised_drift"] = float(e.norm() / x0[b].norm().clamp_min(1e-12))
                rec["denoised_mse"] = float((e**2).mean())
            records.append(rec)
    return records


# -- rates and slopes over a results table -----------------------------------------------------------
def wilson_interval(rate: float, n: int, *, z: float = 1.96) -> tuple[float, float]:
    """Wilson (1927) score interval of a rate measured on n items: centre (p + z^2/2n) / (1 + z^2/n),
    half-width z sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2/n). (NaN, NaN) for n = 0."""
    if n == 0:
        return math.nan, math.nan
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def rates(df: "pd.DataFrame", by: Sequence[str], columns: Sequence[str], *, z: float = 1.96) -> "pd.DataFrame":
    """Mean of 0/1 columns per group with Wilson score intervals (`{col}_lo`, `{col}_hi`) and the count `n`.

    Wilson (1927): centre (p + z^2/2n) / (1 + z^2/n), half-width z sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2/n).
    With n = 12 images a measured rate of 0.5 is anywhere in about 0.25-0.75.
    """
    import pandas as pd

    out = []
    for key, part in df.groupby(list(by), sort=True):
        key = key if isinstance(key, tuple) else (key,)
        rec: dict[str, Any] = dict(zip(by, key))
        for c in columns:
            v = pd.to_numeric(part[c], errors="coerce").dropna()
            n = len(v)
            p = float(v.mean()) if n else math.nan
            rec[c] = p
            if n:
                rec[f"{c}_lo"], rec[f"{c}_hi"] = wilson_interval(p, n, z=z)
        rec["n"] = len(part)
        out.append(rec)
    return pd.DataFrame(out)


def loglog_slopes(df: "pd.DataFrame", *, value: str = "relative_error", x: str = "steps",
                  hue: str = "cfg") -> dict[Any, float]:
    """Least-squares slope p of log(value) = p log(x) + c (means over items), per `hue` value.

    p = -1: the error halves when the steps double (first order); p ~ 0: more steps do not help.
    """
    import numpy as np

    table = df.pivot_table(index=x, columns=hue, values=value, aggfunc="mean").sort_index()
    lx = np.log(table.index.to_numpy(dtype=float))
    return {h: float(np.polyfit(lx, np.log(table[h].to_numpy(dtype=float)), 1)[0]) for h in table.columns}


# -- the bundled model's detector ------------------------------------------------------------------------
def detector_metrics(images: Tensor, reference: Tensor, *, prompts: Sequence[str] | None = None) -> list[dict[str, Any]] | None:
    """Colour, shape and foreground IoU of `images` [B, H, W, 3] judged by `unsampling_lab.bundled.detector`, per item.

    fg_iou: IoU of the foreground masks of `images` and `reference` (structure kept);
    colour_kept / shape_kept: same detected colour / shape as the reference;
    colour_match / shape_match: the detected colour / shape is the word in the prompt (NaN if the prompt names none).
    Returns None when the detector module is not available.
    """
    try:
        from ..bundled import detector
        from ..bundled.shapes import COLOURS, SHAPES
    except ImportError:
        return None
    out, ref = detector.detect(images), detector.detect(reference)
    iou = detector.foreground_iou(out.masks, ref.masks)
    rows = []
    for b in range(images.shape[0]):
        words = str(prompts[b] if prompts is not None and b < len(prompts) else "").lower().split()
        want_colour = next((w for w in words if w in COLOURS), None)
        want_shape = next((w for w in words if w in SHAPES), None)
        rows.append({
            "colour": out.colours[b], "shape": out.shapes[b], "fg_iou": float(iou[b]),
            "colour_kept": float(out.colours[b] == ref.colours[b]), "shape_kept": float(out.shapes[b] == ref.shapes[b]),
            "colour_match": math.nan if want_colour is None else float(out.colours[b] == want_colour),
            "shape_match": math.nan if want_shape is None else float(out.shapes[b] == want_shape),
        })
    return rows
