"""One benchmark runner: invert each case with its source prompt, edit it with its target prompt, score it the
way PIE-Bench does, and keep every row in the SQLite results store (resumable: a rerun computes only what is
missing; a killed run loses at most the chunk in flight).

    result = benchmark(model, "pie-shapes", methods=["unsampler", "npi", "null_text"], controls=["prompt_swap"])
    result.table        # one line per (method, control, direct): paper columns, 95 % intervals, NaN counts, cost
    result.categories   # the same per editing type

The protocol is the standard one (PnP Inversion's Table 1): invert at `inversion_cfg` (1 unless told; null-text
inversion optimises its null embeddings for the edit cfg, as its paper does), then resample the source branch
(the reconstruction) and the target branch (the edit) at `edit_cfg`. `control="prompt_swap"` resamples the
target prompt from the inverted noise; other controls are the editing layer's (`ul.edit`), when present.

Local blend on each case's own words: `blend=["case"]` (a sweep axis like `direct`: `blend=["none", "case"]` runs
both) gives the p2p controls `blend_words` = the case's `blended_words`, one tuple per case, as PnP Inversion's P2P
evaluation does (run_editing_p2p.py passes LocalBlend the annotation's first word for the source prompt and its
second for the target prompt; here each case's words are looked up in both of its prompts, the same wherever the
target word is absent from the source prompt and the source word from the target prompt). A case whose annotation
has no blended words runs without a local blend, as theirs does (they pass no LocalBlend where `blended_word` is
empty; every PIE-shapes case has two words); its row's `blend_words` column is empty. Other blend options come from
`control_options` (`{"p2p": {"blend_threshold": 0.5}}`). The blend is part of the row's key: blend and no-blend
rows are distinct rows of the store and the tables (column `blend`). Their reweighting of the target word
(eq_params, 2x) is not applied here: `control="p2p"` is the word swap, with our step windows.

PnP Inversion's P2P, `p2p="pnp-inversion"`: the settings of control "p2p" run P2P as run_editing_p2p.py runs it
for PIE-Bench's Table 1 (its DDIM / NPI / null-text / Direct Inversion + P2P rows), per case: the refine controller
(`p2p_refine`; their P2PEditor's is_replace_controller defaults to False and that script never sets it, so every
case is refined, equal word counts or not: a swapped word's tokens keep the target's own maps, the aligned ones
take the source's), cross-attention from the source for steps i < int(0.4 n), self-attention for i < int(0.6 n),
the local blend on the case's blended words (blend "case", whatever `blend` says) and the target word (the
second blended word) reweighted x2 in the target's refined map (P2P's AttentionReweight wrapping AttentionRefine,
inside the cross window). A case without blended words runs the refine alone (no LocalBlend, no eq_params, as
theirs). Differences: the blend's mask options stay ours (`control_options`, e.g. blend_norm; P2P normalises by
the maximum, and pools the 16x16 layers' maps), and its words are looked up in both prompts (above); a target word
that is not a word of the target prompt is refused up front, where P2P's get_word_inds finds no token and
reweights nothing. The preset is part of the row's key (column `p2p`) and the tables name it.
"""
from __future__ import annotations

import itertools
import json
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ...errors import UnsamplingError, check_int
from .data import PieCase, load_pie_bench
from .metrics import PIE_METRICS, RATE_METRICS, summarise
from .scoring import RECONSTRUCTION_METRICS, PieScorer, shapes_scores

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["P2P_PRESETS", "BenchResult", "BenchSetting", "benchmark", "library_versions", "markdown_table"]

PROMPT_SWAP = "prompt_swap"
BLENDS: tuple[str, ...] = ("none", "case")  # no local blend; each case's blended words
#: p2p presets: the control's own options; PnP Inversion's evaluation (run_editing_p2p.py), per case
P2P_LABELS: dict[str, str] = {"default": "p2p", "pnp-inversion": "p2p as PnP Inversion (refine, target word x2, "
                                                                 "cross 0.4, self 0.6)"}
P2P_PRESETS: tuple[str, ...] = tuple(P2P_LABELS)
PNP_INVERSION_P2P = dict(cross_steps=0.4, self_steps=0.6)  # run_editing_p2p.py's cross/self_replace_steps
PNP_INVERSION_SCALE = 2.0  # its eq_params values, on the second blended word
SHAPES_METRICS: tuple[str, ...] = ("edit_success", "shape_iou")


