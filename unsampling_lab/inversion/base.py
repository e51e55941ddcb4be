"""What every inversion method shares: the problem it is given, the `Inversion` it returns, its registry entry.

Notation (each method's module docstring writes its rule in it): D(x, σ) the guided denoiser, d(x, σ) = (x − D)/σ (the velocity for
flow models), inversion runs σ₀ < … < σ_N with Δᵢ = σᵢ₊₁ − σᵢ. The resampler's Euler step that an
inversion must undo is xᵢ = xᵢ₊₁ − Δᵢ d(xᵢ₊₁, σᵢ₊₁).

Two sigma lists appear: `Problem.resampler_sigmas()` is the resampler's own schedule, flipped (σ₀ = 0),
for methods that solve the resampler's step exactly (they evaluate at σᵢ₊₁ > 0 only), and
`Problem.unsampler_sigmas()` is the Unsampler's (flipped + 1e-4, so σ₀ > 0), for explicit methods that
evaluate where a step starts.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..engine import (finish_unsample, guided_denoiser, keep_unmasked, resample_sigmas, run_sampler, state_dtype,
                      unsample_sigmas, wrap)
from ..engine import resample as resample_latent
from ..errors import UnsamplingError
from ..guidance import EvalCounter, GuidedDenoiser, Prompt
from ..inputs import on_off, read_latent
from ..models.base import DiffusionModel
from ..samplers.base import SamplerSpec
from ..trajectory import stop_step

Latent = Any  # a LATENT dict or a tensor (engine.Latent)


class InversionWarning(UserWarning):
    """An inversion method did not reach its target on some steps (the Inversion says which and by how much)."""


@dataclass
class Inversion:
    """The result of `ul.invert`: the noise LATENT plus what the method's resampling side needs.

    noise: the LATENT (same type and keys as the input; what `ul.unsample` returns for "unsampler").
    method, options: the method's name and its options with defaults filled in.
    nfe: denoiser evaluations (cond and uncond together count one, as in `Trajectory.nfe`).
    grad_steps: forward + backward passes spent by gradient-based methods (not in `nfe`).
    params: the call's parameters (steps, end_at_step, cfg, sampler_name, scheduler, prompts as text).
    residuals: per step, the residual after each iteration (iterative methods; [] otherwise).
    step_converged: per step, whether the method reached its tolerance (iterative methods; () otherwise).
    resampling: the method's resampling-side data (null embeddings, second latent, source state, ...).
    """

    noise: Latent
    method: str
    options: dict[str, Any]
    nfe: int
    grad_steps: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    residuals: list[list[float]] = field(default_factory=list)
    step_converged: tuple[bool, ...] = ()
    resampling: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def converged(self) -> bool:
        """True unless some step missed its tolerance (non-iterative methods always report True)."""
        return all(self.step_converged)

    @property
    def nonconverged_steps(self) -> list[int]:
        """Indices (in inversion order, 0 = the step leaving the data) of the steps that missed the tolerance."""
        return [i for i, ok in enumerate(self.step_converged) if not ok]

    def resample_side(self, model: DiffusionModel, **kwargs: Any) -> Latent:
        """What `ul.resample(model, self, **kwargs)` runs: the method's resampling side."""
        from . import resample_inversion

        return resample_inversion(model, self, **kwargs)

    @property
    def samples(self) -> Tensor:
        """The noise LATENT's tensor."""
        return self.noise["samples"] if isinstance(self.noise, dict) else self.noise


