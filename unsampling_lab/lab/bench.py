"""`python -m unsampling_lab bench`: a PIE-Bench-style benchmark run from the command line.

    python -m unsampling_lab bench --suite pie-shapes --method unsampler negative_prompt null_text --out bench/
    python -m unsampling_lab bench --control p2p --direct yes --blend both   # P2P with and without each case's blend
    python -m unsampling_lab bench --control p2p --direct both --p2p pnp-inversion   # P2P as PnP Inversion's Table 1

writes OUT/results.sqlite (every row; rerun to resume), OUT/table.md (laid out like PIE-Bench's Table 1),
OUT/table.csv, OUT/categories.csv, OUT/pareto.png (background PSNR against NFE) and OUT/run.json (library
versions, metric weights, what was skipped and why).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .args import UsageError, cfg_value, choice, control_option, method_option, positive_int

__all__ = ["add_bench_parser", "run_bench"]


def add_bench_parser(sub: Any) -> argparse.ArgumentParser:
    """The `bench` sub-command's flags, on the CLI's sub-parsers."""
    from ..inversion import INVERSION_METHODS

    p = sub.add_parser("bench", help="PIE-Bench-style editing benchmark (PIE-shapes offline, or PIE-Bench data)",
                       description="Invert each case with its source prompt, edit with its target prompt, and score "
                                   "with PIE-Bench's metrics; rows go to OUT/results.sqlite (resumable).")
    p.add_argument("--suite", default="pie-shapes", metavar="pie-shapes|PATH",
                   help="pie-shapes (generated, offline) or a PIE-Bench folder / parquet mirror (default pie-shapes)")
    p.add_argument("--model", default=None, metavar="PATH", help="diffusers folder or cached hub id (default: bundled)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--method", nargs="+", type=choice("inversion method", INVERSION_METHODS), default=["unsampler"],
                   metavar="NAME", help=f"inversion methods: {', '.join(INVERSION_METHODS)} (default unsampler)")
    p.add_argument("--method-option", dest="method_option", type=method_option, action="append", default=None,
                   metavar="METHOD.KEY=VALUE", help="an option of a method, e.g. fixed_point.anderson=5 (repeatable)")
    p.add_argument("--control", nargs="+", default=["prompt_swap"], metavar="NAME",
                   help="edit controls: prompt_swap, or the editing layer's attention controls (default prompt_swap)")
    p.add_argument("--control-option", dest="control_option", type=control_option, action="append", default=None,
                   metavar="CONTROL.KEY=VALUE", help="an option of a control, e.g. p2p.blend_threshold=0.6 (repeatable)")
    p.add_argument("--direct", choices=("no", "yes", "both"), default="no",
                   help="Direct Inversion on the source branch (attention controls only; default no)")
    p.add_argument("--blend", choices=("none", "case", "both"), default="none",
                   help="local blend on each case's blended words (p2p controls only; both: rows with and without; "
                        "default none)")
    p.add_argument("--p2p", choices=("default", "pnp-inversion"), default="default",
                   help="how control p2p runs: its own options (default), or PnP Inversion's P2P per case (refine, "
                        "cross 0.4, self 0.6, the case's blend, its target word x2), as PIE-Bench's Table 1")
    p.add_argument("--steps", type=positive_int, default=50, help="steps (default 50, PIE-Bench's)")
    p.add_argument("--inversion-cfg", type=cfg_value, default=1.0, help="cfg of the inversion (default 1)")
    p.add_argument("--edit-cfg", type=cfg_value, default=7.5, help="cfg of both branches (default 7.5, PIE-Bench's)")
    p.add_argument("--sampler", dest="sampler_name", default="euler", help="sampler (default euler)")
    p.add_argument("--scheduler", default="normal", help="scheduler (default normal)")
    p.add_argument("--limit", type=positive_int, default=None, metavar="N", help="only the first N cases")
    p.add_argument("--batch-size", type=positive_int, default=16, metavar="B", help="cases per chunk (default 16)")
    p.add_argument("--weights", action="append", default=None, metavar="NET=PATH",
                   help="a metric network's weights: lpips=FILE, dino=FOLDER, clip=FOLDER (default: local caches)")
    p.add_argument("--allow-pickle", action="store_true", help="also load pickled model weights")
    p.add_argument("--out", type=Path, default=Path("out/bench"), metavar="DIR", help="output folder (default out/bench)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return p


def _weights(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        name, eq, path = item.partition("=")
        if not eq or name not in ("lpips", "dino", "clip"):
            raise UsageError(f"--weights takes NET=PATH with NET lpips, dino or clip, got {item!r}")
        out[name] = path
    return out


def run_bench(args: argparse.Namespace) -> int:
    """Run the benchmark for parsed `args` and write OUT's files; prints the table."""
    from ..analysis import plots
    from ..analysis.piebench.runner import benchmark, markdown_table
    from ..models.loading import load_model

    model = load_model(args.model, device=args.device, allow_pickle=args.allow_pickle)
    options: dict[str, dict[str, Any]] = {}
    for method, key, value in args.method_option or []:
        options.setdefault(method, {})[key] = value
    controls: dict[str, dict[str, Any]] = {}
    for control, key, value in args.control_option or []:
        controls.setdefault(control, {})[key] = value
    direct = {"no": [False], "yes": [True], "both": [False, True]}[args.direct]
    blend = {"none": ["none"], "case": ["case"], "both": ["none", "case"]}[args.blend]
    args.out.mkdir(parents=True, exist_ok=True)
    result = benchmark(model, args.suite, methods=args.method, controls=args.control, direct=direct, blend=blend, p2p=args.p2p,
                       steps=args.steps,
                       inversion_cfg=args.inversion_cfg, edit_cfg=args.edit_cfg, sampler_name=args.sampler_name,
                       scheduler=args.scheduler, method_options=options, control_options=controls, path=args.out / "results.sqlite",
                       weights=_weights(args.weights), batch_size=args.batch_size, limit=args.limit,
                       progress=args.progress)
    text = markdown_table(result.table)
    (args.out / "table.md").write_text(text + "\n", encoding="utf-8")
    result.table.to_csv(args.out / "table.csv", index=False)
    result.categories.to_csv(args.out / "categories.csv", index=False)
    (args.out / "run.json").write_text(json.dumps({**result.run, "skipped": result.skipped}, indent=1), encoding="utf-8")
    t = result.table
    frame = t.assign(label=[f"{m}+{c}{'+direct' if d else ''}{'+blend' if b != 'none' else ''}"
                            f"{'+' + p if p != 'default' else ''}"
                            for m, c, d, b, p in zip(t["method"], t["control"], t["direct"], t["blend"], t["p2p"])])
    ax = plots.pareto(frame, cost="nfe", value="psnr_unedit_part")
    ax.set_ylabel("background PSNR (dB)")
    ax.figure.savefig(args.out / "pareto.png", dpi=120, bbox_inches="tight")
    print(text)
    for metric, why in result.skipped.items():
        print(f"skipped {metric}: {why}")
    return 0
