"""Inversion methods side by side: `invert(model, latent, method=...)` and their resampling sides.

    inv = ul.invert(model, latent, method="fixed_point", steps=20, cfg=3.0, positive=caption, anderson=5)
    out = ul.resample(model, inv, steps=20, cfg=3.0, positive=caption)

`INVERSION_METHODS` lists the names; `METHOD_SPECS[name]` says which model families and samplers each
serves, its options with their defaults, and its cost. Each method's update rule, in the sigma notation
of `base.py`, is in its module's docstring.

`resample` here is the public `ul.resample`: `engine.resample` for a LATENT, the method's resampling side
for an `Inversion` (the engine below knows nothing of inversion methods).
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from .. import engine
from ..engine import state_dtype
from ..errors import UnsamplingError, check_int
from ..guidance import EvalCounter, Prompt
from ..inputs import Latent, check_cfg, check_model, describe_prompt, on_off, read_latent, unguided
from ..models.base import DiffusionModel
from ..samplers import Step, get_sampler
from ..trajectory import stop_step
from .base import Inversion, InversionWarning, MethodSpec, Option, Problem, ResampleCall, check_option_values, check_resample_schedule, redo_hint
from .registry import INVERSION_METHODS, METHOD_SPECS, get_method

__all__ = ["INVERSION_METHODS", "METHOD_SPECS", "Inversion", "InversionWarning", "MethodSpec", "get_method",
           "Option", "explicit_options", "invert", "resample", "resample_inversion"]


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
    (`METHOD_SPECS[method].options` declares each with its default, type and range); anything else is an error.
    """
    check_model(model)
    spec = get_method(method)
    opts = check_option_values(method, options, spec.options)
    if isinstance(cfg, (list, tuple)):
        raise UnsamplingError(f"invert takes one cfg for the whole batch, got {cfg!r}; for one cfg per item invert each "
                              "item alone (ul.unsample takes a list)")
    steps = check_int("steps", steps, minimum=1)
    cfg = check_cfg(cfg)
    end_at_step = check_int("end_at_step", end_at_step, minimum=0)
    check_applicable(spec, model, sampler_name, cfg=cfg)
    get_sampler(sampler_name, invertible=spec.samplers is None)  # a method's own sampler list was checked above
    samples, mask = read_latent(latent, model)
    latent_in = model.latent_format.process_in(samples.to(model.device, state_dtype(samples)))
    problem = Problem(model, latent, samples, mask, latent_in, steps=steps, end_at_step=end_at_step, cfg=cfg,
                      sampler_name=sampler_name, scheduler=scheduler, positive=positive, negative=negative,
                      progress=progress)
    result = spec.invert(problem, **opts)
    # where a resample continuing it starts: what every method's resampling side is checked against
    result.resampling.setdefault("sigma_top", float(problem.resampler_sigmas()[-1]))
    params = dict(steps=steps, end_at_step=end_at_step, cfg=cfg, sampler_name=sampler_name, scheduler=scheduler,
                  positive=describe_prompt(positive), negative=describe_prompt(negative))
    nfe = problem.counter.nfe if result.nfe is None else result.nfe
    return Inversion(result.noise, method, opts, nfe=nfe, grad_steps=result.grad_steps, params=params,
                     residuals=result.residuals, step_converged=result.step_converged, resampling=result.resampling)


def methods_for(model: DiffusionModel) -> list[str]:
    """The methods of INVERSION_METHODS that serve this model's prediction (for menus and sweeps)."""
    return [m.name for m in METHOD_SPECS.values() if model.model_sampling.prediction in m.predictions]


def check_applicable(spec: MethodSpec, model: DiffusionModel, sampler_name: str, *, cfg: float) -> None:
    """Refuse a model prediction or sampler the method cannot serve, saying why and what to use instead."""
    prediction = model.model_sampling.prediction
    if prediction not in spec.predictions:
        others = [m.name for m in METHOD_SPECS.values() if prediction in m.predictions and m.name != spec.name]
        raise UnsamplingError(
            f"method {spec.name!r} serves {'/'.join(spec.predictions)} models, not this {prediction!r} model"
            f"{': ' + spec.why_predictions if spec.why_predictions else ''}; for it use one of {', '.join(others)}"
        )
    if spec.samplers is not None and sampler_name not in spec.samplers:
        raise UnsamplingError(
            f"method {spec.name!r} works with sampler_name in {list(spec.samplers)}, got {sampler_name!r}"
            f"{': ' + spec.why_samplers if spec.why_samplers else ''}"
        )
    if spec.name == "null_text" and unguided(cfg):
        raise UnsamplingError("method 'null_text' optimises the unconditional embedding, which cfg 1 never uses; "
                              "give the cfg you will resample at (e.g. cfg=7.5), or use method='unsampler' at cfg 1")


