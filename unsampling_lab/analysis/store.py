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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UnsamplingError, user_path
from .fingerprints import (  # noqa: F401 (re-exported)
    MODEL_PARTS, STORE_FORMAT, _json, digest, model_fingerprint, module_digest, tensor_digest,
)

if TYPE_CHECKING:
    import pandas as pd

BUSY_TIMEOUT_MS = 120_000
#: SQLite's application_id of a results store ("ULab"): a database without it is someone else's
APPLICATION_ID = 0x554C6162
_OWN_TABLES = frozenset({"rows", "metrics", "meta"})

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
    """CREATE TABLE IF NOT EXISTS meta (
        name TEXT PRIMARY KEY,     -- e.g. 'export:/abs/path/results.csv'
        value TEXT NOT NULL        -- e.g. the SHA-256 of the file this store last wrote there
    )""",
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
    """A sweep's rows in one SQLite file (see the module docstring for the guarantees).

    The store opens only files it owns: a new or empty file (which it then marks with its
    application_id), or a store it wrote. A folder, another application's SQLite database or a file
    that is not SQLite is refused with a message saying which, and nothing is written into it.
    readonly=True (what `load_results` uses) opens for reading only and never writes, so a store on a
    read-only disk or shared read-only can be read. path=None: a store in memory, gone when closed (what a
    sweep without a path keeps its rows in, so the table is always read back from a store).
    """

    def __init__(self, path: str | Path | None, *, readonly: bool = False) -> None:
        self.path = user_path(path) if path is not None else None
        self.readonly = readonly
        if self.path is None:
            self._db = sqlite3.connect(":memory:", isolation_level=None)
            with self._transaction():
                for statement in _SCHEMA:
                    self._db.execute(statement)
            return
        _check_store_path(self.path, readonly=readonly)
        if not readonly:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                blocking = next((p for p in self.path.parents if p.exists() and not p.is_dir()), None)
                why = f"{blocking} is a file, not a folder" if blocking is not None else e.strerror or e
                raise UnsamplingError(f"cannot create the folder of the results store {self.path}: {why}; choose a "
                                      "writable path") from None
        try:
            self._db = self._connect()
            _check_owned(self._db, self.path)
            if not readonly:
                self._db.execute("PRAGMA journal_mode = WAL")
                self._db.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: a commit survives a killed process
                with self._transaction():
                    for statement in _SCHEMA:
                        self._db.execute(statement)
                    self._db.execute(f"PRAGMA user_version = {int(STORE_FORMAT)}")
                    self._db.execute(f"PRAGMA application_id = {int(APPLICATION_ID)}")
        except sqlite3.DatabaseError as e:
            raise _store_error(self.path, e, readonly=readonly) from None
        except OSError as e:
            raise UnsamplingError(f"cannot open the results store {self.path}: {e.strerror or e}; check the permissions "
                                  f"of it and its folder{'' if readonly else ' (a sweep writes there)'}") from None

    def _connect(self) -> sqlite3.Connection:
        if self.readonly:  # mode=ro: never creates or writes; immutable=1 where even the WAL index cannot be opened
            uri = self.path.resolve().as_uri()
            try:
                db = sqlite3.connect(uri + "?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
                db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            except sqlite3.OperationalError:
                db = sqlite3.connect(uri + "?immutable=1", uri=True, isolation_level=None)
        else:
            db = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_MS)}")  # an int constant, not data
        return db

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
                row = out[key] = StoredRow(key, grp, _loads(params, self.path), accounting=_loads(accounting, self.path))
            if metric_set is not None:
                row.metrics[metric_set] = _loads(vals, self.path)
        return out

    def frame(self) -> "pd.DataFrame":
        """Every row in the store (all models and inputs), in the order written: its parameter columns, its
        metric columns, its cost, then the model and input fingerprints."""
        import pandas as pd

        query = ("SELECT r.key, r.model, r.inputs, r.params, r.accounting, m.metric_set, m.vals "
                 "FROM rows r LEFT JOIN metrics m ON m.key = r.key ORDER BY r.rowid, m.metric_set")
        by_key: dict[str, tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = {}
        for key, model, inputs, params, accounting, _set, vals in self._db.execute(query):
            rec = by_key.get(key)
            if rec is None:
                rec = by_key[key] = (_loads(params, self.path), {}, {**_loads(accounting, self.path), "model": model,
                                                                      "inputs": inputs})
            if vals is not None:
                rec[1].update(_loads(vals, self.path))
        return pd.DataFrame([{**p, **m, **a} for p, m, a in by_key.values()])

    def export(self, path: str | Path) -> Path:
        """Write `frame()` to `path` (.csv or .parquet), atomically, only over a file this store wrote there.

        The file's SHA-256 is kept in the store; an existing file with other contents (another tool's
        table, or this export edited by hand) is refused, never replaced.
        """
        path = user_path(path)
        try:
            with self._transaction():  # the write lock: concurrent exports check and record one at a time
                name = self._owned_export(path)
                export_table(self.frame(), path)
                self._db.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", (name, _file_sha256(path)))
        except OSError as e:  # a read-only folder or file, a full disk: the rows are safe in the store
            raise UnsamplingError(f"cannot write the export {path}: {e.strerror or e}; its rows are in the results "
                                  f"store {self.path}: check the permissions of {path.parent}, or choose another "
                                  "path") from None
        return path

    def check_export(self, path: str | Path) -> None:
        """Refuse now (before a sweep's work) an export path holding a file this store did not write there."""
        with self._transaction():  # under the write lock, so another process's export is seen whole or not at all
            self._owned_export(user_path(path))

    def _owned_export(self, path: Path) -> str:
        name = f"export:{path.resolve()}"
        row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        if path.is_dir():
            raise UnsamplingError(f"{path} is a folder; the export needs a file path ending in .csv or .parquet")
        if path.exists() and (row is None or _file_sha256(path) != row[0]):
            raise UnsamplingError(
                f"{path} exists and is not an export of the results store {self.path}"
                f"{' (it was changed since)' if row is not None else ''}; unsampling_lab does not replace a file it "
                "did not write: choose another path, or move that file away")
        return name

    # -- writing -------------------------------------------------------------------------------
    def write(self, rows: Sequence[StoredRow], *, model: str, inputs: str) -> None:
        """Add `rows` (one group's, with their metric sets) in ONE transaction: all of them or none.

        A row or metric set already present (another process finished it first) is kept as it is.
        """
        if self.readonly:
            raise UnsamplingError(f"the results store {self.path} was opened for reading only")
        now = time.time()
        with self._transaction():
            self._db.executemany(
                "INSERT OR IGNORE INTO rows (key, grp, model, inputs, params, accounting, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(r.key, r.group, model, inputs, _json(r.params, ordered=True), _json(r.accounting, ordered=True), now)
                 for r in rows])
            self._db.executemany(
                "INSERT OR IGNORE INTO metrics (key, metric_set, vals) VALUES (?, ?, ?)",
                [(r.key, name, _json(vals, ordered=True)) for r in rows for name, vals in r.metrics.items()])

    def _transaction(self) -> "_Transaction":
        return _Transaction(self._db)


