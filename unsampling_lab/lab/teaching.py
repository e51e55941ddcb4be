"""Helpers for the notebooks: demonstrations that need a few lines, and the 2-D toy (from `lab.toy`).

Everything here calls the package's own functions (engine, sweeps, metrics, plots); nothing is a
second implementation. The toy's names (`toy_model`, `plot_paths`, ...) live in `lab.toy` and are
importable from here as the notebooks call them (`teaching.toy_model()`); `rates` and `loglog_slopes`
live beside the metrics (`analysis.metrics`) and are importable from here too.
"""
from __future__ import annotations

import math
from pathlib import Path
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .. import engine
from ..analysis.metrics import loglog_slopes, rates, standardized_noise  # noqa: F401 (the notebooks' names)
from ..errors import UnsamplingError
from ..samplers import get_sampler
from ..samplers.base import seeded_noise
from ..schedulers import sigma_schedule
from .toy import (CLASS_COLOURS, TOY_LABELS, cfg_endpoints, plane, plot_cfg_endpoints,  # noqa: F401 (re-exported)
                  plot_density, plot_paths, plot_round_trip, sample_path, toy_data, toy_model, toy_prompts, vp_view)

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes

    from ..trajectory import Trajectory


# -- demonstrations --------------------------------------------------------------------------------------
#: ComfyUI's ancestral samplers and what each does on one ascending step sigma -> sigma_next (see below).
COMFYUI_ANCESTRAL: dict[str, str] = {
    "euler_ancestral": "x <- D(x, sigma)                      (an x0 estimate)",
    "dpm_2_ancestral": "x <- D(x, sigma) + sigma_next * n    (an x0 estimate plus fresh noise)",
}


def comfyui_unsample(model: Any, latent: Tensor | dict[str, Any], *, steps: int = 20,
                     sampler_name: str = "euler_ancestral", scheduler: str = "normal", cfg: float = 1.0,
                     positive: Any = "", negative: Any = "", seed: int = 0) -> Tensor:
    """What ComfyUI's Unsampler silently returns for an ancestral sampler (it does not refuse them).

    On the ascending sigmas flip(schedule) + 1e-4, k-diffusion's `get_ancestral_step(sigma, sigma_next)`
    takes the square root of sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2 < 0: NaN. Python's
    `min(sigma_next, nan)` returns sigma_next, so sigma_up = sigma_next and sigma_down = 0, and the
    `sigma_down == 0` branch of each sampler runs (COMFYUI_ANCESTRAL). The denoiser is ours (cfg included).
    """
    if sampler_name not in COMFYUI_ANCESTRAL:
        raise UnsamplingError(f"comfyui_unsample shows the ancestral samplers {list(COMFYUI_ANCESTRAL)}; "
                              f"got {sampler_name!r} (deterministic samplers: use unsample)")
    samples = latent["samples"] if isinstance(latent, dict) else latent
    sigmas = sigma_schedule(model.model_sampling, scheduler, steps,
                            discard_penultimate=get_sampler(sampler_name).discard_penultimate_sigma)
    sigmas = (sigmas.flip(0) + engine.UNSAMPLE_SIGMA_OFFSET).tolist()
    x = model.latent_format.process_in(samples.to(model.device, engine.state_dtype(samples)))
    b = x.shape[0]
    denoise = engine.guided_denoiser(model, x, None, cfg=cfg, positive=positive, negative=negative)
    noise = seeded_noise(x, seed)
    with torch.inference_mode():
        for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
            x = denoise(x, x.new_full([b], sigma))
            if sampler_name == "dpm_2_ancestral":
                x = x + noise(torch.tensor(sigma), torch.tensor(sigma_next)) * sigma_next
    return model.latent_format.process_out(x).cpu()


