"""Exact denoisers as models the engine runs: the same unsample/resample code on a known answer (`ul.analytic`).

The data with closed-form denoisers live in `models/gaussian.py` (`GaussianData`, `GaussianMixture`, pure
functions of tensors); this module wraps them as models (`gaussian_model`, `mixture_model`,
`gaussian_flow_model`) and re-exports them, so `ul.analytic` holds both.

The "latent" of a D-dimensional toy is a [B, D, 1, 1] tensor. Prompts name classes: `labels[k]`
selects component k's conditional denoiser and "" the unconditional (mixture) one, so cfg pulls
between classes exactly as it does in a text-to-image model.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ..errors import UnsamplingError
from ..model_sampling import ModelSampling, Prediction
from .base import Conditioning, LatentFormat
from .gaussian import GaussianData, GaussianMixture

__all__ = ["AnalyticModel", "GaussianData", "GaussianMixture", "gaussian_flow_model", "gaussian_model", "mixture_model"]

#: denoise(x [B, D], sigma [B], label [B] with -1 = unconditional) -> x0 [B, D]
DenoiseFn = Callable[[Tensor, Tensor, Tensor], Tensor]


class AnalyticModel:
    """Wrap an exact denoiser (VE form, or flow form with prediction="flow") as a DiffusionModel."""

    def __init__(
        self,
        denoise: DenoiseFn,
        *,
        dim: int,
        labels: Sequence[str] = (),
        model_sampling: ModelSampling | None = None,
        prediction: Prediction = "eps",
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float64,
    ) -> None:
        self.denoise = denoise
        self.labels = tuple(labels)
        self.model_sampling = model_sampling or (
            ModelSampling.flow(shift=1.0) if prediction == "flow"
            else ModelSampling.continuous(sigma_min=0.002, sigma_max=80.0, prediction=prediction)
        )
        self.latent_format = LatentFormat(channels=dim)
        self.device, self.dtype = torch.device(device), dtype

    def encode_prompt(self, prompts: Sequence[str]) -> Conditioning:
        """One-hot class embeddings; slot 0 is "" (unconditional), slot k + 1 is `labels[k]`."""
        ids = []
        for p in prompts:
            if p == "":
                ids.append(0)
            elif p in self.labels:
                ids.append(self.labels.index(p) + 1)
            else:
                raise UnsamplingError(f"unknown class prompt {p!r}; this toy model knows {list(self.labels)} and ''")
        onehot = torch.nn.functional.one_hot(torch.tensor(ids), len(self.labels) + 1).to(self.dtype)
        return Conditioning(onehot[:, None, :])

    def check_conditioning(self, cond: Conditioning) -> None:
        if cond.embeds.shape[-1] != len(self.labels) + 1:
            raise UnsamplingError(f"class embeddings must have width {len(self.labels) + 1}, got {cond.embeds.shape[-1]}")

    def forward(self, x: Tensor, timestep: Tensor, cond: Conditioning) -> Tensor:
        ms = self.model_sampling
        sigma = ms.timestep_to_sigma(timestep).to(self.dtype)
        label = cond.embeds[:, 0, :].argmax(dim=-1) - 1
        flat = x.to(self.dtype).flatten(1)
        s = sigma[:, None]
        state = flat if ms.prediction == "flow" else flat * (s**2 + 1) ** 0.5  # undo calculate_input
        x0 = self.denoise(state, sigma, label)
        if ms.prediction == "v":
            raise UnsamplingError("analytic models are written for eps and flow parametrizations")
        out = (state - x0) / s  # eps (VE) or velocity (flow): both are (x - x0) / sigma
        return out.reshape(x.shape).float() if x.dtype == torch.float32 else out.reshape(x.shape)

    def __repr__(self) -> str:
        return f"AnalyticModel(dim={self.latent_format.channels}, labels={list(self.labels)}, prediction={self.model_sampling.prediction!r})"


def gaussian_model(data: GaussianData, *, prediction: Prediction = "eps") -> AnalyticModel:
    """Independent Gaussian data (exact PF-ODE known in closed form) as a model; latent [B, D, 1, 1]."""
    if prediction == "flow":
        fn: DenoiseFn = lambda x, sigma, label: data.denoise_flow(x, sigma[:, None])  # noqa: E731
    else:
        fn = lambda x, sigma, label: data.denoise(x, sigma[:, None])  # noqa: E731
    return AnalyticModel(fn, dim=int(torch.as_tensor(data.mean).numel()), prediction=prediction)


def mixture_model(mixture: GaussianMixture, *, labels: Sequence[str] | None = None) -> AnalyticModel:
    """A labelled Gaussian mixture as a text-conditioned model: prompt `labels[k]` is class k, "" the mixture."""
    labels = tuple(labels) if labels is not None else tuple(f"class {k}" for k in range(mixture.n_classes))

    def denoise(x: Tensor, sigma: Tensor, label: Tensor) -> Tensor:
        out = torch.empty_like(x)
        for k in label.unique().tolist():
            rows = label == k
            out[rows] = mixture.denoise(x[rows], sigma[rows][:, None], None if k < 0 else int(k))
        return out

    return AnalyticModel(denoise, dim=int(mixture.means.shape[-1]), labels=labels)


def gaussian_flow_model(data: GaussianData) -> AnalyticModel:
    """An exact flow model for Gaussian data (`models.gaussian.GaussianData`): denoised = E[x0 | x] in flow form.

    Latents are [B, D, 1, 1]; the sigma table is the unshifted flow table (timestep = 1000 sigma), on
    which `AnalyticModel` reads sigma back from the timestep exactly (on a shifted table ComfyUI's
    `sigma(timestep)` applies the shift a second time, as it must for its schedulers).
    """
    dim = int(torch.as_tensor(data.mean).numel())
    return AnalyticModel(lambda x, sigma, label: data.denoise_flow(x, sigma), dim=dim, prediction="flow",
                         model_sampling=ModelSampling.flow(shift=1.0))