@dataclass(frozen=True)
class BenchSetting:
    """Everything that changes a benchmark row's numbers apart from the case and the model."""

    method: str
    control: str
    direct: bool
    steps: int
    inversion_cfg: float
    edit_cfg: float
    sampler_name: str
    scheduler: str
    method_options: tuple[tuple[str, Any], ...] = ()
    control_options: tuple[tuple[str, Any], ...] = ()
    blend: str = "none"
    p2p: str = "default"  # a P2P_PRESETS key (control "p2p" only)

    def params(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in ("method", "control", "direct", "steps", "inversion_cfg", "edit_cfg",
                                             "sampler_name", "scheduler")}
        out["method_options"] = json.dumps(dict(self.method_options), sort_keys=True)
        out["control_options"] = json.dumps(dict(self.control_options), sort_keys=True)
        if self.blend != "none":  # absent for "none": rows stored before the blend axis keep their keys
            out["blend"] = self.blend
        if self.p2p != "default":  # likewise
            out["p2p"] = self.p2p
        return out


@dataclass
class BenchResult:
    """The per-case rows (read back from the store), the summary tables and what was skipped and why."""

    rows: "pd.DataFrame"
    table: "pd.DataFrame"
    categories: "pd.DataFrame"
    skipped: dict[str, str] = field(default_factory=dict)
    run: dict[str, Any] = field(default_factory=dict)


