"""The CLI's start and end (issue 19 poor cases): Ctrl-C while it starts is one line and status 130, and a
successful `--workers N` run says nothing of Dask's on stderr (the local cluster is closed client first, then each
worker given time to exit, then the cluster: `ul.close_cluster`). Each test runs the CLI in a subprocess."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

#: sitecustomize for the CLI's processes: each Dask worker takes 6 s to exit (Dask's own close kills it after 4 s
#: with "Worker process still alive after 4.0 seconds, killing"; torch and a model made real workers this slow on
#: a loaded machine).
_WORKERS_EXIT_SLOWLY = """
import atexit, multiprocessing, time
atexit.register(lambda: multiprocessing.parent_process() is not None and time.sleep(6))
"""


@pytest.mark.slow  # a subprocess running a 2-worker Dask cluster (about 40 s)
def test_cli_workers_run_ends_without_dask_warnings(tiny_pipeline_dir, tmp_path):
    pytest.importorskip("distributed")
    (tmp_path / "sitecustomize.py").write_text(_WORKERS_EXIT_SLOWLY)
    environ = dict(os.environ, OMP_NUM_THREADS="1",
                   PYTHONPATH=os.pathsep.join([str(tmp_path), str(Path(__file__).resolve().parents[1])]))
    run = subprocess.run([sys.executable, "-m", "unsampling_lab", "sweep", "--model", str(tiny_pipeline_dir), "--device",
                          "cpu", "--workers", "2", "--steps", "2", "--end-at-step", "0", "--cfg", "1", "--normalize",
                          "disable", "--no-progress", "--no-figures", "--format", "csv", "--out", str(tmp_path / "run")],
                         capture_output=True, text=True, env=environ, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stderr == "", run.stderr
    assert "2 rows computed" in run.stdout


#: sitecustomize for a CLI subprocess: Ctrl-C (SIGINT to itself) the moment the library UL_SIGINT_AT starts importing.
_CTRL_C_AT_IMPORT = """
import builtins, os, signal
_target, _real = os.environ["UL_SIGINT_AT"], builtins.__import__
def _import(name, *args, **kwargs):
    global _target
    if name == _target:
        _target = None
        os.kill(os.getpid(), signal.SIGINT)
    return _real(name, *args, **kwargs)
builtins.__import__ = _import
"""


@pytest.mark.slow  # a subprocess each
@pytest.mark.parametrize("library, fragment", [("torch", "unsampling-lab: interrupted while starting; nothing was run"),
                                               ("diffusers", "unsampling-lab sweep: interrupted before any row was saved")])
def test_ctrl_c_at_start_up_is_one_line_and_status_130(tmp_path, library, fragment):
    """Issue 19 (poor): Ctrl-C while `import unsampling_lab` imports torch, or while the model loads (diffusers),
    printed a traceback. A shell sees status 130 either way: the process exits 130, or (when a library's
    nested interpreter call saw the interrupt first) Python ends it by the SIGINT itself, which shells report as 130."""
    import signal

    (tmp_path / "sitecustomize.py").write_text(_CTRL_C_AT_IMPORT)
    environ = dict(os.environ, OMP_NUM_THREADS="1", UL_SIGINT_AT=library,
                   PYTHONPATH=os.pathsep.join([str(tmp_path), str(Path(__file__).resolve().parents[1])]))
    # Ctrl-C reaches the CLI as in a terminal: a shell runs background jobs (`cmd &`, nohup) with SIGINT ignored,
    # which a child inherits and which then makes Python install no KeyboardInterrupt handler at all
    run = subprocess.run([sys.executable, "-m", "unsampling_lab", "sweep", "--no-progress", "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, env=environ, cwd=tmp_path, timeout=300,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert run.returncode in (130, -signal.SIGINT), (run.returncode, run.stderr)
    assert run.stderr.strip() == fragment, run.stderr
    assert not (tmp_path / "out").exists()


def _sigint_ignored() -> bool:
    import signal

    return signal.getsignal(signal.SIGINT) == signal.SIG_IGN


@pytest.mark.slow  # a Dask cluster
def test_local_cluster_workers_leave_ctrl_c_to_the_calling_process():
    """Ctrl-C in a terminal reaches the whole process group: each worker printed a KeyboardInterrupt traceback while
    the CLI was stopping the run. The workers start with SIGINT ignored; this process keeps its own handler."""
    pytest.importorskip("distributed")
    import signal

    import unsampling_lab as ul

    before = signal.getsignal(signal.SIGINT)
    client = ul.local_cluster(1)
    try:
        assert set(client.run(_sigint_ignored).values()) == {True}
        assert signal.getsignal(signal.SIGINT) is before
    finally:
        ul.close_cluster(client)
