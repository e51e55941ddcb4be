"""diffusers' DDIM inversion (`DDIMInverseScheduler`) as a sampler of its own.

This is a VP-model idea. DDIM inversion (Song et al. 2021; Mokady et al. 2023, null-text inversion)
steps from the noise level of timestep t_prev up to that of t, but asks the network for eps at the
*target* timestep t with the *current* latent (the approximation eps(x_{t-1}, t) ~ eps(x_t, t)):

    x0_hat = (x_vp - sqrt(1 - abar_prev) eps) / sqrt(abar_prev)
    x_vp'  = sqrt(abar_t) x0_hat + sqrt(1 - abar_t) eps

In our VE state (x = x_vp * sqrt(1 + sigma^2), abar = 1 / (1 + sigma^2)) one step sigma -> sigma_next is

    x' = x * sqrt(1 + sigma_next^2) / sqrt(1 + sigma^2)        (the same VP latent, read at sigma_next)
    eps = (x' - D(x', sigma_next)) / sigma_next
    x_next = (x - sigma * eps) + sigma_next * eps

It is not an ODE solver of ours in disguise: the model is never evaluated at the state's own sigma, so
it is neither euler nor ddim run backwards. Its sigmas are those of the inverse scheduler: the first may
be 0 (diffusers' `set_alpha_to_one`, "abar = 1 before the first timestep"). For flow models the VP
rescaling has no meaning; use an ODE sampler there.
"""
from __future__ import annotations

import math

from torch import Tensor

from ..errors import UnsamplingError
from .base import Callback, Denoiser, NoiseSampler, denoise_at, report, sigma_list


def sample_ddim_inverse(model: Denoiser, x: Tensor, sigmas: Tensor, *, callback: Callback | None = None,
                        noise: NoiseSampler | None = None) -> Tensor:
    """DDIM inversion as diffusers' DDIMInverseScheduler does it: eps from the next timestep with the current latent."""
    s = sigma_list(sigmas)
    for i in range(len(s) - 1):
        sigma, sigma_next = s[i], s[i + 1]
        if sigma_next == 0:
            raise UnsamplingError("ddim_inverse steps towards more noise: sigma_next must be > 0 (got 0 at step "
                             f"{i}); sample with an ODE sampler instead")
        x_at_next = x * (math.sqrt(1 + sigma_next**2) / math.sqrt(1 + sigma**2))
        denoised = denoise_at(model, x_at_next, sigma_next)
        report(callback, i, sigmas, x, denoised)
        eps = (x_at_next - denoised) / sigma_next
        x = (x - sigma * eps) + sigma_next * eps
    return x
