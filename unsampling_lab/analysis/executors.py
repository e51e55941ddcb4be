"""Running work on a `concurrent.futures.Executor`: a Dask cluster, a process pool, or an adapter.

    client = ul.local_cluster(2)                                   # or distributed.Client("tcp://host:8786")
    df = ul.sweep(ul.ModelSource("path/to/pipeline", device="cuda"), latents, grid, executor=client)

The library never imports dask: a Dask `Client` is recognised by its `get_executor` method and
used through the Executor it returns (with Dask's own `retries`). A worker receives a model by its
*source* (`ModelSource`: path or hub id, device, dtype, thread count), loads it on first use and keeps
it for every later task (`cached_model`); a loaded model object is never pickled to workers.
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import UnsamplingError, check_int

if TYPE_CHECKING:
    from ..models.base import DiffusionModel

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class ModelSource:
    """How a worker loads the model: `load_model(path, device=..., dtype=...)` after `torch.set_num_threads(threads)`.

    path: a diffusers pipeline folder or a hub id in the local cache (None: the bundled model);
    dtype: a torch dtype name ("float16", "bfloat16", "float32") or None for the checkpoint's own;
    threads: torch CPU threads in the worker (None: leave torch's setting).
    """

    path: str | None = None
    device: str = "cpu"
    dtype: str | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.path is not None and not isinstance(self.path, str):
            object.__setattr__(self, "path", str(self.path))  # a pathlib.Path is fine too
        if self.threads is not None:
            check_int("ModelSource threads", self.threads, minimum=1)

    def load(self) -> "DiffusionModel":
        import torch

        from ..models.loading import load_model

        if self.threads is not None:
            torch.set_num_threads(self.threads)
        dtype = None
        if self.dtype is not None:
            dtype = getattr(torch, self.dtype, None)
            if not isinstance(dtype, torch.dtype):
                raise UnsamplingError(f"ModelSource dtype {self.dtype!r} is not a torch dtype; use e.g. 'float16'")
        return load_model(self.path, device=self.device, dtype=dtype)


_MODELS: dict[ModelSource, "DiffusionModel"] = {}


def cached_model(source: ModelSource) -> "DiffusionModel":
    """The model of `source`, loaded once per process (each worker keeps its own)."""
    model = _MODELS.get(source)
    if model is None:
        model = _MODELS[source] = source.load()
    return model


def is_dask_client(executor: Any) -> bool:
    """A Dask `Client` (duck-typed: it has `get_executor` and is no Executor itself)."""
    return hasattr(executor, "get_executor") and not isinstance(executor, cf.Executor)


def check_executor(executor: Any) -> None:
    if not (isinstance(executor, cf.Executor) or is_dask_client(executor)):
        raise UnsamplingError(
            f"executor must be a concurrent.futures.Executor (ProcessPoolExecutor, a Dask client's get_executor(), an "
            f"adapter) or a Dask Client, got {type(executor).__name__}")


@dataclass
class Failure:
    """A task that failed on its last attempt."""

    task: Any
    error: BaseException


def run_all(executor: Any, fn: Callable[..., R], tasks: Sequence[T], *args: Any,
            retries: int = 2) -> Iterator[tuple[T, R | Failure]]:
    """`fn(task, *args)` for every task on `executor`; yields (task, result or Failure) as tasks finish.

    A failed task is submitted again up to `retries` times (for a Dask Client by Dask itself, which
    also reruns the tasks of a worker that died). Pending tasks are cancelled if the consumer stops
    (an exception, Ctrl-C).
    """
    check_executor(executor)
    dask = is_dask_client(executor)
    pool = executor.get_executor(retries=retries, pure=False) if dask else executor
    attempts: dict[cf.Future, tuple[int, T]] = {}
    for i, task in enumerate(tasks):
        attempts[pool.submit(fn, task, *args)] = (0, task)
    pending = set(attempts)
    try:
        while pending:
            finished, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            for future in finished:
                tries, task = attempts.pop(future)
                error = future.exception()
                if error is None:
                    yield task, future.result()
                elif not dask and tries < retries and not isinstance(error, cf.process.BrokenProcessPool):
                    again = pool.submit(fn, task, *args)
                    attempts[again] = (tries + 1, task)
                    pending.add(again)
                else:
                    yield task, Failure(task, error)
    finally:
        for future in pending:
            future.cancel()


def local_cluster(n_workers: int = 2, *, threads_per_worker: int = 1, memory_limit: str | None = None) -> Any:
    """A Dask `Client` on a new LocalCluster of `n_workers` processes, listening on 127.0.0.1 only.

    Needs the `[dask]` extra (distributed; bokeh for the dashboard, at `client.dashboard_link`: 127.0.0.1
    on a free port, so two clusters never collide on Dask's default 8787). Unlike Dask's default, the
    workers do not get MALLOC_TRIM_THRESHOLD_=65536: on CPU workers running torch it cost 15-30%
    more CPU than a serial run for the same work. Nor do they run Dask's statistical profiler (a stack
    sample every 10 ms, holding the GIL): on the bundled model a sweep's task took 0.85-1.25 s with it
    and 0.55-0.88 s without, against 0.65-0.8 s in the calling process (the dashboard's profile page
    stays empty). The workers ignore SIGINT: Ctrl-C stops a run from the calling process, which keeps its finished
    rows. Close it with `close_cluster(client)`.
    """
    try:
        import dask
        from distributed import Client, LocalCluster
    except ImportError:
        raise UnsamplingError("a local cluster needs Dask: pip install 'unsampling_lab[dask]'") from None
    check_int("n_workers", n_workers, minimum=1)
    check_int("threads_per_worker", threads_per_worker, minimum=1)  # 0 threads: a cluster that never runs a task
    options: dict[str, Any] = {}
    if memory_limit is not None:
        from dask.utils import parse_bytes

        try:
            if memory_limit != "auto":
                parse_bytes(memory_limit)
        except (ValueError, TypeError):
            raise UnsamplingError(f"memory_limit must be a size per worker such as '4GB', or 'auto', got "
                                  f"{memory_limit!r}") from None
        options["memory_limit"] = memory_limit
    # None unsets one of Dask's pre-spawn variables (distributed.nanny._get_env_variables)
    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}), _sigint_ignored():
        cluster = LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker, processes=True,
                               host="127.0.0.1", dashboard_address="127.0.0.1:0",
                               config={"distributed.worker.profile.enabled": False}, **options)
    return Client(cluster)


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored while the workers start, so they inherit it (Python keeps an inherited SIG_IGN): Ctrl-C in a
    terminal reaches the whole process group, and each worker printed a KeyboardInterrupt traceback while the
    calling process, which owns the run, was already stopping it and saving its rows."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _quiet_cancelled_tasks() -> None:
    import logging

    logging.getLogger("distributed.worker.state_machine").setLevel(logging.ERROR)


#: Seconds a local cluster's workers get to exit once asked (Dask's own close gives them 4 s, then kills them).
WORKER_EXIT_TIMEOUT_S = 30


def close_cluster(client: Any, *, timeout: float = WORKER_EXIT_TIMEOUT_S) -> None:
    """Close a `local_cluster` client: the client first (no task goes to a closing cluster), then each worker,
    given `timeout` seconds to exit, then the cluster.

    Dask's `cluster.close()` gives a worker 4 s to exit and then kills it with a "Worker process still alive
    after 4.0 seconds, killing" warning; a worker that has torch and a model loaded, on a loaded 2-core
    machine, took about that long to finish its interpreter, so a successful run ended in warnings. A worker still
    alive after `timeout` is killed, with Dask's warning: then it is worth one.
    """
    import asyncio

    if not is_dask_client(client):
        raise UnsamplingError(f"close_cluster takes the Dask Client of ul.local_cluster(), got {type(client).__name__}")
    cluster = getattr(client, "cluster", None)
    if cluster is not None:
        # tasks still running (a Ctrl-C, an error) are cancelled by the close: each worker then logs "Async instruction
        # ... ended with CancelledError", the cancel it was asked for; said only past this point, on workers ending
        client.run(_quiet_cancelled_tasks, on_error="ignore")  # a logging tweak: never a reason to fail
    client.close()
    if cluster is None:
        return

    async def close_workers() -> None:
        await asyncio.gather(*(w.close(timeout=timeout) for w in list(cluster.workers.values())))

    try:
        cluster.sync(close_workers)
    finally:
        cluster.close()
