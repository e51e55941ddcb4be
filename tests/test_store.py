"""The results store: resume recomputes exactly what changed, a killed writer leaves no partial row,
two processes on one store end with every row exactly once."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch

import unsampling_lab as ul
from unsampling_lab.analysis.store import ResultStore, model_fingerprint, tensor_digest
from unsampling_lab.testing import CountingModel, tiny_sd_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one thread

STEPS = 4
PARAMS = ["end_at_step", "normalize", "cfg", "positive", "item"]


def _store_counts(path):
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT COUNT(*), COUNT(DISTINCT key) FROM rows").fetchone()
        metrics = db.execute("SELECT metric_set, COUNT(*) FROM metrics GROUP BY metric_set").fetchall()
    return rows, dict(metrics)


def test_resume_recomputes_exactly_what_changed(tiny_model, tiny_latent, tmp_path):
    latent, _ = tiny_latent
    path = tmp_path / "results.sqlite"
    grid = {"end_at_step": [0, 2]}
    first = ul.sweep(tiny_model, latent, grid, steps=STEPS, path=path, metrics=["latent"], progress=False)
    assert first.attrs["rows_computed"] == 4

    counted = CountingModel(tiny_model)  # same model, same latents, same parameters: nothing runs
    again = ul.sweep(counted, latent, grid, steps=STEPS, path=path, metrics=["latent"], progress=False)
    assert counted.calls == 0 and again.attrs["rows_skipped"] == 4
    assert again["latent_mse"].tolist() == first["latent_mse"].tolist()

    # other latents (the two images swapped): all rows new; item 0 of the swapped batch is item 1 of the first
    swapped = {"samples": latent["samples"].flip(0)}
    other = ul.sweep(tiny_model, swapped, grid, steps=STEPS, path=path, metrics=["latent"], progress=False)
    assert other.attrs["rows_computed"] == 4 and other.attrs["rows_skipped"] == 0
    for k in grid["end_at_step"]:
        a, b = first[first.end_at_step == k], other[other.end_at_step == k]
        assert b.latent_mse.tolist() == pytest.approx(a.latent_mse.tolist()[::-1], rel=1e-5)

    # another model (other seeded weights): all rows new, equal to a run without any store
    model_b = ul.load_model(tiny_sd_pipeline(seed=1), device="cpu")
    assert model_fingerprint(model_b) != model_fingerprint(tiny_model)
    stored = ul.sweep(model_b, latent, grid, steps=STEPS, path=path, metrics=["latent"], progress=False)
    fresh = ul.sweep(model_b, latent, grid, steps=STEPS, metrics=["latent"], progress=False)
    assert stored.attrs["rows_computed"] == 4
    assert stored.latent_mse.tolist() == fresh.latent_mse.tolist() != first.latent_mse.tolist()

    # one more end_at_step: only its rows run (inversion N + resample N - 3)
    counted = CountingModel(tiny_model)
    grown = ul.sweep(counted, latent, {"end_at_step": [0, 2, 3]}, steps=STEPS, path=path, metrics=["latent"],
                     progress=False)
    assert grown.attrs["rows_computed"] == 2 and grown.attrs["rows_skipped"] == 4
    assert counted.calls == STEPS + (STEPS - 3)

    # more metrics: the rows lacking the noise set are computed again, the stored latent values stay
    more = ul.sweep(tiny_model, latent, grid, steps=STEPS, path=path, metrics=["latent", "noise"], progress=False)
    assert more.attrs["rows_computed"] == 4 and more["noise_ks"].notna().all()
    assert more["latent_mse"].tolist() == first["latent_mse"].tolist()
    direct = ul.sweep(tiny_model, latent, grid, steps=STEPS, metrics=["noise"], progress=False)
    assert more["noise_ks"].tolist() == pytest.approx(direct["noise_ks"].tolist())

    table = ul.load_results(path)
    assert len(table) == 4 + 4 + 4 + 2 and table["model"].nunique() == 2 and table["inputs"].nunique() == 2
    assert table[table.model == model_fingerprint(tiny_model)].shape[0] == 10
    assert _store_counts(path) == ((14, 14), {"latent": 14, "noise": 4})


def test_csv_path_is_an_export_of_a_store_beside_it(tiny_model, tiny_latent, tmp_path):
    latent, _ = tiny_latent
    df = ul.sweep(tiny_model, latent, {"end_at_step": [0, 1]}, steps=STEPS, path=tmp_path / "s.csv",
                  metrics=["latent"], progress=False)
    assert (tmp_path / "s.sqlite").exists() and not list(tmp_path.glob("*.tmp"))
    exported = ul.load_results(tmp_path / "s.csv")
    assert exported[PARAMS[:2] + ["item", "latent_mse"]].equals(df[PARAMS[:2] + ["item", "latent_mse"]])
    with pytest.raises(ul.UnsamplingError, match="no results at"):
        ul.load_results(tmp_path / "missing.sqlite")
    (tmp_path / "junk.sqlite").write_text("not a database")
    with pytest.raises(ul.UnsamplingError, match="not a results store"):
        ul.sweep(tiny_model, latent, {"end_at_step": [0]}, steps=STEPS, path=tmp_path / "junk.sqlite", progress=False)


def test_fingerprints_see_weights_and_bytes(tiny_pipe):
    model = ul.load_model(tiny_sd_pipeline(), device="cpu")
    before = model_fingerprint(model)
    assert model_fingerprint(ul.load_model(tiny_pipe, device="cpu")) == before  # the same seeded weights
    with torch.no_grad():
        model.unet.conv_in.weight.mul_(1.001)  # a fine-tune touches every value; the sample sees it
    assert model_fingerprint(model) != before
    x = torch.zeros(2, 4, 8, 8)
    y = x.clone()
    y[1, 3, 7, 7] = 1e-30
    assert tensor_digest(x) != tensor_digest(y) and tensor_digest(x) == tensor_digest(x.clone())


def test_fingerprint_sees_one_zeroed_output_channel_and_is_cached(monkeypatch):
    """A pruned model: output channel 1 of one conv zeroed. The old fingerprint sampled 32 evenly spaced
    values of this 73728-value weight (one every ~2378), none of them in that channel's 1152."""
    from unsampling_lab.analysis import fingerprints

    model = ul.load_model(tiny_sd_pipeline(), device="cpu")
    before = model_fingerprint(model)
    conv = model.unet.up_blocks[0].resnets[0].conv1
    assert conv.weight.shape == (64, 128, 3, 3) and conv.weight[1].abs().sum() > 0
    with torch.no_grad():
        conv.weight[1] = 0.0
    pruned = model_fingerprint(model)
    assert pruned != before
    fresh = ul.load_model(tiny_sd_pipeline(), device="cpu")
    assert model_fingerprint(fresh) == before  # the same weights loaded again: the same fingerprint
    hashed = []
    feed = fingerprints._feed_tensor
    monkeypatch.setattr(fingerprints, "_feed_tensor", lambda h, t: (hashed.append(t.numel()), feed(h, t)))
    assert model_fingerprint(model) == pruned and sum(hashed) < 10_000  # the networks' digests are cached
    with torch.no_grad():
        model.unet.conv_in.bias[0] += 1.0  # an in-place write bumps the version: hashed again
    assert model_fingerprint(model) not in (pruned, before) and sum(hashed) > sum(p.numel() for p in conv.parameters())


