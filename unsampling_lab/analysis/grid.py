"""The sweep's plan: a grid of parameters -> settings -> inversion groups -> packs. No model, no tensors.

A *setting* is one point of the grid, every value canonical (equal settings have equal store keys).
The settings of one *inversion group* (same sampler_name, scheduler, steps, cfg, positive, negative,
method; and end_at_step for samplers that are not prefix-consistent, or methods other than the
Unsampler) read their noise off ONE inversion. Groups that integrate the same sigmas can share network
batches: `pack` puts them in packs of up to max_batch images, `pack_cost` orders packs for executors.

`control` (an editing control of `ul.edit`, options from control_options[control]) and `direct` (Direct
Inversion) are grid keys that change only how a setting resamples, never its inversion: a *controlled*
setting (control != "prompt_swap", or direct) resamples its source and target branch together through
`ul.edit`. A prompt_swap setting without direct keeps the identity (store key) it had before these keys
existed, so older stores resume. Meaningless combinations are refused at plan time, or skipped where the
grid sweeps direct over both values (direct=True needs an attention control, an inversion that records
its path: `direct_methods()`, from the registry's `MethodSpec.records_path`, and a sampler that evaluates
the model only at the schedule's sigmas: `direct_samplers()`, from `SamplerSpec.evaluates_between_sigmas`).
"""
from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Union

from ..errors import UnsamplingError, check_choice, suggest

Prompts = Union[str, tuple[str, ...]]

#: The sweepable parameters (the engine's names) and their defaults. `edit` is the resample prompt
#: (None: the positive prompt, i.e. a plain reconstruction); `seed` is resample's noise_seed;
#: `resample_cfg` is resample's cfg (None: the inversion's cfg).
DEFAULTS: dict[str, Any] = {
    "sampler_name": "euler", "scheduler": "normal", "steps": 20, "cfg": 1.0, "positive": "", "negative": "",
    "end_at_step": 0, "normalize": "disable", "edit": None, "seed": 0, "resample_cfg": None, "method": "unsampler",
    "control": "prompt_swap", "direct": False,
}
#: Column order; the first six fix one inversion (one trajectory), the rest vary only what is read off it.
PARAMETERS: tuple[str, ...] = tuple(DEFAULTS)
INVERSION_KEY: tuple[str, ...] = ("sampler_name", "scheduler", "steps", "cfg", "positive", "negative", "method")
_INTEGERS = ("steps", "end_at_step", "seed")
_PROMPTS = ("positive", "negative", "edit")
#: The plain resample: no editing control (the identity every setting had before controls were grid keys).
PROMPT_SWAP = "prompt_swap"
def direct_methods() -> tuple[str, ...]:
    """The inversion methods Direct Inversion can serve: those whose inversion records its path
    (`MethodSpec.records_path`; the sweep's Unsampler reads it off its recorded trajectory)."""
    from ..inversion import METHOD_SPECS

    return tuple(name for name, spec in METHOD_SPECS.items() if spec.records_path)


def direct_samplers(family: str | None = None) -> tuple[str, ...]:
    """The samplers Direct Inversion can serve on a model `family` (None: no model at hand):
    `samplers.on_schedule_samplers`."""
    from ..samplers import on_schedule_samplers

    return on_schedule_samplers(family)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Setting:
    """One point of the grid, every value canonical (prompts: a str, or one str per batch item)."""

    sampler_name: str = "euler"
    scheduler: str = "normal"
    steps: int = 20
    cfg: float = 1.0
    positive: Prompts = ""
    negative: Prompts = ""
    end_at_step: int = 0
    normalize: str = "disable"
    edit: Prompts | None = None
    seed: int = 0
    resample_cfg: float | None = None
    method: str = "unsampler"  # `ul.invert`'s method; its options (method_options) ride along as sorted pairs
    method_options: tuple[tuple[str, Any], ...] = ()
    control: str = PROMPT_SWAP  # `ul.edit`'s control; its options (control_options) ride along as sorted pairs
    direct: bool = False  # Direct Inversion: the source branch pinned to the inversion path
    control_options: tuple[tuple[str, Any], ...] = ()

    @property
    def controlled(self) -> bool:
        """Resampled through `ul.edit` (source and target branch together), not a plain resample."""
        return self.control != PROMPT_SWAP or self.direct

    @property
    def resample_prompt(self) -> Prompts:
        return self.positive if self.edit is None else self.edit

    @property
    def effective_resample_cfg(self) -> float:
        """The cfg resample uses: resample_cfg, or the inversion's cfg when none is given."""
        return self.cfg if self.resample_cfg is None else self.resample_cfg

    def row(self, item: int) -> dict[str, Any]:
        """The parameter columns of batch item `item` (prompts as that item's text)."""
        row = asdict(self)
        row.update(positive=item_text(self.positive, item), negative=item_text(self.negative, item),
                   edit=item_text(self.resample_prompt, item), resample_cfg=self.effective_resample_cfg, item=item)
        _options_column(row, self.method_options)
        _options_column(row, self.control_options, name="control_options")
        return row

    def identity(self) -> dict[str, Any]:
        """Everything that changes this setting's numbers (edit and resample_cfg resolved). A setting that is
        not controlled leaves control and direct out, so its identity is the one it had before they existed."""
        out = {**asdict(self), "edit": self.resample_prompt, "resample_cfg": self.effective_resample_cfg}
        _options_column(out, self.method_options)
        _options_column(out, self.control_options, name="control_options")
        if not self.controlled:
            del out["control"], out["direct"]
        return out


