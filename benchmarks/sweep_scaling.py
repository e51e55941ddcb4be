"""Rows per second of one sweep: serial, packed (max_batch), and a Dask LocalCluster; the store's cost per row.

    python benchmarks/sweep_scaling.py [--model auto|tiny|bundled] [--steps 10] [--workers 2] [--repeat 3]

The grid is 8 cfg values x 2 end_at_step values (8 inversion groups sharing sigmas). Serial and packed
run here on one thread; the cluster has `--workers` processes of one thread each, warmed up first (each
worker loads the model once; that start-up is reported separately). Every timing is the best of
`--repeat` runs (a 2-core machine's timings vary by 10-20% run to run; the best is the least disturbed).
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
import tempfile
import time
from pathlib import Path

from unsampling_lab.testing import benchmark_model, tiny_sd_pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("auto", "tiny", "bundled"), default="auto")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="timings are the best of this many runs")
    args = parser.parse_args()

    import torch

    import unsampling_lab as ul
    from unsampling_lab.analysis.store import ResultStore, StoredRow

    torch.set_num_threads(1)
    model, latent, what = benchmark_model(args.model)
    grid = {"cfg": [1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 7.5], "end_at_step": [0, args.steps // 2]}
    fixed = dict(steps=args.steps, positive="red circle", metrics=["latent", "noise"], progress=False)
    batch = int(latent["samples"].shape[0])

    def timed(**kw):
        best, df = float("inf"), None
        for _ in range(args.repeat):
            t = time.perf_counter()
            df = ul.sweep(kw.get("model", model), latent, grid, **fixed, **{k: v for k, v in kw.items() if k != "model"})
            best = min(best, time.perf_counter() - t)
        return df, best

    def unsample_seconds(lat) -> float:
        best = float("inf")
        for _ in range(3 * args.repeat):  # short calls: more repeats for a steady minimum
            t = time.perf_counter()
            ul.unsample(model, lat, steps=args.steps, cfg=2.0, positive="red circle", progress=False)
            best = min(best, time.perf_counter() - t)
        return best

    big = {**latent, "samples": latent["samples"].repeat(8, 1, 1, 1)}
    ceiling = 8 * unsample_seconds(latent) / unsample_seconds(big)
    serial, serial_s = timed()
    packed, packed_s = timed(max_batch=8 * batch)
    rel = ((packed["latent_mse"] - serial["latent_mse"]).abs() / serial["latent_mse"].abs()).max()
    rows = len(serial)
    print(f"model: {what}; steps {args.steps}; grid {grid}; {rows} rows")
    print(f"{'':22} {'seconds':>8} {'rows/s':>8} {'x serial':>9} {'nfe':>5}")
    print(f"{'serial (1 thread)':22} {serial_s:>8.2f} {rows / serial_s:>8.2f} {1:>9.2f} {serial.attrs['nfe_total']:>5}")
    print(f"{'packed (max_batch ' + str(8 * batch) + ')':22} {packed_s:>8.2f} {rows / packed_s:>8.2f} "
          f"{serial_s / packed_s:>9.2f} {packed.attrs['nfe_total']:>5}")
    print(f"{'batching ceiling':22} {'':>8} {'':>8} {ceiling:>9.2f}        (per-image time of one network call on "
          f"{2 * batch} rows over one on {16 * batch})")

    with tempfile.TemporaryDirectory() as tmp:
        try:
            client = ul.local_cluster(args.workers, threads_per_worker=1)
        except ul.UnsamplingError as e:
            client = None
            print(f"{'dask':22} skipped: {e}")
        if client is not None:
            if "tiny" in what:
                tiny_sd_pipeline(Path(tmp, "tiny"))
                source = ul.ModelSource(str(Path(tmp, "tiny")), device="cpu", threads=1)
            else:
                source = ul.ModelSource(None, device="cpu", threads=1)
            try:
                t = time.perf_counter()  # warm-up: every worker loads the model once (a one-setting grid per worker)
                ul.sweep(source, latent, {"cfg": [0.5 + 0.1 * i for i in range(args.workers)]}, steps=2,
                         progress=False, metrics=["latent"], executor=client)
                warm_s = time.perf_counter() - t
                dask_df, dask_s = timed(model=source, executor=client)
                same = dask_df.drop(columns="seconds").equals(serial.drop(columns="seconds"))
                print(f"{'dask ' + str(args.workers) + ' workers x 1':22} {dask_s:>8.2f} {rows / dask_s:>8.2f} "
                      f"{serial_s / dask_s:>9.2f} {dask_df.attrs['nfe_total']:>5}   (start-up + model loads "
                      f"{warm_s:.1f} s, not counted; rows equal serial: {same})")
            finally:
                client.close()
                client.cluster.close()

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
