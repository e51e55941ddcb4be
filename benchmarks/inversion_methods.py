"""Inversion methods side by side: reconstruction on the bundled model and on exact toys, one run.

    python benchmarks/inversion_methods.py [--quick] [--threads 1] [--n 4]

Bundled model: 4 held-out shapes images (`make_shapes(4, seed=123456)`), euler, normal, prompt = the
caption, the same cfg to invert and to resample; method x cfg (1, 3, 7.5) x steps (10, 20, 50).
PSNR of the decoded reconstruction against the VAE round trip (the ceiling: a perfect inversion scores
inf), latent relative error, NFE (+ gradient steps), non-converged steps (fixed-point variants), seconds.
Toys (exact denoisers, float64): the 2-D two-class Gaussian mixture (64 samples, prompt = the class),
and for the flow-only methods a 4-D Gaussian flow model; latent relative error only.
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
]
FLOW_METHODS: list[tuple[str, str, dict[str, Any]]] = [
    ("unsampler", "unsampler", {}),
    ("fixed_point", "fixed_point", dict(iterations=30)),
    ("rf_solver", "rf_solver", {}),
    ("fireflow", "fireflow", {}),
    ("rf_inversion gamma=0.5 eta=0.9", "rf_inversion", {}),
]


def run(model: Any, latent: Any, *, method: str, options: dict[str, Any], steps: int, cfg: float,
        positive: Any) -> tuple[Any, Any, float]:
    if method == "null_text" and math.isclose(cfg, 1.0):
        return None, None, 0.0
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InversionWarning)  # reported in the table instead
        inv = ul.invert(model, latent, method=method, steps=steps, cfg=cfg, positive=positive, progress=False,
                        **options)
    back = ul.resample(model, inv, steps=steps, cfg=cfg, positive=positive, progress=False)
    return inv, back, time.perf_counter() - t


def _samples(x: Any) -> torch.Tensor:
    return x["samples"] if isinstance(x, dict) else x


def bundled_table(args: argparse.Namespace) -> None:
    from unsampling_lab.bundled import shapes

    model = ul.load_model(device="cpu")
    batch = shapes.make_shapes(args.n, seed=123_456)
    latent = model.encode(batch.images)
    ceiling = model.decode(latent)
    print(f"## bundled model: {args.n} shapes images, euler, normal, same cfg to invert and resample\n")
    print("| method | cfg | steps | PSNR vs VAE (dB) | latent rel. err | NFE | grad steps | non-converged steps | s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for cfg in args.cfg:
        for steps in args.steps:
            for label, method, options in EPS_METHODS:
                inv, back, seconds = run(model, latent, method=method, options=options, steps=steps, cfg=cfg,
                                         positive=batch.captions)
                if inv is None:
                    print(f"| {label} | {cfg:g} | {steps} | (needs cfg != 1) | | | | | |", flush=True)
                    continue
                p = float(metrics.psnr(model.decode(back), ceiling).mean())
                err = float(metrics.relative_error(_samples(back), _samples(latent)).mean())
                bad = f"{len(inv.nonconverged_steps)}/{len(inv.step_converged)}" if method == "fixed_point" else ""
                print(f"| {label} | {cfg:g} | {steps} | {p:.2f} | {err:.2e} | {inv.nfe} | {inv.grad_steps} | {bad} | "
                      f"{seconds:.1f} |", flush=True)


def toy_tables(args: argparse.Namespace) -> None:
    from unsampling_lab.models.analytic import gaussian_flow_model, mixture_model
    from unsampling_lab.models.gaussian import GaussianData, GaussianMixture

    mixture = GaussianMixture.two_class_2d()
    m = mixture_model(mixture, labels=("left", "right"))
    x0, labels = mixture.sample(64, torch.Generator().manual_seed(0))
    x0 = x0[:, :, None, None]
    prompts = [("left", "right")[int(k)] for k in labels]
    print("\n## Gaussian-mixture toy (2-D, two classes, 64 samples, exact denoiser, float64): latent relative error\n")
    _toy(m, x0, prompts, EPS_METHODS, args, null_text=False)
    data = GaussianData(torch.tensor([0.3, -0.5, 1.0, 0.0], dtype=torch.float64),
                        torch.tensor([0.5, 1.0, 0.8, 1.5], dtype=torch.float64))
    flow = gaussian_flow_model(data)
    xf = data.sample(64, torch.Generator().manual_seed(1))[:, :, None, None]
    print("\n## Gaussian flow toy (4-D, exact velocity, float64, cfg 1): latent relative error\n")
    _toy(flow, xf, "", FLOW_METHODS, argparse.Namespace(cfg=[1.0], steps=args.steps), null_text=False)


def _toy(model: Any, x0: torch.Tensor, prompts: Any, methods: list, args: argparse.Namespace, *, null_text: bool) -> None:
    print("| method | cfg | steps | latent rel. err | NFE | non-converged steps |")
    print("| --- | --- | --- | --- | --- | --- |")
    for cfg in args.cfg:
        for steps in args.steps:
            for label, method, options in methods:
                if method == "null_text" and not null_text:
                    continue  # the toy's prompts are one-hot classes: no embedding to optimise
                inv, back, _ = run(model, x0, method=method, options=options, steps=steps, cfg=cfg, positive=prompts)
                err = float(metrics.relative_error(back, x0).mean())
                bad = f"{len(inv.nonconverged_steps)}/{len(inv.step_converged)}" if method == "fixed_point" else ""
                print(f"| {label} | {cfg:g} | {steps} | {err:.2e} | {inv.nfe} | {bad} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 steps only")
    parser.add_argument("--n", type=int, default=4, help="bundled-model images")
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