@dataclass(frozen=True)
class InversionGroup:
    """The settings that share one trajectory, and the unsample_trajectory call that records it."""

    sampler_name: str
    scheduler: str
    steps: int
    cfg: float
    positive: Prompts
    negative: Prompts
    end_at_step: int  # 0 (a full inversion) for prefix-consistent samplers with the Unsampler
    method: str = "unsampler"
    method_options: tuple[tuple[str, Any], ...] = ()
    settings: tuple[Setting, ...] = field(default=(), compare=False)

    def inversion(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "settings"}

    @property
    def is_unsampler(self) -> bool:
        """The Unsampler's inversion: one recorded trajectory, packable with others."""
        return self.method == "unsampler"

    def describe(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.inversion().items())

    def sigmas_key(self) -> tuple[Any, ...]:
        """Groups with equal keys integrate the same sigmas and can share network batches."""
        return (self.sampler_name, self.scheduler, self.steps, self.end_at_step, self.method, self.method_options)


# -- the grid -------------------------------------------------------------------------------------
def plan(grid: Mapping[str, Sequence[Any]], fixed: Mapping[str, Any], *, batch: int,
         method_options: Mapping[str, Mapping[str, Any]] | None = None,
         control_options: Mapping[str, Mapping[str, Any]] | None = None,
         family: str | None = None) -> list[InversionGroup]:
    """Every combination of `grid` x `fixed` as Settings, grouped into inversion groups (in grid order).

    A combination with direct=True that Direct Inversion cannot serve (control prompt_swap, a method whose
    inversion records no path, or a sampler that evaluates the model between the schedule's sigmas) is an
    error, unless the grid sweeps direct over both values: then it is
    skipped (its direct=False twin is in the grid). family: the model's ("vp"/"flow"), where it is known (a
    sampler that leaves the schedule on flow models only is then judged for this model)."""
    values = grid_values(grid, fixed)
    options = _method_options(method_options, values["method"])
    controls = _control_options(control_options, values["control"])
    for name in _PROMPTS:
        for v in values[name]:
            _check_prompt(name, v, batch)
    skip_direct = False in values["direct"]
    groups: dict[InversionGroup, list[Setting]] = {}
    for combo in itertools.product(*(values[p] for p in PARAMETERS)):
        setting = Setting(**dict(zip(PARAMETERS, combo)))
        setting = replace(setting, method_options=options.get(setting.method, ()),
                          control_options=controls.get(setting.control, ()))
        if setting.method != "unsampler" and setting.normalize != "disable":
            raise UnsamplingError(f"normalize={setting.normalize!r} is the Unsampler's; method {setting.method!r} returns "
                                  "its own noise: sweep it with normalize='disable'")
        if skip_direct and why_not_direct(setting, family) is not None:
            continue
        check_controlled(setting, family)
        groups.setdefault(inversion_group(setting), []).append(setting)
    return [replace(g, settings=tuple(s)) for g, s in groups.items()]


def check_controlled(setting: Setting, family: str | None = None) -> None:
    """Refuse, in one line, a setting whose control or direct cannot run as asked (the explorer checks its
    setting with this; `plan` every setting of the grid)."""
    why = why_not_direct(setting, family)
    if why is not None:
        raise UnsamplingError(why)
    if setting.controlled and setting.method == "unsampler" and setting.end_at_step >= setting.steps:
        # (a method's inversion stops at step steps - 1 and leaves one step: `trajectory.stop_step`)
        raise UnsamplingError(f"control {setting.control!r} edits from end_at_step={setting.end_at_step}, but "
                              f"{setting.steps} steps leave nothing to resample there; use end_at_step < steps")