def library_versions() -> dict[str, str]:
    """Versions of the libraries a benchmark number depends on (recorded with every row)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("unsampling_lab", "torch", "diffusers", "transformers", "torchmetrics"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out


def _suite(suite: str | Path | Sequence[PieCase], limit: int | None, keys: Sequence[str] | None = None
           ) -> tuple[str, list[PieCase], dict[str, Any]]:
    if isinstance(suite, (str, Path)) and str(suite) == "pie-shapes":
        from .suite import pie_shapes

        cases, targets = pie_shapes()
        name = "pie-shapes"
    elif isinstance(suite, (str, Path)):
        cases, targets, name = load_pie_bench(suite), {}, str(Path(suite).expanduser().resolve())
    else:
        cases, targets, name = list(suite), {}, "cases"
    if keys is not None:
        wanted = [str(k) for k in keys]
        known = {c.key for c in cases}
        unknown = [k for k in wanted if k not in known]
        if unknown:
            raise UnsamplingError(f"the suite {name!r} has no case {unknown[:3]} (its keys: {sorted(known)[:3]} ...)")
        cases = [c for c in cases if c.key in set(wanted)]
    if limit is not None:
        cases = cases[:check_int("limit", limit, minimum=1)]
    if not cases:
        raise UnsamplingError(f"the suite {name!r} has no case (check the folder or the categories)")
    return name, cases, targets


def _settings(methods: Sequence[str], controls: Sequence[str], direct: Sequence[bool], common: dict[str, Any],
              method_options: Mapping[str, Mapping[str, Any]], control_options: Mapping[str, Mapping[str, Any]],
              blend: Sequence[str] = ("none",), p2p: str = "default") -> list[BenchSetting]:
    from ...errors import check_choice
    from ...inversion import INVERSION_METHODS

    for b in blend:
        check_choice(b, BLENDS, what="blend")
    check_choice(p2p, P2P_PRESETS, what="p2p preset")
    if p2p != "default" and "p2p" not in controls:
        raise UnsamplingError(f"p2p={p2p!r} sets how control 'p2p' runs; add 'p2p' to controls")
    fixed = sorted({*PNP_INVERSION_P2P, "words", "scale", "blend_words"} & set(control_options.get("p2p", {})))
    if p2p == "pnp-inversion" and fixed:
        raise UnsamplingError(f"p2p='pnp-inversion' sets {fixed} per case as PnP Inversion's evaluation does; leave "
                              "them out of control_options['p2p'] (the blend's mask options may stay)")
    for m in methods:
        if m not in INVERSION_METHODS:
            check_choice(m, INVERSION_METHODS, what="inversion method")
    out: list[BenchSetting] = []
    for method, control, d, b in itertools.product(methods, controls, direct, blend):
        preset = p2p if control == "p2p" else "default"
        b = "case" if preset == "pnp-inversion" else b  # their LocalBlend on each case's words, whatever `blend` says
        if d and control == PROMPT_SWAP:
            continue  # Direct Inversion pins the source branch; a prompt swap has no source branch to pin
        if b == "case" and not _blends(control):
            continue  # only the p2p controls have a local blend
        options = dict(control_options.get(control, {}))
        if b == "case" and options.get("blend_words"):
            raise UnsamplingError(f"blend='case' takes each case's blended words; control_options[{control!r}] also "
                                  "gives blend_words: give one or the other")
        setting = BenchSetting(method, control, bool(d), **common,
                               method_options=tuple(sorted(dict(method_options.get(method, {})).items())),
                               control_options=tuple(sorted(options.items())), blend=b, p2p=preset)
        if setting not in out:  # the preset's blend axis collapses to "case"
            out.append(setting)
    if not out:
        raise UnsamplingError("no setting to run: direct=True needs an attention control, not 'prompt_swap'; "
                              "blend='case' a control with a local blend (p2p, p2p_refine, p2p_reweight)")
    return out


def _blends(control: str) -> bool:
    """Whether `control` has a local blend (the blend_words option); an unknown name is refused, with the nearest."""
    from ...editing.controls import get_control

    return "blend_words" in get_control(control).options


def benchmark(
    model: Any,
    suite: str | Path | Sequence[PieCase] = "pie-shapes",
    *,
    methods: Sequence[str] = ("unsampler",),
    controls: Sequence[str] = (PROMPT_SWAP,),
    direct: Sequence[bool] = (False,),
    steps: int = 50,
    inversion_cfg: float = 1.0,
    edit_cfg: float = 7.5,
    sampler_name: str = "euler",
    scheduler: str = "normal",
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
    control_options: Mapping[str, Mapping[str, Any]] | None = None,
    blend: str | Sequence[str] = ("none",),
    p2p: str = "default",
    path: str | Path | None = None,
    weights: Mapping[str, str | Path] | None = None,
    networks: Sequence[str] = ("lpips", "dino", "clip"),
    batch_size: int = 16,
    limit: int | None = None,
    keys: Sequence[str] | None = None,
    executor: Any = None,
    retries: int = 2,
    progress: bool = True,
) -> BenchResult:
    """Run `suite` ("pie-shapes", a PIE-Bench folder or parquet mirror, or a list of `PieCase`s) for every
    (method, control, direct) and return the rows and tables; see the module docstring for the protocol.

    keys: only these cases of the suite (by `PieCase.key`); limit: only the first N.
    blend: "none", "case" or both (a sweep axis): "case" gives the p2p controls a local blend on each case's
    `blended_words` (a case without any runs unblended, as PnP Inversion's evaluation); other controls skip it.
    p2p: "default" (control "p2p" with its own options) or "pnp-inversion" (PnP Inversion's P2P settings per case,
    with the case blend: see the module docstring).
    executor: run the chunks on a Dask `Client` or a `concurrent.futures` executor, as `ul.sweep` does
    (`model` is then a `ul.ModelSource`, loaded once per worker; rows are written here as chunks finish)."""
    from tqdm.auto import tqdm

    from ..store import ResultStore, StoredRow, digest, model_fingerprint, tensor_digest

    batch_size = check_int("batch_size", batch_size, minimum=1)
    name, cases, targets = _suite(suite, limit, keys)
    common = dict(steps=int(steps), inversion_cfg=float(inversion_cfg), edit_cfg=float(edit_cfg),
                  sampler_name=sampler_name, scheduler=scheduler)
    blend = (blend,) if isinstance(blend, str) else tuple(blend)
    settings = _settings(methods, controls, direct, common, method_options or {}, control_options or {}, blend, p2p)
    if any(s.blend == "case" for s in settings):
        _check_blend_words(cases)
    if any(s.p2p == "pnp-inversion" for s in settings):
        _check_target_words(cases)
    from ..executors import ModelSource, run_all

    if executor is not None and not isinstance(model, ModelSource):
        raise UnsamplingError(f"with an executor, give the model as ul.ModelSource(...) so each worker loads it once, "
                              f"not a loaded {type(model).__name__}")
    if executor is None and isinstance(model, ModelSource):
        model = model.load()
    scorer = PieScorer.load(weights=weights, networks=networks)
    if executor is None:
        fingerprint = model_fingerprint(model)
    else:
        ((_, fingerprint),) = run_all(executor, _fingerprint_task, [model], retries=retries)
        if not isinstance(fingerprint, str):
            raise UnsamplingError(f"could not load {model} on a worker: {fingerprint.error!r}")
    images = {c.key: c.image() for c in cases}
    inputs = digest(name, [(c.key, tensor_digest(images[c.key]), c.mask_runs, c.source_prompt, c.target_prompt)
                           for c in cases])
    run = {"suite": name, "versions": library_versions(), "weights": scorer.identities()}
    store = ResultStore(path if path is not None else ":memory:")
    try:
        found = store.rows_of_run(fingerprint, inputs)
        keys = {(s, c.key): digest(fingerprint, inputs, s.params(), c.key, *([c.blended_words] if s.blend == "case" else []))
                for s in settings for c in cases}  # the case's words key its blend rows (not in `inputs`: older keys hold)
        todo = [(s, [c for c in cases if keys[(s, c.key)] not in found]) for s in settings]
        chunks = [(s, part[i:i + batch_size]) for s, part in todo for i in range(0, len(part), batch_size)]
        if executor is None:
            done = ((task, _run_chunk(model, task[0], task[1], images, targets, scorer)) for task in chunks)
        else:
            tasks = [(s, c, {x.key: targets[x.key] for x in c if x.key in targets}) for s, c in chunks]
            done = ((task[:2], rows) for task, rows in
                    run_all(executor, _chunk_task, tasks, model, dict(weights or {}), tuple(networks), retries=retries))
        for (setting, chunk), rows in tqdm(done, total=len(chunks), desc="benchmark", disable=not progress or not chunks):
            if not isinstance(rows, list):
                raise UnsamplingError(f"a benchmark chunk failed on a worker ({setting.method}, {setting.control}): "
                                      f"{rows.error!r}; finished chunks are kept, rerun to resume") from rows.error
            store.write([StoredRow(key=keys[(setting, c.key)], group=digest(fingerprint, setting.params()),
                                   params={**setting.params(), "case": c.key, "category": c.category,
                                           "editing_type": c.editing_type},
                                   metrics=metrics, accounting={**accounting, "run": json.dumps(run, sort_keys=True)})
                         for c, (metrics, accounting) in zip(chunk, rows)], model=fingerprint, inputs=inputs)
        mine = store.rows_of_run(fingerprint, inputs)
        import pandas as pd

        frame = pd.DataFrame([{"blend": "none", "p2p": "default", **mine[keys[(s, c.key)]].flat()}
                              for s in settings for c in cases])
    finally:
        store.close()
    by = ["method", "control", "direct", "blend", "p2p"]
    metric_names = [*PIE_METRICS, *(SHAPES_METRICS if targets else ()), *RECONSTRUCTION_METRICS]
    table = summarise(frame.to_dict("records"), by=by, metrics=metric_names, skipped=scorer.skipped)
    cost = frame.groupby(by, sort=True)[["nfe", "grad_steps", "seconds"]].mean().reset_index()
    table = table.merge(cost, on=by)
    categories = summarise(frame.to_dict("records"), by=[*by, "category"], metrics=metric_names, skipped=scorer.skipped)
    return BenchResult(rows=frame, table=table, categories=categories, skipped=dict(scorer.skipped), run=run)


_SCORERS: dict[tuple[Any, ...], PieScorer] = {}


def _fingerprint_task(source: Any) -> str:
    from ..executors import cached_model
    from ..store import model_fingerprint

    return model_fingerprint(cached_model(source))


def _chunk_task(task: tuple[BenchSetting, list[PieCase], dict[str, Any]], source: Any, weights: dict[str, Any],
                networks: tuple[str, ...]) -> list[tuple[dict[str, dict[str, float]], dict[str, Any]]]:
    """One chunk on a worker: the model and the metric networks are loaded once per worker process."""
    from ..executors import cached_model

    setting, chunk, targets = task
    key = (tuple(sorted(weights.items())), networks)
    if key not in _SCORERS:
        _SCORERS[key] = PieScorer.load(weights=weights, networks=networks, quiet=True)
    images = {c.key: c.image() for c in chunk}
    return _run_chunk(cached_model(source), setting, chunk, images, targets, _SCORERS[key])


def _check_blend_words(cases: Sequence[PieCase]) -> None:
    """blend='case': every case's blended words must be words of its prompts (checked before anything runs)."""
    def words(prompt: str) -> set[str]:
        return {w.lower().strip(".,") for w in prompt.split()}  # as editing.tokens.word_positions matches

    bad = [c.key for c in cases if c.blended_words and not
           {w.lower() for w in c.blended_words} & (words(c.source_prompt) | words(c.target_prompt))]
    if bad:
        raise UnsamplingError(f"blend='case': the blended words of case(s) {bad[:5]} are not words of their prompts; "
                              "leave those cases out with keys=, or run without blend='case'")


def _check_target_words(cases: Sequence[PieCase]) -> None:
    """p2p='pnp-inversion': a case's blended words are none or two, the second a word of its target prompt (the
    word the preset reweights)."""
    bad = [c.key for c in cases if c.blended_words and (len(c.blended_words) != 2 or c.blended_words[1].lower() not in
           {w.lower().strip(".,") for w in c.target_prompt.split()})]
    if bad:
        raise UnsamplingError(f"p2p='pnp-inversion' reweights the second blended word in the target prompt; case(s) "
                              f"{bad[:5]} have not two blended words or the second is not a word of the target prompt: "
                              "leave them out with keys=, or run with p2p='default'")


def _run_chunk(model: Any, setting: BenchSetting, chunk: list[PieCase], images: Mapping[str, torch.Tensor],
               targets: Mapping[str, Any], scorer: PieScorer) -> list[tuple[dict[str, dict[str, float]], dict[str, Any]]]:
    if setting.blend == "case":  # cases without blended words run without a blend, in their own batch
        parts = [[c for c in chunk if c.blended_words], [c for c in chunk if not c.blended_words]]
        rows = {c.key: row for part in parts if part
                for c, row in zip(part, _run_cases(model, setting, part, images, targets, scorer))}
        return [rows[c.key] for c in chunk]
    return _run_cases(model, setting, chunk, images, targets, scorer)


def _run_cases(model: Any, setting: BenchSetting, chunk: list[PieCase], images: Mapping[str, torch.Tensor],
               targets: Mapping[str, Any], scorer: PieScorer) -> list[tuple[dict[str, dict[str, float]], dict[str, Any]]]:
    batch = torch.stack([images[c.key] for c in chunk])
    sources, target_prompts = [c.source_prompt for c in chunk], [c.target_prompt for c in chunk]
    start = time.perf_counter()
    latent = model.encode(batch)
    words: tuple[tuple[str, ...], ...] = ()
    if setting.control == PROMPT_SWAP:
        recon_latent, edit_latent, cost = _prompt_swap(model, latent, setting, sources, target_prompts)
    else:
        words = tuple(c.blended_words for c in chunk) if setting.blend == "case" and chunk[0].blended_words else ()
        recon_latent, edit_latent, cost = _controlled(model, latent, setting, sources, target_prompts, blend_words=words)
    recon, edited = model.decode(recon_latent), model.decode(edit_latent)
    seconds = (time.perf_counter() - start) / len(chunk)
    out = []
    for i, case in enumerate(chunk):
        # PIE-Bench's masks get the released code's border; PIE-shapes' masks are exact
        mask = case.mask(tuple(batch.shape[1:3]), border=case.key not in targets)
        metrics = {"pie": scorer.edit(batch[i], edited[i], mask, case.source_prompt, case.target_prompt),
                   "reconstruction": scorer.reconstruction(batch[i], recon[i])}
        if case.key in targets:
            t = targets[case.key]
            metrics["shapes"] = shapes_scores(edited[i], batch[i], t.target_colour, t.target_shape)
        extra = {"blend_words": " ".join(case.blended_words) if words else ""} if setting.blend == "case" else {}
        out.append((metrics, {**cost, "seconds": seconds, **extra}))
    return out


def _prompt_swap(model: Any, latent: Any, setting: BenchSetting, sources: list[str], targets: list[str]
                 ) -> tuple[Any, Any, dict[str, Any]]:
    """Invert with `ul.invert`, then the method's own resampling side twice: the source prompt (reconstruction)
    and the target prompt (the edit). nfe: the inversion's network evaluations, then both resamples'."""
    from ...guidance import EvalCounter
    from ...inversion import InversionWarning, invert, resample

    # null-text inversion optimises its null embeddings for the cfg the edit runs at (Mokady et al.)
    inv_cfg = setting.edit_cfg if setting.method == "null_text" else setting.inversion_cfg
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InversionWarning)  # non-converged steps are reported in the row
        inversion = invert(model, latent, method=setting.method, steps=setting.steps, cfg=inv_cfg,
                           sampler_name=setting.sampler_name, scheduler=setting.scheduler, positive=sources,
                           progress=False, **dict(setting.method_options))
    counter = EvalCounter()
    common = dict(steps=setting.steps, cfg=setting.edit_cfg, sampler_name=setting.sampler_name,
                  scheduler=setting.scheduler, progress=False, counter=counter)
    recon = resample(model, inversion, positive=sources, **common)
    edited = resample(model, inversion, positive=targets, **common)
    return recon, edited, {"nfe": inversion.nfe + counter.nfe, "nfe_inversion": inversion.nfe,
                           "grad_steps": inversion.grad_steps, "nonconverged": len(inversion.nonconverged_steps)}


