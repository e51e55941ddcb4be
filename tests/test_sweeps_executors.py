"""Sweeps on executors (Dask LocalCluster, ProcessPoolExecutor, threads) and packed network batches:
the same table as the serial run, a killed worker loses nothing, a failed group is named and resumes."""
from __future__ import annotations

import multiprocessing
import os
import signal
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import pytest
import torch

import unsampling_lab as ul
from unsampling_lab.analysis import running  # where sweeps run their groups

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one thread

STEPS = 3
GRID = {"cfg": [1.0, 2.0], "positive": ["", "red circle"], "end_at_step": [0, 1]}
SAME = ["sampler_name", "cfg", "positive", "end_at_step", "normalize", "edit", "item", "nfe", "nfe_naive"]


def _values(df):
    """Everything but the wall time, in grid order."""
    return df.drop(columns=["seconds"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def serial(tiny_model, tiny_latent):
    """The serial table, on one thread like the workers (1 and 2 threads differ by up to 1.5e-4)."""
    latent, images = tiny_latent
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return ul.sweep(tiny_model, latent, GRID, steps=STEPS, images=images, progress=False)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def source(tiny_pipeline_dir):
    return ul.ModelSource(tiny_pipeline_dir, device="cpu", threads=1)


@pytest.fixture(scope="module")
def cluster():
    pytest.importorskip("distributed")
    client = ul.local_cluster(2, threads_per_worker=1)
    yield client
    client.close()
    client.cluster.close()


@pytest.mark.slow  # a Dask cluster
def test_dask_cluster_sweep_equals_serial_and_survives_a_killed_worker(cluster, source, serial, tiny_latent, tmp_path):
    latent, images = tiny_latent
    workers = cluster.scheduler_info()["workers"]
    assert len(workers) == 2 and all(a.startswith("tcp://127.0.0.1:") for a in [*workers, cluster.scheduler.address])
    assert cluster.dashboard_link.startswith("http://127.0.0.1:")
    env = cluster.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_"))
    assert set(env.values()) == {None}  # the helper keeps Dask's trim threshold off the workers
    assert set(cluster.run(_profiler_enabled).values()) == {False}  # and Dask's 10 ms stack sampler

    df = ul.sweep(source, latent, GRID, steps=STEPS, images=images, progress=False, executor=cluster)
    assert _values(df).equals(_values(serial))  # same threads, same batches: bit for bit

    killed = []

    def kill_one_worker(rows, outputs):  # after the first result: other groups are running on both workers
        if not killed:
            pids = cluster.run(os.getpid)
            killed.append(next(iter(pids.values())))
            os.kill(killed[0], signal.SIGKILL)

    path = tmp_path / "killed.sqlite"
    df = ul.sweep(source, latent, GRID, steps=STEPS, images=images, progress=False, executor=cluster, path=path,
                  callback=kill_one_worker)
    assert killed and _values(df).equals(_values(serial))
    assert len(ul.load_results(path)) == len(serial)
    assert set(cluster.run(_profiler_enabled).values()) == {False}  # the restarted worker too


def _profiler_enabled() -> bool:
    import dask

    return bool(dask.config.get("distributed.worker.profile.enabled"))


@pytest.mark.slow  # spawned worker processes
def test_process_pool_sweep_equals_serial(source, serial, tiny_latent):
    latent, images = tiny_latent
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        df = ul.sweep(source, latent, GRID, steps=STEPS, images=images, progress=False, executor=pool)
    assert _values(df).equals(_values(serial))


def test_failed_group_is_named_finished_groups_kept_and_the_rerun_computes_only_it(source, tiny_latent, tmp_path,
                                                                                 monkeypatch):
    latent, _ = tiny_latent
    run_groups = running.run_groups

    def failing(model, latents, refs, groups, *args, **kwargs):
        if any(g.cfg == 2.0 and g.positive == "red circle" for g in groups):
            raise RuntimeError("CUDA out of memory (simulated)")
        return run_groups(model, latents, refs, groups, *args, **kwargs)

    monkeypatch.setattr(running, "run_groups", failing)
    path = tmp_path / "partial.sqlite"
    with ThreadPoolExecutor(2) as pool:
        with pytest.raises(ul.UnsamplingError, match=r"1 inversion group\(s\) failed after 1 retries.*simulated.*"
                                                     r"cfg=2\.0, positive='red circle'"):
            ul.sweep(source, latent, GRID, steps=STEPS, metrics=["latent"], progress=False, executor=pool,
                     path=path, retries=1)
        assert len(ul.load_results(path)) == len(_values_of(GRID)) - 2 * 2  # 3 of 4 groups: 2 settings x 2 items each
        monkeypatch.setattr(running, "run_groups", run_groups)
        df = ul.sweep(source, latent, GRID, steps=STEPS, metrics=["latent"], progress=False, executor=pool, path=path)
    assert df.attrs["rows_computed"] == 4 and df.attrs["rows_skipped"] == 12


def _values_of(grid):
    n = 1
    for v in grid.values():
        n *= len(v)
    return range(n * 2)


def test_executor_needs_a_model_source(tiny_model, tiny_latent):
    latent, _ = tiny_latent
    with ThreadPoolExecutor(1) as pool, pytest.raises(ul.UnsamplingError, match=r"give the model by its source.*ModelSource"):
        ul.sweep(tiny_model, latent, GRID, steps=STEPS, progress=False, executor=pool)
    with pytest.raises(ul.UnsamplingError, match="must be a concurrent.futures.Executor"):
        ul.sweep(ul.ModelSource(), latent, GRID, steps=STEPS, progress=False, executor=object())


def test_packed_groups_match_unpacked_rows(tiny_model, tiny_latent, serial):
    """Groups sharing sigmas (other cfg, prompts) in one network batch: the same rows up to float rounding."""
    latent, images = tiny_latent
    kept = {}
    grid = dict(GRID, resample_cfg=[None, 4.0])
    unpacked = ul.sweep(tiny_model, latent, grid, steps=STEPS, images=images, progress=False,
                        callback=lambda rows, out: kept.setdefault(tuple(sorted(out.params.items())), out.result))
    packed_out = {}
    packed = ul.sweep(tiny_model, latent, grid, steps=STEPS, images=images, progress=False, max_batch=16,
                      callback=lambda rows, out: packed_out.setdefault(tuple(sorted(out.params.items())), out.result))
    assert packed.attrs["nfe_total"] < unpacked.attrs["nfe_total"] / 3  # 4 inversions in one, 16 resamples in 2
    for key, result in kept.items():  # relative to the size of the latents (the tiny random model amplifies)
        torch.testing.assert_close(packed_out[key], result, rtol=0, atol=2e-4 * float(result.abs().max()))
    cols = ["latent_mse", "psnr", "ssim", "noise_std", "noise_ks"]
    for c in cols:
        torch.testing.assert_close(torch.tensor(packed[c].values), torch.tensor(unpacked[c].values), rtol=2e-3, atol=1e-4)
    assert packed[SAME[:-2]].equals(unpacked[SAME[:-2]])
    # resample_cfg None is cfg itself: those rows are the serial run's; with a prompt (cond != uncond) 4.0 differs
    same_cfg = unpacked[unpacked.resample_cfg == unpacked.cfg].drop(columns=["seconds", "resample_cfg"])
    assert same_cfg.reset_index(drop=True)["latent_mse"].tolist() == serial["latent_mse"].tolist()
    edited = unpacked[(unpacked.resample_cfg == 4.0) & (unpacked.positive == "red circle")]
    assert len(edited) == 8 and not edited["latent_mse"].isin(serial["latent_mse"]).any()


@pytest.mark.slow  # a Dask cluster
def test_cli_workers_and_resample_cfg(tiny_pipeline_dir, tmp_path, capsys):
    pytest.importorskip("distributed")
    from unsampling_lab.lab import cli

    out = tmp_path / "run"
    argv = ["sweep", "--model", str(tiny_pipeline_dir), "--device", "cpu", "--positive", "red circle", "--out", str(out),
            "--steps", "3", "--end-at-step", "0", "--cfg", "1", "2", "--resample-cfg", "1", "3", "--normalize", "disable",
            "--no-progress", "--no-figures", "--format", "csv", "--threads", "1"]
    assert cli.main([*argv, "--workers", "2"]) == 0
    table = ul.load_results(out / "results.csv")
    assert len(table) == 2 * 2 * 2 and set(table["resample_cfg"]) == {1.0, 3.0}  # cfg x resample_cfg x images
    assert "8 rows computed, 0 resumed" in capsys.readouterr().out
    assert cli.main(argv) == 0  # here, without workers: the same model and rows, all resumed
    assert "0 rows computed, 8 resumed" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main([*argv, "--workers", "2", "--scheduler-address", "tcp://127.0.0.1:1"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_engine_cfg_per_batch_item_equals_one_call_per_item(tiny_model, tiny_latent):
    """What packing relies on: cfg=[c0, c1] on a batch equals two calls with cfg c0 and c1."""
    latent, _ = tiny_latent
    both = ul.unsample(tiny_model, latent, steps=STEPS, cfg=[1.0, 3.0], positive="red circle", negative="blue",
                       progress=False)["samples"]
    for b, cfg in enumerate((1.0, 3.0)):
        alone = ul.unsample(tiny_model, {"samples": latent["samples"][b:b + 1]}, steps=STEPS, cfg=cfg,
                            positive="red circle", negative="blue", progress=False)["samples"]
        torch.testing.assert_close(both[b:b + 1], alone, rtol=0, atol=2e-4 * float(alone.abs().max()))
    with pytest.raises(ul.UnsamplingError, match="cfg has 3 values but the latent has batch 2"):
        ul.unsample(tiny_model, latent, steps=STEPS, cfg=[1.0, 2.0, 3.0], progress=False)
    with pytest.raises(ul.UnsamplingError, match="or a list of them"):
        ul.resample(tiny_model, latent, steps=STEPS, cfg=[1.0, -2.0], progress=False)