def ddim_vs_ddim_inverse(model: Any, latent: dict[str, Any] | Tensor, *, steps: Sequence[int] = (5, 10, 20, 50),
                         positive: Any = "", scheduler: str = "ddim_uniform") -> "pd.DataFrame":
    """Unsample with ComfyUI's `ddim` (= euler) and with diffusers' `ddim_inverse`, resample both with `ddim`.

    Columns: steps, sampler_name, latent_mse and relative_error of the round trip, nfe of the inversion,
    and noise_gap = ||noise_ddim - noise_ddim_inverse|| / ||noise_ddim|| (the two inversions disagree).
    """
    import pandas as pd

    from ..analysis import metrics

    samples = latent["samples"] if isinstance(latent, dict) else latent
    rows = []
    for n in steps:
        noises = {}
        for name in ("ddim", "ddim_inverse"):
            traj = engine.unsample_trajectory(model, latent, steps=n, sampler_name=name, scheduler=scheduler,
                                              positive=positive, progress=False)
            noise = engine.unsampled(model, traj, 0, like=samples)
            back = engine.resample(model, noise, steps=n, sampler_name="ddim", scheduler=scheduler, positive=positive,
                                   progress=False)
            noises[name] = noise
            rows.append(dict(steps=n, sampler_name=name, latent_mse=float(metrics.latent_mse(back, samples).mean()),
                             relative_error=float(metrics.relative_error(back, samples).mean()), nfe=traj.nfe))
        gap = float(metrics.relative_error(noises["ddim_inverse"], noises["ddim"]).mean())
        rows[-1]["noise_gap"] = rows[-2]["noise_gap"] = gap
    return pd.DataFrame(rows)


def normalize_modes(model: Any, trajectory: "Trajectory", *, end_at_step: int = 0,
                    axes: Sequence["Axes"] | None = None) -> "pd.DataFrame":
    """Each normalize mode's output read off one trajectory: its values' histogram, moments, and the std it would have.

    "disable" is the state itself, stored as a LATENT, i.e. in raw VAE units (process_out divides the
    model-space state by the latent scale factor): proper noise would have std expected_std(sigma) / scale
    (`ModelSampling.expected_std` with d the input's std over the batch: sqrt(sigma^2 + d^2) on VP models).
    "enable" z-scores the whole batch tensor and "per_sample" each item (std 1 by construction);
    "sigma" divides the model-space state by the final sigma: std 1 only if the inversion produced proper noise.
    Column `proper_std`: the std each mode's output would have were the state x_0 + sigma n, n ~ N(0, I).
    """
    import pandas as pd

    from ..analysis.metrics import expected_noise_std
    from ..analysis.plots import noise_histogram
    from ..engine import NORMALIZE_MODES

    proper = float(expected_noise_std(model, trajectory, end_at_step, pooled=True)[0])  # the whole tensor's
    like = trajectory.xs[engine.state_index(int(trajectory.params["steps"]), end_at_step)]
    lf = model.latent_format
    raw_proper = float((lf.process_out(torch.full_like(like, proper)) - lf.process_out(torch.zeros_like(like))).mean())
    rows = []
    for i, mode in enumerate(NORMALIZE_MODES):
        z = engine.unsampled(model, trajectory, end_at_step, mode)
        flat = z.double().reshape(-1)
        rows.append(dict(normalize=mode, mean=float(flat.mean()), std=float(flat.std()),
                         proper_std=raw_proper if mode == "disable" else 1.0,
                         min=float(flat.min()), max=float(flat.max())))
        if axes is not None:
            ax = noise_histogram(z / flat.std() if mode == "disable" else z, ax=axes[i])
            shown = " (divided by its std)" if mode == "disable" else ""
            ax.set_title(f"normalize={mode!r}{shown}\nstd {float(flat.std()):.3g}", fontsize=9)
    return pd.DataFrame(rows)


def inversion_errors(model: Any, latent: Tensor, true_noise: Tensor, *, samplers: Sequence[str],
                     steps: Sequence[int], scheduler: str = "simple") -> "pd.DataFrame":
    """Against a known answer: unsample's output vs the exact noise, and the round trip vs the latent.

    For a model whose ODE is solved in closed form (`GaussianData.ode_solution_flow`), `true_noise`
    is what an exact inversion returns. Columns: sampler_name, steps, nfe (of the inversion),
    noise_error = ||unsample - true_noise|| / ||true_noise||, relative_error = ||resample(unsample) - x0|| / ||x0||.
    """
    import pandas as pd

    from ..analysis import metrics

    rows = []
    for name in samplers:
        for n in steps:
            traj = engine.unsample_trajectory(model, latent, steps=int(n), sampler_name=name, scheduler=scheduler,
                                              progress=False)
            z = engine.unsampled(model, traj, 0)
            back = engine.resample(model, z, steps=int(n), sampler_name=name, scheduler=scheduler, progress=False)
            rows.append(dict(sampler_name=name, steps=int(n), nfe=traj.nfe,
                             noise_error=float(metrics.relative_error(z, true_noise).mean()),
                             relative_error=float(metrics.relative_error(back, latent).mean())))
    return pd.DataFrame(rows)


