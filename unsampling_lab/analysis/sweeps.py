"""`sweep`: unsample + resample over a grid of parameters, one inversion per group, kept in a results store.

For each setting (one point of the grid) the sweep does what a user would do by hand,

    noise  = unsample(model, latent, steps, end_at_step, cfg, sampler_name, scheduler, normalize, positive, negative)
    result = resample(model, noise, steps, start_at_step=end_at_step, cfg=resample_cfg (default cfg),
                      sampler_name, scheduler, positive=edit (or positive), negative, noise_seed=seed)

but the settings of one *inversion group* (same sampler_name, scheduler, steps, cfg, positive,
negative; and end_at_step for samplers that are not prefix-consistent) read their noise off ONE
recorded trajectory. Cost in model evaluations for N steps and end_at_step values k (one normalize):

    shared: N + sum_k (N - k)            naive (unsample + resample per row): 2 * sum_k (N - k)

`sweep` is plan -> resume -> run -> store, one module each:
- `analysis.grid`: the grid -> settings -> inversion groups -> packs (no model);
- `analysis.store`: what is already computed (resume), and where each finished setting's rows go;
- `analysis.runners`: where groups run (here, or on any `concurrent.futures.Executor`), calling
- `analysis.running`: one inversion per group, then `evaluate_setting` per setting.
There is always a store (in memory when `path` is None) and the table is read back from it.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor

from ..errors import UnsamplingError, check_int
from .evaluate import METRIC_SETS, MetricSet, metric_sets
from .executors import ModelSource
from .grid import (DEFAULTS, INVERSION_KEY, PARAMETERS, InversionGroup, Setting, grid_values,
                   inversion_group, pack, pack_cost, plan, prefix_consistent)
from .running import SettingResult, SweepOutputs, evaluate_setting, mask_of, run_groups, samples_of
from .runners import runner
from .store import ResultStore, StoredRow, digest, tensor_digest

if TYPE_CHECKING:
    import pandas as pd

    from ..models.base import DiffusionModel


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
    control_options: Mapping[str, Mapping[str, Any]] | None = None,
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
    control (a grid key, default "prompt_swap": a plain resample of the edit prompt) and direct (default
    False): any other control, or direct=True, edits each setting through `ul.edit` (source = positive,
    target = edit, both branches in one batch) from the same inversion; the control's options come from
    control_options[control] (e.g. {"p2p": {"cross_steps": 0.6}}) and are part of the row key. A prompt_swap
    setting without direct keeps its store key from before these keys existed (older stores resume).
    direct=True needs an attention control and a method whose inversion records its path (grid.direct_methods(); with direct swept over
    [False, True] the combinations it cannot serve are skipped). The metrics are the target branch's.
    callback(rows, outputs) runs here after each computed setting.
    """
    from tqdm.auto import tqdm

    chosen = metric_sets(metrics)
    samples = samples_of(latents)
    batch = int(samples.shape[0])
    if images is not None:
        images = _check_images(images, samples, model)
    family = getattr(getattr(model, "model_sampling", None), "family", None)  # None for a ModelSource (not loaded)
    groups = plan(grid, fixed, batch=batch, method_options=method_options, control_options=control_options,
                  family=family)
    _check_families(model, groups)
    store_path, export_path = store_paths(path)
    if max_batch is not None:
        check_int("max_batch", max_batch, minimum=1)
    run = runner(model, executor, retries=retries)
    # fingerprints only where rows outlive the call (on an executor they load the model on a worker)
    keys = _Keys(run.fingerprint(), tensor_digest(samples, mask_of(latents), images)) if store_path else _Keys("", "")
    store = ResultStore(store_path)  # None: in memory
    if export_path is not None:
        store.check_export(export_path)  # before any work: an unrelated file at the export path is refused now
    found = store.rows_of_run(keys.model, keys.inputs)
    todo = _resume(groups, found, keys, batch, chosen)
    computed, nfe_total = 0, 0
    try:
        results = run.run(latents, images, todo, chosen, max_batch=max(max_batch or batch, batch),
                          keep_outputs=callback is not None)
        with tqdm(total=sum(len(g.settings) for g in todo), desc="sweep", disable=None if progress else True) as bar, \
                contextlib.closing(results):  # on an error or Ctrl-C the pending tasks are cancelled now
            for done in results:
                new = _stored_rows(keys, done, found)
                store.write(new, model=keys.model, inputs=keys.inputs)
                computed += len(new)
                nfe_total += done.nfe
                if callback is not None and done.outputs is not None:
                    callback([r.flat(chosen) for r in new], done.outputs)
                bar.update(1)
    finally:
        df = _frame(store.rows_of_run(keys.model, keys.inputs), keys, groups, batch, chosen, nfe_total=nfe_total,
                    computed=computed)
        if export_path is not None:  # the store's whole table, never over a file it did not write
            store.export(export_path)
        store.close()
    run.raise_failures()
    return df


