"""Every teaching notebook states what it teaches, ends with takeaways and exercises, and is committed clean.

Structure only (nbmake runs them): the first cell lists learning objectives ("You will learn"), a
markdown cell headed "## Takeaways" exists, at least two markdown cells start with "**Exercise", each
followed by a code cell tagged "solution" whose source is hidden, and no cell carries outputs or an
execution count.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("0[1-9]_*.ipynb"))


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def _text(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def test_all_eight_notebooks_are_found():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05", "06", "07", "08"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_objectives_takeaways_and_exercises(path):
    cells = _cells(path)
    assert cells[0]["cell_type"] == "markdown" and "You will learn" in _text(cells[0]), \
        f"{path.name}: the first cell must say what the notebook teaches ('You will learn ...')"
    takeaways = [c for c in cells if c["cell_type"] == "markdown" and "## Takeaways" in _text(c)]
    assert takeaways, f"{path.name}: no '## Takeaways' markdown cell"
    exercises = [i for i, c in enumerate(cells) if c["cell_type"] == "markdown" and _text(c).lstrip().startswith("**Exercise")]
    assert len(exercises) >= 2, f"{path.name}: {len(exercises)} exercise cells, need at least 2"
    assert min(exercises) > cells.index(takeaways[0]), f"{path.name}: exercises come after the takeaways"
    for i in exercises:
        assert i + 1 < len(cells), f"{path.name}: exercise cell {i} is the last cell; it needs a solution or check"
        nxt = cells[i + 1]
        assert nxt["cell_type"] == "code" and "solution" in nxt["metadata"].get("tags", []), \
            f"{path.name}: exercise cell {i} is not followed by a code cell tagged 'solution'"
        assert nxt["metadata"].get("jupyter", {}).get("source_hidden") is True, \
            f"{path.name}: the solution after exercise cell {i} is not hidden"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path):
    for i, c in enumerate(_cells(path)):
        if c["cell_type"] == "code":
            assert not c.get("outputs"), f"{path.name}: cell {i} has outputs committed; strip them"
            assert c.get("execution_count") is None, f"{path.name}: cell {i} has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_progress_bars(path):
    """Every engine call in a notebook that could draw a tqdm bar passes progress=False."""
    for i, c in enumerate(_cells(path)):
        if c["cell_type"] != "code":
            continue
        for name in ("ul.unsample(", "ul.resample(", "ul.sweep(", "ul.unsample_trajectory("):
            src = _text(c)
            start = 0
            while (j := src.find(name, start)) >= 0:
                depth, k = 0, j + len(name) - 1
                while k < len(src):
                    depth += {"(": 1, ")": -1}.get(src[k], 0)
                    if depth == 0:
                        break
                    k += 1
                call = src[j:k + 1]
                assert "progress=False" in call or "**" in call, f"{path.name}: cell {i}: {call[:60]!r}... draws a progress bar"
                start = k
