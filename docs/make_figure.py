"""Draw the README's picture: original | unsampled noise | reconstruction | edit, on the bundled model.

    python docs/make_figure.py            # writes docs/strip.png

Each row: a held-out shape, the partial inversion to end_at_step, the resample with its own caption,
and the resample with the colour changed in the prompt ("red circle" -> "blue circle").
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import unsampling_lab as ul  # noqa: E402
from unsampling_lab.analysis import plots
from unsampling_lab.bundled import shapes  # noqa: E402

STEPS, END_AT_STEP, CFG = 20, 8, 3.0


def main() -> None:
    torch.set_num_threads(2)
    model = ul.load_model(device="cpu")
    batch = shapes.make_shapes(4, seed=2024)
    edits = shapes.recolour_captions(batch, shift=2)
    latent = model.encode(batch.images)
    traj = ul.unsample_trajectory(model, latent, steps=STEPS, cfg=CFG, positive=batch.captions, negative="", progress=False)
    noisy = ul.unsampled(model, traj, END_AT_STEP, like=latent)
    kw = dict(steps=STEPS, start_at_step=END_AT_STEP, cfg=CFG, negative="", progress=False)
    reconstruction = model.decode(ul.resample(model, noisy, positive=batch.captions, **kw))
    edit = model.decode(ul.resample(model, noisy, positive=edits, **kw))
    axes = plots.image_strip(batch.images, noisy["samples"], reconstruction, edit,
                             titles=["original", f"unsampled (end_at_step {END_AT_STEP})", "reconstruction", "edit"])
    for row, (caption, target) in enumerate(zip(batch.captions, edits)):
        axes[row, 0].set_ylabel(caption, fontsize=7)
        axes[row, 3].set_xlabel(target, fontsize=7)
    out = Path(__file__).with_name("strip.png")
    plt.gcf().tight_layout()
    plt.gcf().savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
