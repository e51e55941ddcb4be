"""Where a sweep's groups run: here, one pack after another, or as tasks on an executor.

Both runners take the groups still to compute and yield `SettingResult`s as settings finish; only the
calling process writes the store. A runner also gives the model's fingerprint (on a worker, where the
model lives) and, at the end, raises for the groups that failed after their retries.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from torch import Tensor

from ..errors import UnsamplingError, check_int
from . import running
from .evaluate import References, references
from .executors import Failure, ModelSource, cached_model, run_all
from .grid import InversionGroup, pack, pack_cost
from .running import SettingResult, samples_of
from .store import model_fingerprint, tensor_digest

if TYPE_CHECKING:
    from ..models.base import DiffusionModel


def runner(model: Any, executor: Any, *, retries: int) -> "InProcess | OnExecutor":
    """The runner for `sweep(model, executor=...)`: in this process without an executor."""
    check_int("retries", retries, minimum=0)  # without an executor too: a meaningless value is refused, not ignored
    if executor is None:
        return InProcess(cached_model(model) if isinstance(model, ModelSource) else model)
    if not isinstance(model, ModelSource):
        raise UnsamplingError(
            f"with an executor, give the model by its source so that each worker loads it once: "
            f"ul.ModelSource('path/or/hub-id', device='cuda', dtype='float16', threads=None) instead of a loaded "
            f"{type(model).__name__} (loaded models are not shipped to workers)")
    return OnExecutor(model, executor, retries)


class InProcess:
    """Groups run in this process, one pack after another."""

    def __init__(self, model: "DiffusionModel") -> None:
        self.model = model

    def fingerprint(self) -> str:
        return model_fingerprint(self.model)

    def run(self, latents: Any, images: Tensor | None, todo: Sequence[InversionGroup], chosen: Sequence[str], *,
            max_batch: int, keep_outputs: bool) -> Iterator[SettingResult]:
        refs = references(self.model, samples_of(latents), images, metrics=chosen)
        for groups in pack(todo, batch=int(samples_of(latents).shape[0]), max_batch=max_batch):
            yield from running.run_groups(self.model, latents, refs, groups, chosen, max_batch=max_batch,
                                          keep_outputs=keep_outputs)

    def raise_failures(self) -> None:
        return None


class OnExecutor:
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
            max_batch: int, keep_outputs: bool) -> Iterator[SettingResult]:
        # longest first: workers take tasks as they free up, so the cheap ones fill the gaps at the end
        # (in grid order a costly last task left one of 2 workers idle for ~1/4 of the run)
        packs = sorted(pack(todo, batch=int(samples_of(latents).shape[0]), max_batch=max_batch), key=pack_cost,
                       reverse=True)
        self.tasks = len(packs)
        for _, results in run_all(self.executor, _run_task, packs, self.source, latents, images, tuple(chosen),
                                  max_batch, keep_outputs, retries=self.retries):
            if isinstance(results, Failure):
                self.failures.append(results)
                continue
            yield from results

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
    """One task on a worker: the model from its per-process cache, then `running.run_groups`."""
    model = cached_model(source)
    key = (source, tensor_digest(samples_of(latents), images), chosen)
    refs = _REFERENCES.get(key)
    if refs is None:
        _REFERENCES.clear()
        refs = _REFERENCES[key] = references(model, samples_of(latents), images, metrics=chosen)
    return list(running.run_groups(model, latents, refs, groups, chosen, max_batch=max_batch, keep_outputs=keep_outputs))


def _fingerprint_task(source: ModelSource) -> str:
    return model_fingerprint(cached_model(source))
