"""One setting -> its metric row(s): what a sweep stores and what the explorer shows for the same setting.

    evaluate(model, result, trajectory=traj, end_at_step=k, references=refs)  ->  [{column: value}, ...]

one dict per batch item. The metric sets:
- latent:   latent_mse, relative_error of the resampled latents against the input latents;
- pixel:    psnr, ssim of decode(result) against the original images, and the VAE-only reference
            psnr_vae, ssim_vae = metric(decode(encode(images)), images): the VAE's own loss, a reference to read
            a round trip against, not a bound (a round trip can land a little above it);
- noise:    statistics of the standardized noise z = x_k / expected_std(sigma_k) (per item,
            `metrics.standardized_noise`) at the state the inversion stopped at (noise_std, noise_ks,
            noise_kurtosis_z, noise_autocorr_<lag>, ...) and sigma_final;
- detector: colour / shape / foreground IoU of the shapes model's detector (bundled model only).
"""
from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from torch import Tensor

from ..errors import check_choice

if TYPE_CHECKING:
    from ..trajectory import Trajectory

MetricSet = Literal["latent", "pixel", "noise", "detector"]
METRIC_SETS: tuple[str, ...] = ("latent", "pixel", "noise", "detector")
AUTOCORR_LAGS: tuple[int, ...] = (1, 2, 4)


@dataclass(frozen=True)
class References:
    """What the metrics compare against.

    samples: the input latents [B, C, H, W]; images: the originals [B, H, W, 3] in 0..1 (None when
    the model has no VAE or no pixel metric is asked for); ceiling: decode(encode(images)), the VAE-only reference (the field keeps its name).
    """

    samples: Tensor
    images: Tensor | None = None
    ceiling: Tensor | None = None

    @property
    def decodes(self) -> bool:
        return self.images is not None


def metric_sets(metrics: Sequence[str] | None) -> tuple[str, ...]:
    """The chosen metric sets in METRIC_SETS order (None: all); unknown names get a did-you-mean."""
    if metrics is None:
        return METRIC_SETS
    if isinstance(metrics, str):  # metrics="latent" is one set, not the letters l, a, t, ...
        metrics = [metrics]
    chosen = {check_choice(m, METRIC_SETS, what="metric set") for m in metrics}
    return tuple(m for m in METRIC_SETS if m in chosen)


def references(model: Any, samples: Tensor, images: Tensor | None = None, *,
               metrics: Collection[str] = METRIC_SETS) -> References:
    """The references for `metrics`: images default to decode(samples); no images without a VAE."""
    if not ({"pixel", "detector"} & set(metrics)) or getattr(model, "vae", None) is None or not hasattr(model, "decode"):
        return References(samples)
    reference = images.detach().float().cpu() if images is not None else model.decode(samples)
    return References(samples, reference, model.decode(model.encode(reference)))


def evaluate(
    model: Any,
    result: Tensor,
    *,
    trajectory: "Trajectory",
    end_at_step: int,
    references: References,
    decoded: Tensor | None = None,
    prompts: Sequence[str] | None = None,
    metrics: Collection[str] = METRIC_SETS,
) -> list[dict[str, float]]:
    """The metric columns of one setting, one dict per batch item.

    result: the resampled latents [B, C, H, W]; trajectory: the inversion they came from (its
    state at `end_at_step` is the noise the noise metrics describe); decoded: decode(result) when
    the caller has it (else decoded here when a pixel or detector metric needs it); prompts: the
    resample prompt per item (what the detector checks an edit against).
    """
    from . import metrics as M

    batch = int(result.shape[0])
    rows: list[dict[str, float]] = [{} for _ in range(batch)]
    samples = references.samples
    if "latent" in metrics:
        mse, rel = M.latent_mse(result, samples), M.relative_error(result, samples)
        for b, row in enumerate(rows):
            row.update(latent_mse=float(mse[b]), relative_error=float(rel[b]))
    needs_pixels = references.decodes and ({"pixel", "detector"} & set(metrics))
    if needs_pixels and decoded is None:
        decoded = model.decode(result)
    if "pixel" in metrics and needs_pixels:
        p, s = M.psnr(decoded, references.images), M.ssim(decoded, references.images)
        pv, sv = M.psnr(references.ceiling, references.images), M.ssim(references.ceiling, references.images)
        for b, row in enumerate(rows):
            row.update(psnr=float(p[b]), ssim=float(s[b]), psnr_vae=float(pv[b]), ssim_vae=float(sv[b]))
    if "noise" in metrics:
        for row, stats in zip(rows, noise_metrics(model, trajectory, end_at_step)):
            row.update(stats)
    if "detector" in metrics and needs_pixels:
        det = M.detector_metrics(decoded, references.images, prompts=list(prompts) if prompts is not None else None)
        if det is not None:
            for row, d in zip(rows, det):
                row.update(d)
    return rows


def noise_metrics(model: Any, trajectory: "Trajectory", end_at_step: int) -> list[dict[str, float]]:
    """Per item: noise_* statistics of z = `metrics.standardized_noise` at the state `unsample(end_at_step=k)` stops at."""
    from .. import engine
    from . import metrics as M

    sigma = float(trajectory.sigmas[engine.state_index(int(trajectory.params["steps"]), end_at_step)])
    out = []
    for z in M.standardized_noise(model, trajectory, end_at_step):
        stats = M.noise_stats(z)
        stats.pop("n")
        row = {f"noise_{k}": v for k, v in stats.items()}
        row.update({f"noise_{k}": v for k, v in M.autocorrelation(z, AUTOCORR_LAGS).items()})
        row["sigma_final"] = sigma
        out.append(row)
    return out


def inversion_endpoints(model: Any, latent: Any, inversion: Any) -> "Trajectory":
    """A two-state Trajectory (the input latent, the state an `ul.invert` result stopped at) for
    `evaluate`'s noise metrics, when the method records no trajectory of its own: the final state is
    read back from the Inversion's noise LATENT at the last sigma of its schedule."""
    import torch

    from .. import engine
    from ..trajectory import Trajectory

    p = inversion.params
    sigmas = engine.unsample_sigmas(model, steps=int(p["steps"]), end_at_step=int(p["end_at_step"]),
                                    sampler_name=p["sampler_name"], scheduler=p["scheduler"])
    ms, fmt = model.model_sampling, model.latent_format
    samples = latent["samples"] if isinstance(latent, dict) else latent
    start = fmt.process_in(samples.to(torch.float32))
    final = ms.latent_to_state(sigmas[-1], fmt.process_in(inversion.samples.to(torch.float32)))
    return Trajectory(sigmas=torch.stack([sigmas[0], sigmas[-1]]).float().cpu(), xs=torch.stack([start, final]).cpu(),
                      denoised=start.new_zeros((0, *start.shape)).cpu(),
                      params={"steps": 1, "sampler_name": p["sampler_name"], "method": inversion.method},
                      nfe=inversion.nfe)
