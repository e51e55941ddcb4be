"""Where each sampler evaluates the model, measured: `SamplerSpec.evaluates_between_sigmas` must equal what a
recording denoiser sees on each model family, so an entry cannot be declared wrong (Direct Inversion's up-front refusals rely on it)."""
from __future__ import annotations

import warnings

import pytest
import torch

from exact_gaussian import DATA, X0
from unsampling_lab.errors import UnsamplingError
from unsampling_lab.model_sampling import ModelSampling
from unsampling_lab.samplers import SAMPLER_SPECS, SAMPLERS
from unsampling_lab.samplers.base import NoiseSeed
from unsampling_lab.schedulers import calculate_sigmas

STEPS = 6
#: a model sigma per family, as the engine builds them (the flow table starts its schedules at sigma 1)
TABLES = {"vp": ModelSampling.continuous(sigma_min=0.002, sigma_max=80.0, prediction="eps"),
          "flow": ModelSampling.flow(shift=1.0)}


class Recorder:
    """The exact Gaussian denoiser of `family`, keeping every sigma it is called at."""

    def __init__(self, family: str) -> None:
        self.model_sampling = TABLES[family]
        self.denoise = DATA.denoise_flow if family == "flow" else DATA.denoise
        self.sigmas: list[float] = []

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.sigmas.extend(float(s) for s in sigma.unique())
        return self.denoise(x.flatten(1), sigma[:, None]).reshape(x.shape)


def off_schedule(name: str, family: str) -> list[float]:
    """The sigmas `name` evaluated at that are none of the schedule's (relative 1e-6), on a 'normal' schedule of
    the family's table, descending to 0 (as ul.edit resamples); a sampler that only runs upwards (ddim_inverse)
    on the Unsampler's ascending sigmas instead."""
    down = calculate_sigmas(TABLES[family], "normal", STEPS).double()
    for sigmas in (down, (down.flip(0) + 1e-4).clamp(max=TABLES[family].sigma_limit)):
        rec = Recorder(family)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torchsde's float32 Brownian-tree end points
                SAMPLER_SPECS[name].fn(rec, X0.clone(), sigmas, noise=NoiseSeed(0))
        except UnsamplingError:
            continue  # refuses this direction
        seen = torch.tensor(rec.sigmas, dtype=torch.float64)
        gap = ((seen[:, None] - sigmas[None]).abs() / sigmas[None].clamp_min(1e-12)).amin(dim=1)
        return [float(s) for s in seen[gap > 1e-6]]
    raise AssertionError(f"{name} ran in neither direction")


@pytest.mark.parametrize("name", SAMPLERS)
def test_evaluates_between_sigmas_is_what_the_sampler_does(name: str) -> None:
    spec = SAMPLER_SPECS[name]
    between = {family: off_schedule(name, family) for family in sorted(spec.families)}
    measured = frozenset(family for family, seen in between.items() if seen)
    assert spec.evaluates_between_sigmas == measured, (
        f"{name} declares evaluates_between_sigmas={spec.evaluates_between_sigmas}, but on a {STEPS}-step schedule "
        f"it evaluated the model off the schedule's sigmas at {between}")
