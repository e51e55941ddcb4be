"""`sweep`: unsample + resample over a grid of parameters, sharing the inversion, resumable from disk.

For each combination the sweep does what a user would do by hand,

    noise  = unsample(model, latent, steps, end_at_step, cfg, sampler_name, scheduler, normalize, positive, negative)
    result = resample(model, noise, steps, start_at_step=end_at_step, cfg, sampler_name, scheduler,
                      positive=edit (or positive), negative, noise_seed=seed)

but all end_at_step and normalize values of one (sampler_name, scheduler, steps, cfg, positive, negative)
read their noise off ONE recorded trajectory (`unsample_trajectory` + `unsampled`) when the sampler is
prefix-consistent. Cost in model evaluations for N steps and end_at_step values k (one normalize):

    shared: N + sum_k (N - k)            naive (unsample + resample per row): 2 * sum_k (N - k)
"""
from __future__ import annotations

import itertools
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

from ..errors import UnsamplingError, suggest

if TYPE_CHECKING:
    import pandas as pd

    from ..models.base import DiffusionModel
    from ..trajectory import Trajectory

#: The sweepable parameters (the engine's names) and their defaults. `edit` is the resample prompt
#: (None: the positive prompt, i.e. a plain reconstruction); `seed` is resample's noise_seed.
DEFAULTS: dict[str, Any] = {
    "sampler_name": "euler", "scheduler": "normal", "steps": 20, "cfg": 1.0, "positive": "", "negative": "",
    "end_at_step": 0, "normalize": "disable", "edit": None, "seed": 0,
}
#: Column order; the first six fix one inversion (one trajectory), the rest vary only what is read off it.
PARAMETERS: tuple[str, ...] = tuple(DEFAULTS)
INVERSION_KEY: tuple[str, ...] = ("sampler_name", "scheduler", "steps", "cfg", "positive", "negative")
MetricSet = Literal["latent", "pixel", "noise", "detector"]
METRIC_SETS: tuple[str, ...] = ("latent", "pixel", "noise", "detector")
AUTOCORR_LAGS: tuple[int, ...] = (1, 2, 4)


@dataclass
class SweepOutputs:
    """What one combination produced, for a `callback` (figures, keeping results): tensors for the whole batch."""

    params: dict[str, Any]
    noise: Tensor  # raw latents, as unsample returns them
    result: Tensor  # raw latents, as resample returns them
    trajectory: "Trajectory"
    images: Tensor | None  # decoded result [B, H, W, 3] when the model has a VAE


