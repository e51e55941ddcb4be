"""A model's sigma table: how sigma, timestep and the network's output relate (ComfyUI's `model_sampling`).

Everything that differs between eps, v and flow models lives here as data, so samplers and the
engine never ask what kind of model they run. Sigma space is k-diffusion's:

    VP (eps, v):  x = x0 + sigma * eps,                 network input x / sqrt(sigma^2 + 1)
    flow (CONST): x = (1 - sigma) * x0 + sigma * noise, network input x

and every sampler integrates dx/dsigma = (x - denoised(x, sigma)) / sigma in both cases.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

import torch
from torch import Tensor

from .errors import UnsamplingError, check_choice

#: What the network predicts (`ModelSampling.prediction`); an inversion method's `MethodSpec.predictions` says
#: which it serves.
Prediction = Literal["eps", "v", "flow"]
#: The model families samplers tell apart (`ModelSampling.family`): "vp" (eps / v: x = x0 + sigma n, ComfyUI's
#: EPS / V_PREDICTION) and "flow" (x = (1 - sigma) x0 + sigma n, ComfyUI's CONST). A sampler's
#: `SamplerSpec.families` says which it serves.
Family = Literal["vp", "flow"]
FAMILIES: tuple[str, ...] = ("vp", "flow")
TimestepMap = Literal["nearest_index", "continuous_index", "scaled", "flux"]
BetaSchedule = Literal["scaled_linear", "linear", "squaredcos_cap_v2"]

PREDICTIONS: tuple[str, ...] = ("eps", "v", "flow")


def _view(sigma: Tensor, like: Tensor) -> Tensor:
    """Broadcast a scalar or per-batch sigma against `like` [B, ...]."""
    sigma = torch.as_tensor(sigma, dtype=like.dtype, device=like.device)
    if sigma.ndim == 0:
        return sigma
    return sigma.reshape(sigma.shape[:1] + (1,) * (like.ndim - 1))


def time_snr_shift(shift: float, t: Tensor) -> Tensor:
    """SD3's shifted flow schedule: sigma(tau) = s * tau / (1 + (s - 1) * tau)."""
    if shift == 1.0:
        return t
    return shift * t / (1 + (shift - 1) * t)


def flux_time_shift(mu: float, t: Tensor) -> Tensor:
    """Flux's schedule: sigma(t) = e^mu / (e^mu + (1/t - 1))."""
    return math.exp(mu) / (math.exp(mu) + (1 / t - 1))