def test_csv_export_reads_back_equal_to_the_store_byte_for_byte_with_empty_prompts(tiny_model, tiny_latent, tmp_path):
    """Issue 19: "" (the default negative, an empty positive) read back as NaN, so grouping by prompt lost rows."""
    latent, _ = tiny_latent
    path = tmp_path / "r.csv"
    ul.sweep(tiny_model, latent, {"positive": ["", "red circle"]}, steps=2, path=path, metrics=["latent"], progress=False)
    store = ul.load_results(tmp_path / "r.sqlite")
    table = ul.load_results(path)
    assert table.equals(store) and len(table) == 4
    assert (table.positive == "").sum() == 2 and (table.negative == "").all()
    assert path.read_bytes() == store.to_csv(index=False).encode()  # the file is the store's table
    alone = tmp_path / "elsewhere" / "r.csv"  # without its store: read as a plain table, prompts as text
    alone.parent.mkdir()
    alone.write_bytes(path.read_bytes())
    plain = ul.load_results(alone)
    assert plain.groupby("positive").size().to_dict() == {"": 2, "red circle": 2}
    assert plain.to_csv(index=False).encode() == path.read_bytes()  # written back: the same bytes
    assert plain["latent_mse"].tolist() == store["latent_mse"].tolist()  # floats exact
    # a second run on the same store: the export holds both runs' rows, as the store does
    ul.sweep(tiny_model, latent, {"cfg": [2.0]}, positive="blue", steps=2, path=path, metrics=["latent"], progress=False)
    assert len(ul.load_results(path)) == 6 and ul.load_results(path).equals(ul.load_results(tmp_path / "r.sqlite"))


