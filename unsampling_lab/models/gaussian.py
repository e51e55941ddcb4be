"""Exact toy data whose denoiser and probability-flow ODE are known in closed form.

Pure functions of tensors: `denoise(x, sigma)` has the Denoiser signature (sigma a scalar or a [B]
tensor), so these plug straight into the samplers, and `ode_solution` gives the exact answer a
sampler should approach. Two noising conventions (k-diffusion's names):

    VE   (eps / v models):  x = x0 + sigma * n
    flow (CONST):           x = (1 - sigma) * x0 + sigma * n,   sigma in [0, 1]

with n ~ N(0, I) independent of x0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor


def _sigma_like(sigma: Tensor | float, x: Tensor) -> Tensor:
    """sigma as a tensor that broadcasts against x [B, ...]: a scalar stays 0-d, a [B] tensor becomes [B, 1, ...]."""
    s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if s.ndim == 1 and x.ndim > 1:
        s = s.reshape(s.shape[:1] + (1,) * (x.ndim - 1))
    return s


@dataclass(frozen=True)
class GaussianData:
    """Data x0 ~ N(mean, diag(std^2)), every dimension independent. `mean`, `std` broadcast against x [B, ...]."""

    mean: Tensor
    std: Tensor

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", torch.as_tensor(self.mean))
        object.__setattr__(self, "std", torch.as_tensor(self.std))

    def _params(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.mean.to(x), (self.std**2).to(x)

    def denoise(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        """E[x0 | x] for x = x0 + sigma n:  m + v / (v + sigma^2) (x - m),  v = std^2."""
        m, v = self._params(x)
        s = _sigma_like(sigma, x)
        return m + v / (v + s**2) * (x - m)

    __call__ = denoise

    def denoise_flow(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        """E[x0 | x] for x = (1 - sigma) x0 + sigma n:  m + a v / (a^2 v + sigma^2) (x - a m),  a = 1 - sigma."""
        m, v = self._params(x)
        s = _sigma_like(sigma, x)
        a = 1 - s
        return m + a * v / (a**2 * v + s**2) * (x - a * m)

    def ode_solution(self, x: Tensor, sigma_from: Tensor | float, sigma_to: Tensor | float) -> Tensor:
        """Exact PF-ODE transport dx/dsigma = (x - E[x0|x]) / sigma in VE form: (x - m) / sqrt(v + sigma^2) is invariant."""
        m, v = self._params(x)
        s0, s1 = _sigma_like(sigma_from, x), _sigma_like(sigma_to, x)
        return m + (x - m) * torch.sqrt((v + s1**2) / (v + s0**2))

    def ode_solution_flow(self, x: Tensor, sigma_from: Tensor | float, sigma_to: Tensor | float) -> Tensor:
        """Exact PF-ODE transport in flow form: (x - (1 - sigma) m) / sqrt((1 - sigma)^2 v + sigma^2) is invariant."""
        m, v = self._params(x)
        s0, s1 = _sigma_like(sigma_from, x), _sigma_like(sigma_to, x)
        z = (x - (1 - s0) * m) / torch.sqrt((1 - s0) ** 2 * v + s0**2)
        return (1 - s1) * m + z * torch.sqrt((1 - s1) ** 2 * v + s1**2)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n draws of x0, shape [n, *mean.shape] (float64 unless mean and std are float32)."""
        shape = torch.broadcast_shapes(self.mean.shape, self.std.shape)
        dtype = torch.promote_types(self.mean.dtype, self.std.dtype)
        z = torch.randn((n, *shape), generator=generator, dtype=torch.float64).to(dtype)
        return self.mean + self.std * z


