"""The README's "API in ten lines" runs as written, on the bundled model."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import unsampling_lab as ul

README = Path(__file__).resolve().parents[1] / "README.md"


def _api_block() -> str:
    text = README.read_text()
    section = text[text.index("## The API in ten lines"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_api_block_runs(tmp_path, monkeypatch):
    if not Path(ul.BUNDLED_MODEL, "model_index.json").exists():
        pytest.skip("bundled model not installed")
    torch.set_num_threads(1)
    monkeypatch.chdir(tmp_path)
    code = _api_block()
    assert len([line for line in code.splitlines() if line.strip() and not line.startswith(" ")]) <= 11
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["noise"]["samples"].shape == namespace["latent"]["samples"].shape
    assert namespace["traj"].n_steps == 20
    assert len(namespace["table"]) == 6 and (tmp_path / "sweep.sqlite").exists()
    assert namespace["back"]["samples"].shape == namespace["latent"]["samples"].shape
