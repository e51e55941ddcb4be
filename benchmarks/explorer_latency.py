"""The explorer's update time on the bundled model: what moving a slider costs, against the engine call it makes.

    python benchmarks/explorer_latency.py [--steps 10] [--repeat 3] [--threads 1]

For each end_at_step the explorer's update (resample from the recorded inversion, decode, metrics,
redraw) is timed, wall and this process's CPU, and so is the bare `ul.resample` the update makes (the
reconstruction and the edit as one batch of two).
The ratio update / resample is the explorer's own overhead; the budget for a slider move is 0.3 s of
CPU at 10 steps. Timings are the best of --repeat moves to each value.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import unsampling_lab as ul
from unsampling_lab.bundled.shapes import make_shapes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = ul.load_model(device="cpu")
    image = make_shapes(1, seed=3).images
    t = time.perf_counter()
    ex = ul.widgets.explorer(model, image, steps=args.steps, source="red circle", edit="blue circle")
    print(f"explorer built (one inversion, first draw) in {time.perf_counter() - t:.2f} s; {args.steps} steps, "
          f"{args.threads} thread(s)\n")
    print(f"{'end_at_step':>11} {'update wall ms':>15} {'update CPU ms':>14} {'resample ms':>12} {'update / resample':>18}")
    ratios, cpus = [], []
    for k in range(args.steps - 1, -1, -max(1, args.steps // 5)):
        wall, cpu, bare = float("inf"), float("inf"), float("inf")
        for _ in range(args.repeat):
            ex.end_at_step.value = (k + 1) % args.steps  # move away, then back: every move is an update
            ex.end_at_step.value = k
            wall, cpu = min(wall, ex.last_update_s), min(cpu, ex.last_update_cpu_s)
            noise = ul.unsampled(model, ex.trajectory, k, like=ex.latent)
            pair = {**noise, "samples": noise["samples"].repeat(2, 1, 1, 1)}
            t = time.perf_counter()
            ul.resample(model, pair, steps=args.steps, start_at_step=k, positive=["red circle", "blue circle"],
                        progress=False)
            bare = min(bare, time.perf_counter() - t)
        ratios.append(wall / bare)
        cpus.append(cpu)
        print(f"{k:>11} {wall * 1e3:>15.0f} {cpu * 1e3:>14.0f} {bare * 1e3:>12.0f} {wall / bare:>18.2f}")
    print(f"\nmedian update CPU {statistics.median(cpus) * 1e3:.0f} ms (budget 300 ms); median update / resample "
          f"{statistics.median(ratios):.2f}; inversions run: {ex.inversions}")


if __name__ == "__main__":
    main()
