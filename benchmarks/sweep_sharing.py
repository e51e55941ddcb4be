"""ul.sweep against a naive loop (unsample + resample per combination): model evaluations and wall time.

    python benchmarks/sweep_sharing.py [--model auto|tiny|bundled] [--steps 10]

Expected evaluations for N steps and end_at_step values k (euler, cfg 1, one normalize):
sweep N + sum(N - k), naive 2 sum(N - k).
"""
from __future__ import annotations

import argparse
import time

from unsampling_lab.testing import benchmark_model
from unsampling_lab.testing import CountingModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("auto", "tiny", "bundled"), default="auto")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    import unsampling_lab as ul

    torch.set_num_threads(args.threads)
    model, latent, what = benchmark_model(args.model)
    n = args.steps
    ks = list(range(0, n, 2))
    grid = {"end_at_step": ks, "cfg": [1.0, 3.0]}

    t = time.perf_counter()
    df = ul.sweep(model, latent, grid, steps=n, metrics=["latent"], progress=False)
    sweep_s = time.perf_counter() - t

    counted = CountingModel(model)
    t = time.perf_counter()
    for cfg in grid["cfg"]:
        for k in ks:
            noise = ul.unsample(counted, latent, steps=n, end_at_step=k, cfg=cfg, progress=False)
            ul.resample(counted, noise, steps=n, start_at_step=k, cfg=cfg, progress=False)
    naive_s = time.perf_counter() - t

    formula_sweep = len(grid["cfg"]) * (n + sum(n - k for k in ks))
    formula_naive = len(grid["cfg"]) * 2 * sum(n - k for k in ks)
    print(f"model: {what}; steps {n}; end_at_step {ks}; cfg {grid['cfg']}; {len(df)} rows")
    print(f"{'':10} {'evaluations':>12} {'formula':>8} {'seconds':>8}")
    print(f"{'sweep':10} {df.attrs['nfe_total']:>12} {formula_sweep:>8} {sweep_s:>8.2f}")
    print(f"{'naive':10} {counted.calls:>12} {formula_naive:>8} {naive_s:>8.2f}")
    print(f"{'ratio':10} {df.attrs['nfe_total'] / counted.calls:>12.3f} {formula_sweep / formula_naive:>8.3f} "
          f"{sweep_s / naive_s:>8.3f}   (sweep / naive; the sweep also computes its metrics)")


if __name__ == "__main__":
    main()
