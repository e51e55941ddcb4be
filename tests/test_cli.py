"""`python -m unsampling_lab sweep` end to end on a tiny pipeline folder; bad flags exit with code 2 and say why."""
from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
import torch

import unsampling_lab as ul
from unsampling_lab.lab import cli

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one thread

FAST = ["--steps", "3", "--end-at-step", "0", "2", "--cfg", "2", "--normalize", "disable", "enable",
        "--shapes", "2", "--no-progress", "--format", "csv"]


def test_sweep_end_to_end_then_resume(tiny_pipeline_dir, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["sweep", "--model", str(tiny_pipeline_dir), "--device", "cpu", "--positive", "red circle",
            "--edit", "blue square", "--out", str(out), *FAST]
    assert cli.main(argv) == 0
    table = pd.read_csv(out / "results.csv", keep_default_na=False)
    assert len(table) == 2 * 2 * 2 * 2  # end_at_step x normalize x (reconstruction, edit) x images
    assert set(table["edit"]) == {"red circle", "blue square"}
    for name in ("summary.md", "heatmap_latent_mse.png", "heatmap_psnr.png", "noise.png", "latent_stats.png",
                 "strip.png"):
        assert (out / name).stat().st_size > 0, name
    summary = (out / "summary.md").read_text()
    # the best reconstruction goes back to ComfyUI: both formats, read back to the same parameters
    back = ul.comfy.read_workflow(out / "best_api.json")
    assert (out / "best.json").exists() and "best.json" in summary
    assert back.unsample["end_at_step"] in (0, 2) and back.resample["start_at_step"] == back.unsample["end_at_step"]
    assert "VAE-only reference" in summary and "model evaluations" in summary
    capsys.readouterr()
    assert cli.main([*argv, "--no-figures"]) == 0  # rerun: everything is already in the table
    assert "0 rows computed, 16 resumed" in capsys.readouterr().out


def exit_code(argv: list[str]) -> int:
    """cli.main's exit code, whether argparse raised SystemExit (bad flags) or main returned it."""
    try:
        return cli.main(argv)
    except SystemExit as e:
        return int(e.code)


@pytest.mark.parametrize("flags, message", [
    (["--sampler", "eulr"], "unknown sampler 'eulr'; did you mean 'euler'"),
    (["--sampler", "euler_ancestral"], "injects random noise at every step"),
    (["--sampler", "ddim_inverse"], "only steps towards more noise"),
    (["--scheduler", "karas"], "did you mean 'karras'"),
    (["--normalize", "yes"], "unknown normalize mode 'yes'"),
    (["--steps", "0"], "expected a whole number >= 1, got 0"),
    (["--shapes", "two"], "expected a whole number in 1..10000, got 'two'"),
    (["--shapes", "100000"], "expected a whole number in 1..10000, got 100000"),
    (["--cfg", "-1"], "expected a finite number >= 0"),
    (["--steps", "4", "--end-at-step", "4"], "must be < --steps 4"),
    (["--images", "100000"], "for N generated images use --shapes N"),
    (["--device", "banana"], "device 'banana' is not a torch device"),
])
def test_bad_flags_exit_2_with_a_clear_message(flags, message, capsys, tmp_path):
    assert exit_code(["sweep", "--model", str(tmp_path), "--out", str(tmp_path / "o"), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_help_offers_only_samplers_the_sweep_can_run(capsys):
    with pytest.raises(SystemExit):
        cli.main(["sweep", "--help"])
    help_text = capsys.readouterr().out
    assert "dpmpp_2m" in help_text and "ddim_inverse" not in help_text and "euler_ancestral" not in help_text


@pytest.mark.slow  # a subprocess
def test_module_entry_point_and_light_import():
    """One interpreter: `import unsampling_lab` loads neither matplotlib nor pandas, then `-m` rejects a bad flag."""
    code = ("import sys, runpy, unsampling_lab\n"
            "heavy = [m for m in ('matplotlib', 'pandas') if m in sys.modules]\n"
            "assert not heavy, heavy\n"
            "sys.argv = ['unsampling_lab', 'sweep', '--steps', '-3']\n"
            "runpy.run_module('unsampling_lab', run_name='__main__')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 2 and "expected a whole number >= 1" in out.stderr, out.stderr


def test_missing_model_folder_is_a_usage_error(tmp_path, capsys):
    assert exit_code(["sweep", "--model", str(tmp_path), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "not a diffusers pipeline folder" in capsys.readouterr().err


SMALL = ["--steps", "2", "--end-at-step", "0", "--cfg", "1", "--normalize", "disable", "--no-progress",
         "--format", "csv", "--no-figures"]


def _write_pngs(folder, n, size=18):
    import numpy as np
    from PIL import Image

    folder.mkdir()
    for i in range(n):
        Image.fromarray((np.random.RandomState(i).rand(size, size, 3) * 255).astype(np.uint8)).save(folder / f"{i}.png")
    return folder


def test_own_images_in_batches_save_noise_then_continue_from_latent(tiny_pipeline_dir, tmp_path, capsys):
    import unsampling_lab as ul

    folder = _write_pngs(tmp_path / "imgs", 3)  # 18 px: centre-cropped to the tiny VAE's 2-pixel grid (18 stays)
    out = tmp_path / "run"
    argv = ["sweep", "--model", str(tiny_pipeline_dir), "--device", "cpu", "--images", str(folder), "--batch-size", "2",
            "--save-noise", "--out", str(out), *SMALL]
    assert cli.main(argv) == 0
    table = pd.read_csv(out / "results.csv", keep_default_na=False)
    assert sorted(table["item"]) == [0, 1, 2]  # numbered across the two batches
    assert len(list((out / "batches").glob("results_*.csv"))) == 2
    assert pd.read_csv(out / "items.csv")["file"].map(lambda f: f.rsplit("/", 1)[-1]).tolist() == ["0.png", "1.png", "2.png"]
    noise_files = sorted((out / "noise").glob("*.latent"))
    assert len(noise_files) == 2 and ul.load_latent(noise_files[0])["samples"].shape == (2, 4, 9, 9)
    # the saved noise is a ComfyUI LATENT: feed it back as --images (a latent input)
    capsys.readouterr()
    assert cli.main(["sweep", "--model", str(tiny_pipeline_dir), "--device", "cpu", "--images", str(noise_files[1]),
                     "--out", str(tmp_path / "again"), *SMALL]) == 0
    assert "1 rows computed" in capsys.readouterr().out


def test_ctrl_c_says_rows_saved_and_rerun_resumes(tiny_pipeline_dir, tmp_path, capsys, monkeypatch):
    from unsampling_lab.analysis import sweeps

    real, calls = sweeps.sweep, []

    def interrupted_second_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(sweeps, "sweep", interrupted_second_batch)
    argv = ["sweep", "--model", str(tiny_pipeline_dir), "--device", "cpu", "--shapes", "3", "--batch-size", "2",
            "--source", "generate", "--out", str(tmp_path / "run"), *SMALL]
    assert cli.main(argv) == 130
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "2 rows are saved" in err and "rerun the same command to resume" in err
    monkeypatch.setattr(sweeps, "sweep", real)
    assert cli.main(argv) == 0
    assert "1 rows computed, 2 resumed" in capsys.readouterr().out


def test_write_report_from_a_notebook(tiny_model, tiny_latent, tmp_path):
    """The report without the command line: a sweep's table and the outputs its callback kept."""
    from unsampling_lab.lab.report import write_report

    latent, images = tiny_latent
    kept = {}
    df = ul.sweep(tiny_model, latent, {"end_at_step": [0, 1]}, steps=2, images=images, progress=False,
                  callback=lambda rows, out: kept.setdefault("reconstruction", out))
    files = write_report(tiny_model, df, tmp_path / "report", outputs=kept, images=images)
    assert {"heatmap_latent_mse.png", "heatmap_psnr.png", "latent_stats.png", "noise.png", "strip.png"} <= \
        {f.name for f in files[:-1]} and files[-1].name == "summary.md"
    assert all(f.stat().st_size > 0 for f in files)
    summary = files[-1].read_text()
    assert "end_at_step [0, 1]" in summary and "resumed from the store" in summary and "![noise](noise.png)" in summary


def test_a_latent_file_with_nan_is_blamed_on_the_file(tmp_path, capsys):
    """Issue 19 (poor): a NaN .latent was reported as 'images contain NaN ... pixels'; the file is named now."""
    bad = tmp_path / "nan.latent"
    ul.save_latent({"samples": torch.full((1, 4, 8, 8), float("nan"))}, bad)
    assert cli.main(["sweep", "--images", str(bad), "--out", str(tmp_path / "out"), "--no-progress", "--steps", "3",
                     "--end-at-step", "0"]) == 2
    err = capsys.readouterr().err
    assert "nan.latent (latent 0) holds NaN or Inf values" in err and "pixels" not in err