def test_store_refuses_what_it_does_not_own_and_reads_without_writing(tmp_path, monkeypatch):
    from unsampling_lab.analysis.store import ResultStore

    foreign = tmp_path / "app.sqlite"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE people (name TEXT)")
    before = foreign.read_bytes()
    for open_it in (lambda: ResultStore(foreign), lambda: ul.load_results(foreign)):
        with pytest.raises(ul.UnsamplingError, match=r"SQLite database of another application \(tables: people\)"):
            open_it()
    assert foreign.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["app.sqlite"]
    (tmp_path / "folder.sqlite").mkdir()
    with pytest.raises(ul.UnsamplingError, match="is a folder, not a results store"):
        ResultStore(tmp_path / "folder.sqlite")
    with pytest.raises(ul.UnsamplingError, match="is a folder; load_results takes a results file"):
        ul.load_results(tmp_path / "folder.sqlite")
    with ResultStore(tmp_path / "mine.sqlite") as store:  # a store it wrote: opens again, for reading too
        other = tmp_path / "other.csv"
        other.write_text("a,b\n1,2\n")
        with pytest.raises(ul.UnsamplingError, match="other.csv exists and is not an export of the results store"):
            store.export(other)
        assert other.read_text() == "a,b\n1,2\n"
        mine = store.export(tmp_path / "mine.csv")
        mine.write_text("edited by hand\n")
        with pytest.raises(ul.UnsamplingError, match=r"\(it was changed since\)"):
            store.export(mine)
    snapshot = (tmp_path / "mine.sqlite").read_bytes()
    with ResultStore(tmp_path / "mine.sqlite", readonly=True) as store:
        assert store.frame().empty
        with pytest.raises(ul.UnsamplingError, match="opened for reading only"):
            store.write([], model="", inputs="")
    assert (tmp_path / "mine.sqlite").read_bytes() == snapshot
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    ResultStore("~/x.sqlite").close()
    assert (tmp_path / "home" / "x.sqlite").is_file() and not (tmp_path / "~").exists()


def test_default_method_options_reuse_rows_and_columns_keep_their_order(tiny_model, tiny_latent, tmp_path):
    latent, _ = tiny_latent
    path = tmp_path / "o.csv"
    kw = dict(steps=2, metrics=["latent"], progress=False, path=path)
    first = ul.sweep(tiny_model, latent, {"method": ["edict"]}, **kw)
    counted = CountingModel(tiny_model)
    same = ul.sweep(counted, latent, {"method": ["edict"]}, method_options={"edict": {"mix": 0.93}}, **kw)  # the default
    assert counted.calls == 0 and same.attrs["rows_skipped"] == 2
    assert list(same.columns) == list(first.columns)  # resumed rows keep the columns' order (was alphabetical)
    assert list(pd.read_csv(path, nrows=0).columns)[:len(PARAMS) - 1] == list(first.columns)[:len(PARAMS) - 1]
    other = ul.sweep(tiny_model, latent, {"method": ["edict"]}, method_options={"edict": {"mix": 0.9}}, **kw)
    assert other.attrs["rows_computed"] == 2