def why_not_direct(setting: Setting, family: str | None = None) -> str | None:
    """Why Direct Inversion cannot serve `setting` (None: it can, or direct is off)."""
    if not setting.direct:
        return None
    if setting.control == PROMPT_SWAP:
        return ("direct=True with control='prompt_swap' is meaningless: Direct Inversion pins the source branch, and a "
                "prompt swap runs no source branch; give an attention control (e.g. control='p2p') or direct=False")
    if setting.method not in direct_methods():
        from ..inversion import get_method

        why = get_method(setting.method).why_no_path
        return (f"direct=True with method {setting.method!r}: {why}; use one of {', '.join(direct_methods())} "
                "or direct=False")
    from ..samplers import SAMPLER_SPECS

    if setting.sampler_name in SAMPLER_SPECS and setting.sampler_name not in direct_samplers(family):
        on = f" on {family} models" if family is not None else ""
        return (f"direct=True with sampler {setting.sampler_name!r}: Direct Inversion pins the source branch at the "
                f"schedule's sigmas, and this sampler evaluates the model between them{on}; use one of "
                f"{', '.join(direct_samplers(family))} or direct=False")
    return None


def inversion_group(setting: Setting) -> InversionGroup:
    """The group whose trajectory serves `setting`: one per end_at_step unless the sampler is prefix-consistent."""
    shared = setting.method == "unsampler" and prefix_consistent(setting.sampler_name)
    return InversionGroup(setting.sampler_name, setting.scheduler, setting.steps, setting.cfg, setting.positive,
                          setting.negative, end_at_step=0 if shared else setting.end_at_step,
                          method=setting.method, method_options=setting.method_options)


def grid_values(grid: Mapping[str, Sequence[Any]], fixed: Mapping[str, Any]) -> dict[str, list[Any]]:
    """Each parameter's canonical values (the grid's list, or the one fixed/default value), checked."""
    for name in list(grid) + list(fixed):
        if name not in DEFAULTS:
            raise suggest(name, PARAMETERS, what="sweep parameter")
    both = set(grid) & set(fixed)
    if both:
        raise UnsamplingError(f"{sorted(both)} given both in the grid and as fixed values; give each parameter once")
    values: dict[str, list[Any]] = {}
    for name in PARAMETERS:
        if name in grid:
            v = grid[name]
            if isinstance(v, (str, bytes)) or not isinstance(v, Sequence):
                raise UnsamplingError(f"grid[{name!r}] must be a list of values, got {v!r}; write {name}=[...] "
                                      f"or pass a single value as {name}=... outside the grid")
            if len(v) == 0:
                raise UnsamplingError(f"grid[{name!r}] is empty; give at least one value")
            values[name] = [_canonical(name, x) for x in v]
        else:
            values[name] = [_canonical(name, fixed.get(name, DEFAULTS[name]))]
    from ..engine import NORMALIZE_MODES
    from ..samplers import SAMPLERS
    from ..schedulers import SCHEDULERS

    for v in values["normalize"]:
        check_choice(v, NORMALIZE_MODES, what="normalize mode")
    for v in values["sampler_name"]:
        check_choice(v, SAMPLERS, what="sampler")
    for v in values["scheduler"]:
        check_choice(v, SCHEDULERS, what="scheduler")
    from ..inversion import INVERSION_METHODS

    for v in values["method"]:
        check_choice(v, INVERSION_METHODS, what="inversion method")
    from ..editing.controls import get_control

    for v in values["control"]:
        get_control(v)  # an unknown name: did you mean ...?
    for name in _INTEGERS:
        for v in values[name]:
            if v < (1 if name == "steps" else 0):
                raise UnsamplingError(f"{name} must be >= {1 if name == 'steps' else 0}, got {v}")
    return values


def _canonical(name: str, value: Any) -> Any:
    """One representation per value, so that equal settings have equal keys."""
    if name in _INTEGERS:
        if isinstance(value, bool) or not float(value).is_integer():
            raise UnsamplingError(f"{name} must be a whole number, got {value!r}")
        return int(value)
    if name in ("cfg", "resample_cfg"):
        from ..inputs import check_cfg

        if value is not None and isinstance(value, (list, tuple)):
            raise UnsamplingError(f"each grid value of {name} is one number, got {value!r}")
        return None if value is None else check_cfg(value, name=name)
    if name == "normalize" and isinstance(value, bool):
        return "enable" if value else "disable"
    if name == "direct":
        if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy / torch booleans
            value = value.item()
        if not isinstance(value, bool):
            raise UnsamplingError(f"direct is True or False (Direct Inversion on or off), got {value!r}")
        return value
    if name in _PROMPTS:
        if isinstance(value, (list, tuple)):
            return tuple(str(p) for p in value) if len(value) != 1 else str(value[0])
        return value
    return str(value)


