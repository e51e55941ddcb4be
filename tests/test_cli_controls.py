"""The sweep CLI's editing flags: --control (swept), --control-option, --direct; in-process on the bundled model."""
from __future__ import annotations

import pandas as pd
import pytest

from unsampling_lab.lab import cli

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one thread

BASE = ["sweep", "--shapes", "1", "--steps", "3", "--end-at-step", "0", "--cfg", "1", "--resample-cfg", "3",
        "--normalize", "disable", "--edit", "blue circle", "--no-figures", "--no-progress", "--format", "csv"]


def exit_code(argv: list[str]) -> int:
    try:
        return cli.main(argv)
    except SystemExit as e:
        return int(e.code)


def test_control_and_direct_are_swept_and_written_to_the_table_then_resume(tmp_path, capsys):
    argv = [*BASE, "--out", str(tmp_path), "--control", "prompt_swap", "p2p", "--control-option", "p2p:self_steps=0.2",
            "--direct", "no", "yes"]
    assert cli.main(argv) == 0
    df = pd.read_csv(tmp_path / "results.csv")
    # edit None / "blue circle" x (prompt_swap, p2p, p2p + direct): prompt_swap + direct is skipped
    assert list(zip(df["control"], df["direct"])) == [("prompt_swap", False), ("p2p", False), ("p2p", True)] * 2
    assert set(df.loc[df["control"] == "p2p", "control_options"]) == {'{"self_steps": 0.2}'}
    assert df.loc[df["control"] == "prompt_swap", "control_options"].isna().all()
    assert "6 rows computed, 0 resumed" in capsys.readouterr().out
    summary = (tmp_path / "summary.md").read_text()
    assert "| control |" in summary and "p2p" in summary, "the summary keeps swept controls apart"
    assert cli.main(argv) == 0
    assert "0 rows computed, 6 resumed" in capsys.readouterr().out


@pytest.mark.parametrize("flags, message", [
    (["--control", "p2pp"], "unknown editing control 'p2pp'; did you mean 'p2p'"),
    (["--control-option", "cross_steps=0.5"], "expected CONTROL.KEY=VALUE"),
    (["--direct", "maybe"], "expected yes or no, got 'maybe'"),
    (["--direct"], "control='prompt_swap' is meaningless"),
    (["--control", "p2p", "--control-option", "pnp.qk_steps=0.2"], "control_options names 'pnp'"),
    (["--control", "p2p", "--control-option", "p2p.cross_steps=2"], "option cross_steps must be in [0, 1]"),
])
def test_bad_control_flags_exit_2_in_one_line(flags, message, tmp_path, capsys):
    assert exit_code([*BASE, "--out", str(tmp_path / "o"), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err


def test_help_documents_the_editing_flags(capsys):
    with pytest.raises(SystemExit):
        cli.main(["sweep", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--control NAME [NAME ...]" in out and "p2p_refine" in out
    assert "--direct no yes sweeps both" in out and "CONTROL.KEY=VALUE" in out