# -- keys, resume, rows and the table ---------------------------------------------------------------------
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
            chosen: Sequence[str]) -> list[InversionGroup]:
    """The groups cut down to their settings that are missing a row or a metric set in the store."""
    todo: list[InversionGroup] = []
    for group in groups:
        missing = tuple(s for s in group.settings
                        if any(k not in found or not set(chosen) <= set(found[k].metrics)
                               for k in keys.rows(group, s, batch)))
        if missing:
            todo.append(replace(group, settings=missing))
    return todo


def _stored_rows(keys: _Keys, done: SettingResult, found: Mapping[str, StoredRow]) -> list[StoredRow]:
    """A finished setting's rows as the store keeps them (the nfe, nfe_naive and seconds on item 0)."""
    out = []
    gkey = keys.group(done.group)
    for b, key in enumerate(keys.rows(done.group, done.setting, len(done.metrics))):
        old = found.get(key)
        metrics = {**done.metrics[b], **(old.metrics if old is not None else {})}  # the stored values stay
        accounting = {"nfe": done.nfe if b == 0 else 0, "nfe_naive": done.nfe_naive if b == 0 else 0,
                      "seconds": done.seconds if b == 0 else 0.0}
        out.append(StoredRow(key, gkey, done.setting.row(b), metrics, accounting))
    return out


def _frame(stored: Mapping[str, StoredRow], keys: _Keys, groups: Sequence[InversionGroup], batch: int,
           chosen: Sequence[str], *, nfe_total: int, computed: int) -> "pd.DataFrame":
    """The planned rows found in the store, in grid order (a row without this run's metric sets is not finished)."""
    import pandas as pd

    planned = [stored[k] for g in groups for s in g.settings for k in keys.rows(g, s, batch) if k in stored]
    plain = {"control": DEFAULTS["control"], "direct": DEFAULTS["direct"]}  # rows stored before these columns existed
    df = pd.DataFrame([{**plain, **r.flat(chosen)} for r in planned if set(chosen) <= set(r.metrics)])
    order = Setting(method_options=(("", 0),), control_options=(("", 0),)).row(0)  # the columns in order
    lead = [c for c in order if c in df.columns]
    tail = [c for c in ("nfe", "nfe_naive", "seconds") if c in df.columns]
    df = df[lead + [c for c in df.columns if c not in lead and c not in tail] + tail]
    df.attrs.update(
        nfe_total=int(nfe_total),
        nfe_naive=int(pd.to_numeric(df["nfe_naive"], errors="coerce").fillna(0).sum()) if len(df) else 0,
        rows_computed=computed, rows_skipped=len(df) - computed,
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


#: The sweep's names, the planning and running ones re-exported from where they live (grid, running).
__all__ = [
    "DEFAULTS", "INVERSION_KEY", "METRIC_SETS", "PARAMETERS", "InversionGroup", "Setting", "SettingResult",
    "SweepOutputs", "evaluate_setting", "grid_values", "inversion_group", "pack", "pack_cost", "plan",
    "prefix_consistent", "run_groups", "store_paths", "sweep",
]


def _check_families(model: Any, groups: Sequence[InversionGroup]) -> None:
    """A control the model's prediction family does not serve, refused before any work (a ModelSource is not
    loaded here: `ul.edit` refuses it on the worker)."""
    ms = getattr(model, "model_sampling", None)
    family = getattr(ms, "prediction", None)
    if family is None:
        return
    from ..editing.controls import get_control

    for control in dict.fromkeys(s.control for g in groups for s in g.settings):
        spec = get_control(control)
        if family not in spec.families:
            raise UnsamplingError(f"control {control!r} serves {'/'.join(spec.families)} models, not this {family!r} "
                                  "model; sweep it with control='prompt_swap'")


def _check_images(images: Any, samples: Tensor, model: Any) -> Tensor:
    """The sweep's reference images in any form `model.encode` takes, as float [B, H, W, 3], with one image per
    latent and the latents' pixel size (a mismatch was a raw tensor-size error deep in a metric)."""
    from ..pixels import as_image_batch

    out = as_image_batch(images, name="images")
    if out.shape[0] != samples.shape[0]:
        raise UnsamplingError(f"images holds {out.shape[0]} images for {samples.shape[0]} latents; pass the images the "
                              "latents were encoded from, one per latent")
    factor = getattr(model, "vae_scale_factor", None)
    if isinstance(factor, int):
        want = (samples.shape[-2] * factor, samples.shape[-1] * factor)
        if tuple(out.shape[1:3]) != want:
            raise UnsamplingError(f"images are {out.shape[1]}x{out.shape[2]} pixels but the latents decode to "
                                  f"{want[0]}x{want[1]}; pass the images the latents were encoded from")
    return out
