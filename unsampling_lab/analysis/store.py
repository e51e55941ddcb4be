"""The results store of a sweep: one SQLite file, safe to interrupt and to share between processes.

A row is one (setting, batch item). Its key is a SHA-256 over everything that changes its numbers:

    key(row)   = H(group key, the row's own parameters, item)
    key(group) = H(model fingerprint, input fingerprint, the inversion's parameters)

and its metrics are stored per metric set under (key, metric set), so a run asking for more metric
sets computes only the missing ones and a run with another model, other latents or other parameters
never finds a row of a different run. Every write is one transaction (`BEGIN IMMEDIATE` ... `COMMIT`):
a process killed mid-write leaves the store as it was before that group, never a partial row. The
file runs in WAL mode with a busy timeout, so several processes may write one store at once; the
UNIQUE keys (`INSERT OR IGNORE`) make a row that two of them computed appear once. Values always go
through SQL parameters; metric columns are JSON, so no SQL is ever built from data.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
import time
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..errors import UnsamplingError

if TYPE_CHECKING:
    import pandas as pd

#: Bump when a stored number would change meaning (a metric redefined); old rows are then not reused.
STORE_FORMAT = 1
BUSY_TIMEOUT_MS = 120_000

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS rows (
        key TEXT PRIMARY KEY,      -- H(group, row parameters, item)
        grp TEXT NOT NULL,         -- H(model, inputs, inversion parameters)
        model TEXT NOT NULL,       -- model fingerprint
        inputs TEXT NOT NULL,      -- input fingerprint
        params TEXT NOT NULL,      -- JSON: the row's parameter columns
        accounting TEXT NOT NULL,  -- JSON: nfe, nfe_naive, seconds of the run that computed it
        created REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS rows_grp ON rows (grp)",
    "CREATE INDEX IF NOT EXISTS rows_run ON rows (model, inputs)",
    """CREATE TABLE IF NOT EXISTS metrics (
        key TEXT NOT NULL REFERENCES rows (key),
        metric_set TEXT NOT NULL,
        vals TEXT NOT NULL,        -- JSON: {column: value}
        PRIMARY KEY (key, metric_set)
    )""",
)


@dataclass
class StoredRow:
    """One row as the store keeps it: parameters, metric values per metric set, and its cost."""

    key: str
    group: str
    params: dict[str, Any]
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)  # metric set -> {column: value}
    accounting: dict[str, Any] = field(default_factory=dict)

    def flat(self, metric_sets: Iterable[str] | None = None) -> dict[str, Any]:
        """The row as a table row: parameters, then the metric columns of `metric_sets` (default: all)."""
        out = dict(self.params)
        for name in sorted(self.metrics) if metric_sets is None else metric_sets:
            out.update(self.metrics.get(name, {}))
        out.update(self.accounting)
        return out


class ResultStore:
    """A sweep's rows in one SQLite file (see the module docstring for the guarantees)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            self._db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_MS)}")  # an int constant, not data
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: a commit survives a killed process
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, STORE_FORMAT):
                raise UnsamplingError(f"{self.path} is a results store of format {version}, this version writes "
                                      f"format {STORE_FORMAT}; use another path or the unsampling_lab that wrote it")
            with self._transaction():
                for statement in _SCHEMA:
                    self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {int(STORE_FORMAT)}")
        except sqlite3.DatabaseError as e:
            raise UnsamplingError(f"{self.path} is not a results store ({e}); choose another path, ending in .sqlite") from None

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "ResultStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- reading -------------------------------------------------------------------------------
    def rows_of_run(self, model: str, inputs: str) -> dict[str, StoredRow]:
        """Every stored row of this model and these inputs, by key."""
        return self._select("WHERE r.model = ? AND r.inputs = ?", (model, inputs))

    def rows_of_group(self, group: str) -> dict[str, StoredRow]:
        """The stored rows of one inversion group, by key (read just before computing it)."""
        return self._select("WHERE r.grp = ?", (group,))

    def _select(self, where: str, args: tuple[Any, ...]) -> dict[str, StoredRow]:
        query = ("SELECT r.key, r.grp, r.params, r.accounting, m.metric_set, m.vals "
                 "FROM rows r LEFT JOIN metrics m ON m.key = r.key ") + where  # `where` is one of two constants
        out: dict[str, StoredRow] = {}
        for key, grp, params, accounting, metric_set, vals in self._db.execute(query, args):
            row = out.get(key)
            if row is None:
                row = out[key] = StoredRow(key, grp, json.loads(params), accounting=json.loads(accounting))
            if metric_set is not None:
                row.metrics[metric_set] = json.loads(vals)
        return out

    def frame(self) -> "pd.DataFrame":
        """Every row in the store (all models and inputs), with the model and input fingerprints."""
        import pandas as pd

        records = []
        query = ("SELECT r.key, r.grp, r.model, r.inputs, r.params, r.accounting, m.metric_set, m.vals "
                 "FROM rows r LEFT JOIN metrics m ON m.key = r.key ORDER BY r.rowid")
        by_key: dict[str, dict[str, Any]] = {}
        for key, _grp, model, inputs, params, accounting, _set, vals in self._db.execute(query):
            rec = by_key.get(key)
            if rec is None:
                rec = by_key[key] = {**json.loads(params), **json.loads(accounting), "model": model, "inputs": inputs}
                records.append(rec)
            if vals is not None:
                rec.update(json.loads(vals))
        return pd.DataFrame(records)

    # -- writing -------------------------------------------------------------------------------
    def write(self, rows: Sequence[StoredRow], *, model: str, inputs: str) -> None:
        """Add `rows` (one group's, with their metric sets) in ONE transaction: all of them or none.

        A row or metric set already present (another process finished it first) is kept as it is.
        """
        now = time.time()
        with self._transaction():
            self._db.executemany(
                "INSERT OR IGNORE INTO rows (key, grp, model, inputs, params, accounting, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(r.key, r.group, model, inputs, _json(r.params), _json(r.accounting), now) for r in rows])
            self._db.executemany(
                "INSERT OR IGNORE INTO metrics (key, metric_set, vals) VALUES (?, ?, ?)",
                [(r.key, name, _json(vals)) for r in rows for name, vals in r.metrics.items()])

    def _transaction(self) -> "_Transaction":
        return _Transaction(self._db)


class _Transaction:
    """BEGIN IMMEDIATE (take the write lock now, waiting up to the busy timeout) ... COMMIT or ROLLBACK."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=_plain)


def _plain(value: Any) -> Any:
    if isinstance(value, Tensor) and value.numel() == 1:
        return value.item()
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in a results row")


# -- exports -----------------------------------------------------------------------------------------
def export_table(df: "pd.DataFrame", path: Path) -> None:
    """Write `df` to `path` (.csv or .parquet) atomically: a reader sees the old file or the new one."""
    import os

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # one per process: concurrent exports never share it
    try:
        if path.suffix.lower() == ".parquet":
            df.to_parquet(tmp, index=False)
        else:
            df.to_csv(tmp, index=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_results(path: str | Path) -> "pd.DataFrame":
    """The results at `path`: every row of a .sqlite store, or the table a sweep exported (.csv, .parquet)."""
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise UnsamplingError(f"no results at {path}; run ul.sweep(..., path={str(path)!r}) first")
    suffix = path.suffix.lower()
    if suffix == ".sqlite":
        with ResultStore(path) as store:
            return store.frame()
    if suffix == ".parquet":
        return pd.read_parquet(path)
    if suffix == ".csv":
        return pd.read_csv(path, keep_default_na=False, na_values=[""],
                           dtype={"positive": str, "negative": str, "edit": str, "normalize": str})
    raise UnsamplingError(f"results path must end in .sqlite, .csv or .parquet, got {path.name!r}")


# -- fingerprints ------------------------------------------------------------------------------------
def digest(*parts: Any) -> str:
    """SHA-256 (hex) of JSON-encoded parts: the key of a group or a row."""
    return hashlib.sha256(_json(list(parts)).encode()).hexdigest()


def tensor_digest(*tensors: Tensor | None) -> str:
    """SHA-256 over the tensors' dtype, shape and every byte (the input latents, masks and images)."""
    h = hashlib.sha256()
    for t in tensors:
        if t is None:
            h.update(b"none")
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


#: The parts of a model that make its numbers (diffusers components and the adapter's data).
MODEL_PARTS: tuple[str, ...] = ("unet", "transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3",
                                "tokenizer", "tokenizer_2", "tokenizer_3", "model_sampling", "latent_format",
                                "dtype", "device")


def model_fingerprint(model: Any) -> str:
    """A hash of what makes a model's numbers: its networks' configs and every byte of their weights,
    tokenizers, sigma table.

    Every weight byte counts (a pruned channel, one edited weight), so hashing is the cost: SHA-256 of
    Stable Diffusion 1.5's UNet in float16 (860M values, 1.7 GB) is measured in the README. It is paid
    once per loaded network: each module's digest is kept beside it (`_MODULE_DIGESTS`) with a stamp of
    its tensors (storage address and torch's version counter, which every in-place write bumps), so
    a second sweep on the same model hashes nothing and an in-place edit is hashed again. The parts
    are read by name (MODEL_PARTS), so a wrapper that forwards attributes has its model's fingerprint;
    a model with none of the networks (an exact toy) is hashed by its class and public attributes.
    The device type is part of it (CPU and CUDA kernels differ in the last bits).
    """
    h = hashlib.sha256()
    h.update(f"format {STORE_FORMAT}".encode())
    parts = {name: getattr(model, name, None) for name in MODEL_PARTS}
    if not any(isinstance(v, torch.nn.Module) for v in parts.values()):
        h.update(f"{type(model).__module__}.{type(model).__qualname__}".encode())
        parts.update((k, v) for k, v in getattr(model, "__dict__", {}).items() if not k.startswith("_"))
    for name, value in parts.items():
        _feed(h, name, value, depth=0)
    return h.hexdigest()


def _feed(h: Any, name: str, value: Any, *, depth: int) -> None:
    h.update(f"|{name}:".encode())
    if value is None or isinstance(value, (bool, int, float, str)):
        h.update(repr(value).encode())
    elif isinstance(value, torch.device):
        h.update(value.type.encode())
    elif isinstance(value, torch.dtype):
        h.update(str(value).encode())
    elif isinstance(value, Tensor):
        _feed_tensor(h, value)
    elif isinstance(value, torch.nn.Module):
        h.update(module_digest(value).encode())
    elif hasattr(value, "get_vocab"):  # a tokenizer
        h.update(_json_config(sorted(value.get_vocab().items())).encode())
        h.update(repr(getattr(value, "model_max_length", None)).encode())
    elif depth > 3:
        h.update(type(value).__qualname__.encode())
    elif is_dataclass(value):
        h.update(type(value).__qualname__.encode())
        for f in fields(value):
            _feed(h, f.name, getattr(value, f.name), depth=depth + 1)
    elif isinstance(value, Mapping):
        for key in sorted(value, key=str):
            _feed(h, str(key), value[key], depth=depth + 1)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _feed(h, str(i), v, depth=depth + 1)
    elif hasattr(value, "__dict__"):
        h.update(type(value).__qualname__.encode())
        for key, v in sorted(vars(value).items()):
            if not key.startswith("_"):
                _feed(h, key, v, depth=depth + 1)
    else:
        h.update(type(value).__qualname__.encode())


def _feed_tensor(h: Any, t: Tensor) -> None:
    """dtype, shape and every byte of `t` (copied to the CPU one tensor at a time)."""
    t = t.detach()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    if t.numel():
        h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())


