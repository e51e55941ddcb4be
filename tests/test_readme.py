"""The README's "API in ten lines" runs as written, on the bundled model."""
from __future__ import annotations

import re
import warnings
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


def test_the_readme_methods_sweep_runs(tmp_path, monkeypatch):
    """"Which method works for your image and edit" is one sweep: the README's block, on one bundled image."""
    if not Path(ul.BUNDLED_MODEL, "model_index.json").exists():
        pytest.skip("bundled model not installed")
    from unsampling_lab.bundled.shapes import make_shapes

    torch.set_num_threads(1)
    monkeypatch.chdir(tmp_path)
    text = README.read_text()
    code = re.search(r"```python\n(.*?)```", text[text.index("Which method works for"):], re.S).group(1)
    model = ul.load_model(device="cpu")
    batch = make_shapes(1, seed=5)
    namespace: dict = dict(ul=ul, model=model, latent=model.encode(batch.images), images=batch.images,
                           caption=batch.captions[0], edited_caption=f"blue {batch.shapes[0]}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ul.inversion.InversionWarning)  # non-converged steps: reported, not the point
        exec(compile(code, "README.md", "exec"), namespace)
    df = namespace["df"]
    assert set(df["method"]) == {"unsampler", "fixed_point", "edict"} and len(df) == 6
    assert (tmp_path / "methods.sqlite").exists()
    assert df.loc[df["method"] == "fixed_point", "nfe"].min() > df.loc[df["method"] == "unsampler", "nfe"].max()