def sweep(
    model: "DiffusionModel",
    latents: dict[str, Any] | Tensor,
    grid: Mapping[str, Sequence[Any]],
    *,
    path: str | Path | None = None,
    images: Tensor | None = None,
    metrics: Sequence[MetricSet] | None = None,
    progress: bool = True,
    callback: Callable[[list[dict[str, Any]], SweepOutputs], None] | None = None,
    **fixed: Any,
) -> "pd.DataFrame":
    """Unsample + resample `latents` for every combination of `grid` (lists) and `fixed` (single values).

    Returns one row per combination and batch item: the parameter columns (PARAMETERS, plus `item`),
    the metrics (latent_mse, relative_error; psnr, ssim and the VAE-only ceiling psnr_vae, ssim_vae
    when the model decodes; noise_* statistics of the standardized final state; detector columns
    for the shapes model), `nfe`, `nfe_naive` and `seconds`.

    nfe accounting: `nfe` counts the network evaluations this run spent on a combination, on its
    item-0 row (items are computed together). A shared inversion is charged once, to the first
    combination that needed it; `nfe_naive` is what unsample + resample of that combination alone
    would cost. `df.attrs` holds nfe_total, nfe_naive (whole grid), rows_computed, rows_skipped.

    path: a .csv or .parquet file. Each finished combination is appended (the file is valid after
    every combination), and rows already in the file (same parameter columns) are not recomputed,
    so an interrupted sweep resumes where it stopped. images: the originals [B, H, W, 3] for pixel
    metrics (default: decode(latents)). callback(rows, outputs) runs after each computed combination.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from .. import engine

    values = _grid_values(grid, fixed)
    chosen = _metric_sets(metrics)
    samples = latents["samples"] if isinstance(latents, dict) else latents
    if not isinstance(samples, Tensor) or samples.ndim != 4:
        raise UnsamplingError("latents must be a LATENT dict {'samples': Tensor[B, C, H, W]} or such a tensor")
    batch = int(samples.shape[0])
    for name in ("positive", "negative", "edit"):
        for v in values[name]:
            _check_prompt(name, v, batch)

    store = _Store(Path(path)) if path is not None else None
    done = store.finished_keys() if store is not None else {}
    counted = _CountingModel(model)
    reference, ceiling = pixel_reference(model, samples, images, chosen)

    combos = [dict(zip(PARAMETERS, c)) for c in itertools.product(*(values[p] for p in PARAMETERS))]
    rows_out: list[dict[str, Any]] = []
    computed = skipped = 0
    nfe_total = 0
    cache: dict[tuple, Any] = {}
    with tqdm(total=len(combos), desc="sweep", disable=None if progress else True) as bar:  # None: off without a terminal
        for combo in combos:
            keys = [_row_key(combo, b) for b in range(batch)]
            if all(k in done for k in keys):
                rows_out.extend(done[k] for k in keys)
                skipped += 1
                bar.update(1)
                continue
            t0 = time.perf_counter()
            start = counted.nfe
            spec_prefix = prefix_consistent(combo["sampler_name"])
            inv = tuple(_canonical(p, _hashable(combo[p])) for p in INVERSION_KEY)
            traj_key = inv + ((0,) if spec_prefix else (combo["end_at_step"],))
            if traj_key not in cache:
                cache.clear()  # combos of one inversion are adjacent: keep one trajectory in memory
                before = counted.nfe
                traj = engine.unsample_trajectory(
                    counted, latents, steps=combo["steps"], cfg=combo["cfg"], sampler_name=combo["sampler_name"],
                    scheduler=combo["scheduler"], positive=combo["positive"], negative=combo["negative"],
                    end_at_step=0 if spec_prefix else combo["end_at_step"], progress=False)
                cache[traj_key] = (traj, counted.nfe - before)
            traj, traj_nfe = cache[traj_key]
            noise_latent = engine.unsampled(counted, traj, combo["end_at_step"], combo["normalize"], like=latents)
            before = counted.nfe
            edit = combo["positive"] if combo["edit"] is None else combo["edit"]
            result_latent = engine.resample(
                counted, noise_latent, steps=combo["steps"], start_at_step=combo["end_at_step"], cfg=combo["cfg"],
                sampler_name=combo["sampler_name"], scheduler=combo["scheduler"], positive=edit,
                negative=combo["negative"], add_noise=False, noise_seed=combo["seed"], progress=False)
            resample_nfe = counted.nfe - before
            noise = noise_latent["samples"] if isinstance(noise_latent, dict) else noise_latent
            result = result_latent["samples"] if isinstance(result_latent, dict) else result_latent
            nfe = counted.nfe - start
            nfe_total += nfe
            naive = _alone_unsample_nfe(traj, traj_nfe, combo, spec_prefix) + resample_nfe

            decoded = None
            if reference is not None:
                decoded = model.decode(result)
            rows = metric_rows(model, combo, samples, result, traj, decoded, reference, ceiling, chosen, batch)
            seconds = time.perf_counter() - t0
            for b, row in enumerate(rows):
                row.update(nfe=nfe if b == 0 else 0, nfe_naive=naive if b == 0 else 0, seconds=seconds if b == 0 else 0.0)
            if store is not None:
                store.append(rows)
            rows_out.extend(rows)
            computed += 1
            if callback is not None:
                callback(rows, SweepOutputs(params=dict(combo), noise=noise, result=result, trajectory=traj,
                                            images=decoded))
            bar.update(1)

    df = pd.DataFrame(rows_out)
    df.attrs.update(
        nfe_total=int(nfe_total),
        nfe_naive=int(pd.to_numeric(df["nfe_naive"], errors="coerce").fillna(0).sum()) if len(df) else 0,
        rows_computed=computed * batch, rows_skipped=skipped * batch,
        nfe_attribution="shared inversion charged to the first combination that needed it; per combination on item 0",
    )
    return df


# -- parameters -------------------------------------------------------------------------------------
def _grid_values(grid: Mapping[str, Sequence[Any]], fixed: Mapping[str, Any]) -> dict[str, list[Any]]:
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
    from ..errors import check_choice
    from ..samplers import SAMPLERS
    from ..schedulers import SCHEDULERS

    for v in values["normalize"]:
        check_choice(v, NORMALIZE_MODES, what="normalize mode")
    for v in values["sampler_name"]:
        check_choice(v, SAMPLERS, what="sampler")
    for v in values["scheduler"]:
        check_choice(v, SCHEDULERS, what="scheduler")
    for name in ("steps", "end_at_step", "seed"):
        for v in values[name]:
            if v < (1 if name == "steps" else 0):
                raise UnsamplingError(f"{name} must be >= {1 if name == 'steps' else 0}, got {v}")
    return values


def _canonical(name: str, value: Any) -> Any:
    """One representation per value, so keys read back from a file match the grid's."""
    if name in ("steps", "end_at_step", "seed"):
        if isinstance(value, bool) or not float(value).is_integer():
            raise UnsamplingError(f"{name} must be a whole number, got {value!r}")
        return int(value)
    if name == "cfg":
        return float(value)
    if name == "normalize" and isinstance(value, bool):
        return "enable" if value else "disable"
    if name in ("positive", "negative", "edit"):
        if value is None:
            return None
        if isinstance(value, (list, tuple)):
            return tuple(str(p) for p in value)
        return value
    return str(value)


