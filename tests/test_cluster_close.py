"""A successful `--workers N` run says nothing of Dask's on stderr (issue 19 poor case): the local cluster is
closed client first, then each worker given time to exit, then the cluster (`ul.close_cluster`)."""
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