def resample_inversion(model: DiffusionModel, inversion: Inversion, **kwargs: Any) -> Any:
    """`ul.resample` given an `Inversion`: the method's resampling side (plain resample of `.noise` for most).

    steps, start_at_step, sampler_name and scheduler left None continue the inversion (its steps, sampler and
    scheduler; the step it stopped at). A plain resample must start at the sigma its noise is at (unless
    add_noise re-noises it): `.noise` of an inversion stopped at end_at_step is refused from another sigma.
    """
    spec = get_method(inversion.method)
    kwargs = continue_inversion(inversion, kwargs)
    call = ResampleCall(model, inversion, **kwargs)
    if spec.resample is None:
        if not on_off("add_noise", call.add_noise):  # re-noised on purpose: any start
            check_resample_schedule(inversion, call.sigmas(), may_renoise=True)
        return call.plain()
    if spec.samplers is not None and call.sampler_name not in spec.samplers:  # its own step, not the sampler named
        raise UnsamplingError(f"method {spec.name!r} resamples with its own step, for sampler_name in "
                              f"{list(spec.samplers)}, got {call.sampler_name!r}: {redo_hint(inversion)}")
    return spec.resample(call)


def resample(
    model: DiffusionModel,
    latent: Latent | Inversion,
    steps: int | None = None,
    start_at_step: int | None = None,
    end_at_step: int = 10000,
    cfg: float | Sequence[float] = 1.0,
    sampler_name: str | None = None,
    scheduler: str | None = None,
    positive: Prompt = "",
    negative: Prompt = "",
    add_noise: bool | Literal["enable", "disable"] = False,
    noise_seed: int = 0,
    return_with_leftover_noise: bool | Literal["enable", "disable"] = False,
    *,
    callback: Callable[[Step], None] | None = None,
    progress: bool = True,
    counter: EvalCounter | None = None,
) -> Latent:
    """Sample forward from `latent` (ComfyUI's KSamplerAdvanced; `engine.resample`), seeded by `noise_seed`.

    `latent` may be an `Inversion` (from `ul.invert`): its method's resampling side is applied (per-step
    null embeddings, the second latent of an exact pair, ...), and steps, start_at_step, sampler_name and
    scheduler default to continuing it (its own steps, sampler and scheduler, from the step it stopped at).
    For a plain LATENT they default to KSamplerAdvanced's 20, 0, "euler", "normal".
    cfg: one value, or one per batch item. counter: an EvalCounter this call's evaluations are added to.
    """
    kw = dict(steps=steps, start_at_step=start_at_step, end_at_step=end_at_step, cfg=cfg, sampler_name=sampler_name,
              scheduler=scheduler, positive=positive, negative=negative, add_noise=add_noise, noise_seed=noise_seed,
              return_with_leftover_noise=return_with_leftover_noise, callback=callback, progress=progress,
              counter=counter)
    if isinstance(latent, Inversion):
        return resample_inversion(model, latent, **kw)
    for name, default in _LATENT_DEFAULTS.items():
        if kw[name] is None:
            kw[name] = default
    return engine.resample(model, latent, **kw)


#: resample's defaults for a plain LATENT: engine.resample's own (ComfyUI's KSamplerAdvanced); an Inversion continues its own
_LATENT_DEFAULTS: dict[str, Any] = {name: inspect.signature(engine.resample).parameters[name].default
                                    for name in ("steps", "start_at_step", "sampler_name", "scheduler")}


def continue_inversion(inversion: Inversion, kwargs: dict[str, Any]) -> dict[str, Any]:
    """resample's arguments with the unset (None) schedule ones taken from the inversion: its steps, sampler_name
    and scheduler, and start_at_step = the step it stopped at (`stop_step`)."""
    p, out = inversion.params, dict(kwargs)
    for name in ("steps", "sampler_name", "scheduler"):
        if out.get(name) is None:
            out[name] = p.get(name, _LATENT_DEFAULTS[name])
    if out.get("start_at_step") is None:
        out["start_at_step"] = stop_step(int(p["steps"]), int(p["end_at_step"])) if "steps" in p else 0
    return out



def explicit_options(method: str, options: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """`options` checked (as `invert` checks them) and cut to the values that differ from the defaults, as
    sorted pairs: the identity of a method's setting, so anderson=0 (the default) is the same row as no option."""
    declared = get_method(method).options
    checked = check_option_values(method, options, declared)
    return tuple(sorted((k, v) for k, v in checked.items() if k in options and v != declared[k].default))
