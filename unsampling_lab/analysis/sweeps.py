"""`sweep`: unsample + resample over a grid of parameters, one inversion per group, kept in a results store.

For each setting (one point of the grid) the sweep does what a user would do by hand,

    noise  = unsample(model, latent, steps, end_at_step, cfg, sampler_name, scheduler, normalize, positive, negative)
    result = resample(model, noise, steps, start_at_step=end_at_step, cfg=resample_cfg (default cfg),
                      sampler_name, scheduler, positive=edit (or positive), negative, noise_seed=seed)

but the settings of one *inversion group* (same sampler_name, scheduler, steps, cfg, positive,
negative; and end_at_step for samplers that are not prefix-consistent) read their noise off ONE
recorded trajectory. Cost in model evaluations for N steps and end_at_step values k (one normalize):

    shared: N + sum_k (N - k)            naive (unsample + resample per row): 2 * sum_k (N - k)

Groups are the unit of work: run here one after another, packed into bigger network batches
(`max_batch`), or on any `concurrent.futures.Executor` (see `analysis.executors`). Rows go to a
`ResultStore` (see `analysis.store`) as each setting finishes; only the calling process writes.
"""
from __future__ import annotations

import contextlib
import itertools
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import torch
from torch import Tensor

from ..errors import UnsamplingError, check_choice, suggest
from .executors import Failure, ModelSource, cached_model, run_all
from .evaluate import METRIC_SETS, MetricSet, References, evaluate, inversion_endpoints, metric_sets, references  # noqa: F401 (METRIC_SETS: re-exported)
from .store import ResultStore, StoredRow, digest, model_fingerprint, tensor_digest

if TYPE_CHECKING:
    import pandas as pd

    from ..models.base import DiffusionModel
    from ..trajectory import Trajectory

Prompts = Union[str, tuple[str, ...]]

#: The sweepable parameters (the engine's names) and their defaults. `edit` is the resample prompt
#: (None: the positive prompt, i.e. a plain reconstruction); `seed` is resample's noise_seed;
#: `resample_cfg` is resample's cfg (None: the inversion's cfg).
DEFAULTS: dict[str, Any] = {
    "sampler_name": "euler", "scheduler": "normal", "steps": 20, "cfg": 1.0, "positive": "", "negative": "",
    "end_at_step": 0, "normalize": "disable", "edit": None, "seed": 0, "resample_cfg": None, "method": "unsampler",
}
#: Column order; the first six fix one inversion (one trajectory), the rest vary only what is read off it.
PARAMETERS: tuple[str, ...] = tuple(DEFAULTS)
INVERSION_KEY: tuple[str, ...] = ("sampler_name", "scheduler", "steps", "cfg", "positive", "negative", "method")
_INTEGERS = ("steps", "end_at_step", "seed")
_PROMPTS = ("positive", "negative", "edit")


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

    @property
    def resample_prompt(self) -> Prompts:
        return self.positive if self.edit is None else self.edit

    @property
    def guidance(self) -> float:
        """The cfg resample uses."""
        return self.cfg if self.resample_cfg is None else self.resample_cfg

    def row(self, item: int) -> dict[str, Any]:
        """The parameter columns of batch item `item` (prompts as that item's text)."""
        row = asdict(self)
        row.update(positive=_item_text(self.positive, item), negative=_item_text(self.negative, item),
                   edit=_item_text(self.resample_prompt, item), resample_cfg=self.guidance, item=item)
        _options_column(row, self.method_options)
        return row

    def identity(self) -> dict[str, Any]:
        """Everything that changes this setting's numbers (edit and resample_cfg resolved)."""
        out = {**asdict(self), "edit": self.resample_prompt, "resample_cfg": self.guidance}
        _options_column(out, self.method_options)
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
    def plain(self) -> bool:
        """The Unsampler's inversion: one recorded trajectory, packable with others."""
        return self.method == "unsampler"

    def describe(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.inversion().items())

    def sigmas_key(self) -> tuple[Any, ...]:
        """Groups with equal keys integrate the same sigmas and can share network batches."""
        return (self.sampler_name, self.scheduler, self.steps, self.end_at_step, self.method, self.method_options)


