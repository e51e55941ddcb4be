"""The command line: `python -m unsampling_lab sweep ...` (also the `unsampling-lab` script).

    unsampling-lab sweep --out out/sweep                       # bundled model, defaults take about a minute
    unsampling-lab sweep --model path/to/pipeline --images photos/ --steps 20 --end-at-step 0 5 10 --out out/sd
    unsampling-lab sweep --model path/to/pipeline --images from_comfy.latent --save-noise --out out/comfy

writes OUT/results.csv (or .parquet), OUT/*.png and OUT/summary.md (and with --save-noise OUT/noise/*.latent,
ComfyUI LoadLatent files). Rerunning the same command resumes: rows already in the results table are not
recomputed. Inputs are processed --batch-size at a time. A user error is one line on stderr and exit code 2.
This module parses, finds the inputs and runs the sweep; the figures and summary.md are `lab.report.write_report`.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

PROG = "unsampling-lab"
DEFAULT_STEPS = 10
DEFAULT_END_AT_STEP = (0, 3, 6)
DEFAULT_CFG = (1.0, 3.0)
DEFAULT_NORMALIZE = ("disable", "enable")
DEFAULT_SHAPES = 2
DEFAULT_BATCH_SIZE = 16
#: More generated shapes than this in one run is refused (100000 grew to 24 GB before the guard).
MAX_SHAPES = 10_000
#: Deterministic samplers that only step towards more noise: the sweep resamples with the same sampler.
INVERSE_ONLY = {"ddim_inverse": "it only steps towards more noise, and the sweep resamples with the same sampler; "
                                "use 'ddim' (ComfyUI's ddim, i.e. euler) or compare the two with lab.teaching"}


from .args import (OneLineParser, UsageError, cfg_value, choice, control_option, method_option,  # noqa: F401
                   non_negative_int, positive_int, whole_number, yes_no)
SCHEDULER_TIMEOUT_S = 20  # --scheduler-address: seconds to wait for the scheduler before saying it cannot be reached


def sweep_samplers() -> tuple[tuple[str, ...], dict[str, str]]:
    """(samplers the sweep offers, {refused name: reason}): it unsamples AND resamples with each one."""
    from ..samplers import INVERTIBLE_SAMPLERS, SAMPLERS
    from ..samplers.registry import get_sampler

    offered = tuple(n for n in INVERTIBLE_SAMPLERS if n not in INVERSE_ONLY)
    refused = dict(INVERSE_ONLY)
    for name in SAMPLERS:
        if name not in INVERTIBLE_SAMPLERS:
            try:
                get_sampler(name, invertible=True)
            except Exception as e:  # the registry's own reason (e.g. it injects noise at every step)
                refused[name] = "it " + str(e).split(". Unsample with")[0].removeprefix(f"sampler {name!r} ")
    return offered, refused


def build_parser() -> argparse.ArgumentParser:
    from ..engine import NORMALIZE_MODES
    from ..schedulers import SCHEDULERS

    samplers, refused = sweep_samplers()
    parser = OneLineParser(prog=PROG, description="Diffusion inversion (unsampling) experiments.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser)
    p = sub.add_parser("sweep", help="unsample + resample over a parameter grid; write a table, figures and summary.md",
                       description="Unsample source images and resample them over a grid of parameters. "
                                   "All end_at_step and normalize values of one setting share one inversion.")
    m = p.add_argument_group("model and images")
    m.add_argument("--model", default=None, metavar="PATH",
                   help="diffusers pipeline folder or cached hub id (default: the bundled shapes model)")
    m.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    m.add_argument("--allow-pickle", action="store_true",
                   help="also load pickled .bin/.ckpt weights (they can run code; default: safetensors only)")
    m.add_argument("--images", nargs="+", default=None, metavar="PATH",
                   help="your own images: PNG/JPEG/WebP files or folders, or ComfyUI .latent files")
    m.add_argument("--size", type=positive_int, default=None, metavar="S",
                   help="scale --images to S x S (default: keep their size, centre-cropped to the VAE's pixel grid)")
    m.add_argument("--shapes", type=whole_number(1, MAX_SHAPES), default=None, metavar="N",
                   help=f"without --images: N generated source images (default {DEFAULT_SHAPES}, at most {MAX_SHAPES})")
    m.add_argument("--seed", type=whole_number(0, 2**64 - 1), default=0, help="seed for the generated images (default 0)")
    m.add_argument("--source", choices=("auto", "shapes", "generate"), default="auto",
                   help="generated images: the shapes dataset (bundled model), or drawn by the model from "
                        "seeded noise with the positive prompt (default: shapes for the bundled model)")
    m.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE, metavar="B",
                   help=f"images processed at a time (default {DEFAULT_BATCH_SIZE}); memory grows with it")
    g = p.add_argument_group("unsampler parameters (lists are swept)")
    g.add_argument("--positive", default=None, help="positive prompt (default: each shape's caption, or '')")
    g.add_argument("--negative", default="", help="negative prompt (default '')")
    g.add_argument("--edit", nargs="+", default=None, metavar="PROMPT",
                   help="resample prompts to edit with, beside the plain reconstruction")
    g.add_argument("--steps", type=positive_int, default=DEFAULT_STEPS, help=f"steps (default {DEFAULT_STEPS})")
    g.add_argument("--end-at-step", "--end_at_step", dest="end_at_step", type=non_negative_int, nargs="+",
                   default=list(DEFAULT_END_AT_STEP), metavar="K",
                   help=f"end_at_step values, each < steps (default {' '.join(map(str, DEFAULT_END_AT_STEP))})")
    g.add_argument("--cfg", type=cfg_value, nargs="+", default=list(DEFAULT_CFG),
                   help=f"cfg values (default {' '.join(f'{c:g}' for c in DEFAULT_CFG)})")
    from ..inversion import INVERSION_METHODS

    g.add_argument("--method", nargs="+", type=choice("inversion method", INVERSION_METHODS), default=None,
                   metavar="NAME", help=f"inversion methods (ul.invert): {', '.join(INVERSION_METHODS)} (default unsampler)")
    g.add_argument("--method-option", dest="method_option", type=method_option, action="append", default=None,
                   metavar="METHOD.KEY=VALUE", help="an option of a method, e.g. fixed_point.anderson=5 (repeatable)")
    from ..editing import CONTROLS

    g.add_argument("--control", nargs="+", type=choice("editing control", CONTROLS), default=None, metavar="NAME",
                   help=f"editing controls (ul.edit: source = positive, target = edit, both branches in one batch): "
                        f"{', '.join(CONTROLS)} (default prompt_swap: the edit prompt resampled from the noise)")
    g.add_argument("--control-option", dest="control_option", type=control_option, action="append", default=None,
                   metavar="CONTROL.KEY=VALUE", help="an option of a control, e.g. p2p.cross_steps=0.6 (repeatable)")
    g.add_argument("--direct", nargs="*", type=yes_no, default=None, metavar="no|yes",
                   help="Direct Inversion: the source branch pinned to the inversion path. --direct alone (or yes) turns "
                        "it on, --direct no yes sweeps both (default no); needs a --control other than prompt_swap")
    g.add_argument("--resample-cfg", "--resample_cfg", dest="resample_cfg", type=cfg_value, nargs="+", default=None,
                   help="cfg values for resampling (default: the same as --cfg)")
    g.add_argument("--normalize", nargs="+", type=choice("normalize mode", NORMALIZE_MODES), metavar="MODE",
                   default=None,
                   help=f"normalize modes: {', '.join(NORMALIZE_MODES)} (default {' '.join(DEFAULT_NORMALIZE)}; "
                        "disable only with --method other than unsampler: the other methods return their own noise)")
    g.add_argument("--sampler", "--sampler_name", dest="sampler_name", nargs="+", metavar="NAME",
                   type=choice("sampler", samplers, refused=refused), default=["euler"],
                   help=f"samplers that can invert: {', '.join(samplers)} (default euler)")
    g.add_argument("--scheduler", nargs="+", type=choice("scheduler", SCHEDULERS), default=["normal"], metavar="NAME",
                   help=f"schedulers: {', '.join(SCHEDULERS)} (default normal)")
    o = p.add_argument_group("output")
    o.add_argument("--out", type=Path, default=Path("out/sweep"), metavar="DIR", help="output folder (default out/sweep)")
    o.add_argument("--format", choices=("auto", "csv", "parquet"), default="auto",
                   help="results table format (auto: parquet when pyarrow is installed, else csv)")
    o.add_argument("--save-noise", action="store_true",
                   help="write each setting's unsampled noise as OUT/noise/*.latent (ComfyUI's LoadLatent reads it)")
    o.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    o.add_argument("--no-figures", dest="figures", action="store_false", help="skip the PNG figures")
    o.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    w = p.add_argument_group("where it runs (needs the [dask] extra)").add_mutually_exclusive_group()
    w.add_argument("--workers", type=positive_int, default=None, metavar="N",
                   help="run inversion groups on a local Dask cluster of N worker processes (127.0.0.1 only)")
    w.add_argument("--scheduler-address", default=None, metavar="ADDRESS",
                   help="run on an existing Dask cluster, e.g. tcp://10.0.0.5:8786 (see the README on TLS)")
    from .bench import add_bench_parser

    add_bench_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; user errors (bad flags, files, models) are one line on stderr and exit code 2, Ctrl-C
    one line and exit code 130 (at start-up too: building the parser imports the samplers, loading the model)."""
    from ..errors import UnsamplingError

    prog, args = PROG, None
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        prog = f"{parser.prog} {args.command}"
        if args.command == "bench":
            from .bench import run_bench

            return run_bench(args)
        bad = [k for k in args.end_at_step if k >= args.steps]
        if bad:
            raise UsageError(f"--end-at-step {bad} must be < --steps {args.steps} (end_at_step counts steps left undone)")
        if args.images is not None and args.shapes is not None:
            raise UsageError("--images (your files) and --shapes (generated images) exclude each other; pass one")
        return run_sweep(args)
    except (UsageError, UnsamplingError) as e:
        print(f"{prog}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        swept = getattr(args, "swept_into", None)  # set once every row is saved
        print(f"{prog}: interrupted " + (f"after the sweep: every row is saved in {swept}; rerun the same command to write "
                                         "the figures and summary.md (no row is recomputed)" if swept else
                                         "before any row was saved"), file=sys.stderr)
        return 130


def _default_normalize(methods: Sequence[str] | None) -> list[str]:
    """ComfyUI's normalize modes apply to the Unsampler's output; other methods' noise is swept as it is."""
    return list(DEFAULT_NORMALIZE) if not methods or set(methods) == {"unsampler"} else ["disable"]


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


# -- the sweep job --------------------------------------------------------------------------------------
def run_sweep(args: argparse.Namespace) -> int:
    args.normalize = args.normalize or _default_normalize(args.method)
    import torch

    from .. import engine
    from ..analysis.executors import ModelSource
    from ..analysis.sweeps import sweep
    from ..models.loading import load_model, resolve_device
    from .report import write_report

    if args.threads:
        torch.set_num_threads(args.threads)
    bundled = args.model is None
    if args.format == "parquet" and not _has_pyarrow():
        raise UsageError("--format parquet needs pyarrow (pip install pyarrow); use --format csv")
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; pass a folder (it is created if missing)")
    device = resolve_device(args.device)  # before the model loads: bad --device and --images fail fast
    if args.images is not None:
        input_files(args.images)
    t0 = time.perf_counter()
    model = load_model(args.model, device=device, allow_pickle=args.allow_pickle)
    source = _Source(model, args, bundled=bundled)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create --out {out}: {e.strerror or e}") from None
    grid: dict[str, list[Any]] = {
        "sampler_name": args.sampler_name, "scheduler": args.scheduler, "cfg": args.cfg,
        "end_at_step": args.end_at_step, "normalize": args.normalize,
        "edit": [None] + list(args.edit or []),
        **({"resample_cfg": args.resample_cfg} if args.resample_cfg else {}),
        **({"method": args.method} if args.method else {}),
        **({"control": args.control} if args.control else {}),
        **({"direct": args.direct or [True]} if args.direct is not None else {}),
    }
    method_options: dict[str, dict[str, Any]] = {}
    for method, key, value in args.method_option or ():
        method_options.setdefault(method, {})[key] = value
    control_options: dict[str, dict[str, Any]] = {}
    for control, key, value in args.control_option or ():
        control_options.setdefault(control, {})[key] = value
    suffix = ".parquet" if args.format == "parquet" or (args.format == "auto" and _has_pyarrow()) else ".csv"
    table_path = out / f"results{suffix}"
    batches = source.batches()
    batch_paths = [table_path] if len(batches) == 1 else \
        [out / "batches" / f"results_{i:05d}{suffix}" for i in range(len(batches))]
    kept: dict[str, Any] = {}
    frames = []
    first = None
    try:
        with _executor(args) as executor:  # None, or a Dask client: the workers load the model from its source
            where = model if executor is None else ModelSource(args.model, device=str(model.device),
                                                               threads=args.threads)
            for b, (start, stop) in enumerate(batches):
                latents, images, positive = source.load(start, stop)
                first = first or (latents, images, positive)

                def keep(rows: list[dict[str, Any]], outputs: Any, b: int = b) -> None:
                    kind = "edit" if outputs.params["edit"] is not None else "reconstruction"
                    if b == 0 and kind not in kept and (kind == "edit" or outputs.params["normalize"] == "disable"):
                        kept[kind] = outputs
                    if args.save_noise and outputs.params["edit"] is None:
                        _save_noise(outputs, out / "noise", batch=b if len(batches) > 1 else None)

                batch_paths[b].parent.mkdir(parents=True, exist_ok=True)
                df = sweep(where, latents, grid, path=batch_paths[b], images=images, progress=args.progress,
                           callback=keep, steps=args.steps, positive=positive, negative=args.negative, seed=args.seed,
                           executor=executor, method_options=method_options or None,
                           control_options=control_options or None)
                if "item" in df.columns:
                    df["item"] = df["item"] + start
                frames.append(df)
    except KeyboardInterrupt:
        saved = _rows_saved(batch_paths)
        where = table_path if len(batches) == 1 else out / "batches"
        print(f"{PROG} sweep: interrupted: {saved} rows are saved in {where}; rerun the same command to resume "
              "(saved rows are not recomputed)", file=sys.stderr)
        return 130
    args.swept_into = table_path if len(batches) == 1 else out / "batches"  # main()'s Ctrl-C message from here on
    df = _combine(frames, table_path if len(batches) > 1 else None)
    latents, images, positive = first
    traj = None
    if args.figures and "reconstruction" not in kept:  # every row was already in the table: rerun one for figures
        traj = engine.unsample_trajectory(model, latents, steps=args.steps, cfg=args.cfg[0],
                                          sampler_name=args.sampler_name[0], scheduler=args.scheduler[0],
                                          positive=positive, negative=args.negative, progress=False)
    source.write_index(out)
    written = write_report(model, df, out, outputs=kept, trajectory=traj, images=images,
                           end_at_step=args.end_at_step[0], figures=args.figures,
                           model_name=args.model or "bundled shapes model", source=source.description,
                           table_path=table_path, seconds=time.perf_counter() - t0)
    figures = written[:-1]
    print(f"wrote {table_path}, {len(figures)} figures and {out / 'summary.md'} "
          f"({df.attrs['rows_computed']} rows computed, {df.attrs['rows_skipped']} resumed)")
    return 0


@contextlib.contextmanager
def _executor(args: argparse.Namespace) -> Iterator[Any]:
    """--workers N: a local Dask cluster; --scheduler-address: a client of a running one; else None (here)."""
    from ..analysis.executors import close_cluster, local_cluster

    if args.workers is None and args.scheduler_address is None:
        yield None
        return
    if args.workers is not None:
        client = local_cluster(args.workers, threads_per_worker=args.threads or 1)
    else:
        try:
            from distributed import Client
        except ImportError:
            raise UsageError("--scheduler-address needs Dask: pip install 'unsampling_lab[dask]'") from None
        try:  # a wrong or dead address is the user's to fix: one line, not a traceback
            client = Client(args.scheduler_address, timeout=SCHEDULER_TIMEOUT_S)
        except (OSError, ValueError, TypeError) as e:
            raise UsageError(f"--scheduler-address {args.scheduler_address}: {str(e.args[0] if e.args else e).splitlines()[0]}; "
                             "give a running scheduler's address, e.g. tcp://10.0.0.5:8786") from None
    try:
        yield client
    finally:
        close_cluster(client) if args.workers is not None else client.close()  # a running cluster is not ours to close


def _has_pyarrow() -> bool:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return False
    return True


def _combine(frames: list[Any], path: Path | None) -> Any:
    """One table from the batches' tables (items numbered across batches); written to `path` if given."""
    import pandas as pd

    if len(frames) == 1:
        return frames[0]
    df = pd.concat(frames, ignore_index=True)
    df.attrs = {k: sum(f.attrs.get(k, 0) for f in frames)
                for k in ("rows_computed", "rows_skipped", "nfe_total", "nfe_naive")}
    if path is not None:
        df.to_parquet(path, index=False) if path.suffix == ".parquet" else df.to_csv(path, index=False)
    return df


def _rows_saved(paths: Sequence[Path]) -> int:
    """Rows on disk in the results tables written so far."""
    import pandas as pd

    total = 0
    for path in paths:
        if path.exists() and path.stat().st_size:
            try:
                table = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
            except Exception:  # a table cut mid-write still resumes; it just cannot be counted here
                continue
            total += len(table)
    return total


def _save_noise(outputs: Any, folder: Path, *, batch: int | None) -> Path:
    """One setting's unsampled noise as a ComfyUI .latent file, named by its parameters."""
    from ..latent_files import save_latent

    p = outputs.params
    method = "_".join([p.get("method", "unsampler"), *(f"{k}{v}" for k, v in p.get("method_options", ()))])
    name = (f"noise_{method}_{p['sampler_name']}_{p['scheduler']}_steps{p['steps']}_end{p['end_at_step']}_cfg{p['cfg']:g}_"
            f"{p['normalize']}" + ("" if batch is None else f"_batch{batch:05d}") + ".latent")
    meta = {k: str(v) for k, v in p.items() if k != "edit"}
    return save_latent(outputs.noise, folder / name, metadata={"unsampling_lab": str(meta)})


def input_files(images: Sequence[str]) -> tuple[list[Path], bool]:
    """(files, whether they are .latent files) named by --images; checked before any model loads."""
    from .images import list_images

    paths = [Path(p) for p in images]
    missing = [p for p in paths if not p.exists()]
    if missing and all(p.name.isdigit() for p in missing):
        raise UsageError(f"--images takes image files or folders (got {missing[0]}); for N generated images use --shapes N")
    latents = [p for p in paths if p.suffix == ".latent"]
    for p in latents:
        if not p.is_file():
            raise UsageError(f"--images: latent file not found: {p}")
    pictures = list_images([p for p in paths if p.suffix != ".latent"]) if len(latents) < len(paths) else []
    if latents and pictures:
        raise UsageError("--images mixes .latent files and pictures; pass one kind per run")
    return (latents, True) if latents else (pictures, False)


def latent_items(files: Sequence[Path]) -> list[tuple[Path, int]]:
    """(file, index in the file) of every latent in .latent files (ComfyUI's hold a batch each)."""
    from ..latent_files import load_latent

    return [(f, k) for f in files for k in range(load_latent(f)["samples"].shape[0])]


class _Source:
    """The source images of a run: the user's files (--images) or generated ones (--shapes), in batches."""

    def __init__(self, model: Any, args: argparse.Namespace, *, bundled: bool) -> None:
        self.model, self.args = model, args
        self.files: list[Path] = []
        self.latent_files = False
        if args.images is not None:
            self.files, self.latent_files = input_files(args.images)
            self.items = latent_items(self.files) if self.latent_files else [(f, None) for f in self.files]
            self.n = len(self.items)  # a .latent file may hold several latents: one item each
            self.description = f"{self.n} {'.latent files' if self.latent_files else 'images'} from {', '.join(args.images)}"
            return
        self.n = args.shapes if args.shapes is not None else DEFAULT_SHAPES
        self.use_shapes = args.source == "shapes" or (args.source == "auto" and bundled)
        if self.use_shapes:
            from ..bundled import shapes

            if getattr(model, "vae", None) is None:
                raise UsageError("--source shapes needs a model with a VAE to encode the images")
            self.shapes = shapes.make_shapes(self.n, seed=args.seed)  # small (32x32): drawn once, encoded in batches
            self.description = f"{self.n} shapes images (seed {args.seed})"
        else:
            self.description = (f"{self.n} images generated by the model (seed {args.seed} + batch number mod 2**64, "
                                f"cfg {args.cfg[0]:g}, prompt {args.positive or ''!r})")

    def batches(self) -> list[tuple[int, int]]:
        size = self.args.batch_size
        return [(i, min(i + size, self.n)) for i in range(0, self.n, size)]

    def load(self, start: int, stop: int) -> tuple[Any, Any, Any]:
        """(latents, images or None, positive prompt(s)) of items start..stop-1."""
        import torch

        from .. import engine

        args, model = self.args, self.model
        if self.files and self.latent_files:
            from ..latent_files import load_latent

            parts = [load_latent(f)["samples"][k:k + 1] for f, k in self.items[start:stop]]
            for (f, k), p in zip(self.items[start:stop], parts):
                if not torch.isfinite(p).all():
                    raise UsageError(f"{f} (latent {k}) holds NaN or Inf values; a latent to unsample must be finite: "
                                     "save it again from ComfyUI or pass another file")
            shapes = {tuple(p.shape[1:]) for p in parts}
            if len(shapes) > 1:
                raise UsageError(f".latent files have different shapes {sorted(shapes)}; one run needs one size")
            return {"samples": torch.cat(parts)}, None, args.positive or ""
        if self.files:
            from .images import load_images

            grid = getattr(model, "pixel_grid", 8) if getattr(model, "vae", None) is not None else 8
            if getattr(model, "vae", None) is None:
                raise UsageError("--images with pictures needs a model with a VAE; pass .latent files instead")
            images = load_images(self.files[start:stop], size=args.size, multiple_of=grid)
            return model.encode(images), images, args.positive or ""
        if self.use_shapes:
            images = self.shapes.images[start:stop]
            positive = args.positive if args.positive is not None else list(self.shapes.captions[start:stop])
            return model.encode(images), images, positive
        positive = args.positive if args.positive is not None else ""
        size = int(getattr(getattr(getattr(model, "unet", None), "config", None), "sample_size", 8) or 8)
        empty = torch.zeros(stop - start, model.latent_format.channels, size, size)
        latents = engine.resample(model, {"samples": empty}, steps=args.steps, cfg=args.cfg[0], positive=positive,
                                  negative=args.negative, add_noise=True, noise_seed=(args.seed + start // args.batch_size) % 2**64,
                                  progress=False)
        images = model.decode(latents) if getattr(model, "vae", None) is not None else None
        return latents, images, positive

    def write_index(self, out: Path) -> None:
        """OUT/items.csv: which file each table `item` came from (user inputs only)."""
        if self.files:
            import csv

            with open(out / "items.csv", "w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f)
                writer.writerow(["item", "file"] + (["index_in_file"] if self.latent_files else []))
                writer.writerows([i, str(path)] + ([k] if self.latent_files else []) for i, (path, k) in enumerate(self.items))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