@dataclass(frozen=True)
class GaussianMixture:
    """Data x0 ~ sum_k w_k N(mu_k, diag(s_k^2)) in D dimensions, with a class label per component.

    means [K, D]; stds [K] (isotropic) or [K, D]; weights [K] (normalised here); classes [K] (default:
    each component its own class 0..K-1). `denoise(x, sigma, label)` is the exact posterior mean:

        per component   mu_k(x) = mu_k + s_k^2 / (s_k^2 + sigma^2) (x - mu_k)
        responsibility  r_k(x)  ∝ w_k N(x; mu_k, (s_k^2 + sigma^2) I)
        E[x0 | x]           = sum_k r_k(x) mu_k(x)                     (label None)
        E[x0 | x, class c]  = sum_{k in c} r_k(x) mu_k(x) / sum_{k in c} r_k(x)
    """

    means: Tensor
    stds: Tensor
    weights: Tensor
    classes: Tensor | None = None
    _var: Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        means = torch.as_tensor(self.means)
        if means.ndim != 2:
            raise ValueError(f"means must be [K, D], got shape {tuple(means.shape)}")
        k, d = means.shape
        stds = torch.as_tensor(self.stds, dtype=means.dtype)
        if stds.ndim == 1:
            stds = stds[:, None].expand(k, d)
        if stds.shape != (k, d):
            raise ValueError(f"stds must be [K] or [K, D] = [{k}, {d}], got shape {tuple(stds.shape)}")
        weights = torch.as_tensor(self.weights, dtype=means.dtype)
        if weights.shape != (k,) or bool((weights < 0).any()) or float(weights.sum()) <= 0:
            raise ValueError(f"weights must be [K] = [{k}], non-negative, not all 0")
        classes = torch.arange(k) if self.classes is None else torch.as_tensor(self.classes, dtype=torch.long)
        if classes.shape != (k,):
            raise ValueError(f"classes must be [K] = [{k}] integer labels, got shape {tuple(classes.shape)}")
        object.__setattr__(self, "means", means)
        object.__setattr__(self, "stds", stds)
        object.__setattr__(self, "weights", weights / weights.sum())
        object.__setattr__(self, "classes", classes)
        object.__setattr__(self, "_var", stds**2)

    @property
    def n_classes(self) -> int:
        return int(self.classes.max()) + 1

    def _log_resp(self, x: Tensor, s: Tensor) -> Tensor:
        """log w_k + log N(x; mu_k, (s_k^2 + sigma^2) I) for x [B, D]: [B, K] (unnormalised)."""
        var = self._var.to(x)[None] + s[..., None] ** 2  # [B or 1, K, D]
        diff = x[:, None, :] - self.means.to(x)[None]
        log_n = -0.5 * (diff**2 / var + torch.log(2 * math.pi * var)).sum(-1)
        return torch.log(self.weights.to(x))[None] + log_n

    def component_means(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        """mu_k(x) = mu_k + s_k^2 / (s_k^2 + sigma^2) (x - mu_k) for every k: [B, K, D]."""
        s = _sigma_like(sigma, x)
        var = self._var.to(x)[None]
        shrink = var / (var + s[..., None] ** 2)
        mu = self.means.to(x)[None]
        return mu + shrink * (x[:, None, :] - mu)

    def responsibilities(self, x: Tensor, sigma: Tensor | float, label: int | None = None) -> Tensor:
        """r_k(x) = P(component k | x) at noise sigma (within class `label` if given): [B, K]."""
        s = _sigma_like(sigma, x)
        log_r = self._log_resp(x, s)
        if label is not None:
            if not 0 <= label < self.n_classes:
                raise ValueError(f"label {label} out of range: this mixture has classes 0..{self.n_classes - 1}")
            log_r = log_r.masked_fill((self.classes != label).to(x.device)[None], float("-inf"))
        return torch.softmax(log_r, dim=-1)

    def denoise(self, x: Tensor, sigma: Tensor | float, label: int | None = None) -> Tensor:
        """E[x0 | x] at noise sigma (VE form), or E[x0 | x, class label]."""
        r = self.responsibilities(x, sigma, label)
        return (r[..., None] * self.component_means(x, sigma)).sum(1)

    def __call__(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        return self.denoise(x, sigma)

    def log_prob(self, x: Tensor, sigma: Tensor | float = 0.0) -> Tensor:
        """log p_sigma(x) of the noised data (VE form): [B]."""
        return torch.logsumexp(self._log_resp(x, _sigma_like(sigma, x)), dim=-1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """n draws of x0 [n, D] and their class labels [n]."""
        comp = torch.multinomial(self.weights.double(), n, replacement=True, generator=generator)
        z = torch.randn((n, self.means.shape[1]), generator=generator, dtype=torch.float64).to(self.means.dtype)
        return self.means[comp] + self.stds[comp] * z, self.classes[comp]

    @classmethod
    def two_class_2d(cls, dtype: torch.dtype = torch.float64) -> "GaussianMixture":
        """A 2-D teaching example: class 0 is a crescent of three blobs on the left, class 1 a pair of
        blobs on the right, so class-conditional and unconditional denoising visibly differ."""
        means = torch.tensor(
            [[-2.0, 1.2], [-2.6, 0.0], [-2.0, -1.2],  # class 0: an arc opening to the right
             [2.2, 0.7], [2.2, -0.7]],  # class 1: two blobs stacked
            dtype=dtype,
        )
        stds = torch.tensor([0.35, 0.35, 0.35, 0.3, 0.3], dtype=dtype)
        weights = torch.tensor([1.0, 1.0, 1.0, 1.5, 1.5], dtype=dtype)
        return cls(means, stds, weights, classes=torch.tensor([0, 0, 0, 1, 1]))