@dataclass
class SweepOutputs:
    """What one setting produced, for a `callback` (figures, keeping results): tensors for the whole batch."""

    params: dict[str, Any]
    noise: Tensor  # raw latents, as unsample returns them
    result: Tensor  # raw latents, as resample returns them
    trajectory: "Trajectory"
    images: Tensor | None  # decoded result [B, H, W, 3] when the model has a VAE


@dataclass
class SettingResult:
    """One finished setting: per batch item, its metric columns by metric set; and what it cost."""

    group: int  # index of its group in the task
    setting: Setting
    metrics: list[dict[str, dict[str, float]]]
    nfe: int
    nfe_naive: int
    seconds: float
    outputs: SweepOutputs | None = None


def sweep(
    model: "DiffusionModel | ModelSource",
    latents: dict[str, Any] | Tensor,
    grid: Mapping[str, Sequence[Any]],
    *,
    path: str | Path | None = None,
    images: Tensor | None = None,
    metrics: Sequence[MetricSet] | None = None,
    progress: bool = True,
    callback: Callable[[list[dict[str, Any]], SweepOutputs], None] | None = None,
    executor: Executor | Any = None,
    max_batch: int | None = None,
    retries: int = 2,
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
    **fixed: Any,
) -> "pd.DataFrame":
    """Unsample + resample `latents` for every combination of `grid` (lists) and `fixed` (single values).

    Returns one row per setting and batch item: the parameter columns (PARAMETERS, plus `item`),
    the metrics of `metrics` (default all: see `analysis.evaluate`), `nfe`, `nfe_naive`, `seconds`.

    nfe accounting: `nfe` counts the network evaluations this run spent on a setting, on its item-0
    row. A shared inversion (or packed batch) is charged once, to the first setting that needed it;
    `nfe_naive` is what unsample + resample of that setting alone would cost. `df.attrs` holds
    nfe_total, nfe_naive (whole grid), rows_computed, rows_skipped.

    path: a results store (.sqlite), or a .csv/.parquet table exported (atomically, at the end and
    on Ctrl-C) from the store beside it (same name, .sqlite). Rows already in the store for this
    model, these latents and images, and these parameters are not recomputed; missing metric sets
    are. executor: a `concurrent.futures.Executor` or a Dask `Client`; the model is then a
    `ModelSource` that each worker loads once. max_batch: pack inversion groups that share sigmas
    into network batches of up to this many images. retries: attempts after a failed group.
    method (a grid key like any other, default "unsampler"): the inversion of `ul.invert`; its options
    come from method_options[method] (e.g. {"fixed_point": {"anderson": 5}}) and are part of the row key.
    Methods other than the Unsampler invert once per end_at_step and read the noise off `ul.invert`.
    callback(rows, outputs) runs here after each computed setting.
    """
    from tqdm.auto import tqdm

    chosen = metric_sets(metrics)
    samples = _samples(latents)
    batch = int(samples.shape[0])
    groups = plan(grid, fixed, batch=batch, method_options=method_options)
    store_path, export_path = store_paths(path)
    if max_batch is not None and (isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1):
        raise UnsamplingError(f"max_batch must be a whole number >= 1 (images per network batch), got {max_batch!r}")
    runner = _runner(model, executor, retries=retries)
    if store_path is not None:  # fingerprints only where rows are kept (they load the model on a worker)
        keys = _Keys(runner.fingerprint(), tensor_digest(samples, _mask(latents), images))
    else:
        keys = _Keys("", "")
    store = ResultStore(store_path) if store_path is not None else None
    if store is not None and export_path is not None:
        store.check_export(export_path)  # before any work: an unrelated file at the export path is refused now
    found = store.rows_of_run(keys.model, keys.inputs) if store is not None else {}
    rows, todo = _resume(groups, found, keys, batch, chosen)  # rows: key -> finished row
    skipped, computed, nfe_total = len(rows), 0, 0
    try:
        results = runner.run(latents, images, todo, chosen, max_batch=max(max_batch or batch, batch),
                             keep_outputs=callback is not None)
        with tqdm(total=sum(len(g.settings) for g in todo), desc="sweep", disable=None if progress else True) as bar, \
                contextlib.closing(results):  # on an error or Ctrl-C the pending tasks are cancelled now
            for done in results:
                new = _stored_rows(keys, done.group, done, found, chosen)
                if store is not None:
                    store.write(new, model=keys.model, inputs=keys.inputs)
                flat = [r.flat(chosen) for r in new]
                rows.update((r.key, f) for r, f in zip(new, flat))
                computed += len(new)
                nfe_total += done.result.nfe
                if callback is not None and done.result.outputs is not None:
                    callback(flat, done.result.outputs)
                bar.update(1)
    finally:
        df = _frame(rows, keys, groups, batch, nfe_total=nfe_total, computed=computed, skipped=skipped)
        if export_path is not None and store is not None:  # the store's whole table, never over a file it did not write
            store.export(export_path)
        if store is not None:
            store.close()
    runner.raise_failures()
    return df


