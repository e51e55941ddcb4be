"""Rows per second of one sweep: serial, packed (max_batch), and a Dask LocalCluster; the store's cost per row.

    python benchmarks/sweep_scaling.py [--model auto|tiny|bundled] [--steps 10] [--workers 2] [--repeat 5]

The grid is 8 cfg values x 2 end_at_step values (8 inversion groups sharing sigmas). Serial and packed
run here on one thread; the cluster has `--workers` processes of one thread each, warmed up first (each
worker loads the model once; that start-up is reported separately). The configurations run in
`--repeat` rounds, each once per round, so that a slow spell of the machine slows all of them: on this
2-core VM one configuration's time varied by up to 1.8x between runs minutes apart. Ratios are the
median of the per-round ratios (each round's are printed too), seconds the best round's.
Packed rows are compared with serial ones (largest relative difference of latent_mse). The store's
overhead is the time of `ResultStore.write` (one transaction per setting, as a sweep does) per row,
against a serial row's time.

The batching ceiling: packing turns many small network calls into few large ones, so it cannot beat
what one large call saves over the small ones. It is measured in the same run as `ul.unsample` at cfg 2
(cond + uncond in one call) of the sweep's images against the same images repeated 8 times (the packed
network batch): per-image time, small over large. Packing gains more than this only where it skips work.
"""
from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

from unsampling_lab.testing import benchmark_model, tiny_sd_pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("auto", "tiny", "bundled"), default="auto")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5, help="rounds (every configuration once per round)")
    args = parser.parse_args()

    import torch

    import unsampling_lab as ul
    from unsampling_lab.analysis.store import ResultStore, StoredRow

    torch.set_num_threads(1)
    model, latent, what = benchmark_model(args.model)
    grid = {"cfg": [1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 7.5], "end_at_step": [0, args.steps // 2]}
    fixed = dict(steps=args.steps, positive="red circle", metrics=["latent", "noise"], progress=False)
    batch = int(latent["samples"].shape[0])

    def sweep_seconds(**kw):
        t = time.perf_counter()
        df = ul.sweep(kw.pop("model", model), latent, grid, **fixed, **kw)
        return df, time.perf_counter() - t

    def unsample_seconds(lat) -> float:
        best = float("inf")
        for _ in range(3):  # short calls: the best of three within the round
            t = time.perf_counter()
            ul.unsample(model, lat, steps=args.steps, cfg=2.0, positive="red circle", progress=False)
            best = min(best, time.perf_counter() - t)
        return best

    big = {**latent, "samples": latent["samples"].repeat(8, 1, 1, 1)}
    with tempfile.TemporaryDirectory() as tmp:
        client, source, warm_s = None, None, math.nan
        try:
            client = ul.local_cluster(args.workers, threads_per_worker=1)
        except ul.UnsamplingError as e:
            print(f"dask skipped: {e}")
        try:
            if client is not None:
                if "tiny" in what:
                    tiny_sd_pipeline(Path(tmp, "tiny"))
                    source = ul.ModelSource(str(Path(tmp, "tiny")), device="cpu", threads=1)
                else:
                    source = ul.ModelSource(None, device="cpu", threads=1)
                t = time.perf_counter()  # warm-up: every worker loads the model once (a one-setting grid per worker)
                ul.sweep(source, latent, {"cfg": [0.5 + 0.1 * i for i in range(args.workers)]}, steps=2,
                         progress=False, metrics=["latent"], executor=client)
                warm_s = time.perf_counter() - t
            # rounds: every configuration once per round, so a slow spell of the machine hits all of them;
            # the ratios are per round (median over rounds), the seconds the best round's
            runs: dict[str, list[float]] = {"serial": [], "packed": [], "dask": [], "ceiling": []}
            for _ in range(args.repeat):
                runs["ceiling"].append(8 * unsample_seconds(latent) / unsample_seconds(big))
                serial, s_s = sweep_seconds()
                packed, p_s = sweep_seconds(max_batch=8 * batch)
                runs["serial"].append(s_s)
                runs["packed"].append(p_s)
                if client is not None:
                    dask_df, d_s = sweep_seconds(model=source, executor=client)
                    runs["dask"].append(d_s)
        finally:
            if client is not None:
                client.close()
                client.cluster.close()

        rel = ((packed["latent_mse"] - serial["latent_mse"]).abs() / serial["latent_mse"].abs()).max()
        rows = len(serial)
        serial_s = min(runs["serial"])

        def ratio(name: str) -> str:
            per_round = [a / b for a, b in zip(runs["serial"], runs[name])]
            return f"{statistics.median(per_round):>9.2f}   (rounds: {', '.join(f'{r:.2f}' for r in per_round)})"

        print(f"model: {what}; steps {args.steps}; grid {grid}; {rows} rows; {args.repeat} rounds")
        print(f"{'':22} {'seconds':>8} {'rows/s':>8} {'x serial':>9}")
        print(f"{'serial (1 thread)':22} {serial_s:>8.2f} {rows / serial_s:>8.2f} {1:>9.2f}   nfe {serial.attrs['nfe_total']}")
        packed_s = min(runs["packed"])
        print(f"{'packed (max_batch ' + str(8 * batch) + ')':22} {packed_s:>8.2f} {rows / packed_s:>8.2f} {ratio('packed')}"
              f"   nfe {packed.attrs['nfe_total']}")
        ceiling = runs["ceiling"]
        print(f"{'batching ceiling':22} {'':>8} {'':>8} {statistics.median(ceiling):>9.2f}   (rounds: "
              f"{', '.join(f'{c:.2f}' for c in ceiling)}; per-image time of one network call on {2 * batch} rows "
              f"over one on {16 * batch})")
        if runs["dask"]:
            dask_s = min(runs["dask"])
            same = dask_df.drop(columns="seconds").equals(serial.drop(columns="seconds"))
            print(f"{'dask ' + str(args.workers) + ' workers x 1':22} {dask_s:>8.2f} {rows / dask_s:>8.2f} {ratio('dask')}"
                  f"   (start-up + model loads {warm_s:.1f} s, not counted; rows equal serial: {same})")

        store = ResultStore(Path(tmp, "bench.sqlite"))
        settings = 200
        cols = {c: 0.5 for c in serial.columns if c.startswith(("latent_", "relative", "noise_", "sigma"))}
        params = {c: serial.iloc[0][c] for c in ul.sweeps.PARAMETERS + ("item",)}
        params = {k: (v.item() if hasattr(v, "item") else v) for k, v in params.items()}
        t = time.perf_counter()
        for s in range(settings):
            store.write([StoredRow(f"{s}-{b}", "g", params, {"latent": cols}, {"nfe": 1}) for b in range(batch)],
                        model="m", inputs="i")
        write_s = (time.perf_counter() - t) / (settings * batch)
        store.close()
    per_row = serial_s / rows
    print(f"store: {write_s * 1e3:.2f} ms per row written = {100 * write_s / per_row:.2f}% of a serial row "
          f"({per_row * 1e3:.0f} ms)")
    print(f"packed vs serial: largest relative difference of latent_mse {rel:.1e}")

if __name__ == "__main__":
    main()