#: module -> (stamp of its tensors, digest): the weights are hashed once per loaded network
_MODULE_DIGESTS: "weakref.WeakKeyDictionary[torch.nn.Module, tuple[Any, str]]" = weakref.WeakKeyDictionary()


def module_digest(module: torch.nn.Module) -> str:
    """SHA-256 of a network: its class, config and every tensor of its state_dict, by name (cached, see
    `model_fingerprint`)."""
    state = module.state_dict(keep_vars=True)
    stamp = _stamp(state)
    cached = _MODULE_DIGESTS.get(module)
    if stamp is not None and cached is not None and cached[0] == stamp:
        return cached[1]
    h = hashlib.sha256()
    config = getattr(module, "config", None)
    if config is not None:
        h.update(_json_config(config).encode())
    h.update(type(module).__qualname__.encode())
    for key, t in state.items():
        h.update(key.encode())
        _feed_tensor(h, t)
    digest_ = h.hexdigest()
    if stamp is not None:
        _MODULE_DIGESTS[module] = (stamp, digest_)
    return digest_


def _stamp(state: Mapping[str, Tensor]) -> tuple[Any, ...] | None:
    """What changes when a tensor of `state` is written in place or replaced: (name, the tensor's identity,
    storage address, version counter) per tensor; None where torch keeps no version (inference tensors)."""
    try:
        return tuple((k, id(t), t.data_ptr(), t._version, t.dtype, tuple(t.shape)) for k, t in state.items())
    except RuntimeError:
        return None


_CONFIG_METADATA = frozenset({"architectures", "dtype", "torch_dtype", "transformers_version"})  # dtype: in the tensors


def _json_config(config: Any) -> str:
    """A config as sorted JSON, without its private entries (diffusers' `_name_or_path`, `_diffusers_version`,
    `_use_default_values`) and save-time metadata: where it came from, not what it computes."""
    if hasattr(config, "to_dict") and not isinstance(config, Mapping):  # a transformers config
        config = config.to_dict()
    if isinstance(config, Mapping):
        config = {k: v for k, v in config.items() if not str(k).startswith("_") and k not in _CONFIG_METADATA}
    return json.dumps(config, sort_keys=True, default=str)