def _controlled(model: Any, latent: Any, setting: BenchSetting, sources: list[str], targets: list[str], *,
                blend_words: tuple[tuple[str, ...], ...] = ()) -> tuple[Any, Any, dict[str, Any]]:
    """The editing layer's protocol (`ul.edit_image`): both branches in one batch under the control, the source
    branch as the reconstruction (blend_words: one tuple per case, or () for the setting's own options).
    nfe: the inversion's network evaluations, then the edit's; gradient steps apart."""
    from ...editing import edit_image
    from ...inversion import InversionWarning

    options = {**dict(setting.control_options), **({"blend_words": blend_words} if blend_words else {})}
    control = setting.control
    if setting.p2p == "pnp-inversion":  # refine, their windows, the target word x2 where the case has blended words
        control = "p2p_refine"
        options.update(PNP_INVERSION_P2P)
        if blend_words:
            options.update(words=tuple((w[1],) for w in blend_words), scale=PNP_INVERSION_SCALE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InversionWarning)
        res = edit_image(model, latent, source=sources, target=targets, method=setting.method, control=control,
                         cfg=setting.edit_cfg, inversion_cfg=setting.inversion_cfg, steps=setting.steps,
                         direct=setting.direct, sampler_name=setting.sampler_name, scheduler=setting.scheduler,
                         method_options=dict(setting.method_options), **options)
    grad = res.inversion_grad_steps
    return res.source, res.target, {"nfe": res.inversion_nfe - grad + res.nfe, "nfe_inversion": res.inversion_nfe - grad,
                                    "grad_steps": grad, "nonconverged": 0}


