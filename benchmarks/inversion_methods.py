"""Inversion methods side by side: reconstruction on the bundled model and on exact toys, one run.

    python benchmarks/inversion_methods.py [--quick] [--threads 1] [--n 8] [--only TEXT] [--toys-only]

Bundled model: held-out shapes images (`make_shapes(n, seed=123456)`, n = 8 by default), euler, normal,
prompt = the caption, the same cfg to invert and to resample; method x cfg (1, 3, 7.5) x steps (10, 20, 50).
Reconstruction: PSNR of the decoded round trip against the VAE round trip (the ceiling: a perfect
inversion scores inf), latent relative error. Editing, from the same inversion (`end_at_step` 0): resample
with "<c2> <shape>" (c2 the next colour of the palette; each method's own resampling side) at the same
cfg; edit success = the bundled detector sees c2 and the source's shape; structure kept = IoU of the
detector's foreground masks of the edit and the source image (the VAE round trip alone keeps 0.957).
Cost: NFE (+ gradient steps) of the inversion, non-converged steps (fixed-point variants), seconds of
inversion + reconstruction.
Toys (exact denoisers, float64): the 2-D two-class Gaussian mixture (64 samples, prompt = the class):
latent relative error, and edit success = the resample with the other class's prompt lands where that
class's posterior is > 1/2; for the flow-only methods a 4-D Gaussian flow model (latent relative error).
--quick: 20 steps only. Prints markdown tables.
"""
from __future__ import annotations

import argparse
import math
import time
import warnings
from typing import Any

import torch

import unsampling_lab as ul
from unsampling_lab.analysis import metrics
from unsampling_lab.inversion import InversionWarning

#: (label, method, options) for the eps/v models
EPS_METHODS: list[tuple[str, str, dict[str, Any]]] = [
    ("unsampler", "unsampler", {}),
    ("negative_prompt", "negative_prompt", {}),
    ("fixed_point", "fixed_point", dict(iterations=30)),
    ("fixed_point averaging=5 (ReNoise)", "fixed_point", dict(iterations=30, averaging=5)),
    ("fixed_point anderson=5 (AIDI)", "fixed_point", dict(iterations=30, anderson=5)),
    ("edict", "edict", {}),
    ("null_text", "null_text", {}),
    ("null_text optimizer=adam (paper)", "null_text", dict(optimizer="adam")),
    ("bdia", "bdia", {}),
    ("belm", "belm", {}),
]
FLOW_METHODS: list[tuple[str, str, dict[str, Any]]] = [
    ("unsampler", "unsampler", {}),
    ("fixed_point", "fixed_point", dict(iterations=30)),
    ("rf_solver", "rf_solver", {}),
    ("fireflow", "fireflow", {}),
    ("rf_inversion gamma=0.5 eta=0.9", "rf_inversion", {}),
    ("bdia", "bdia", {}),
    ("belm", "belm", {}),
]


def run(model: Any, latent: Any, *, method: str, options: dict[str, Any], steps: int, cfg: float,
        positive: Any, edit: Any = None) -> tuple[Any, Any, Any, float]:
    """(inversion, reconstruction, edit or None, seconds of the inversion and the reconstruction)."""
    if method == "null_text" and math.isclose(cfg, 1.0):
        return None, None, None, 0.0
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InversionWarning)  # reported in the table instead
        inv = ul.invert(model, latent, method=method, steps=steps, cfg=cfg, positive=positive, progress=False,
                        **options)
    back = ul.resample(model, inv, steps=steps, cfg=cfg, positive=positive, progress=False)
    seconds = time.perf_counter() - t
    edited = None if edit is None else ul.resample(model, inv, steps=steps, cfg=cfg, positive=edit, progress=False)
    return inv, back, edited, seconds


