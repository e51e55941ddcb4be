"""Inversion methods side by side: `invert(model, latent, method=...)` and their resampling sides.

    inv = ul.invert(model, latent, method="fixed_point", steps=20, cfg=3.0, positive=caption, anderson=5)
    out = ul.resample(model, inv, steps=20, cfg=3.0, positive=caption)

`INVERSION_METHODS` lists the names; `METHOD_SPECS[name]` says which model families and samplers each
serves, its options with their defaults, and its cost. Update rules in sigma-space notation are in each
method's module docstring (and /shared/METHODS.md).
"""
from __future__ import annotations

import math
from typing import Any

from ..guidance import Prompt
from ..errors import UnsamplingError
from ..models.base import DiffusionModel
from .base import Inversion, InversionWarning, MethodSpec, Problem, ResampleCall, check_option_values
from .registry import INVERSION_METHODS, METHOD_SPECS, get_method

__all__ = ["INVERSION_METHODS", "METHOD_SPECS", "Inversion", "InversionWarning", "MethodSpec", "get_method",
           "invert", "resample_inversion"]


def invert(
    model: DiffusionModel,
    latent: Any,
    *,
    method: str = "unsampler",
    steps: int = 20,
    end_at_step: int = 0,
    cfg: float = 1.0,
    sampler_name: str = "euler",
    scheduler: str = "normal",
    positive: Prompt = "",
    negative: Prompt = "",
    progress: bool = True,
    **options: Any,
) -> Inversion:
    """Invert `latent` with one of `INVERSION_METHODS`; `method="unsampler"` is exactly `ul.unsample`.

    The result's `.noise` is the LATENT `unsample` would return; `ul.resample(model, inversion, ...)`
    applies the method's own resampling side. Method options are keyword arguments
    (`METHOD_SPECS[method].options` lists them with their defaults); anything else is an error.
    """
    from ..engine import _check_common, _check_int, _describe, _read_latent, state_dtype
    from ..samplers import get_sampler

    spec = get_method(method)
    opts = check_option_values(method, options, spec.options)
    _check_common(steps=steps, cfg=cfg)
    _check_int("end_at_step", end_at_step, minimum=0)
    check_applicable(spec, model, sampler_name, cfg=cfg)
    get_sampler(sampler_name, invertible=spec.samplers is None)  # a method's own sampler list was checked above
    samples, mask = _read_latent(latent, model)
    latent_in = model.latent_format.process_in(samples.to(model.device, state_dtype(samples)))
    problem = Problem(model, latent, samples, mask, latent_in, steps=steps, end_at_step=end_at_step, cfg=float(cfg),
                      sampler_name=sampler_name, scheduler=scheduler, positive=positive, negative=negative,
                      progress=progress)
    result = spec.invert(problem, **opts)
    params = dict(steps=steps, end_at_step=end_at_step, cfg=float(cfg), sampler_name=sampler_name, scheduler=scheduler,
                  positive=_describe(positive), negative=_describe(negative))
    nfe = problem.counter.nfe if result.nfe is None else result.nfe
    return Inversion(result.noise, method, opts, nfe=nfe, grad_steps=result.grad_steps, params=params,
                     residuals=result.residuals, step_converged=result.step_converged, resampling=result.resampling)


def methods_for(model: DiffusionModel) -> list[str]:
    """The methods of INVERSION_METHODS that serve this model's prediction family (for menus and sweeps)."""
    return [m.name for m in METHOD_SPECS.values() if model.model_sampling.prediction in m.families]


def check_applicable(spec: MethodSpec, model: DiffusionModel, sampler_name: str, *, cfg: float) -> None:
    """Refuse a model family or sampler the method cannot serve, saying why and what to use instead."""
    family = model.model_sampling.prediction
    if family not in spec.families:
        others = [m.name for m in METHOD_SPECS.values() if family in m.families and m.name != spec.name]
        raise UnsamplingError(
            f"method {spec.name!r} serves {'/'.join(spec.families)} models, not this {family!r} model"
            f"{': ' + spec.why_families if spec.why_families else ''}; for it use one of {', '.join(others)}"
        )
    if spec.samplers is not None and sampler_name not in spec.samplers:
        raise UnsamplingError(
            f"method {spec.name!r} works with sampler_name in {list(spec.samplers)}, got {sampler_name!r}"
            f"{': ' + spec.why_samplers if spec.why_samplers else ''}"
        )
    if spec.name == "null_text" and math.isclose(cfg, 1.0):
        raise UnsamplingError("method 'null_text' optimises the unconditional embedding, which cfg 1 never uses; "
                              "give the cfg you will resample at (e.g. cfg=7.5), or use method='unsampler' at cfg 1")


def resample_inversion(model: DiffusionModel, inversion: Inversion, **kwargs: Any) -> Any:
    """`ul.resample` given an `Inversion`: the method's resampling side (plain resample of `.noise` for most)."""
    spec = get_method(inversion.method)
    call = ResampleCall(model, inversion, **kwargs)
    if spec.resample is None:
        return call.plain()
    return spec.resample(call)