@dataclass(frozen=True, eq=False)
class ModelSampling:
    """The model's ascending sigma table plus the maps sigma <-> timestep and output -> x0.

    `sigmas` is float32 and ascending (ComfyUI `model_sampling.sigmas`); `prediction` says how the
    network output becomes the denoised x0; `timestep_map` says what number the network is given:
    `nearest_index` (discrete VP: index of the nearest log-sigma), `continuous_index` (the same
    but interpolated, for analytic models that want the exact sigma back), `scaled`
    (`sigma * multiplier`, SD3) or `flux` (`sigma` itself).
    """

    sigmas: Tensor
    prediction: Prediction
    timestep_map: TimestepMap
    shift: float = 1.0
    multiplier: float = 1000.0
    log_sigmas: Tensor = field(init=False, repr=False)
    _log_sigmas64: Tensor = field(init=False, repr=False)  # the same in float64, for continuous maps

    def __post_init__(self) -> None:
        check_choice(self.prediction, PREDICTIONS, what="prediction type")
        sigmas = torch.as_tensor(self.sigmas).detach().cpu()
        if sigmas.ndim != 1 or len(sigmas) < 2:
            raise UnsamplingError(f"a sigma table must be 1-D with at least 2 entries, got shape {tuple(sigmas.shape)}")
        if not bool((sigmas[1:] >= sigmas[:-1]).all()):
            raise UnsamplingError("a sigma table must be ascending (ComfyUI's convention)")
        object.__setattr__(self, "sigmas", sigmas.float())
        object.__setattr__(self, "log_sigmas", sigmas.double().log().float() if sigmas.dtype == torch.float64 else sigmas.float().log())
        object.__setattr__(self, "_log_sigmas64", sigmas.double().log())

    # -- constructors ---------------------------------------------------------------------------
    @classmethod
    def discrete(
        cls,
        *,
        beta_schedule: BetaSchedule = "scaled_linear",
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        num_train_timesteps: int = 1000,
        prediction: Prediction = "eps",
        trained_betas: Tensor | None = None,
    ) -> "ModelSampling":
        """A discrete VP table as ComfyUI builds it: betas and cumprod in float64, sigmas held in float32.

        ComfyUI's "linear" is diffusers' `scaled_linear`: betas = linspace(sqrt(b0), sqrt(b1), T)^2.
        """
        check_choice(beta_schedule, ("scaled_linear", "linear", "squaredcos_cap_v2"), what="beta schedule")
        n = num_train_timesteps
        if trained_betas is not None:
            betas = torch.as_tensor(trained_betas, dtype=torch.float64)
        elif beta_schedule == "scaled_linear":
            betas = torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=torch.float64) ** 2
        elif beta_schedule == "linear":
            betas = torch.linspace(beta_start, beta_end, n, dtype=torch.float64)
        else:  # squaredcos_cap_v2 (improved DDPM), as diffusers defines it
            t = torch.arange(n + 1, dtype=torch.float64) / n
            abar = torch.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
            betas = (1 - abar[1:] / abar[:-1]).clamp(max=0.999)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5  # float64; log taken before the cast
        return cls(sigmas=sigmas, prediction=prediction, timestep_map="nearest_index")

    @classmethod
    def from_scheduler_config(cls, config: Mapping[str, Any]) -> "ModelSampling":
        """Build the table from a diffusers scheduler config (SD1.x, SD2.x, SDXL)."""
        prediction_type = config.get("prediction_type", "epsilon")
        names = {"epsilon": "eps", "v_prediction": "v"}
        if prediction_type not in names:
            raise UnsamplingError(
                f"scheduler prediction_type {prediction_type!r} is not supported; expected 'epsilon' or 'v_prediction'"
            )
        if config.get("rescale_betas_zero_snr", False):
            raise UnsamplingError("rescale_betas_zero_snr schedules (infinite sigma_max) are not supported yet")
        return cls.discrete(
            beta_schedule=config.get("beta_schedule", "scaled_linear"),
            beta_start=float(config.get("beta_start", 0.00085)),
            beta_end=float(config.get("beta_end", 0.012)),
            num_train_timesteps=int(config.get("num_train_timesteps", 1000)),
            prediction=names[prediction_type],
            trained_betas=config.get("trained_betas"),
        )

    @classmethod
    def flow(cls, *, shift: float = 3.0, multiplier: float = 1000.0, num_timesteps: int = 1000) -> "ModelSampling":
        """SD3's flow table (ComfyUI ModelSamplingDiscreteFlow): sigma(tau) shifted, timestep = sigma * multiplier."""
        t = torch.arange(1, num_timesteps + 1, dtype=torch.float32) / num_timesteps
        return cls(sigmas=time_snr_shift(shift, t), prediction="flow", timestep_map="scaled", shift=shift, multiplier=multiplier)

    @classmethod
    def flux(cls, *, shift: float = 1.15, num_timesteps: int = 10000) -> "ModelSampling":
        """Flux's flow table (ComfyUI ModelSamplingFlux): sigma(t) = e^mu/(e^mu + 1/t - 1), timestep = sigma."""
        t = torch.arange(1, num_timesteps + 1, dtype=torch.float32) / num_timesteps
        return cls(sigmas=flux_time_shift(shift, t), prediction="flow", timestep_map="flux", shift=shift, multiplier=1.0)

    @classmethod
    def continuous(
        cls, *, sigma_min: float = 0.002, sigma_max: float = 80.0, prediction: Prediction = "eps", n: int = 1000
    ) -> "ModelSampling":
        """A log-uniform table whose timestep is the interpolated index, so `sigma(timestep(s)) == s`.

        For analytic models and teaching toys that want every sigma exactly, not the nearest entry.
        """
        sigmas = torch.logspace(math.log10(sigma_min), math.log10(sigma_max), n, dtype=torch.float64)
        return cls(sigmas=sigmas, prediction=prediction, timestep_map="continuous_index")

    # -- the table --------------------------------------------------------------------------------
    @property
    def family(self) -> Family:
        """"flow" for flow (CONST) models, "vp" for eps and v models: what a sampler's update rule depends on."""
        return "flow" if self.prediction == "flow" else "vp"

    def percent_to_sigma(self, percent: float) -> float:
        """The sigma at `percent` of the way from pure noise (0) to clean (1) (ComfyUI `percent_to_sigma`).

        VP: `sigma(t)` at t = (1 - percent) * (len(table) - 1), and 999999999.9 at percent <= 0. Flow: the
        shifted schedule at 1 - percent (SD3 `time_snr_shift`, Flux `flux_time_shift`), 1.0 at percent <= 0.
        Both 0.0 at percent >= 1. The flow samplers in half-logSNR form start at `percent_to_sigma(1e-4)`
        instead of sigma 1, where logit(sigma) is infinite.
        """
        if percent <= 0.0:
            return 1.0 if self.family == "flow" else 999999999.9
        if percent >= 1.0:
            return 0.0
        if self.timestep_map == "scaled":
            return float(time_snr_shift(self.shift, 1.0 - percent))  # type: ignore[arg-type]  # Python floats, as ComfyUI
        if self.timestep_map == "flux":
            return float(flux_time_shift(self.shift, 1.0 - percent))  # type: ignore[arg-type]
        return float(self.sigma(torch.tensor((1.0 - percent) * (len(self.sigmas) - 1))))

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def timestep(self, sigma: Tensor) -> Tensor:
        """The number the network is conditioned on at `sigma` (same shape as `sigma`)."""
        sigma = torch.as_tensor(sigma)
        if self.timestep_map == "scaled":
            return sigma * self.multiplier
        if self.timestep_map == "flux":
            return sigma
        log_sigma = (sigma.double() if self.timestep_map == "continuous_index" else sigma.float()).log()
        if self.timestep_map == "nearest_index":
            dists = log_sigma.reshape(-1)[None, :] - self.log_sigmas[:, None]
            return dists.abs().argmin(dim=0).view(sigma.shape).to(sigma.device)
        # continuous_index: invert the log-linear interpolation of `sigma(t)`
        ls = self._log_sigmas64
        flat = log_sigma.double().reshape(-1).clamp(float(ls[0]), float(ls[-1]))
        hi = torch.searchsorted(ls, flat).clamp(1, len(ls) - 1)
        lo = hi - 1
        w = (flat - ls[lo]) / (ls[hi] - ls[lo])
        return (lo.double() + w).view(sigma.shape).to(device=sigma.device, dtype=sigma.dtype)

    def sigma(self, timestep: Tensor) -> Tensor:
        """Inverse of `timestep`: the sigma a timestep stands for (log-interpolated for VP tables)."""
        timestep = torch.as_tensor(timestep)
        if self.timestep_map == "scaled":
            return time_snr_shift(self.shift, timestep / self.multiplier)
        if self.timestep_map == "flux":
            return flux_time_shift(self.shift, timestep)
        dtype = torch.float64 if self.timestep_map == "continuous_index" else torch.float32
        log_sigmas = self._log_sigmas64 if self.timestep_map == "continuous_index" else self.log_sigmas
        t = timestep.to(dtype).clamp(0, len(self.sigmas) - 1).to(self.log_sigmas.device)
        low, high = t.floor().long(), t.ceil().long()
        w = t.frac()
        log_sigma = (1 - w) * log_sigmas[low] + w * log_sigmas[high]
        return log_sigma.exp().to(timestep.device)

    def timestep_to_sigma(self, timestep: Tensor) -> Tensor:
        """The exact inverse of `timestep` (ComfyUI's `sigma(t)` is not one for shifted flow tables,
        whose `timestep` is the unshifted sigma * multiplier); for exact models that want sigma back."""
        timestep = torch.as_tensor(timestep)
        if self.timestep_map == "scaled":
            return timestep / self.multiplier
        if self.timestep_map == "flux":
            return timestep
        return self.sigma(timestep)

    # -- network output <-> x0 --------------------------------------------------------------------
    def calculate_input(self, sigma: Tensor, x: Tensor) -> Tensor:
        """What the network sees: x / sqrt(sigma^2 + 1) for VP models, x itself for flow models."""
        if self.prediction == "flow":
            return x
        return x / (_view(sigma, x) ** 2 + 1.0) ** 0.5

    def calculate_denoised(self, sigma: Tensor, model_output: Tensor, x: Tensor) -> Tensor:
        """x0 from the network output: eps and flow `x - sigma*out`; v `x/(s^2+1) - out*s/sqrt(s^2+1)`."""
        s = _view(sigma, x)
        if self.prediction == "v":
            return x / (s**2 + 1.0) - model_output * s / (s**2 + 1.0) ** 0.5
        return x - model_output * s

    def noise_scaling(self, sigma: Tensor, noise: Tensor, latent: Tensor, *, max_denoise: bool = False) -> Tensor:
        """The starting point of sampling at `sigma` (ComfyUI `noise_scaling`).

        VP: `latent + noise * sigma`, or `latent + noise * sqrt(1 + sigma^2)` when starting at
        sigma_max (`max_denoise`). Flow: `sigma * noise + (1 - sigma) * latent`.
        """
        s = _view(sigma, noise)
        if self.prediction == "flow":
            return s * noise + (1.0 - s) * latent
        scale = (1.0 + s**2) ** 0.5 if max_denoise else s
        return noise * scale + latent

    def inverse_noise_scaling(self, sigma: Tensor, x: Tensor) -> Tensor:
        """A state at `sigma` as a LATENT (ComfyUI `inverse_noise_scaling`): identity for VP models.

        Flow, sigma < 1: `x / (1 - sigma)`, the VE form x0 + sigma/(1 - sigma) * noise, as ComfyUI
        stores a partially noised flow latent. Flow, sigma >= `sigma_limit` (= 1): `x` itself. There
        the state is pure noise (x = 1 * noise + 0 * x0), its VE form is infinite, and ComfyUI's
        division by 1 - 1.0001 = -1e-4 flips the sign and multiplies by 1e4; the noise is the only
        finite LATENT that still carries the state. `latent_to_state` is the exact inverse.
        """
        if self.prediction == "flow":
            s = _view(sigma, x)
            below = s < self.sigma_limit
            return torch.where(below, x / torch.where(below, 1.0 - s, torch.ones_like(s)), x)
        return x

    def latent_to_state(self, sigma: Tensor, latent: Tensor) -> Tensor:
        """The sampler state a LATENT stands for at `sigma`, no noise added (inverse of `inverse_noise_scaling`).

        Equals `noise_scaling(sigma, 0, latent)` (ComfyUI's start with add_noise off) wherever that
        is defined: VP `latent`, flow `(1 - sigma) * latent` for sigma < 1; at flow sigma >= 1 the
        LATENT is the noise itself, so the state is `latent` (ComfyUI's `0 * latent` would lose it).
        """
        if self.prediction == "flow":
            s = _view(sigma, latent)
            return torch.where(s < self.sigma_limit, (1.0 - s) * latent, latent)
        return latent.clone()

    @property
    def sigma_limit(self) -> float:
        """The largest sigma a sampler state can have: 1 for flow models (pure noise), inf for VP models.

        The Unsampler's sigmas (schedule + 1e-4) are clamped to it: past sigma = 1 a flow state
        would hold a negative multiple of the data, and the network was never trained there.
        """
        return 1.0 if self.prediction == "flow" else math.inf

    def is_max_denoise(self, sigma: float) -> bool:
        """ComfyUI's test for starting from pure noise: sigma is (close to) sigma_max or above it."""
        return math.isclose(self.sigma_max, float(sigma), rel_tol=1e-5) or float(sigma) > self.sigma_max

    def expected_std(self, sigma: Tensor | float, *, data_std: float = 1.0) -> Tensor:
        """The std a noisy latent has at `sigma` if x0 has std `data_std` (for statistics and plots)."""
        s = torch.as_tensor(sigma, dtype=torch.float64)
        if self.prediction == "flow":
            return (s**2 + ((1 - s) * data_std) ** 2) ** 0.5
        return (s**2 + data_std**2) ** 0.5