def _hashable(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, tuple, type(None))) else id(value)


def _check_prompt(name: str, value: Any, batch: int) -> None:
    if value is None and name == "edit":
        return
    if isinstance(value, str):
        return
    if isinstance(value, tuple) and len(value) in (1, batch) and all(isinstance(p, str) for p in value):
        return
    raise UnsamplingError(f"sweep {name} prompts must be strings or a list of {batch} strings (one per batch item), "
                          f"got {value!r}; the table keys on the prompt text")


def _item_text(value: Any, b: int) -> str:
    if value is None:
        return ""
    if isinstance(value, tuple):
        return value[b] if len(value) > 1 else value[0]
    return str(value)


def _row_params(combo: Mapping[str, Any], b: int) -> dict[str, Any]:
    row = {p: combo[p] for p in PARAMETERS}
    row["edit"] = _item_text(combo["positive"] if combo["edit"] is None else combo["edit"], b)
    row["positive"] = _item_text(combo["positive"], b)
    row["negative"] = _item_text(combo["negative"], b)
    row["item"] = b
    return row


def _row_key(combo_or_row: Mapping[str, Any], b: int | None = None) -> tuple:
    row = _row_params(combo_or_row, b) if b is not None else combo_or_row
    return tuple(_canonical(p, row[p]) if p not in ("positive", "negative", "edit") else str(row[p])
                 for p in PARAMETERS) + (int(row["item"]),)


def _metric_sets(metrics: Sequence[str] | None) -> set[str]:
    if metrics is None:
        return set(METRIC_SETS)
    from ..errors import check_choice

    return {check_choice(m, METRIC_SETS, what="metric set") for m in metrics}


def prefix_consistent(sampler_name: str) -> bool:
    from ..samplers import get_sampler

    return bool(get_sampler(sampler_name, invertible=True).prefix_consistent)


def _alone_unsample_nfe(traj: "Trajectory", traj_nfe: int, combo: Mapping[str, Any], shared: bool) -> int:
    """Evaluations unsample(end_at_step=k) would cost on its own: the trajectory's per step, times N - min(k, N - 1)."""
    if not shared or traj.n_steps == 0:
        return traj_nfe
    n = combo["steps"] - min(combo["end_at_step"], combo["steps"] - 1)
    return int(round(traj_nfe * n / traj.n_steps))


# -- metrics per row ----------------------------------------------------------------------------------
def pixel_reference(model: Any, samples: Tensor, images: Tensor | None,
                     chosen: set[str]) -> tuple[Tensor | None, Tensor | None]:
    """(reference images, VAE-only ceiling decode(encode(reference))), or (None, None) without a VAE."""
    if not ({"pixel", "detector"} & chosen) or getattr(model, "vae", None) is None or not hasattr(model, "decode"):
        return None, None
    reference = images.detach().float().cpu() if images is not None else model.decode(samples)
    ceiling = model.decode(model.encode(reference))
    return reference, ceiling