def steps_for_budget(sampler_name: str, nfe: int) -> int:
    """The number of steps whose inversion costs about `nfe` network evaluations (nfe // evals_per_step, >= 1)."""
    return max(1, int(nfe) // int(get_sampler(sampler_name).evals_per_step))


def equal_budget_sweep(model: Any, latents: dict[str, Any] | Tensor, *, samplers: Sequence[str],
                       budgets: Sequence[int], grid: dict[str, Sequence[Any]] | None = None,
                       **sweep_kwargs: Any) -> "pd.DataFrame":
    """`sweep` each sampler at the steps that give each network-evaluation budget, so samplers compare at equal cost.

    heun takes two evaluations per step, euler and dpmpp_2m one: at a budget of 20, heun runs 10 steps
    and the others 20. Adds the column `nfe_budget`; `nfe` holds what was really spent.
    """
    import pandas as pd

    from ..analysis.sweeps import sweep

    frames = []
    for name in samplers:
        for budget in budgets:
            df = sweep(model, latents, dict(grid or {}), sampler_name=name, steps=steps_for_budget(name, budget),
                       progress=False, **sweep_kwargs)
            frames.append(df.assign(nfe_budget=int(budget)))
    return pd.concat(frames, ignore_index=True)


def noise_spread(model: Any, latent: dict[str, Any] | Tensor, *, steps: Sequence[int], **unsample_kwargs: Any) -> "pd.DataFrame":
    """The spread of the unsampled state against the schedule's promise, for each number of steps.

    ratio = std(x_k) / expected_std, pooled over every element of the batch (processed space; the batch
    is points of one distribution), expected_std from `metrics.expected_noise_std(pooled=True)`. If the
    inversion produced x_0 + sigma n with n ~ N(0, I) the ratio would be 1.
    Columns: steps, sigma_final, std, expected_std, ratio.
    """
    import pandas as pd

    from ..analysis.metrics import expected_noise_std

    k = int(unsample_kwargs.get("end_at_step", 0))
    rows = []
    for n in steps:
        traj = engine.unsample_trajectory(model, latent, steps=int(n), progress=False, **unsample_kwargs)
        xk = engine.trajectory_state(traj, k).double()
        expected = float(expected_noise_std(model, traj, k, pooled=True)[0])
        rows.append(dict(steps=int(n), sigma_final=float(traj.sigmas[engine.state_index(int(n), k)]),
                         std=float(xk.std()), expected_std=expected, ratio=float(xk.std()) / expected))
    return pd.DataFrame(rows)


def noise_report(model: Any, trajectory: "Trajectory", *, end_at_step: int = 0, seed: int = 0) -> "pd.DataFrame":
    """Statistics of the unsampled noise next to those of true N(0, I) noise of the same shape.

    The state where the inversion stopped is standardized per item by the schedule's std
    (`metrics.standardized_noise`, the sweep's noise metrics' own). Rows "unsampled" and "N(0, 1) sample"; columns: std (1 for
    proper noise: below 1 is the std deficit), and z-scores, each ~N(0, 1) for proper noise
    (|z| > 3 is a clear departure): mean_z, std_z, skew_z, kurtosis_z, ks_z (Kolmogorov-Smirnov,
    sqrt(n) D, ~0.5-1.4 for proper noise), autocorr_1 (neighbour correlation) and autocorr_1_z.
    """
    import pandas as pd

    from ..analysis import metrics

    z = metrics.standardized_noise(model, trajectory, end_at_step)
    fresh = torch.randn(z.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    rows = []
    for name, t in (("unsampled", z), ("N(0, 1) sample", fresh)):
        st = metrics.noise_stats(t)
        ac = metrics.autocorrelation(t, (1,))
        rows.append(dict(noise=name, std=st["std"], mean_z=st["mean_z"], std_z=st["std_z"], skew_z=st["skew_z"],
                         kurtosis_z=st["kurtosis_z"], ks_z=st["ks_z"], autocorr_1=ac.get("autocorr_1", math.nan),
                         autocorr_1_z=ac.get("autocorr_1_z", math.nan)))
    return pd.DataFrame(rows).set_index("noise")


def edit_grid(model: Any, images: Tensor, *, source: str | Sequence[str], edit: str | Sequence[str],
              end_at_steps: Sequence[int], invert_cfgs: Sequence[float] = (1.0,),
              resample_cfgs: Sequence[float] = (1.0,), steps: int = 10, sampler_name: str = "euler",
              scheduler: str = "normal") -> tuple["pd.DataFrame", dict[tuple[float, float, int], Tensor]]:
    """Edits with the inversion cfg and the resampling cfg set apart: one row per (invert_cfg, resample_cfg, k, item).

    For each invert_cfg one trajectory is recorded (`unsample_trajectory`, prompt `source`); for each
    end_at_step k its state is resampled from start_at_step=k with prompt `edit` at each resample_cfg.
    It is `ul.sweep` over cfg x resample_cfg x end_at_step with these prompts: its rows (psnr against the
    original, fg_iou, colour_match, shape_match ...; `cfg` = the inversion cfg, `resample_cfg` the resampling's).
    Returns (rows, {(invert_cfg, resample_cfg, k): decoded images [B, H, W, 3]}).
    """
    from ..analysis.sweeps import sweep

    decoded_by: dict[tuple[float, float, int], Tensor] = {}

    def keep(rows: list[dict[str, Any]], outputs: Any) -> None:
        p = outputs.params
        decoded_by[(float(p["cfg"]), float(p["resample_cfg"]), int(p["end_at_step"]))] = outputs.images

    grid = {"cfg": [float(c) for c in invert_cfgs], "resample_cfg": [float(c) for c in resample_cfgs],
            "end_at_step": [int(k) for k in end_at_steps]}
    rows = sweep(model, model.encode(images), grid, images=images, metrics=["latent", "pixel", "detector"],
                 progress=False, callback=keep, steps=steps, sampler_name=sampler_name, scheduler=scheduler,
                 positive=list(source) if not isinstance(source, str) else source,
                 edit=list(edit) if not isinstance(edit, str) else edit)
    return rows, decoded_by


def compare_methods(model: Any, images: Tensor, settings: Sequence[tuple[str, str, dict[str, Any]]], *,
                    source: str | Sequence[str], edit: str | Sequence[str], steps: int = 10, cfg: float = 1.0,
                    sampler_name: str = "euler", scheduler: str = "normal"
                    ) -> tuple["pd.DataFrame", dict[tuple[str, str], Tensor]]:
    """Inversion methods side by side on the same images: one row per (label, method, options) of `settings`.

    Each method inverts `images` with prompt `source` at `cfg` (`ul.invert`), then its own resampling side
    (`ul.resample(model, inversion)`) reconstructs with `source` and edits with `edit`, at the same cfg.
    Columns: psnr (reconstruction against the VAE round trip, the reference), relative_error (latent),
    edit_success (the detector sees the edit's colour and shape), fg_iou (structure kept: foreground IoU of
    edit and source image), nfe, grad_steps, nonconverged (steps the method reported as not converged),
    seconds. Returns (table, {(label, "reconstruction" | "edit"): decoded first image}).
    """
    import time
    import warnings

    import pandas as pd

    from ..analysis import metrics
    from ..inversion import InversionWarning, invert, resample

    latent = model.encode(images)
    ceiling = model.decode(latent)
    n = int(images.shape[0])
    edits = [edit] * n if isinstance(edit, str) else list(edit)
    common = dict(steps=steps, cfg=cfg, sampler_name=sampler_name, scheduler=scheduler, progress=False)
    rows, decoded = [], {}
    for label, method, options in settings:
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", InversionWarning)  # reported in the nonconverged column
            inv = invert(model, latent, method=method, positive=source, **common, **options)
        back = resample(model, inv, positive=source, **common)
        seconds = time.perf_counter() - t
        edited = model.decode(resample(model, inv, positive=edits, **common))
        recon = model.decode(back)
        judged = metrics.detector_metrics(edited, images, prompts=edits) or []
        rows.append({
            "label": label, "method": method, "psnr": float(metrics.psnr(recon, ceiling).mean()),
            "relative_error": float(metrics.relative_error(back["samples"], latent["samples"]).mean()),
            "edit_success": float(sum(r["colour_match"] * r["shape_match"] for r in judged) / n) if judged else math.nan,
            "fg_iou": float(sum(r["fg_iou"] for r in judged) / n) if judged else math.nan,
            "nfe": inv.nfe, "grad_steps": inv.grad_steps, "nonconverged": len(inv.nonconverged_steps),
            "seconds": seconds,
        })
        decoded[(label, "reconstruction")], decoded[(label, "edit")] = recon[0], edited[0]
    return pd.DataFrame(rows), decoded


def real_model_ready(model_id: str) -> tuple[bool, str]:
    """(ready, reason): a CUDA device and the weights available offline (a local folder or the HF cache)?"""

    if not torch.cuda.is_available():
        return False, "No CUDA GPU here, so no real model can run; run it on a machine with a GPU to see one."
    if Path(model_id).expanduser().exists():
        return True, f"GPU {torch.cuda.get_device_name(0)}; weights at {model_id}."
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model_id, "model_index.json")
    except Exception:  # an invalid id, or no huggingface_hub
        cached = None
    if not isinstance(cached, str):
        return False, (f"{model_id!r} is not in the local Hugging Face cache, so it cannot load offline; "
                       f"download it once with `huggingface-cli download {model_id}`.")
    return True, f"GPU {torch.cuda.get_device_name(0)}; {model_id} found in the local cache."


#: The sample pictures shipped with the package (64 x 64 PNGs drawn by docs/make_sample_images.py):
#: two drawings like the bundled model's training images, two photograph-like scenes it never saw.
SAMPLE_IMAGES = Path(__file__).resolve().parents[1] / "bundled" / "images"
#: Their prompts for the bundled model (source, edit), by file stem.
SAMPLE_PROMPTS: dict[str, tuple[str, str]] = {
    "drawing_cyan_cross": ("cyan cross", "red cross"),
    "drawing_red_circle": ("red circle", "blue circle"),
    "photo_blue_box": ("blue square", "green square"),
    "photo_sunset": ("yellow circle", "magenta circle"),
}


def sample_prompts(paths_or_folder: Any = SAMPLE_IMAGES) -> tuple[list[str], list[str]]:
    """(sources, edits) for the sample pictures in `ul.load_images` order; other files get ("", "")."""
    from .images import list_images

    pairs = [SAMPLE_PROMPTS.get(p.stem, ("", "")) for p in list_images(paths_or_folder)]
    return [a for a, _ in pairs], [b for _, b in pairs]


__all__ = [
    "CLASS_COLOURS", "COMFYUI_ANCESTRAL", "TOY_LABELS", "cfg_endpoints", "comfyui_unsample", "ddim_vs_ddim_inverse", "edit_grid",
    "equal_budget_sweep", "inversion_errors", "steps_for_budget", "loglog_slopes", "SAMPLE_IMAGES", "SAMPLE_PROMPTS", "sample_prompts", "noise_report", "noise_spread", "normalize_modes", "rates", "standardized_noise", "toy_prompts",
    "plane", "plot_cfg_endpoints", "plot_density", "plot_paths", "plot_round_trip", "real_model_ready",
    "sample_path", "toy_data", "toy_model", "vp_view",
]


# -- why plain inversion fails: the implicit step and its contraction q ------------------------------------
def gaussian_contraction(sigmas: Sequence[float] | Tensor, *, data_std: float, cond_std: float | None = None,
                         cfg: float = 1.0) -> Tensor:
    """Per upward step sigma_i -> sigma_{i+1} (`sigmas` ascending): the contraction q_i of the implicit step on
    Gaussian data N(mu, s^2), the denoiser D(y, sigma) = mu + a (y - mu), a = s^2 / (s^2 + sigma^2).

    The exact inverse of the Euler step down solves y = x_i + Delta_i (y - D_w(y, sigma_{i+1})) / sigma_{i+1};
    its right side has slope q_i = Delta_i (1 - a_w) / sigma_{i+1} in y, so (y - mu) = (x_i - mu) / (1 - q_i), and
    at cfg 1: q_i = Delta_i sigma_{i+1} / (s^2 + sigma_{i+1}^2). With a conditional Gaussian of std `cond_std`
    (same mean) and guidance D_w = D_u + w (D_c - D_u): a_w = a_u + w (a_c - a_u), so q grows linearly in w."""
    s = torch.as_tensor(sigmas, dtype=torch.float64)
    if s.ndim != 1 or len(s) < 2 or bool((s[1:] <= s[:-1]).any()):
        raise UnsamplingError("gaussian_contraction needs ascending sigmas (an upward schedule) with >= 2 entries")
    nxt, delta = s[1:], s[1:] - s[:-1]
    a_u = data_std**2 / (data_std**2 + nxt**2)
    a_c = a_u if cond_std is None else cond_std**2 / (cond_std**2 + nxt**2)
    return delta * (1 - (a_u + cfg * (a_c - a_u))) / nxt


def implicit_step(denoise: Any, x: Tensor, sigma: float, sigma_next: float, *, iters: int = 3) -> list[Tensor]:
    """Fixed-point iterates y_0 = x, y_{k+1} = x + (sigma_next - sigma) (y_k - D(y_k, sigma_next)) / sigma_next of the
    implicit upward step (the exact inverse of an Euler step down from sigma_next). y_1 is plain inversion: the
    network fed x where the step down fed y (the linearisation x_{i+1} ~ x_i). The iterates close in by the factor
    q per iteration (`gaussian_contraction`) and diverge when q >= 1. `denoise(y, sigma_next)` -> tensor."""
    ys = [x]
    for _ in range(iters):
        y = ys[-1]
        ys.append(x + (sigma_next - sigma) * (y - denoise(y, sigma_next)) / sigma_next)
    return ys


def measured_contraction(model: Any, latent: dict[str, Any] | Tensor, *, steps: int, cfg: float = 1.0,
                         positive: Any = "", negative: Any = "", scheduler: str = "normal") -> "pd.DataFrame":
    """q measured on `model` along a plain upward Euler climb: at each step, two fixed-point iterations of
    `implicit_step` and q = ||y_2 - y_1|| / ||y_1 - y_0|| per item (the Gaussian's q where the model is linear).
    Columns: item, step, sigma_next, q. Costs 2 network calls per step on top of the climb."""
    import pandas as pd

    samples = latent["samples"] if isinstance(latent, dict) else latent
    sigmas = (sigma_schedule(model.model_sampling, scheduler, steps).flip(0) + engine.UNSAMPLE_SIGMA_OFFSET).tolist()
    x = model.latent_format.process_in(samples.to(model.device, engine.state_dtype(samples)))
    b = x.shape[0]
    den = engine.guided_denoiser(model, x, None, cfg=cfg, positive=positive, negative=negative)
    rows = []
    with torch.inference_mode():
        for i, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
            y0, y1, y2 = implicit_step(lambda y, s: den(y, y.new_full([b], s)), x, sigma, sigma_next, iters=2)
            q = (y2 - y1).flatten(1).norm(dim=1) / (y1 - y0).flatten(1).norm(dim=1)
            rows += [{"item": j, "step": i, "sigma_next": sigma_next, "q": float(q[j])} for j in range(b)]
            x = x + (sigma_next - sigma) * (x - den(x, x.new_full([b], sigma))) / sigma  # the plain climb (euler)
    return pd.DataFrame(rows)


def mean_interval(values: Sequence[float] | Tensor, *, z: float = 1.96) -> tuple[float, float, float]:
    """(mean, lo, hi): the mean with a normal-approximation interval mean +- z s / sqrt(n) (n >= 2)."""
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    if v.numel() < 2:
        raise UnsamplingError(f"mean_interval needs >= 2 values, got {v.numel()}")
    half = z * float(v.std(unbiased=True)) / math.sqrt(v.numel())
    return float(v.mean()), float(v.mean()) - half, float(v.mean()) + half