def _check_prompt(name: str, value: Any, batch: int) -> None:
    if value is None and name == "edit":
        return
    if isinstance(value, str):
        return
    if isinstance(value, tuple) and len(value) == batch and all(isinstance(p, str) for p in value):
        return
    raise UnsamplingError(f"sweep {name} prompts must be strings or a list of {batch} strings (one per batch item), "
                          f"got {value!r}; the table keys on the prompt text")


def item_text(value: Prompts | None, b: int) -> str:
    if value is None:
        return ""
    return value[b] if isinstance(value, tuple) else str(value)


def prefix_consistent(sampler_name: str) -> bool:
    """Whether one full trajectory of this sampler serves every end_at_step."""
    from ..samplers import get_sampler

    return bool(get_sampler(sampler_name, invertible=True).prefix_consistent)


def engine_prompt(value: Prompts) -> str | list[str]:
    return list(value) if isinstance(value, tuple) else value


def chunked(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def pack(groups: Sequence[InversionGroup], *, batch: int, max_batch: int) -> list[list[InversionGroup]]:
    """Groups that share sigmas, in packs of at most max_batch // batch groups (at least one)."""
    size = max(1, max_batch // batch)
    by_sigmas: dict[tuple[Any, ...], list[InversionGroup]] = {}
    for g in groups:
        by_sigmas.setdefault(g.sigmas_key(), []).append(g)
    return [c for same in by_sigmas.values() for c in chunked(same, size if same[0].is_unsampler else 1)]


def pack_cost(groups: Sequence[InversionGroup]) -> float:
    """Network rows one pack needs, roughly (per image): the inversion's steps and each setting's
    resample steps, doubled where cfg != 1 (the uncond pass) and for a controlled setting. Methods other than the Unsampler
    iterate, so they count 10x. Only the order of tasks uses it."""
    from ..engine import state_index
    from ..inputs import cfg_is_one

    def passes(cfg: float) -> int:
        return 1 if cfg_is_one(cfg) else 2

    rows = 0.0
    for g in groups:
        own = state_index(g.steps, g.end_at_step) * passes(g.cfg)
        own += sum((s.steps - s.end_at_step) * passes(s.effective_resample_cfg) * (2 if s.controlled else 1)
                   for s in g.settings)  # a controlled setting resamples two branches
        rows += own if g.is_unsampler else 10 * own
    return rows


def _method_options(method_options: Mapping[str, Mapping[str, Any]] | None,
                    methods: Sequence[str]) -> dict[str, tuple[tuple[str, Any], ...]]:
    """method_options keyed by method name, as sorted (name, value) pairs; a key that is no swept method is an error."""
    if method_options is None:
        return {}
    if not isinstance(method_options, Mapping) or not all(isinstance(v, Mapping) for v in method_options.values()):
        raise UnsamplingError("method_options maps a method name to its options, e.g. "
                              "{'fixed_point': {'anderson': 5}}; got " + repr(method_options))
    for name in method_options:
        if name not in methods:
            raise UnsamplingError(f"method_options names {name!r}, which this sweep does not run (methods: "
                                  f"{', '.join(methods)}); add it to the grid's 'method' or drop its options")
    from ..inversion import explicit_options

    return {name: explicit_options(name, opts) for name, opts in method_options.items()}  # checked; defaults dropped


def _control_options(control_options: Mapping[str, Mapping[str, Any]] | None,
                     controls: Sequence[str]) -> dict[str, tuple[tuple[str, Any], ...]]:
    """control_options keyed by control name, checked by `editing.controls.control_options` (the one option
    checker) and cut to the values that differ from the defaults, as sorted pairs (so p2p with cross_steps=0.8,
    its default, is the same row as p2p alone); a key that is no swept control is an error."""
    if control_options is None:
        return {}
    if not isinstance(control_options, Mapping) or not all(isinstance(v, Mapping) for v in control_options.values()):
        raise UnsamplingError("control_options maps a control name to its options, e.g. "
                              "{'p2p': {'cross_steps': 0.6}}; got " + repr(control_options))
    from ..editing.controls import CONTROL_SPECS
    from ..editing.controls import control_options as check

    out = {}
    for name, opts in control_options.items():
        if name not in controls:
            raise UnsamplingError(f"control_options names {name!r}, which this sweep does not run (controls: "
                                  f"{', '.join(controls)}); add it to the grid's 'control' or drop its options")
        checked, declared = check(name, opts), CONTROL_SPECS[name].options
        out[name] = tuple(sorted((k, v) for k, v in checked.items() if k in opts and v != declared[k].default))
    return out


def _options_column(row: dict[str, Any], options: tuple[tuple[str, Any], ...], *, name: str = "method_options") -> None:
    """Options as one JSON text column, present only when there are options (old keys unchanged)."""
    import json

    if options:
        row[name] = json.dumps(dict(options), sort_keys=True, default=str)
    else:
        row.pop(name, None)

