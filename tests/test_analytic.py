"""Exact Gaussian toy data: posterior means against Tweedie and Monte Carlo, ODE solutions against fine Euler."""
from __future__ import annotations

import math

import pytest
import torch

from unsampling_lab.models.gaussian import GaussianData, GaussianMixture

F64 = torch.float64
DATA = GaussianData(torch.tensor([0.5, -1.0, 2.0], dtype=F64), torch.tensor([0.7, 1.3, 0.2], dtype=F64))


def tweedie(log_prob, x: torch.Tensor, sigma: float) -> torch.Tensor:
    """E[x0 | x] = x + sigma^2 grad log p_sigma(x) (VE form)."""
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(log_prob(x).sum(), x)
    return x.detach() + sigma**2 * grad


def gaussian_log_prob(x: torch.Tensor, sigma: float) -> torch.Tensor:
    var = DATA.std**2 + sigma**2
    return (-0.5 * (x - DATA.mean) ** 2 / var - 0.5 * torch.log(2 * math.pi * var)).sum(-1)


@pytest.mark.parametrize("sigma", [0.05, 0.8, 7.0])
def test_gaussian_denoise_is_tweedie(sigma: float) -> None:
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=F64) * 2
    expected = tweedie(lambda z: gaussian_log_prob(z, sigma), x, sigma)
    assert torch.allclose(DATA.denoise(x, sigma), expected, atol=1e-12)
    # a [B] sigma works the same as a scalar
    assert torch.allclose(DATA.denoise(x, torch.full((5,), sigma, dtype=F64)), expected, atol=1e-12)


def test_gaussian_denoise_monte_carlo() -> None:
    """E[D(x)] = E[x0] and E[(x0 - D(x)) x] = 0 (orthogonality of the posterior mean), VE and flow."""
    gen = torch.Generator().manual_seed(1)
    x0 = DATA.sample(200_000, gen)
    n = torch.randn(x0.shape, generator=gen, dtype=F64)
    for sigma in (0.3, 2.0):
        x = x0 + sigma * n
        d = DATA.denoise(x, sigma)
        assert torch.allclose(d.mean(0), DATA.mean, atol=0.02)
        assert torch.allclose(((x0 - d) * x).mean(0), torch.zeros(3, dtype=F64), atol=0.03)
    for sigma in (0.3, 0.9):
        x = (1 - sigma) * x0 + sigma * n
        d = DATA.denoise_flow(x, sigma)
        assert torch.allclose(d.mean(0), DATA.mean, atol=0.02)
        assert torch.allclose(((x0 - d) * x).mean(0), torch.zeros(3, dtype=F64), atol=0.03)


def _euler(denoise, x: torch.Tensor, s0: float, s1: float, n: int = 20000) -> torch.Tensor:
    """Fine Euler integration of dx/dsigma = (x - D(x, sigma)) / sigma on a log-uniform grid."""
    sigmas = torch.logspace(math.log10(s0), math.log10(s1), n + 1, dtype=F64)
    for a, b in zip(sigmas[:-1], sigmas[1:]):
        x = x + (x - denoise(x, a)) / a * (b - a)
    return x


def test_ode_solution_matches_fine_euler() -> None:
    x = torch.tensor([[0.1, 0.2, 1.9], [1.5, -3.0, 2.2]], dtype=F64)
    for s0, s1 in ((0.01, 10.0), (10.0, 0.01)):
        assert torch.allclose(DATA.ode_solution(x, s0, s1), _euler(DATA.denoise, x, s0, s1), rtol=2e-3, atol=2e-3)
    for s0, s1 in ((0.01, 0.99), (0.99, 0.01)):
        assert torch.allclose(DATA.ode_solution_flow(x, s0, s1), _euler(DATA.denoise_flow, x, s0, s1),
                              rtol=2e-3, atol=2e-3)
    # transport is invertible and composes
    y = DATA.ode_solution(x, 0.01, 3.0)
    assert torch.allclose(DATA.ode_solution(y, 3.0, 0.01), x, atol=1e-12)
    assert torch.allclose(DATA.ode_solution(DATA.ode_solution(x, 0.01, 0.5), 0.5, 3.0), y, atol=1e-12)


def test_mixture_denoise_is_tweedie() -> None:
    mix = GaussianMixture.two_class_2d()
    x = torch.randn(7, 2, generator=torch.Generator().manual_seed(2), dtype=F64) * 2.5
    for sigma in (0.1, 1.0, 5.0):
        assert torch.allclose(mix.denoise(x, sigma), tweedie(lambda z: mix.log_prob(z, sigma), x, sigma), atol=1e-10)


def test_mixture_conditional_and_components() -> None:
    mix = GaussianMixture.two_class_2d()
    x = torch.tensor([[0.0, 0.3], [-1.0, 1.0]], dtype=F64)
    sigma = 1.5
    r = mix.responsibilities(x, sigma)
    r0, r1 = r[:, mix.classes == 0].sum(1), r[:, mix.classes == 1].sum(1)
    # the unconditional mean mixes the class-conditional ones by class probability
    mixed = r0[:, None] * mix.denoise(x, sigma, label=0) + r1[:, None] * mix.denoise(x, sigma, label=1)
    assert torch.allclose(mix.denoise(x, sigma), mixed, atol=1e-12)
    # one component per class: label k is that Gaussian's posterior mean
    single = GaussianMixture(mix.means, mix.stds, mix.weights)
    g = GaussianData(mix.means[3], mix.stds[3])
    assert torch.allclose(single.denoise(x, sigma, label=3), g.denoise(x, sigma), atol=1e-12)
    with pytest.raises(ValueError, match="out of range"):
        mix.denoise(x, sigma, label=2)


def test_mixture_monte_carlo() -> None:
    mix = GaussianMixture.two_class_2d()
    gen = torch.Generator().manual_seed(3)
    x0, labels = mix.sample(100_000, gen)
    assert set(labels.tolist()) == {0, 1}
    x = x0 + 0.8 * torch.randn(x0.shape, generator=gen, dtype=F64)
    d = mix.denoise(x, 0.8)
    assert torch.allclose(d.mean(0), x0.mean(0), atol=0.02)
    assert torch.allclose(((x0 - d) * x).mean(0), torch.zeros(2, dtype=F64), atol=0.03)
    d1 = mix.denoise(x[labels == 1], 0.8, label=1)
    assert torch.allclose(d1.mean(0), x0[labels == 1].mean(0), atol=0.02)