# -- the grid -------------------------------------------------------------------------------------
def plan(grid: Mapping[str, Sequence[Any]], fixed: Mapping[str, Any], *, batch: int,
         method_options: Mapping[str, Mapping[str, Any]] | None = None) -> list[InversionGroup]:
    """Every combination of `grid` x `fixed` as Settings, grouped into inversion groups (in grid order)."""
    values = grid_values(grid, fixed)
    options = _method_options(method_options, values["method"])
    for name in _PROMPTS:
        for v in values[name]:
            _check_prompt(name, v, batch)
    groups: dict[InversionGroup, list[Setting]] = {}
    for combo in itertools.product(*(values[p] for p in PARAMETERS)):
        setting = Setting(**dict(zip(PARAMETERS, combo)))
        setting = replace(setting, method_options=options.get(setting.method, ()))
        if setting.method != "unsampler" and setting.normalize != "disable":
            raise UnsamplingError(f"normalize={setting.normalize!r} is the Unsampler's; method {setting.method!r} returns "
                                  "its own noise: sweep it with normalize='disable'")
        groups.setdefault(inversion_group(setting), []).append(setting)
    return [replace(g, settings=tuple(s)) for g, s in groups.items()]


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
    for name in _INTEGERS:
        for v in values[name]:
            if v < (1 if name == "steps" else 0):
                raise UnsamplingError(f"{name} must be >= {1 if name == 'steps' else 0}, got {v}")
    for name in ("cfg", "resample_cfg"):
        for v in values[name]:
            if v is not None and not v >= 0:
                raise UnsamplingError(f"{name} must be a finite number >= 0 (1.0 = no guidance), got {v}")
    return values


def _canonical(name: str, value: Any) -> Any:
    """One representation per value, so that equal settings have equal keys."""
    if name in _INTEGERS:
        if isinstance(value, bool) or not float(value).is_integer():
            raise UnsamplingError(f"{name} must be a whole number, got {value!r}")
        return int(value)
    if name in ("cfg", "resample_cfg"):
        return None if value is None else float(value)
    if name == "normalize" and isinstance(value, bool):
        return "enable" if value else "disable"
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


def _item_text(value: Prompts | None, b: int) -> str:
    if value is None:
        return ""
    return value[b] if isinstance(value, tuple) else str(value)


def prefix_consistent(sampler_name: str) -> bool:
    """Whether one full trajectory of this sampler serves every end_at_step."""
    from ..samplers import get_sampler

    return bool(get_sampler(sampler_name, invertible=True).prefix_consistent)