# -- processes ---------------------------------------------------------------------------------------------
_WORKER = textwrap.dedent("""
    import os, signal, sys, time
    import torch
    torch.set_num_threads(int(sys.argv[4]))  # the parent's count: its rows then agree bit for bit
    import unsampling_lab as ul
    from unsampling_lab.analysis import store
    from unsampling_lab.testing import tiny_sd_pipeline

    path, latent_file, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    model = ul.load_model(tiny_sd_pipeline(), device="cpu")
    latent = torch.load(latent_file)
    if mode == "kill":  # SIGKILL this process inside the third write, after its INSERTs, before COMMIT
        commits = [0]
        exit_ = store._Transaction.__exit__
        def dying_exit(self, exc_type, *exc):
            commits[0] += 1
            if commits[0] == 1 + 3:  # the first transaction creates the schema
                os.kill(os.getpid(), signal.SIGKILL)
            return exit_(self, exc_type, *exc)
        store._Transaction.__exit__ = dying_exit
    else:  # wait until the other process is ready too, so that both write at once
        open(path + "." + mode, "w").close()
        while len([m for m in ("a", "b") if os.path.exists(path + "." + m)]) < 2:
            time.sleep(0.05)
    grid = {"end_at_step": [0, 1, 2], "positive": ["", "red circle"]}
    ul.sweep(model, latent, grid, steps=4, path=path, metrics=["latent", "noise"], progress=False)
    print("done")
""")


def _spawn(tmp_path, path, latent, mode):
    latent_file = tmp_path / "latent.pt"
    if not latent_file.exists():
        torch.save(latent, latent_file)
    root = str(Path(ul.__file__).resolve().parents[1])
    threads = str(torch.get_num_threads())
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, *sys.path]), OMP_NUM_THREADS=threads)
    return subprocess.Popen([sys.executable, "-c", _WORKER, str(path), str(latent_file), mode, threads], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow  # a subprocess
def test_writer_killed_mid_write_resumes_with_every_finished_row_once(tiny_model, tiny_latent, tmp_path):
    latent, _ = tiny_latent
    path = tmp_path / "killed.sqlite"
    proc = _spawn(tmp_path, path, latent, "kill")
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == -9, err  # SIGKILL
    with ResultStore(path) as store:
        after_kill = store.frame()
    # two settings (2 items each) were committed; the third's INSERTs died with the process
    assert len(after_kill) == 4 and after_kill[["noise_ks", "latent_mse"]].notna().all().all()
    assert _store_counts(path) == ((4, 4), {"latent": 4, "noise": 4})

    counted = CountingModel(tiny_model)
    grid = {"end_at_step": [0, 1, 2], "positive": ["", "red circle"]}
    df = ul.sweep(counted, latent, grid, steps=4, path=path, metrics=["latent", "noise"], progress=False)
    assert df.attrs["rows_skipped"] == 4 and df.attrs["rows_computed"] == 8
    assert counted.calls == (4 + 2) + (4 + 4 + 3 + 2)  # "" with k = 2, then all of "red circle"
    assert _store_counts(path) == ((12, 12), {"latent": 12, "noise": 12})
    fresh = ul.sweep(tiny_model, latent, grid, steps=4, metrics=["latent", "noise"], progress=False)
    # the worker ran the same code on as many threads, so its rows are the in-process rows bit for bit
    assert df["latent_mse"].tolist() == fresh["latent_mse"].tolist()


@pytest.mark.slow  # two subprocesses
def test_two_concurrent_sweeps_on_one_store_write_every_row_once(tiny_latent, tmp_path):
    latent, _ = tiny_latent
    path = tmp_path / "shared.csv"
    procs = [_spawn(tmp_path, path, latent, mode) for mode in ("a", "b")]
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0 and "done" in out, err
    assert _store_counts(tmp_path / "shared.sqlite") == ((12, 12), {"latent": 12, "noise": 12})
    exported = pd.read_csv(path, keep_default_na=False)
    assert len(exported) == 12 and not exported.duplicated(["positive", "end_at_step", "item"]).any()
    assert not list(tmp_path.glob(".shared.csv.*"))  # no temporary export left behind
