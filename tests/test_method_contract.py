"""What every inversion method promises, checked for every entry of `METHOD_SPECS` (a new entry is tested the
moment it is registered, as diffusers' SchedulerCommonTest does for its schedulers).

Per (method, model family): a family the method serves runs with the method's default options and
- keeps the region outside the mask bit for bit, in the inversion and in its resampling side;
- reports `nfe` equal to the network calls counted outside the engine (`CountingModel`; a gradient
  method's forward-and-backward passes are its `grad_steps`, counted there too);
- returns what it was given: a LATENT dict (same keys, the mask passed through) or a bare tensor;
a family it does not serve is refused before any network call, naming the family.
"""
from __future__ import annotations

import pytest
import torch

import unsampling_lab as ul
from unsampling_lab.inversion import METHOD_SPECS, methods_for
from unsampling_lab.models.base import Conditioning
from unsampling_lab.testing import CountingModel, tiny_flow_model

pytestmark = [pytest.mark.usefixtures("one_thread"),  # conftest: tiny models, one thread
              # random tiny networks at 2 steps: iterative methods may miss their tolerance; not part of the contract
              pytest.mark.filterwarnings("ignore::unsampling_lab.inversion.InversionWarning")]

STEPS = 2
FAMILIES = {"eps": "sd_model", "v": "sd2v_model", "flow": "sd3_model"}  # prediction -> conftest fixture


@pytest.fixture(scope="module")
def sd3_model():
    """A flow model (the tiny SD3 transformer; conditioning: embeds [B, L, 16], pooled [B, 8])."""
    return tiny_flow_model("sd3")


def _call(family: str) -> dict:
    """Prompts as embeddings (the v model has no text encoder), cfg 2 (null_text refuses cfg 1), STEPS steps."""
    g = torch.Generator().manual_seed(2)
    if family == "flow":
        positive = Conditioning(torch.randn(1, 3, 16, generator=g), torch.randn(1, 8, generator=g))
        negative = Conditioning(torch.zeros(1, 3, 16), torch.zeros(1, 8))
        scheduler = "simple"
    else:
        positive, negative, scheduler = torch.randn(1, 5, 32, generator=g), torch.zeros(1, 5, 32), "normal"
    return dict(steps=STEPS, cfg=2.0, positive=positive, negative=negative, scheduler=scheduler, progress=False)


def _latent() -> tuple[torch.Tensor, torch.Tensor]:
    """One 8x8 latent (4 channels) and a latent-sized mask: change the left half, keep the right half."""
    samples = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(1, 8, 8)
    mask[:, :, :4] = 1.0
    return samples, mask


CASES = [(name, family) for name in METHOD_SPECS for family in FAMILIES]
#: Methods with no inversion at all (FlowEdit integrates source and target velocities at resample time): their
#: "noise" is the latent itself and their inversion costs no network call.
INVERSION_FREE = {"flowedit"}
#: Options a method needs at this test's STEPS (FlowEdit's n_max counts steps: the paper's 33 needs >= 33 steps).
SMALL_RUN_OPTIONS = {"flowedit": {"n_max": 2}}


@pytest.mark.parametrize("method, family", CASES, ids=[f"{m}-{f}" for m, f in CASES])
def test_method_keeps_the_contract_or_refuses_the_family(method, family, request):
    model = request.getfixturevalue(FAMILIES[family])
    assert model.model_sampling.prediction == family
    samples, mask = _latent()
    counted = CountingModel(model)
    kw = _call(family)
    if method not in methods_for(model):
        with pytest.raises(ul.UnsamplingError, match=f"method {method!r} serves .* not this {family!r} model"):
            ul.invert(counted, {"samples": samples, "noise_mask": mask}, method=method, **kw)
        assert counted.calls == 0
        return

    spec = METHOD_SPECS[method]
    kw["sampler_name"] = spec.samplers[0] if spec.samplers else "euler"  # e.g. edit_friendly: a stochastic sampler
    latent = {"samples": samples, "noise_mask": mask}
    options = SMALL_RUN_OPTIONS.get(method, {})
    inv = ul.invert(counted, latent, method=method, **kw, **options)
    assert inv.method == method and inv.options == {**spec.defaults, **options}
    free = method in INVERSION_FREE
    assert inv.nfe + inv.grad_steps == counted.calls and (inv.nfe > 0) != free, (inv.nfe, inv.grad_steps, counted.calls)
    assert inv.grad_steps == 0 or spec.gradients
    assert isinstance(inv.noise, dict) and inv.noise.keys() == latent.keys() and inv.noise["noise_mask"] is mask
    keep = (mask == 0).expand_as(samples)
    assert torch.equal(inv.noise["samples"][keep], samples[keep])
    assert torch.equal(inv.noise["samples"][~keep], samples[~keep]) == free  # the masked half moved (or: no inversion)
    back = ul.resample(model, inv, **kw)
    assert isinstance(back, dict) and back.keys() == latent.keys() and back["noise_mask"] is mask
    assert torch.equal(back["samples"][keep], samples[keep])

    bare = ul.invert(model, samples, method=method, **kw, **options)
    assert isinstance(bare.noise, torch.Tensor) and bare.noise.shape == samples.shape
    back = ul.resample(model, bare, **kw)
    assert isinstance(back, torch.Tensor) and back.shape == samples.shape and torch.isfinite(back).all()


def test_every_method_is_served_by_a_model_here(request):
    """A method whose families are none of FAMILIES' would only ever be refused: add a model for its family."""
    models = [request.getfixturevalue(fixture) for fixture in FAMILIES.values()]
    unserved = [m for m in METHOD_SPECS if not any(m in methods_for(model) for model in models)]
    assert not unserved, f"no model in FAMILIES serves {unserved}"
