"""The benchmark runner on the bundled model: rows in the store, resumable, tables with NaN counts and skips."""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pytest
import torch

import unsampling_lab as ul
from unsampling_lab.analysis.piebench import runner
from unsampling_lab.analysis.piebench.runner import benchmark, markdown_table
from unsampling_lab.errors import UnsamplingError

FAST = dict(steps=2, edit_cfg=2.0, limit=4, networks=(), progress=False)


@pytest.fixture(scope="module")
def bundled():
    return ul.load_model()


@pytest.fixture(scope="module")
def first_run(bundled, tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "bench.sqlite"
    return path, benchmark(bundled, "pie-shapes", methods=["unsampler", "negative_prompt"], path=path, **FAST)


def test_rows_tables_and_what_was_skipped(first_run):
    _, result = first_run
    assert len(result.rows) == 2 * 4 and set(result.rows["method"]) == {"unsampler", "negative_prompt"}
    table = result.table.set_index("method")
    assert (table["n"] == 4).all()
    assert table["psnr_unedit_part_nan"].tolist() == [0, 0]
    assert math.isnan(table.loc["unsampler", "structure_distance"])  # no DINO asked for: a column of NaN, said why
    assert "structure_distance: not asked for" in table.loc["unsampler", "skipped_metrics"]
    assert {"change attribute color", "change object"} == set(result.categories["category"])
    assert (result.rows["nfe"] == result.rows["nfe_inversion"] + 2 * 2).all()  # 2 steps x (source + target) at cfg 2
    assert "torch" in result.run["versions"] and result.run["weights"]["dino"] == "missing"
    text = markdown_table(result.table)
    assert "Background PSNR" in text and "skipped" in text and text.count("\n") == 3


def test_a_rerun_computes_nothing_and_a_new_method_only_its_rows(bundled, first_run, monkeypatch):
    path, result = first_run
    calls = []
    real = runner._run_chunk
    monkeypatch.setattr(runner, "_run_chunk", lambda *a, **k: calls.append(a[1].method) or real(*a, **k))
    again = benchmark(bundled, "pie-shapes", methods=["unsampler", "negative_prompt"], path=path, **FAST)
    assert calls == []
    assert again.rows.sort_values(["method", "case"])["psnr_unedit_part"].tolist() == \
        result.rows.sort_values(["method", "case"])["psnr_unedit_part"].tolist()
    benchmark(bundled, "pie-shapes", methods=["unsampler", "edict"], path=path, **FAST)
    assert calls == ["edict"]  # 4 cases in one chunk


def test_bad_settings_are_one_line_errors(bundled):
    with pytest.raises(UnsamplingError, match="did you mean 'edict'|Valid inversion methods"):
        benchmark(bundled, methods=["edikt"], **FAST)
    with pytest.raises(UnsamplingError, match="direct=True needs an attention control"):
        benchmark(bundled, methods=["unsampler"], direct=[True], **FAST)
    with pytest.raises(UnsamplingError, match="batch_size"):
        benchmark(bundled, batch_size=0, **FAST)


#: Cases of the killed run: one per chunk, so most chunks are still to do when it is killed after its second row.
N_KILLED = 24


@pytest.mark.slow
def test_killed_mid_run_resumes_with_every_finished_row_once(tmp_path):
    path = tmp_path / "bench.sqlite"
    script = textwrap.dedent(f"""
        import unsampling_lab as ul
        from unsampling_lab.analysis.piebench.runner import benchmark
        benchmark(ul.load_model(), "pie-shapes", methods=["unsampler"], steps=2, edit_cfg=2.0, limit={N_KILLED},
                  networks=(), progress=False, batch_size=1, path={str(path)!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": os.getcwd()})
    import sqlite3

    deadline = time.time() + 300
    done = 0
    while time.time() < deadline and proc.poll() is None:
        if path.exists():
            try:
                with sqlite3.connect(path) as db:
                    done = db.execute("SELECT COUNT(*) FROM rows").fetchone()[0]
            except sqlite3.OperationalError:
                done = 0
            if done >= 2:
                break
        time.sleep(0.01)  # a row takes tens of ms here: poll faster than that
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with sqlite3.connect(path) as db:
        kept = db.execute("SELECT COUNT(*) FROM rows").fetchone()[0]  # what the killed run had committed
    assert 2 <= kept < N_KILLED, "the run finished or never wrote before it was killed"
    calls = []
    real = runner._run_chunk
    runner._run_chunk = lambda *a, **k: calls.append(1) or real(*a, **k)
    try:
        result = benchmark(ul.load_model(), "pie-shapes", methods=["unsampler"], steps=2, edit_cfg=2.0, limit=N_KILLED,
                           networks=(), progress=False, batch_size=1, path=path)
    finally:
        runner._run_chunk = real
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM rows").fetchone()[0] == N_KILLED
    assert len(result.rows) == N_KILLED and len(calls) == N_KILLED - kept  # one chunk per missing case, none computed twice


def test_bench_command_writes_the_table_store_and_run_record(tmp_path, capsys):
    from unsampling_lab.lab import cli

    out = tmp_path / "bench"
    argv = ["bench", "--method", "unsampler", "--steps", "1", "--edit-cfg", "2", "--limit", "2", "--out", str(out),
            "--no-progress"]
    assert cli.main(argv) == 0
    for name in ("results.sqlite", "table.md", "table.csv", "categories.csv", "pareto.png", "run.json"):
        assert (out / name).stat().st_size > 0, name
    assert "Background PSNR" in capsys.readouterr().out
    assert cli.main([*argv[:-3], "--weights", "vgg=x", "--out", str(out)]) == 2
    assert "--weights takes NET=PATH" in capsys.readouterr().err


@pytest.mark.slow
def test_chunks_on_a_process_pool_equal_the_in_process_rows(first_run, tmp_path):
    from concurrent.futures import ProcessPoolExecutor
    import multiprocessing

    _, here = first_run
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        there = benchmark(ul.ModelSource(threads=torch.get_num_threads()), "pie-shapes",
                          methods=["unsampler", "negative_prompt"], path=tmp_path / "pool.sqlite", executor=pool, **FAST)
    cols = ["method", "case", "psnr_unedit_part", "ssim_unedit_part", "psnr_whole", "edit_success", "nfe"]
    a = here.rows[cols].sort_values(["method", "case"]).reset_index(drop=True)
    b = there.rows[cols].sort_values(["method", "case"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b, rtol=1e-5)
    with pytest.raises(UnsamplingError, match="ModelSource"):
        benchmark(ul.load_model(), executor=pool, **FAST)


def test_an_attention_control_row_runs_through_the_editing_layer(bundled):
    """P2P (+ Direct Inversion) rows: both branches in one batch; the nfe counts the inversion and the edit."""
    result = benchmark(bundled, "pie-shapes", methods=["unsampler"], controls=["prompt_swap", "p2p"], direct=[False, True],
                       **{**FAST, "limit": 2})
    table = result.table.set_index(["control", "direct"])
    assert set(table.index) == {("prompt_swap", False), ("p2p", False), ("p2p", True)}  # no prompt_swap + direct
    rows = result.rows.set_index(["control", "direct", "case"])
    p2p = result.rows[result.rows["control"] == "p2p"]
    assert (p2p["nfe"] == p2p["nfe_inversion"] + 2).all()  # 2 steps: one batched call each for both branches
    swap = result.rows[result.rows["control"] == "prompt_swap"]
    assert (swap["nfe"] == swap["nfe_inversion"] + 2 * 2).all()  # two resamples of 2 steps
    # Direct Inversion pins the source branch to the inversion path: its reconstruction is the VAE round trip's
    direct = rows.loc[("p2p", True)]["psnr_whole"]
    plain = rows.loc[("p2p", False)]["psnr_whole"]
    assert (direct > plain).all()


def test_each_cases_blend_words_are_a_row_key_of_their_own(bundled, tmp_path):
    """blend=["none", "case"]: distinct rows and table lines; a case's row records its words; a rerun computes nothing."""
    path = tmp_path / "blend.sqlite"
    opts = dict(methods=["unsampler"], controls=["prompt_swap", "p2p"], direct=[True], path=path, **{**FAST, "limit": 2})
    result = benchmark(bundled, "pie-shapes", blend=["none", "case"], **opts)
    table = result.table.set_index(["control", "blend"])
    assert set(table.index) == {("p2p", "none"), ("p2p", "case")}  # prompt_swap has no source branch to pin
    rows = result.rows.set_index(["blend", "case"])
    cases, _ = ul_pie_shapes(2)
    for c in cases:
        assert rows.loc[("case", c.key), "blend_words"] == " ".join(c.blended_words) and c.blended_words
    assert not (rows.loc["case"]["psnr_unedit_part"] == rows.loc["none"]["psnr_unedit_part"]).all()
    assert "p2p + case blend" in markdown_table(result.table)
    calls = []
    real = runner._run_cases
    runner._run_cases = lambda *a, **k: calls.append(1) or real(*a, **k)
    try:
        benchmark(bundled, "pie-shapes", blend="case", **opts)
    finally:
        runner._run_cases = real
    assert calls == []


def test_a_case_without_blended_words_runs_unblended_as_pnp_inversions_evaluation(bundled, tmp_path):
    from dataclasses import replace

    cases, _ = ul_pie_shapes(2)
    bare = [replace(c, blended_words=()) for c in cases]
    opts = dict(methods=["unsampler"], controls=["p2p"], path=tmp_path / "b.sqlite", **{**FAST, "limit": None})
    plain = benchmark(bundled, bare, blend="none", **opts).rows
    none_given = benchmark(bundled, bare, blend="case", **opts).rows  # one batch of both, no blend: the plain rows
    assert none_given["psnr_unedit_part"].tolist() == plain["psnr_unedit_part"].tolist()
    assert none_given["blend_words"].tolist() == ["", ""]
    # split into two batches, order kept; the same store: the case's words key its row, so case 0 is computed anew
    mixed = benchmark(bundled, [cases[0], bare[1]], blend="case", **opts).rows
    assert mixed["case"].tolist() == [c.key for c in cases]
    assert mixed["blend_words"].tolist() == [" ".join(cases[0].blended_words), ""]


def test_bad_blend_settings_are_one_line_errors(bundled):
    from dataclasses import replace

    with pytest.raises(UnsamplingError, match="did you mean 'case'|Valid blend"):
        benchmark(bundled, controls=["p2p"], blend="cases", **FAST)
    with pytest.raises(UnsamplingError, match="give one or the other"):
        benchmark(bundled, controls=["p2p"], blend="case", control_options={"p2p": {"blend_words": ("circle",)}}, **FAST)
    with pytest.raises(UnsamplingError, match="blend='case' a control with a local blend"):
        benchmark(bundled, controls=["prompt_swap"], blend="case", **FAST)
    cases, _ = ul_pie_shapes(2)
    with pytest.raises(UnsamplingError, match=r"blended words of case\(s\) \['0001'\] are not words of their prompts"):
        benchmark(bundled, [cases[0], replace(cases[1], blended_words=("dog",))], controls=["p2p"], blend="case",
                  **{**FAST, "limit": None})


def test_bench_command_takes_the_case_blend(tmp_path, capsys):
    from unsampling_lab.lab import cli

    argv = ["bench", "--method", "unsampler", "--control", "p2p", "--blend", "both", "--steps", "1", "--edit-cfg", "2",
            "--limit", "2", "--out", str(tmp_path / "bench"), "--no-progress"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "| unsampler | p2p + case blend | no |" in out and "| unsampler | p2p | no |" in out
    bad = [*argv[:-1], "--control-option", "p2p.blend_threshol=0.6", "--no-progress"]
    assert cli.main(bad) == 2
    assert "did you mean 'blend_threshold'" in capsys.readouterr().err


def ul_pie_shapes(n):
    from unsampling_lab.analysis.piebench.suite import pie_shapes

    cases, targets = pie_shapes()
    return cases[:n], targets


def test_pnp_inversion_preset_runs_their_p2p_per_case_in_rows_of_its_own(bundled, tmp_path, monkeypatch):
    """p2p='pnp-inversion': each case refined with cross 0.4 / self 0.6, its blended words as the local blend and its
    target word x2 (a case without blended words: the refine alone); rows and table lines apart from plain p2p's."""
    from dataclasses import replace

    import unsampling_lab.editing as editing

    cases, _ = ul_pie_shapes(2)
    bare = replace(cases[1], key="bare", blended_words=())
    calls = []
    real = editing.edit_image
    monkeypatch.setattr(editing, "edit_image", lambda *a, **k: calls.append(k) or real(*a, **k))
    opts = dict(methods=["unsampler"], controls=["p2p"], path=tmp_path / "p.sqlite", **{**FAST, "limit": None})
    plain = benchmark(bundled, [cases[0], bare], **opts)
    assert [c["control"] for c in calls] == ["p2p"] and "words" not in calls[0]
    calls.clear()
    result = benchmark(bundled, [cases[0], bare], p2p="pnp-inversion", blend=["none", "case"], **opts)
    assert len(calls) == 2  # the blend axis collapses to the case blend; the bare case in its own batch
    blended, alone = calls
    assert blended["control"] == alone["control"] == "p2p_refine"
    assert (blended["cross_steps"], blended["self_steps"], alone["cross_steps"], alone["self_steps"]) == (0.4, 0.6, 0.4, 0.6)
    assert blended["blend_words"] == (cases[0].blended_words,)
    assert blended["words"] == ((cases[0].blended_words[1],),) and blended["scale"] == 2.0
    assert not {"words", "scale", "blend_words"} & set(alone)
    rows = result.rows.set_index("case")
    assert set(result.rows["p2p"]) == {"pnp-inversion"} and set(result.rows["blend"]) == {"case"}
    assert rows.loc["bare", "blend_words"] == "" and rows.loc[cases[0].key, "blend_words"] == " ".join(cases[0].blended_words)
    assert rows.loc[cases[0].key, "psnr_unedit_part"] != plain.rows.set_index("case").loc[cases[0].key, "psnr_unedit_part"]
    assert "| unsampler | p2p as PnP Inversion (refine, target word x2, cross 0.4, self 0.6) + case blend | no |" in \
        markdown_table(result.table)
    calls.clear()
    both = benchmark(bundled, [cases[0], bare], controls=["p2p"], methods=["unsampler"], path=tmp_path / "p.sqlite",
                     **{**FAST, "limit": None})  # the same store: plain p2p's rows are found, not recomputed
    assert calls == [] and set(both.rows["p2p"]) == {"default"}


def test_bad_pnp_inversion_preset_settings_are_one_line_errors(bundled):
    from dataclasses import replace

    with pytest.raises(UnsamplingError, match="did you mean 'pnp-inversion'|Valid p2p preset"):
        benchmark(bundled, controls=["p2p"], p2p="pnp_inversion", **FAST)
    with pytest.raises(UnsamplingError, match="sets how control 'p2p' runs; add 'p2p' to controls"):
        benchmark(bundled, controls=["p2p_refine"], p2p="pnp-inversion", **FAST)
    with pytest.raises(UnsamplingError, match=r"sets \['cross_steps'\] per case .* leave them out"):
        benchmark(bundled, controls=["p2p"], p2p="pnp-inversion", control_options={"p2p": {"cross_steps": 0.8}}, **FAST)
    cases, _ = ul_pie_shapes(2)
    odd = replace(cases[1], blended_words=cases[1].blended_words[::-1])  # ("cross", "triangle"): target "red cross"
    with pytest.raises(UnsamplingError, match=r"case\(s\) \['0001'\] have not two blended words or the second is not"):
        benchmark(bundled, [cases[0], odd], controls=["p2p"], p2p="pnp-inversion", **{**FAST, "limit": None})


def test_bench_command_takes_the_pnp_inversion_preset(tmp_path, capsys):
    from unsampling_lab.analysis.piebench.runner import P2P_PRESETS
    from unsampling_lab.lab import cli

    argv = ["bench", "--method", "unsampler", "--control", "p2p", "--p2p", "pnp-inversion", "--steps", "1", "--edit-cfg",
            "2", "--limit", "1", "--out", str(tmp_path / "bench"), "--no-progress"]
    assert cli.main(argv) == 0
    assert "| unsampler | p2p as PnP Inversion (refine, target word x2, cross 0.4, self 0.6) + case blend | no |" in \
        capsys.readouterr().out
    for preset in P2P_PRESETS:  # the flag takes exactly the runner's presets
        assert cli.build_parser().parse_args([*argv[:5], "--p2p", preset]).p2p == preset
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args([*argv[:5], "--p2p", "pnp"])