@dataclass
class Problem:
    """One inversion call, validated: the model, the processed latent and the guidance settings."""

    model: DiffusionModel
    latent: Latent
    samples: Tensor
    mask: Tensor | None
    latent_in: Tensor
    steps: int
    end_at_step: int
    cfg: float
    sampler_name: str
    scheduler: str
    positive: Prompt
    negative: Prompt
    progress: bool
    counter: EvalCounter = field(default_factory=EvalCounter)

    def resampler_sigmas(self) -> Tensor:
        """Ascending: the sigmas `resample(steps, start_at_step=end_at_step)` visits, flipped (σ₀ = 0)."""
        sig = resample_sigmas(self.model, steps=self.steps, start_at_step=stop_step(self.steps, self.end_at_step),
                              sampler_name=self.sampler_name, scheduler=self.scheduler)
        return sig.flip(0).to(self.model.device)

    def unsampler_sigmas(self) -> Tensor:
        """Ascending: ComfyUI's Unsampler sigmas (flipped schedule + 1e-4, clamped to 1 on flow models)."""
        return unsample_sigmas(self.model, steps=self.steps, end_at_step=self.end_at_step,
                               sampler_name=self.sampler_name, scheduler=self.scheduler).to(self.model.device)

    def denoiser(self, *, cfg: float | None = None, positive: Prompt | None = None,
                 negative: Prompt | None = None) -> GuidedDenoiser:
        """The guided denoiser (mask blend included), counting into this problem's `counter`."""
        den = guided_denoiser(self.model, self.latent_in, self.mask, cfg=self.cfg if cfg is None else cfg,
                        positive=self.positive if positive is None else positive,
                        negative=self.negative if negative is None else negative)
        den.counter = self.counter
        return den

    def start(self, sigma0: Tensor) -> Tensor:
        """The state at the first sigma with zero noise (the Unsampler's start)."""
        return self.model.model_sampling.noise_scaling(sigma0, torch.zeros_like(self.latent_in), self.latent_in)

    def finish(self, x: Tensor, sigma_final: Tensor | float) -> Latent:
        """A final state as the LATENT `unsample` returns (raw latent, unmasked region bit for bit)."""
        out = finish_unsample(self.model, x, sigma_final=float(sigma_final), normalize="disable",
                              source=self.samples, mask=self.mask)
        return wrap(out, self.latent)


@dataclass
class MethodResult:
    """What a method's inversion returns to `invert` (which wraps it into an `Inversion`)."""

    noise: Latent
    residuals: list[list[float]] = field(default_factory=list)
    step_converged: tuple[bool, ...] = ()
    grad_steps: int = 0
    resampling: dict[str, Any] = field(default_factory=dict)
    nfe: int | None = None  # None: read the problem's counter


@dataclass
class ResampleCall:
    """The arguments of one `ul.resample(model, inversion, ...)` call, as the method's resampling side sees them."""

    model: DiffusionModel
    inversion: Inversion
    steps: int
    start_at_step: int
    end_at_step: int
    cfg: float
    sampler_name: str
    scheduler: str
    positive: Prompt
    negative: Prompt
    add_noise: Any
    noise_seed: int
    return_with_leftover_noise: Any
    callback: Any
    progress: bool
    counter: Any = None  # an EvalCounter the resample's evaluations are added to (sweeps account with it)

    def sigmas(self) -> Tensor:
        """The descending sigmas this resample visits (`engine.resample_sigmas` of its arguments)."""
        return resample_sigmas(self.model, steps=self.steps, start_at_step=self.start_at_step,
                               end_at_step=self.end_at_step, sampler_name=self.sampler_name, scheduler=self.scheduler,
                               return_with_leftover_noise=on_off("return_with_leftover_noise",
                                                                 self.return_with_leftover_noise))

    def plain(self, latent: Latent | None = None, **changes: Any) -> Latent:
        """`engine.resample` on the noise LATENT (or `latent`), with some arguments changed."""
        kw = dict(steps=self.steps, start_at_step=self.start_at_step, end_at_step=self.end_at_step, cfg=self.cfg,
                  sampler_name=self.sampler_name, scheduler=self.scheduler, positive=self.positive,
                  negative=self.negative, add_noise=self.add_noise, noise_seed=self.noise_seed,
                  return_with_leftover_noise=self.return_with_leftover_noise, callback=self.callback,
                  progress=self.progress, counter=self.counter)
        kw.update(changes)
        return resample_latent(self.model, self.inversion.noise if latent is None else latent, **kw)


InvertFn = Callable[..., MethodResult]  # (problem, **options) -> MethodResult
ResampleFn = Callable[..., Latent]  # (call: ResampleCall) -> LATENT


