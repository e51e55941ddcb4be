"""PIE-shapes on the bundled model: every inversion method (x every edit control the toolkit has), scored with
PIE-Bench's metrics (background PSNR / MSE / SSIM on the unedited region; LPIPS, structure distance and CLIP when
their weights are on this machine) plus the bundled detector's edit success (Wilson 95 % interval) and shape IoU.

    python benchmarks/pie_shapes.py                      # the README's table (all 64 cases, 20 steps)
    python benchmarks/pie_shapes.py --limit 16 --steps 10 --methods unsampler negative_prompt
    python benchmarks/pie_shapes.py --methods unsampler --controls p2p --direct yes --edit-cfg 6 --blend both
    python benchmarks/pie_shapes.py --methods unsampler --controls p2p --direct both --edit-cfg 6 --p2p pnp-inversion
    python benchmarks/pie_shapes.py --methods unsampler --controls p2p --direct yes --edit-cfg 6 --blend case \
        --control-option p2p.blend_rows=source p2p.blend_layers=finest p2p.blend_dilation=0.125 p2p.blend_threshold=0.6

Rows go to out/pie_shapes/results.sqlite, so an interrupted run resumes where it stopped.
"""
from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import unsampling_lab as ul
from unsampling_lab.analysis.piebench.runner import P2P_PRESETS, benchmark, markdown_table
from unsampling_lab.lab.args import control_option
from unsampling_lab.bundled import RECOMMENDED_CFG

METHODS = ("unsampler", "negative_prompt", "null_text", "fixed_point", "edict")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--controls", nargs="+", default=["prompt_swap"])
    p.add_argument("--direct", choices=("no", "yes", "both"), default="no")
    p.add_argument("--blend", choices=("none", "case", "both"), default="none",
                   help="local blend on each case's blended words (p2p controls; both: with and without)")
    p.add_argument("--p2p", choices=P2P_PRESETS, default="default",
                   help="control p2p with its own options, or as PnP Inversion's P2P evaluation (per case: refine, "
                        "cross 0.4, self 0.6, the case's blend, its target word x2)")
    p.add_argument("--control-option", type=control_option, nargs="+", default=[], metavar="CONTROL.KEY=VALUE",
                   help="options of the controls, e.g. p2p.blend_rows=source p2p.blend_threshold=0.6")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--edit-cfg", type=float, default=RECOMMENDED_CFG,
                   help=f"the edit cfg (default {RECOMMENDED_CFG:g}, the bundled model card's recommendation)")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--out", type=Path, default=Path("out/pie_shapes"))
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    warnings.simplefilter("ignore", UserWarning)
    model = ul.load_model()
    controls: dict[str, dict[str, object]] = {}
    for control, key, value in args.control_option:
        controls.setdefault(control, {})[key] = value
    start = time.perf_counter()
    result = benchmark(model, "pie-shapes", methods=args.methods, controls=args.controls,
                       direct={"no": [False], "yes": [True], "both": [False, True]}[args.direct], steps=args.steps,
                       blend={"none": ["none"], "case": ["case"], "both": ["none", "case"]}[args.blend], p2p=args.p2p,
                       edit_cfg=args.edit_cfg, limit=args.limit, path=args.out / "results.sqlite",
                       control_options=controls)
    print(f"PIE-shapes, bundled model, {args.steps} steps, invert at cfg 1, edit at cfg {args.edit_cfg:g}, "
          f"{int(result.table['n'].iloc[0])} cases per row ({time.perf_counter() - start:.0f} s this run)")
    learned = ["lpips_unedit_part", "structure_distance", "clip_similarity_target_image"]
    print(markdown_table(result.table, metrics=["psnr_unedit_part", "ssim_unedit_part",
                                                *[m for m in learned if m not in result.skipped],
                                                "edit_success", "shape_iou", "psnr_whole"]))
    for metric, why in result.skipped.items():
        print(f"skipped {metric}: {why}")


if __name__ == "__main__":
    main()
