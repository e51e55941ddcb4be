"""The exact 4-D Gaussian the inversion tests share: data N(mu, s^2) per coordinate (closed-form denoiser and ODE),
two float64 latents, and the relative error they are judged by."""
from __future__ import annotations

import torch

from unsampling_lab.models.gaussian import GaussianData

F64 = torch.float64
DATA = GaussianData(torch.tensor([0.3, -0.5, 1.0, 0.0], dtype=F64), torch.tensor([0.5, 1.0, 0.8, 1.5], dtype=F64))
X0 = torch.tensor([[0.1, 0.4, -1.2, 2.0], [1.0, -2.0, 0.5, 0.3]], dtype=F64)[:, :, None, None]  # latents [2, 4, 1, 1]


def denoise(x: torch.Tensor, sigma) -> torch.Tensor:
    """The exact denoiser D(x, sigma) on latents of any [B, 4, ...] shape."""
    return DATA.denoise(x.flatten(1), sigma).reshape(x.shape)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||."""
    return float((a - b).norm() / b.norm())
