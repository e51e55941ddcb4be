"""The attention-map view renders what ul.edit recorded (synthetic maps; no model)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from unsampling_lab.analysis import attention_plots  # noqa: E402
from unsampling_lab.editing import AttentionMaps  # noqa: E402


def _maps() -> AttentionMaps:
    g = torch.Generator().manual_seed(0)
    maps = {"a": torch.rand(3, 2, 64, 5, generator=g).softmax(-1), "b": torch.rand(3, 2, 16, 5, generator=g).softmax(-1)}
    tokens = [["<s>", "red", "circle", "</s>", "</s>"], ["<s>", "blue", "circle", "</s>", "</s>"]]
    return AttentionMaps(maps, [0, 1, 2], tokens)


def test_token_by_step_is_the_mean_over_cells_and_layers():
    att = _maps()
    want = (att.maps["a"][:, 1].mean(1) + att.maps["b"][:, 1].mean(1)).T / 2
    torch.testing.assert_close(att.token_by_step(branch="target"), want)


def test_attention_plots_draw(tmp_path):
    att = _maps()
    ax = attention_plots.attention_by_step(att)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["<s>", "blue", "circle", "</s>"]
    ax.figure.savefig(tmp_path / "a.png")
    ax2 = attention_plots.attention_map(att, 1, step=2, branch="source")
    assert ax2.get_title() == "'red', step 2"
    plt.close("all")