# -- running groups ------------------------------------------------------------------------------------
def run_groups(model: "DiffusionModel", latents: dict[str, Any] | Tensor, refs: References,
               groups: Sequence[InversionGroup], chosen: Sequence[str], *, max_batch: int,
               keep_outputs: bool = False) -> Iterator[SettingResult]:
    """Run `groups` (all sharing sigmas) as one packed inversion, then their settings in packed resamples.

    With one group and max_batch = the batch size this is exactly the unpacked computation: the
    engine is called with the setting's own cfg and prompts. Packed, each image of the network batch
    carries its own cfg and prompts; rows agree with unpacked ones to float rounding (a packed cfg-1 item
    gets no uncond rows, as alone; see benchmarks/sweep_scaling.py).
    Yields each setting as its resample finishes.
    """
    from .. import engine
    from ..guidance import EvalCounter

    if not groups[0].plain:
        yield from _run_method_group(model, latents, refs, groups, chosen, keep_outputs=keep_outputs)
        return
    t0 = time.perf_counter()
    samples = _samples(latents)
    batch, n = int(samples.shape[0]), len(groups)
    first = groups[0]
    traj = engine.unsample_trajectory(
        model, _repeat(latents, n), steps=first.steps, sampler_name=first.sampler_name, scheduler=first.scheduler,
        end_at_step=first.end_at_step, progress=False, **_guidance([(g.cfg, g.positive, g.negative) for g in groups], batch))
    trajs = [_slice_trajectory(traj, i * batch, (i + 1) * batch, g) for i, g in enumerate(groups)] if n > 1 else [traj]
    shared = prefix_consistent(first.sampler_name)
    charge = {"nfe": traj.nfe}  # the inversion, charged to the first setting that finishes

    work = [(i, s) for i, g in enumerate(groups) for s in g.settings]
    per_chunk = max(1, max_batch // batch)
    chunks = [list(c) for _, same in itertools.groupby(sorted(work, key=lambda w: w[1].end_at_step),
                                                       key=lambda w: w[1].end_at_step)
              for c in _chunked(list(same), per_chunk)] if n > 1 or per_chunk > 1 else [[w] for w in work]
    for chunk in chunks:
        k = chunk[0][1].end_at_step
        noises = [engine.unsampled(model, trajs[i], k, s.normalize, like=latents) for i, s in chunk]
        counter = EvalCounter()
        result = engine.resample(
            model, _concat(noises), steps=first.steps, start_at_step=k, sampler_name=first.sampler_name,
            scheduler=first.scheduler, add_noise=False, noise_seed=chunk[0][1].seed, progress=False, counter=counter,
            **_guidance([(s.guidance, s.resample_prompt, s.negative) for _, s in chunk], batch))
        result = _samples(result)
        decoded = model.decode(result) if refs.decodes and ({"pixel", "detector"} & set(chosen)) else None
        seconds = (time.perf_counter() - t0) / len(chunk)
        t0 = time.perf_counter()
        for j, (i, s) in enumerate(chunk):
            sl = slice(j * batch, (j + 1) * batch)
            out, dec = result[sl], None if decoded is None else decoded[sl]
            by_set = [{} for _ in range(batch)]
            for name in chosen:
                cols = evaluate(model, out, trajectory=trajs[i], end_at_step=s.end_at_step, references=refs,
                                decoded=dec, prompts=[_item_text(s.resample_prompt, b) for b in range(batch)],
                                metrics=(name,))
                for b in range(batch):
                    by_set[b][name] = cols[b]
            nfe = charge.pop("nfe", 0) + (counter.nfe if j == 0 else 0)
            alone = trajs[i].nfe if not shared or traj.n_steps == 0 else \
                int(round(traj.nfe * engine.state_index(s.steps, s.end_at_step) / traj.n_steps))
            outputs = None
            if keep_outputs:
                outputs = SweepOutputs(params=asdict(s), noise=_samples(noises[j]), result=out, trajectory=trajs[i],
                                       images=dec)
            yield SettingResult(i, s, by_set, nfe=nfe, nfe_naive=alone + counter.nfe, seconds=seconds, outputs=outputs)


def _guidance(parts: Sequence[tuple[float, Prompts, Prompts]], batch: int) -> dict[str, Any]:
    """The engine's cfg / positive / negative for (cfg, positive, negative) per packed member: one member's
    values as they are, or one value per image of the packed network batch (members x batch items)."""
    if len(parts) == 1:
        cfg, positive, negative = parts[0]
        return {"cfg": cfg, "positive": _engine_prompt(positive), "negative": _engine_prompt(negative)}
    return {"cfg": [cfg for cfg, _, _ in parts for _ in range(batch)],
            "positive": [_item_text(pos, b) for _, pos, _ in parts for b in range(batch)],
            "negative": [_item_text(neg, b) for _, _, neg in parts for b in range(batch)]}


def _engine_prompt(value: Prompts) -> str | list[str]:
    return list(value) if isinstance(value, tuple) else value


def _chunked(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def pack(groups: Sequence[InversionGroup], *, batch: int, max_batch: int) -> list[list[InversionGroup]]:
    """Groups that share sigmas, in packs of at most max_batch // batch groups (at least one)."""
    size = max(1, max_batch // batch)
    by_sigmas: dict[tuple[Any, ...], list[InversionGroup]] = {}
    for g in groups:
        by_sigmas.setdefault(g.sigmas_key(), []).append(g)
    return [c for same in by_sigmas.values() for c in _chunked(same, size if same[0].plain else 1)]


def pack_cost(groups: Sequence[InversionGroup]) -> float:
    """Network rows one pack needs, roughly (per image): the inversion's steps and each setting's
    resample steps, doubled where cfg != 1 (the uncond pass). Methods other than the Unsampler
    iterate, so they count 10x. Only the order of tasks uses it."""
    from ..engine import state_index

    def passes(cfg: float) -> int:
        return 1 if math.isclose(cfg, 1.0) else 2

    rows = 0.0
    for g in groups:
        own = state_index(g.steps, g.end_at_step) * passes(g.cfg)
        own += sum((s.steps - s.end_at_step) * passes(s.guidance) for s in g.settings)
        rows += own if g.plain else 10 * own
    return rows


def _run_method_group(model: "DiffusionModel", latents: dict[str, Any] | Tensor, refs: References,
                      groups: Sequence[InversionGroup], chosen: Sequence[str], *,
                      keep_outputs: bool) -> Iterator[SettingResult]:
    """One group of another inversion method: `ul.invert` once, then `ul.resample(inversion)` per setting.

    The noise metrics describe the state the inversion stopped at (read back from its noise LATENT),
    as for the Unsampler; nfe counts the inversion's evaluations (its gradient steps are not network
    evaluations of the sampler and are not in nfe) plus each resample's.
    """
    from .. import engine
    from ..guidance import EvalCounter
    from ..inversion import invert

    (group,) = groups
    t0 = time.perf_counter()
    inv = invert(model, latents, method=group.method, steps=group.steps, end_at_step=group.end_at_step, cfg=group.cfg,
                 sampler_name=group.sampler_name, scheduler=group.scheduler, positive=_engine_prompt(group.positive),
                 negative=_engine_prompt(group.negative), progress=False, **dict(group.method_options))
    endpoints = inversion_endpoints(model, latents, inv)
    charge = inv.nfe
    for s in group.settings:
        counter = EvalCounter()
        result = _samples(engine.resample(
            model, inv, steps=s.steps, start_at_step=min(s.end_at_step, s.steps - 1), cfg=s.guidance,
            sampler_name=s.sampler_name, scheduler=s.scheduler, positive=_engine_prompt(s.resample_prompt),
            negative=_engine_prompt(s.negative), add_noise=False, noise_seed=s.seed, progress=False, counter=counter))
        batch = int(result.shape[0])
        decoded = model.decode(result) if refs.decodes and ({"pixel", "detector"} & set(chosen)) else None
        by_set = [{} for _ in range(batch)]
        for name in chosen:
            cols = evaluate(model, result, trajectory=endpoints, end_at_step=0, references=refs, decoded=decoded,
                            prompts=[_item_text(s.resample_prompt, b) for b in range(batch)], metrics=(name,))
            for b in range(batch):
                by_set[b][name] = cols[b]
        seconds, t0 = time.perf_counter() - t0, time.perf_counter()
        outputs = SweepOutputs(params=asdict(s), noise=inv.samples, result=result, trajectory=endpoints,
                               images=decoded) if keep_outputs else None
        yield SettingResult(0, s, by_set, nfe=charge + counter.nfe, nfe_naive=inv.nfe + counter.nfe, seconds=seconds,
                            outputs=outputs)
        charge = 0


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


def _options_column(row: dict[str, Any], options: tuple[tuple[str, Any], ...]) -> None:
    """The method options as one JSON text column, present only when a method has options (old keys unchanged)."""
    import json

    if options:
        row["method_options"] = json.dumps(dict(options), sort_keys=True, default=str)
    else:
        row.pop("method_options", None)


# -- where groups run ----------------------------------------------------------------------------------
@dataclass
class _Done:
    group: InversionGroup
    result: SettingResult


def _runner(model: Any, executor: Any, *, retries: int) -> "_Here | _There":
    if executor is None:
        return _Here(cached_model(model) if isinstance(model, ModelSource) else model)
    if not isinstance(model, ModelSource):
        raise UnsamplingError(
            f"with an executor, give the model by its source so that each worker loads it once: "
            f"ul.ModelSource('path/or/hub-id', device='cuda', dtype='float16', threads=None) instead of a loaded "
            f"{type(model).__name__} (loaded models are not shipped to workers)")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise UnsamplingError(f"retries must be a whole number >= 0, got {retries!r}")
    return _There(model, executor, retries)


class _Here:
    """Groups run in this process, one pack after another."""

    def __init__(self, model: "DiffusionModel") -> None:
        self.model = model

    def fingerprint(self) -> str:
        return model_fingerprint(self.model)

    def run(self, latents: Any, images: Tensor | None, todo: Sequence[InversionGroup], chosen: Sequence[str], *,
            max_batch: int, keep_outputs: bool) -> Iterator[_Done]:
        refs = references(self.model, _samples(latents), images, metrics=chosen)
        for groups in pack(todo, batch=int(_samples(latents).shape[0]), max_batch=max_batch):
            for r in run_groups(self.model, latents, refs, groups, chosen, max_batch=max_batch,
                                keep_outputs=keep_outputs):
                yield _Done(groups[r.group], r)

    def raise_failures(self) -> None:
        return None


class _There:
    """Packs of groups run as tasks on an executor; results come back as they finish."""

    def __init__(self, source: ModelSource, executor: Any, retries: int) -> None:
        self.source, self.executor, self.retries = source, executor, retries
        self.failures: list[Failure] = []
        self.tasks = 0

    def fingerprint(self) -> str:
        (_, fp), = run_all(self.executor, _fingerprint_task, [self.source], retries=self.retries)
        if isinstance(fp, Failure):
            raise UnsamplingError(f"could not load {self.source} on a worker: {fp.error!r}") from fp.error
        return fp

    def run(self, latents: Any, images: Tensor | None, todo: Sequence[InversionGroup], chosen: Sequence[str], *,
            max_batch: int, keep_outputs: bool) -> Iterator[_Done]:
        # longest first: workers take tasks as they free up, so the cheap ones fill the gaps at the end
        # (in grid order a costly last task left one of 2 workers idle for ~1/4 of the run)
        packs = sorted(pack(todo, batch=int(_samples(latents).shape[0]), max_batch=max_batch), key=pack_cost,
                       reverse=True)
        self.tasks = len(packs)
        for groups, results in run_all(self.executor, _run_task, packs, self.source, latents, images, tuple(chosen),
                                       max_batch, keep_outputs, retries=self.retries):
            if isinstance(results, Failure):
                self.failures.append(results)
                continue
            for r in results:
                yield _Done(groups[r.group], r)

    def raise_failures(self) -> None:
        if not self.failures:
            return
        failed = [g.describe() for f in self.failures for g in f.task]
        raise UnsamplingError(
            f"{len(failed)} inversion group(s) failed after {self.retries} retries (first error: "
            f"{self.failures[0].error!r}); every finished group is in the store, run the same sweep again to compute "
            "only the missing ones. Failed: " + "; ".join(failed)) from self.failures[0].error


_REFERENCES: dict[tuple[Any, ...], References] = {}


def _run_task(groups: list[InversionGroup], source: ModelSource, latents: Any, images: Tensor | None,
              chosen: tuple[str, ...], max_batch: int, keep_outputs: bool) -> list[SettingResult]:
    """One task on a worker: the model from its per-process cache, then `run_groups`."""
    model = cached_model(source)
    key = (source, tensor_digest(_samples(latents), images), chosen)
    refs = _REFERENCES.get(key)
    if refs is None:
        _REFERENCES.clear()
        refs = _REFERENCES[key] = references(model, _samples(latents), images, metrics=chosen)
    return list(run_groups(model, latents, refs, groups, chosen, max_batch=max_batch, keep_outputs=keep_outputs))


def _fingerprint_task(source: ModelSource) -> str:
    return model_fingerprint(cached_model(source))


# -- tensors ---------------------------------------------------------------------------------------------
def _samples(latent: dict[str, Any] | Tensor) -> Tensor:
    samples = latent["samples"] if isinstance(latent, dict) else latent
    if not isinstance(samples, Tensor) or samples.ndim != 4:
        raise UnsamplingError("latents must be a LATENT dict {'samples': Tensor[B, C, H, W]} or such a tensor")
    return samples


def _mask(latent: dict[str, Any] | Tensor) -> Tensor | None:
    return latent.get("noise_mask") if isinstance(latent, dict) else None


def _repeat(latent: dict[str, Any] | Tensor, n: int) -> dict[str, Any] | Tensor:
    """`latent` n times along the batch (its per-item noise_mask too)."""
    if n == 1:
        return latent
    samples = _samples(latent)
    if not isinstance(latent, dict):
        return samples.repeat(n, 1, 1, 1)
    out = dict(latent, samples=samples.repeat(n, 1, 1, 1))
    mask = latent.get("noise_mask")
    if isinstance(mask, Tensor) and mask.ndim >= 3 and mask.shape[0] == samples.shape[0] > 1:
        out["noise_mask"] = mask.repeat(n, *([1] * (mask.ndim - 1)))
    return out


def _concat(latents: Sequence[dict[str, Any] | Tensor]) -> dict[str, Any] | Tensor:
    if len(latents) == 1:
        return latents[0]
    out = _repeat(latents[0], len(latents))
    samples = torch.cat([_samples(x) for x in latents])
    return dict(out, samples=samples) if isinstance(out, dict) else samples


def _slice_trajectory(traj: "Trajectory", start: int, stop: int, group: InversionGroup) -> "Trajectory":
    from ..trajectory import Trajectory

    params = dict(traj.params, cfg=group.cfg, positive=_engine_prompt(group.positive),
                  negative=_engine_prompt(group.negative))
    return Trajectory(sigmas=traj.sigmas, xs=traj.xs[:, start:stop].clone(), denoised=traj.denoised[:, start:stop].clone(),
                      params=params, nfe=traj.nfe)


# -- keys, rows and the table ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Keys:
    """Store keys: a group is (model, inputs, its inversion); a row is (its group, its setting, item)."""

    model: str
    inputs: str

    def group(self, group: InversionGroup) -> str:
        return digest("group", self.model, self.inputs, group.inversion())

    def rows(self, group: InversionGroup, setting: Setting, batch: int) -> list[str]:
        g = self.group(group)
        ident = setting.identity()
        return [digest("row", g, ident, b) for b in range(batch)]


def _resume(groups: Sequence[InversionGroup], found: Mapping[str, StoredRow], keys: _Keys, batch: int,
            chosen: Sequence[str]) -> tuple[dict[str, dict[str, Any]], list[InversionGroup]]:
    """(the rows already stored, by key; the groups cut down to their settings that are missing a row or a metric set)."""
    rows: dict[str, dict[str, Any]] = {}
    todo: list[InversionGroup] = []
    for group in groups:
        missing = tuple(s for s in group.settings if _missing(found, keys, group, s, batch, chosen))
        rows.update({k: found[k].flat(chosen) for s in group.settings if s not in missing
                     for k in keys.rows(group, s, batch)})
        if missing:
            todo.append(replace(group, settings=missing))
    return rows, todo


def _missing(found: Mapping[str, StoredRow], keys: _Keys, group: InversionGroup, setting: Setting, batch: int,
             chosen: Sequence[str]) -> bool:
    return any(k not in found or not set(chosen) <= set(found[k].metrics) for k in keys.rows(group, setting, batch))


def _stored_rows(keys: _Keys, group: InversionGroup, done: "_Done", found: Mapping[str, StoredRow],
                 chosen: Sequence[str]) -> list[StoredRow]:
    r = done.result
    out = []
    gkey = keys.group(group)
    for b, key in enumerate(keys.rows(group, r.setting, len(r.metrics))):
        old = found.get(key)
        metrics = {**r.metrics[b], **(old.metrics if old is not None else {})}  # the stored values stay
        accounting = {"nfe": r.nfe if b == 0 else 0, "nfe_naive": r.nfe_naive if b == 0 else 0,
                      "seconds": r.seconds if b == 0 else 0.0}
        out.append(StoredRow(key, gkey, r.setting.row(b), metrics, accounting))
    return out


def _frame(rows: Mapping[str, dict[str, Any]], keys: _Keys, groups: Sequence[InversionGroup], batch: int, *,
           nfe_total: int, computed: int, skipped: int) -> "pd.DataFrame":
    import pandas as pd

    ordered = [rows[k] for g in groups for s in g.settings for k in keys.rows(g, s, batch) if k in rows]
    df = pd.DataFrame(ordered)
    df.attrs.update(
        nfe_total=int(nfe_total),
        nfe_naive=int(pd.to_numeric(df["nfe_naive"], errors="coerce").fillna(0).sum()) if len(df) else 0,
        rows_computed=computed, rows_skipped=skipped,
        nfe_attribution="shared inversion charged to the first setting that needed it; per setting on item 0",
    )
    return df


def store_paths(path: str | Path | None) -> tuple[Path | None, Path | None]:
    """(store, export): x.sqlite -> (x.sqlite, None); x.csv / x.parquet -> (x.sqlite beside it, x.csv)."""
    if path is None:
        return None, None
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".sqlite":
        return path, None
    if suffix in (".csv", ".parquet"):
        if suffix == ".parquet":
            try:
                import pyarrow  # noqa: F401
            except ImportError:
                raise UnsamplingError("writing .parquet needs pyarrow (pip install pyarrow); or use a .csv path") from None
        return path.with_suffix(".sqlite"), path
    raise UnsamplingError(f"sweep path must end in .sqlite (the results store), .csv or .parquet (an export of the "
                          f"store kept beside it), got {path.name!r}")