@dataclass(frozen=True)
class Option:
    """One keyword option of a method, as data: its default, its type and its valid range.

    kind: bool, int, float, str or tuple. low, high: the range (required for int and float; math.inf for no
    bound), each end included unless low_open / high_open. A float option never takes NaN. A str option names its
    `choices` (none: any non-empty text, e.g. a module name); a tuple option holds words (a str is one word), or,
    with per_item, also one non-empty tuple of words per batch item (the batch's length is checked where it is
    known, e.g. `ul.edit`'s blend_words). Every
    option of every method and editing control is checked by `check_option_values` against this record, so no
    option runs unchecked.
    """

    default: Any
    kind: type
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] = ()
    per_item: bool = False  # tuple kind: also one tuple of words per batch item

    def __post_init__(self) -> None:
        if self.kind not in (bool, int, float, str, tuple):
            raise TypeError(f"Option kind must be bool, int, float, str or tuple, got {self.kind!r}")
        if self.per_item and self.kind is not tuple:
            raise TypeError(f"Option per_item is for tuple options (words per batch item), not {self.kind.__name__}")
        if self.kind in (str, tuple):
            if not self.admits(self.default):
                raise TypeError(f"Option default {self.default!r} is not {self.range_text()}")
            return
        if self.kind is not bool and (self.low is None or self.high is None):
            raise TypeError(f"an {self.kind.__name__} Option must declare its range: Option({self.default!r}, "
                            f"{self.kind.__name__}, low=..., high=...) (math.inf for no bound)")
        if self.kind is not bool and not self.admits(self.default):
            raise TypeError(f"Option default {self.default!r} is outside its own range {self.range_text()}")

    def range_text(self) -> str:
        """The valid values in words: 'True or False', '>= 1', 'in [0.5, 1)', '> 0'."""
        if self.kind is bool:
            return "True or False"
        if self.kind is str:
            return "one of " + ", ".join(repr(c) for c in self.choices) if self.choices else "a non-empty text"
        if self.kind is tuple:
            per = ", or one non-empty list of str per batch item" if self.per_item else ""
            return f"words (a str, or a list of str{per})"
        lo, hi = (f"{v:g}" if self.kind is float or abs(v) == math.inf else str(int(v)) for v in (self.low, self.high))
        whole = "a whole number " if self.kind is int else ""
        if self.high == math.inf:
            return f"{whole}{'>' if self.low_open else '>='} {lo}" if self.low != -math.inf else f"{whole or 'a '}finite"
        if self.low == -math.inf:
            return f"{whole}{'<' if self.high_open else '<='} {hi}"
        return f"{whole}in {'(' if self.low_open else '['}{lo}, {hi}{')' if self.high_open else ']'}"

    def admits(self, value: Any) -> bool:
        """Whether `value` (already of this kind) is in the range."""
        if self.kind is bool:
            return True
        if self.kind is str:
            return value in self.choices if self.choices else isinstance(value, str) and bool(value)
        if self.kind is tuple:
            if _words(value):
                return True
            return self.per_item and isinstance(value, tuple) and bool(value) and all(_words(t) and len(t) > 0 for t in value)
        v = float(value) if self.kind is float else value
        if self.kind is float and not math.isfinite(v) and not (v in (self.low, self.high)):
            return False
        above = v > self.low if self.low_open else v >= self.low
        below = v < self.high if self.high_open else v <= self.high
        return bool(above and below)


@dataclass(frozen=True)
class MethodSpec:
    """An inversion method's registry entry: promises kept as data.

    predictions: the model predictions it serves ("eps", "v", "flow"; `ModelSampling.prediction`); a model
    with another is refused, saying `why_predictions`. (`SamplerSpec.families` is the other axis: "vp"/"flow".)
    samplers: the `sampler_name`s it accepts (None: every deterministic sampler). `why_samplers` says why.
    options: its keyword options, name -> `Option(default, kind, low=..., high=...)` (anything else is an
      error; a plain default is refused here, so every option declares its type and range).
    cost: the network evaluations it spends, in words; gradients: whether it backpropagates.
    resample: its resampling side (None: a plain `ul.resample` of `.noise`).
    records_path: its Inversion keeps the states it passed (`resampling["path"]`, descending sigma), so
      `ul.edit(direct=True)` can pin the source branch to them; `why_no_path` says why a method cannot.
    """

    name: str
    invert: InvertFn
    predictions: tuple[str, ...]
    samplers: tuple[str, ...] | None
    options: Mapping[str, Option]
    cost: str
    paper: str
    resample: ResampleFn | None = None
    gradients: bool = False
    why_samplers: str = ""
    why_predictions: str = ""
    records_path: bool = False
    why_no_path: str = "its inversion records no path to pin the source branch to"

    @property
    def families(self) -> tuple[str, ...]:
        """Deprecated name of `predictions` (kept for notebook 07)."""
        return self.predictions

    def __post_init__(self) -> None:
        for key, opt in self.options.items():
            if not isinstance(opt, Option):
                raise TypeError(f"method {self.name!r}: option {key!r} must be declared as Option(default, kind, "
                                f"low=..., high=...), got {opt!r}")

    @property
    def defaults(self) -> dict[str, Any]:
        """The options' defaults, name -> value."""
        return {k: o.default for k, o in self.options.items()}


