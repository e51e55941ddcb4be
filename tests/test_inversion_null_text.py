"""null_text reaches its per-step target where the model allows it: an exact conditional Gaussian behind our
diffusers adapter (`UNetModel`), whose text embedding sets the mean of every latent dimension."""
from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest
import torch

import unsampling_lab as ul
from exact_gaussian import rel
from unsampling_lab.inversion import InversionWarning
from unsampling_lab.model_sampling import ModelSampling
from unsampling_lab.models.base import Conditioning
from unsampling_lab.testing import SD15_SCHEDULER

WIDTH, CHANNELS, STD = 8, 4, 0.5


class GaussianUNet(torch.nn.Module):
    """Called as a diffusers UNet2DConditionModel: eps of x0 ~ N(mu(c), STD²) per dimension, mu(c) = mean over
    tokens of the embedding times P [WIDTH, CHANNELS] (full rank, so the embedding can set any mean):
    eps(x, sigma) = (x - mu) sigma / (STD² + sigma²) on the unscaled state x = input * sqrt(1 + sigma²)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.proj = torch.nn.Parameter(torch.randn(WIDTH, CHANNELS, generator=g), requires_grad=False)
        self.config = SimpleNamespace(in_channels=CHANNELS, cross_attention_dim=WIDTH, addition_embed_type=None,
                                      projection_class_embeddings_input_dim=None, addition_time_embed_dim=None)
        self.table = ModelSampling.from_scheduler_config(SD15_SCHEDULER)

    def forward(self, sample, timestep, encoder_hidden_states, return_dict=False):
        sigma = self.table.sigma(timestep).to(sample).reshape(-1, 1, 1, 1)
        x = sample * (1 + sigma**2).sqrt()
        mu = (encoder_hidden_states.mean(1) @ self.proj)[:, :, None, None]
        return ((x - mu) * sigma / (STD**2 + sigma**2),)


def gaussian_setup():
    """The model, a LATENT of two draws from the conditional Gaussian, the call's settings (cfg 5, 10 steps)."""
    from unsampling_lab.models.unet import UNetModel

    model = UNetModel(GaussianUNet(), SD15_SCHEDULER, device="cpu")
    g = torch.Generator().manual_seed(1)
    cond = Conditioning(torch.randn(1, 3, WIDTH, generator=g))
    mu = (cond.embeds.mean(1) @ model.unet.proj)[:, :, None, None]
    latent = (mu + STD * torch.randn(2, CHANNELS, 1, 1, generator=g)) / model.latent_format.scale  # raw LATENT
    kw = dict(steps=10, cfg=5.0, positive=cond, negative=Conditioning(torch.zeros(1, 3, WIDTH)), progress=False)
    return model, {"samples": latent}, kw


@pytest.fixture(scope="module")
def setup():
    return gaussian_setup()



def test_null_text_round_trip_is_10x_better_than_the_unsampler_at_cfg_5(setup):
    model, latent, kw = setup
    plain = rel(ul.resample(model, ul.unsample(model, latent, **kw), **kw)["samples"], latent["samples"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", InversionWarning)
        inv = ul.invert(model, latent, method="null_text", **kw)
    err = rel(ul.resample(model, inv, **kw)["samples"], latent["samples"])
    print(f"cfg 5, 10 steps: unsampler {plain:.3g}, null_text (newton_cg) {err:.3g}, nfe {inv.nfe}, grad {inv.grad_steps}")
    assert inv.converged and all(min(r) <= 1e-5 for r in inv.residuals)
    assert err * 10 <= plain, (err, plain)


def test_the_papers_adam_settings_stay_and_report_the_steps_they_miss(setup):
    model, latent, kw = setup
    with pytest.warns(InversionWarning, match="null_text: .* steps did not reach tol"):
        inv = ul.invert(model, latent, method="null_text", optimizer="adam", **kw)
    assert not inv.converged and inv.nonconverged_steps
    err = rel(ul.resample(model, inv, **kw)["samples"], latent["samples"])
    newton = rel(ul.resample(model, ul.invert(model, latent, method="null_text", **kw), **kw)["samples"],
                 latent["samples"])
    print(f"cfg 5, 10 steps: null_text (adam, paper) {err:.3g}, newton_cg {newton:.3g}")
    assert min(r[-1] for r in inv.residuals) > 1e-3 and err > 100 * newton  # Adam stops short on every step
    with pytest.raises(ul.UnsamplingError, match="lr and early_stop are Adam's"):
        ul.invert(model, latent, method="null_text", lr=0.05, **kw)
    with pytest.raises(ul.UnsamplingError, match="option optimizer must be one of 'newton_cg', 'adam'"):
        ul.invert(model, latent, method="null_text", optimizer="sgd", **kw)