def markdown_table(table: "pd.DataFrame", *, metrics: Sequence[str] | None = None) -> str:
    """The summary laid out like PIE-Bench's Table 1: paper column names and scales, mean ± 95 % interval,
    a NaN count where items had no value, and the cost columns."""
    names = [m for m in (metrics or [*PIE_METRICS, *SHAPES_METRICS, *RECONSTRUCTION_METRICS]) if m in table.columns]
    head = ["method", "control", "direct", *[PIE_METRICS[m].column if m in PIE_METRICS else m for m in names], "NFE", "s/image"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in table.iterrows():
        blend = f" + {r['blend']} blend" if r.get("blend", "none") != "none" else ""
        control = P2P_LABELS.get(r.get("p2p", "default"), str(r["control"])) if r["control"] == "p2p" else str(r["control"])
        cells = [str(r["method"]), control + blend, "yes" if r["direct"] else "no"]
        for m in names:
            v, ci, nan = r[m], r.get(f"{m}_ci95", math.nan), int(r.get(f"{m}_nan", 0) or 0)
            if not np.isfinite(v):
                cells.append("skipped" if m in str(r.get("skipped_metrics", "")) else "n/a")
                continue
            if m in RATE_METRICS:
                cell = f"{v:.2f} [{r[f'{m}_lo']:.2f}, {r[f'{m}_hi']:.2f}]"
            else:
                cell = f"{v:.2f}" + (f" ± {ci:.2f}" if np.isfinite(ci) else "")
            cells.append(cell + (f" ({nan} NaN)" if nan else ""))
        grad = r.get("grad_steps", 0) or 0
        cells += [f"{r['nfe']:.0f}" + (f" (+{grad:.0f} grad)" if grad else ""), f"{r['seconds']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