def _words(value: Any) -> bool:
    return isinstance(value, tuple) and all(isinstance(w, str) for w in value)


def check_option_values(method: str, options: Mapping[str, Any], declared: Mapping[str, Option], *,
                        what: str = "method") -> dict[str, Any]:
    """Fill defaults; refuse unknown names (naming the accepted ones), values of the wrong type and values
    outside the declared range. The one place method (and editing control, `what="control"`) options are checked."""
    unknown = [k for k in options if k not in declared]
    if unknown:
        import difflib

        hints = [f"{k!r} (did you mean {difflib.get_close_matches(k, list(declared), n=1, cutoff=0.5)[0]!r}?)"
                 if difflib.get_close_matches(k, list(declared), n=1, cutoff=0.5) else repr(k) for k in unknown]
        accepted = ", ".join(f"{k}={o.default!r}" for k, o in declared.items()) or "none"
        raise UnsamplingError(f"{what} {method!r} takes no option {', '.join(hints)}; its options are: {accepted}")
    out = {k: o.default for k, o in declared.items()}
    for k, v in options.items():
        opt = declared[k]
        if hasattr(v, "item") and getattr(v, "ndim", 1) == 0:  # numpy / torch scalars
            v = v.item()
        if opt.kind is tuple and isinstance(v, (str, list, tuple)):
            v = (v,) if isinstance(v, str) else tuple(tuple(w) if isinstance(w, list) else w for w in v)
        ok = (isinstance(v, bool) if opt.kind is bool
              else isinstance(v, tuple) if opt.kind is tuple
              else isinstance(v, str) if opt.kind is str
              else isinstance(v, int) and not isinstance(v, bool) if opt.kind is int
              else isinstance(v, (int, float)) and not isinstance(v, bool))
        if not ok:
            raise UnsamplingError(f"{what} {method!r}: option {k} must be a {opt.kind.__name__} like {opt.default!r}, "
                                  f"got {v!r}")
        v = float(v) if opt.kind is float else v
        if not opt.admits(v):
            raise UnsamplingError(f"{what} {method!r}: option {k} must be {opt.range_text()}, got {v!r}; "
                                  f"the default is {opt.default!r}")
        out[k] = v
    return out


def rel_residual(r: Tensor, x: Tensor) -> float:
    """max over batch items of ‖r_b‖ / ‖x_b‖ (the worst item decides convergence)."""
    num = r.flatten(1).norm(dim=1)
    den = x.flatten(1).norm(dim=1).clamp_min(torch.finfo(x.dtype).tiny)
    return float((num / den).max())


def as_sampler_spec(name: str, fn: Any, evals_per_step: int = 1) -> Any:
    """A method's own loop as a SamplerSpec, so the engine's runner (progress, NaN check) runs it."""
    return SamplerSpec(name, fn, deterministic=True, order=1, evals_per_step=evals_per_step)


def bound_schedule(sigmas: Tensor, what: str) -> dict[str, Any]:
    """Resampling data for a method that keeps something per step (`what`, e.g. "one embedding per step"):
    its resample must visit exactly these (descending) sigmas, which `check_resample_schedule` enforces."""
    return {"sigmas": sigmas.detach().double().cpu(), "per_step": what}