def metric_rows(model: Any, combo: Mapping[str, Any], samples: Tensor, result: Tensor, traj: "Trajectory",
                 decoded: Tensor | None, reference: Tensor | None, ceiling: Tensor | None, chosen: set[str],
                 batch: int) -> list[dict[str, Any]]:
    from .. import engine
    from . import metrics as M

    rows = [_row_params(combo, b) for b in range(batch)]
    if "latent" in chosen:
        mse, rel = M.latent_mse(result, samples), M.relative_error(result, samples)
        for b, row in enumerate(rows):
            row.update(latent_mse=float(mse[b]), relative_error=float(rel[b]))
    if "pixel" in chosen and decoded is not None and reference is not None and ceiling is not None:
        p, s = M.psnr(decoded, reference), M.ssim(decoded, reference)
        pv, sv = M.psnr(ceiling, reference), M.ssim(ceiling, reference)
        for b, row in enumerate(rows):
            row.update(psnr=float(p[b]), ssim=float(s[b]), psnr_vae=float(pv[b]), ssim_vae=float(sv[b]))
    if "noise" in chosen:
        steps = combo["steps"]
        index = engine.state_index(steps, combo["end_at_step"])
        index = traj.n_steps if index > traj.n_steps else index
        state, sigma = traj.xs[index], float(traj.sigmas[index])
        data_std = traj.xs[0].double().flatten(1).std(dim=1)
        for b, row in enumerate(rows):
            z = M.standardize_noise(state[b], sigma, model.model_sampling, data_std=float(data_std[b]))
            stats = M.noise_stats(z)
            stats.pop("n")
            row.update({f"noise_{k}": v for k, v in stats.items()})
            row.update({f"noise_{k}": v for k, v in M.autocorrelation(z, AUTOCORR_LAGS).items()})
            row["sigma_final"] = sigma
    if "detector" in chosen and decoded is not None and reference is not None:
        det = M.detector_metrics(decoded, reference, prompts=[r["edit"] for r in rows])
        if det is not None:
            for row, d in zip(rows, det):
                row.update(d)
    return rows


# -- counting -------------------------------------------------------------------------------------------
class _CountingModel:
    """The model with its network calls counted (one call = one NFE: cond and uncond go as one batch)."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self.nfe = 0

    def forward(self, x: Tensor, timestep: Tensor, cond: Any) -> Tensor:
        self.nfe += 1
        return self._model.forward(x, timestep, cond)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


# -- the results file ----------------------------------------------------------------------------------
class _Store:
    """A CSV or Parquet table that grows one combination at a time and survives interruption."""

    def __init__(self, path: Path) -> None:
        suffix = path.suffix.lower()
        if suffix not in (".csv", ".parquet"):
            raise UnsamplingError(f"sweep path must end in .csv or .parquet, got {path.name!r}")
        if suffix == ".parquet":
            try:
                import pyarrow  # noqa: F401
            except ImportError:
                raise UnsamplingError("writing .parquet needs pyarrow (pip install pyarrow); or use a .csv path") from None
        self.path, self.parquet = path, suffix == ".parquet"
        path.parent.mkdir(parents=True, exist_ok=True)

    def read(self) -> "pd.DataFrame | None":
        import pandas as pd

        if not self.path.exists() or self.path.stat().st_size == 0:
            return None
        if self.parquet:
            return pd.read_parquet(self.path)
        return pd.read_csv(self.path, keep_default_na=False, na_values=[""],
                           dtype={"positive": str, "negative": str, "edit": str, "normalize": str})

    def finished_keys(self) -> dict[tuple, dict[str, Any]]:
        df = self.read()
        if df is None:
            return {}
        missing = [c for c in PARAMETERS + ("item",) if c not in df.columns]
        if missing:
            raise UnsamplingError(f"{self.path} is not a sweep table (no columns {missing}); choose another path")
        out: dict[tuple, dict[str, Any]] = {}
        for rec in df.to_dict("records"):
            for p in ("positive", "negative", "edit"):
                v = rec[p]
                rec[p] = "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)
            out[_row_key(rec)] = rec
        return out

    def _csv_header(self) -> list[str]:
        import csv

        with open(self.path, encoding="utf-8", newline="") as f:
            return next(csv.reader(f), [])

    def append(self, rows: list[dict[str, Any]]) -> None:
        import pandas as pd

        new = pd.DataFrame(rows)
        exists = self.path.exists() and self.path.stat().st_size > 0
        if self.parquet or (exists and self._csv_header() != list(new.columns)):
            old = self.read()
            table = new if old is None else pd.concat([old, new], ignore_index=True)
            tmp = self.path.with_name(self.path.name + ".tmp")
            if self.parquet:
                table.to_parquet(tmp, index=False)
            else:
                table.to_csv(tmp, index=False)
            os.replace(tmp, self.path)  # atomic: an interruption leaves the old or the new table
            return
        with open(self.path, "a", encoding="utf-8", newline="") as f:
            new.to_csv(f, index=False, header=not exists)
            f.flush()
            os.fsync(f.fileno())