FlowKind = Literal["sd3", "flux"]
#: The resolution mu defaults to (1024 x 1024 pixels = a 128 x 128 latent): Flux's mu = 1.15, ComfyUI's default shift.
DEFAULT_LATENT_SIZE = (128, 128)


# -- flow tables (SD3, Flux) from diffusers' FlowMatchEulerDiscreteScheduler configs ---------------------------------------------------------------------------------
def flux_mu(
    latent: Tensor | Mapping[str, Any] | tuple[int, int],
    *,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
    patch_size: int = 2,
) -> float:
    """Flux's resolution-dependent shift mu, as diffusers' `calculate_shift` computes it.

    latent: a LATENT dict, a [B, C, H, W] latent, or its (H, W). L = (H / 2)(W / 2) packed patches;
    mu = base_shift + (max_shift - base_shift) (L - base_seq_len) / (max_seq_len - base_seq_len).
    """
    if isinstance(latent, Mapping):
        latent = latent["samples"]
    if isinstance(latent, Tensor):
        if latent.ndim != 4:
            raise UnsamplingError(f"flux_mu needs a [B, C, H, W] latent or its (H, W), got shape {tuple(latent.shape)}")
        h, w = int(latent.shape[-2]), int(latent.shape[-1])
    else:
        h, w = (int(v) for v in latent)
    seq_len = (h // patch_size) * (w // patch_size)
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return seq_len * m + base_shift - m * base_seq_len


def flow_model_sampling(kind: FlowKind, scheduler_config: Mapping[str, Any] | None = None, *,
                        mu: float | None = None) -> ModelSampling:
    """The ComfyUI sigma table for a diffusers `FlowMatchEulerDiscreteScheduler` config.

    SD3: `ModelSampling.flow(shift)`; Flux: `ModelSampling.flux(shift=mu)` (10000 entries, as ComfyUI).
    With `use_dynamic_shifting` the shift is e^mu, mu given or `flux_mu` of a 1024 x 1024 image.
    """
    if kind not in ("sd3", "flux"):
        raise UnsamplingError(f"unknown flow model kind {kind!r}; expected 'sd3' or 'flux'")
    config = dict(scheduler_config or {})
    if config.get("time_shift_type", "exponential") != "exponential":
        raise UnsamplingError(
            f"time_shift_type {config['time_shift_type']!r} is not supported; only diffusers' default 'exponential' "
            "shift (SD3, Flux) has a ComfyUI sigma table"
        )
    dynamic = bool(config.get("use_dynamic_shifting", kind == "flux"))
    if dynamic:
        if mu is None:
            mu = flux_mu(DEFAULT_LATENT_SIZE, **_shift_params(config))
        log_shift = float(mu)
    else:
        if mu is not None:
            raise UnsamplingError("mu applies to schedulers with use_dynamic_shifting; this one has a fixed shift")
        log_shift = math.log(float(config.get("shift", 3.0 if kind == "sd3" else 1.0)))
    if kind == "flux":  # timestep = sigma; e^mu / (e^mu + 1/t - 1) is the SD3 shift with s = e^mu
        return ModelSampling.flux(shift=log_shift)
    return ModelSampling.flow(shift=math.exp(log_shift), multiplier=float(config.get("num_train_timesteps", 1000)))


def _shift_params(config: Mapping[str, Any]) -> dict[str, float]:
    keys = {"base_shift": "base_shift", "max_shift": "max_shift", "base_seq_len": "base_image_seq_len",
            "max_seq_len": "max_image_seq_len"}
    return {k: config[c] for k, c in keys.items() if config.get(c) is not None}