def redo_hint(inv: Inversion) -> str:
    """What to call instead: a resample that continues `inv` (its steps, scheduler, sampler, start step)."""
    p = inv.params
    return (f"call resample with steps={p['steps']}, scheduler={p['scheduler']!r}, sampler_name={p['sampler_name']!r}, "
            f"start_at_step={stop_step(p['steps'], p['end_at_step'])} (or resample inversion.noise for a plain resample)")


def check_resample_schedule(inv: Inversion, sigmas: Tensor, *, may_renoise: bool = False) -> None:
    """The one check that a resample of an Inversion continues its states: the resample starts at the sigma
    the inversion ended at (`sigma_top`, recorded by `invert` for every method) and, for a method that keeps
    per-step data (`bound_schedule`), visits exactly the inversion's whole schedule (steps, scheduler,
    start/end steps, leftover noise), not just its first sigma. may_renoise: a plain resample, which
    add_noise=True may start anywhere. (`resample_inversion` checks the sampler.)"""
    redo = redo_hint(inv)
    data = inv.resampling
    stored = data.get("sigmas")
    if stored is not None:
        got = sigmas.detach().double().cpu()
        if len(got) != len(stored) or not torch.allclose(got, stored.double(), rtol=1e-6, atol=0):
            seen = (f"{len(got) - 1} steps from sigma {float(got[0]):.4g} to {float(got[-1]):.4g}" if len(got)
                    else "no steps")
            raise UnsamplingError(
                f"method {inv.method!r} keeps {data.get('per_step', 'data per step')} of its {len(stored) - 1}-step "
                f"schedule (sigma {float(stored[0]):.4g} to {float(stored[-1]):.4g}); this resample has {seen}: {redo}, "
                "down to sigma 0")
        return
    top = data.get("sigma_top")
    if len(sigmas) >= 2 and top is not None and abs(float(sigmas[0]) - float(top)) <= 1e-6 * max(1.0, abs(float(top))):
        return
    p = inv.params
    at = "an unrecorded sigma" if top is None else f"sigma {float(top):.4g}"
    step = f" (step {stop_step(p['steps'], p['end_at_step'])} of {p['steps']})" if "steps" in p else ""
    start = f"{float(sigmas[0]):.4g}" if len(sigmas) else "nothing"
    raise UnsamplingError(
        f"the {inv.method!r} inversion's noise is at {at}{step}, but this resample starts at {start}: leave steps, "
        f"start_at_step and scheduler unset to continue it ({redo}){', or pass add_noise=True to re-noise it' if may_renoise else ''}")


def custom_resample(call: ResampleCall, loop: Any, *, name: str, evals_per_step: int = 1,
                    denoiser: Any = None) -> Latent:
    """Run a method's own sampling loop `loop(model, x, sigmas, *, callback, noise)` from the noise LATENT,
    over the sigmas `resample` would use, and return the LATENT as `resample` does.

    The loop continues the inversion's own states, so the resample must start where the inversion ended:
    same steps, scheduler and start_at_step = end_at_step, and no added noise.
    """
    inv, model = call.inversion, call.model
    if on_off("add_noise", call.add_noise):
        raise UnsamplingError(f"method {inv.method!r}: its resampling side continues the inverted states; "
                              "add_noise must be off (resample(..., add_noise=False))")
    sigmas = call.sigmas()
    check_resample_schedule(inv, sigmas)
    samples, mask = read_latent(inv.noise, model)
    latent_in = model.latent_format.process_in(samples.to(model.device, state_dtype(samples)))
    ms = model.model_sampling
    x = inv.resampling.get("state", ms.latent_to_state(sigmas[0], latent_in))
    if denoiser is None:
        denoiser = guided_denoiser(model, latent_in, mask, cfg=call.cfg, positive=call.positive, negative=call.negative,
                                   noise=torch.zeros_like(latent_in), counter=call.counter)
    x = run_sampler(as_sampler_spec(name, loop, evals_per_step), denoiser, x.to(model.device), sigmas.to(model.device),
                    callback=call.callback, progress=call.progress, noise_seed=None, desc="resample")
    x = ms.inverse_noise_scaling(sigmas[-1], x)
    return wrap(keep_unmasked(model.latent_format.process_out(x).cpu(), samples, mask), inv.noise)