def _check_store_path(path: Path, *, readonly: bool) -> None:
    """Refuse, before SQLite touches it, a path that cannot be a results store (saying why)."""
    import os

    if path.is_dir():
        raise UnsamplingError(f"{path} is a folder, not a results store; pass a file path ending in .sqlite "
                              f"(e.g. {path / 'results.sqlite'})")
    if not path.exists():
        if readonly:
            raise UnsamplingError(f"no results at {path}; run ul.sweep(..., path={str(path)!r}) first")
        folder = next((p for p in path.parents if p.exists()), Path("."))
        if not os.access(folder, os.W_OK):
            raise UnsamplingError(f"cannot create the results store {path}: the folder {folder} is read-only; "
                                  "choose a writable path")
        return
    if not path.is_file():
        raise UnsamplingError(f"{path} is not a regular file, so not a results store; choose a path ending in .sqlite")
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:  # no read permission: say so, not "not a results store"
        raise UnsamplingError(f"cannot read the results store {path}: {e.strerror or e}; check its permissions") from None
    if head and head != b"SQLite format 3\x00":
        raise UnsamplingError(f"{path} is not an SQLite file, so not a results store (unsampling_lab does not write "
                              "into it); choose another path ending in .sqlite")
    if not readonly and not os.access(path, os.W_OK):
        raise UnsamplingError(f"the results store {path} is read-only; a sweep adds its rows there: choose a writable "
                              "path (ul.load_results reads a read-only store)")