def bundled_table(args: argparse.Namespace) -> None:
    from unsampling_lab.bundled import shapes
    from unsampling_lab.lab.teaching import compare_methods

    model = ul.load_model(device="cpu")
    batch = shapes.make_shapes(args.n, seed=123_456)
    edits = shapes.recolour_captions(batch)
    print(f"## bundled model: {args.n} shapes images, euler, normal, same cfg to invert and resample\n")
    print("| method | cfg | steps | PSNR vs VAE (dB) | latent rel. err | edit success | structure kept (IoU) | NFE "
          "| grad steps | non-converged steps | s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for cfg in args.cfg:
        for steps in args.steps:  # one compare_methods call per (cfg, steps): the images are encoded once
            runs = [m for m in EPS_METHODS if not (m[1] == "null_text" and math.isclose(cfg, 1.0))]
            table, _ = compare_methods(model, batch.images, runs, source=batch.captions, edit=edits, steps=steps,
                                       cfg=cfg) if runs else (None, None)
            found = {} if table is None else {r["label"]: r for _, r in table.iterrows()}
            for label, method, _ in EPS_METHODS:
                if label not in found:
                    print(f"| {label} | {cfg:g} | {steps} | (needs cfg != 1) | | | | | | | |")
                    continue
                r = found[label]
                bad = f"{r['nonconverged']}/{steps}" if method == "fixed_point" else ""
                print(f"| {label} | {cfg:g} | {steps} | {r['psnr']:.2f} | {r['relative_error']:.2e} | "
                      f"{round(r['edit_success'] * args.n)}/{args.n} | {r['fg_iou']:.3f} | {r['nfe']} | {r['grad_steps']} | "
                      f"{bad} | {r['seconds']:.1f} |", flush=True)


def toy_tables(args: argparse.Namespace) -> None:
    from unsampling_lab.models.analytic import gaussian_flow_model, mixture_model
    from unsampling_lab.models.gaussian import GaussianData, GaussianMixture

    mixture = GaussianMixture.two_class_2d()
    m = mixture_model(mixture, labels=("left", "right"))
    x0, labels = mixture.sample(64, torch.Generator().manual_seed(0))
    x0 = x0[:, :, None, None]
    prompts = [("left", "right")[int(k)] for k in labels]
    print("\n## Gaussian-mixture toy (2-D, two classes, 64 samples, exact denoiser, float64): latent relative error\n")
    other = [("left", "right")[1 - int(k)] for k in labels]
    _toy(m, x0, prompts, EPS_METHODS, args, edit=(other, lambda x: _class_rate(mixture, x, 1 - labels)))
    data = GaussianData(torch.tensor([0.3, -0.5, 1.0, 0.0], dtype=torch.float64),
                        torch.tensor([0.5, 1.0, 0.8, 1.5], dtype=torch.float64))
    flow = gaussian_flow_model(data)
    xf = data.sample(64, torch.Generator().manual_seed(1))[:, :, None, None]
    print("\n## Gaussian flow toy (4-D, exact velocity, float64, cfg 1): latent relative error\n")
    _toy(flow, xf, "", FLOW_METHODS, argparse.Namespace(cfg=[1.0], steps=args.steps))


def _class_rate(mixture: Any, x: torch.Tensor, want: torch.Tensor) -> str:
    """How many of x [B, D, 1, 1] lie where the class `want` [B] has posterior > 1/2 (at sigma 0)."""
    r = mixture.responsibilities(x.flatten(1), 0.0)
    p = torch.stack([r[b, mixture.classes == want[b]].sum() for b in range(x.shape[0])])
    return f"{int((p > 0.5).sum())}/{x.shape[0]}"


def _toy(model: Any, x0: torch.Tensor, prompts: Any, methods: list, args: argparse.Namespace,
         edit: tuple[Any, Any] | None = None) -> None:
    """edit: (the edit prompts, a function of the edited samples giving the edit success)."""
    print("| method | cfg | steps | latent rel. err | " + ("edit success | " if edit else "") + "NFE | non-converged steps |")
    print("| --- | --- | --- | --- | " + ("--- | " if edit else "") + "--- | --- |")
    for cfg in args.cfg:
        for steps in args.steps:
            for label, method, options in methods:
                if method == "null_text":
                    continue  # the toy's prompts are one-hot classes: no embedding to optimise
                inv, back, edited, _ = run(model, x0, method=method, options=options, steps=steps, cfg=cfg,
                                           positive=prompts, edit=None if edit is None else edit[0])
                err = float(metrics.relative_error(back, x0).mean())
                success = "" if edit is None else f"{edit[1](edited)} | "
                bad = f"{len(inv.nonconverged_steps)}/{len(inv.step_converged)}" if method == "fixed_point" else ""
                print(f"| {label} | {cfg:g} | {steps} | {err:.2e} | {success}{inv.nfe} | {bad} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 steps only")
    parser.add_argument("--n", type=int, default=8, help="bundled-model images")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--toys-only", action="store_true")
    parser.add_argument("--only", default="", help="run only the rows whose label contains this text")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.cfg = [1.0, 3.0, 7.5]
    if args.only:
        for table in (EPS_METHODS, FLOW_METHODS):
            table[:] = [row for row in table if args.only in row[0]]
    args.steps = [20] if args.quick else [10, 20, 50]
    start = time.perf_counter()
    toy_tables(args)
    print()
    if not args.toys_only:
        bundled_table(args)
    print(f"\n({time.perf_counter() - start:.0f} s, torch {torch.__version__}, {args.threads} threads)")


if __name__ == "__main__":
    main()