def _check_owned(db: sqlite3.Connection, path: Path) -> None:
    """Accept a store this package wrote (its application_id, or a format-1 store's tables) or an empty
    database; refuse another application's database without writing to it."""
    tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
              if not name.startswith("sqlite_")}
    app = db.execute("PRAGMA application_id").fetchone()[0]
    version = db.execute("PRAGMA user_version").fetchone()[0]
    ours = app == APPLICATION_ID or (app == 0 and {"rows", "metrics"} <= tables <= _OWN_TABLES)
    if not ours and (tables or app or version):
        listed = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
        raise UnsamplingError(f"{path} is an SQLite database of another application ({'tables: ' + listed if tables else f'application_id {app}'}), "
                              "not a results store; unsampling_lab does not write into it: choose another path ending in .sqlite")
    if version not in (0, STORE_FORMAT):
        raise UnsamplingError(f"{path} is a results store of format {version}, this version writes "
                              f"format {STORE_FORMAT}; use another path or the unsampling_lab that wrote it")


def _store_error(path: Path, e: sqlite3.DatabaseError, *, readonly: bool) -> UnsamplingError:
    text = str(e)
    if "readonly" in text or "read-only" in text:
        return UnsamplingError(f"the results store {path} is read-only ({text}); a sweep adds its rows there: choose "
                               "a writable path (ul.load_results reads a read-only store)")
    if "not a database" in text:
        return UnsamplingError(f"{path} is not an SQLite file, so not a results store ({text}); choose another path "
                               "ending in .sqlite")
    if "unable to open" in text:
        return UnsamplingError(f"cannot open the results store {path} ({text}); check that the path and its folder "
                               f"exist and are {'readable' if readonly else 'writable'}")
    return UnsamplingError(f"{path} could not be read as a results store ({e.__class__.__name__}: {text}); it may be "
                           "damaged: choose another path ending in .sqlite")


def _loads(text: str, path: Path) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise UnsamplingError(f"the results store {path} holds a damaged cell ({text[:40]!r} is not a JSON object); "
                              "move the store away and run the sweep again")
    return value


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class _Transaction:
    """BEGIN IMMEDIATE (take the write lock now, waiting up to the busy timeout) ... COMMIT or ROLLBACK."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")


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
    """The results at `path`: every row of a .sqlite store (opened read-only), or an exported table.

    A .csv export keeps no types: an empty cell is an empty prompt or a missing number. So a .csv
    whose store is beside it (same name, .sqlite) and holds exactly what the file holds is read from
    the store (equal to it, "" prompts and all); a .csv alone is read with the prompt and name columns
    as text ("" stays "") and empty cells elsewhere as NaN, which writes back to the same bytes.
    """
    import pandas as pd

    path = user_path(path)
    if path.is_dir():
        raise UnsamplingError(f"{path} is a folder; load_results takes a results file (.sqlite, .csv or .parquet)")
    if not path.exists():
        raise UnsamplingError(f"no results at {path}; run ul.sweep(..., path={str(path)!r}) first")
    suffix = path.suffix.lower()
    if suffix == ".sqlite":
        with ResultStore(path, readonly=True) as store:
            return store.frame()
    if suffix == ".parquet":
        return pd.read_parquet(path)
    if suffix == ".csv":
        beside = path.with_suffix(".sqlite")
        if beside.is_file():
            try:
                with ResultStore(beside, readonly=True) as store:
                    table = store.frame()
            except UnsamplingError:
                table = None
            try:
                same = table is not None and table.to_csv(index=False).encode() == path.read_bytes()
            except OSError:  # unreadable: read_csv_table says so
                same = False
            if same:
                return table
        return read_csv_table(path)
    raise UnsamplingError(f"results path must end in .sqlite, .csv or .parquet, got {path.name!r}")


#: Columns of a results table that hold text, where an empty cell is the empty string (a prompt), not NaN.
TEXT_COLUMNS = ("positive", "negative", "edit", "normalize", "sampler_name", "scheduler", "method", "method_options",
                "control", "control_options",
                "model", "inputs", "file")


def read_csv_table(path: Path) -> "pd.DataFrame":
    """A results .csv: TEXT_COLUMNS as str ("" stays ""), the others parsed, empty cells NaN."""
    import pandas as pd

    try:
        header = list(pd.read_csv(path, nrows=0).columns)
        text = [c for c in header if c in TEXT_COLUMNS]
        return pd.read_csv(path, keep_default_na=False, na_values={c: [""] for c in header if c not in text},
                           dtype={c: str for c in text})
    except (ValueError, OSError) as e:  # pandas' parser errors are ValueErrors
        raise UnsamplingError(f"cannot read {path} as a results table ({e.__class__.__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from None
