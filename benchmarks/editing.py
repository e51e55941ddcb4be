"""Editing with attention control on the bundled model: inversion method x control, the field's protocol.

    python benchmarks/editing.py [--n 16] [--steps 20] [--cfg 3] [--methods unsampler ...] [--controls ...] [--threads 2]

Images: `make_shapes(n, seed=123456)`; edit: the colour word swap `shapes.recolour_captions` ("red circle" ->
"green circle"), whose object mask is exact (`shapes.shape_masks`, the generator's own coverage). Protocol
(`ul.editing.invert_for_edit` + `ul.edit`): invert with the source caption at cfg 1 (null_text: at the edit
cfg), euler, normal; edit at cfg w. Controls: prompt swap (no control), P2P word swap (cross 0.8, self 0.4),
P2P + Direct Inversion (the source branch pinned to the inversion path; EDICT is exact, so it has no
separate row), the same + local blend on the shape word (threshold 0.7: on these 8x8 latents the maps are
broad, and at P2P's 0.3 the mask covers every cell), PnP (conv2 features of up_blocks.0.resnets.1 for 0.8 of the steps, self-attention q/k of the
later decoder layers for 0.5).
Columns: background PSNR / SSIM of the decoded edit against the source image outside the object (pixels of
coverage 0; SSIM on both images with the object zeroed, as PIE-Bench), IoU of the detector's foreground of
the edit with the exact object (coverage > 0.5), edit success (the detector sees the new colour and the
source's shape) with its Wilson 95% interval, NFE (inversion + edit; null_text's gradient steps included)
and seconds (inversion + edit); last, the background PSNR of the source branch itself (what the target's
maps and features come from: the image at cfg w without Direct Inversion, the inversion path with it). The first row is the VAE round trip (the ceiling every edit decodes through).
Then the editing overhead: ul.edit (P2P) against a plain ul.resample of the same 2B items, interleaved rounds,
and how much of the latent the local-blend mask covers against the object's own cells (--skip-table: only these).
"""
from __future__ import annotations

import argparse
import math
import statistics
import time
import warnings

import torch

import unsampling_lab as ul
from unsampling_lab.analysis import metrics
from unsampling_lab.bundled import detector, shapes
from unsampling_lab.editing import invert_for_edit

METHODS = ("unsampler", "negative_prompt", "null_text", "fixed_point", "edict")
CONTROLS = {"prompt swap": ("prompt_swap", False, {}), "P2P": ("p2p", False, {}), "P2P + Direct": ("p2p", True, {}),
            "P2P + Direct + blend": ("p2p", True, {"blend_words": shapes.SHAPES, "blend_threshold": 0.7}),
            "PnP": ("pnp", False, {})}


def wilson(k: int, n: int) -> tuple[float, float]:
    """Wilson (1927) score interval for k successes of n (`ul.metrics.wilson_interval`)."""
    return ul.metrics.wilson_interval(k / n if n else math.nan, n)


def scores(images: torch.Tensor, batch: shapes.ShapesBatch, coverage: torch.Tensor, targets: list[str]) -> dict:
    """Background PSNR/SSIM against the source images (the mean over background pixels only; PIE-Bench's
    convention, `analysis.piebench`, averages the masked images over the whole image), IoU with the exact object,
    edit success."""
    bg = (coverage == 0).float()[..., None]  # [B, H, W, 1]
    err = ((images - batch.images) ** 2 * bg).flatten(1).sum(1) / (bg.flatten(1).sum(1) * 3)
    psnr = metrics.psnr_from_mse(err.clamp_min(1e-10))
    ssim = metrics.ssim(images * bg, batch.images * bg)
    found = detector.detect(images)
    iou = detector.foreground_iou(found.masks, coverage > 0.5)
    want = [t.split()[0] for t in targets]
    ok = [c == w and s == s0 for c, s, w, s0 in zip(found.colours, found.shapes, want, batch.shapes)]
    return dict(psnr=float(psnr.mean()), ssim=float(ssim.mean()), iou=float(iou.mean()), ok=sum(ok), n=len(ok))


def overhead(model, latent, src, tgt, *, steps: int, cfg: float, rounds: int) -> None:
    inv = ul.invert(model, latent, steps=steps, positive=src, progress=False)
    doubled = {"samples": torch.cat([inv.noise["samples"]] * 2)}
    times: dict[str, list[float]] = {"plain resample of 2B": [], "edit (P2P)": [], "edit (prompt swap)": []}
    for _ in range(rounds):  # interleaved: this machine's speed drifts between runs
        t = time.perf_counter()
        ul.resample(model, doubled, steps=steps, cfg=cfg, positive=src + tgt, progress=False)
        times["plain resample of 2B"].append(time.perf_counter() - t)
        for label, control in (("edit (P2P)", "p2p"), ("edit (prompt swap)", "prompt_swap")):
            t = time.perf_counter()
            ul.edit(model, inv, source=src, target=tgt, control=control, cfg=cfg)
            times[label].append(time.perf_counter() - t)
    base = statistics.median(times["plain resample of 2B"])
    print(f"\n## editing overhead ({len(src)} images, {steps} steps, cfg {cfg:g}, {rounds} interleaved rounds, medians)\n")
    print("| run | s | x plain |")
    print("| --- | --- | --- |")
    for label, ts in times.items():
        print(f"| {label} | {statistics.median(ts):.2f} | {statistics.median(ts) / base:.2f} |")


def blend_coverage(model, latent, src, tgt, coverage, *, steps: int, cfg: float) -> None:
    """How much of the latent the local-blend mask (shape word) covers, against the object's own cells."""
    inp = invert_for_edit(model, latent, source=src, cfg=cfg, steps=steps)
    cells = torch.nn.functional.avg_pool2d(coverage[:, None], coverage.shape[-1] // latent["samples"].shape[-1])[:, 0] > 0
    print(f"\n## local-blend mask (Unsampler, P2P + Direct, cfg {cfg:g}, shape word) against the object's latent cells\n")
    print("| threshold | cells masked | object cells | IoU |")
    print("| --- | --- | --- | --- |")
    for threshold in (0.3, 0.5, 0.7, 0.9):
        res = ul.edit(model, inp.run_on, source=src, target=tgt, control="p2p", cfg=cfg, direct=True,
                      blend_words=shapes.SHAPES, blend_threshold=threshold)
        m = res.mask[:, 0] > 0.5
        iou = ((m & cells).flatten(1).sum(1) / (m | cells).flatten(1).sum(1)).mean()
        print(f"| {threshold:g} | {m.float().mean():.2f} | {cells.float().mean():.2f} | {iou:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cfg", type=float, nargs="+", default=[3.0])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--controls", nargs="+", default=list(CONTROLS), choices=list(CONTROLS))
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    ap.add_argument("--overhead-rounds", type=int, default=3)
    ap.add_argument("--skip-table", action="store_true", help="only the overhead and the blend-mask coverage")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = ul.load_model(device="cpu")
    batch = shapes.make_shapes(args.n, seed=123_456)
    idx = torch.tensor([shapes.SHAPES.index(s) for s in batch.shapes])
    coverage = shapes.shape_masks(idx, batch.centres, batch.radii)
    src, tgt = batch.captions, shapes.recolour_captions(batch)
    latent = model.encode(batch.images)
    print(f"# editing benchmark: {args.n} shapes images, colour word swap, euler, normal, {args.steps} steps, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    ceiling = scores(model.decode(latent), batch, coverage, src)
    print("| method | control | cfg | bg PSNR (dB) | bg SSIM | IoU | edit success [95% CI] | NFE | s | source branch bg PSNR |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    print(f"| (VAE round trip) | - | - | {ceiling['psnr']:.2f} | {ceiling['ssim']:.3f} | {ceiling['iou']:.3f} | - | 0 | - | - |",
          flush=True)
    for cfg in ([] if args.skip_table else args.cfg):
        for method in args.methods:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                inp = invert_for_edit(model, latent, source=src, method=method, cfg=cfg, steps=args.steps)
            for label in args.controls:
                control, direct, options = CONTROLS[label]
                if direct and method == "edict":  # its own resampling side is exact; nothing to pin
                    print(f"| {method} | {label} | {cfg:g} | (exact inversion: = P2P) | | | | | | |", flush=True)
                    continue
                res = ul.edit(model, inp.run_on, source=src, target=tgt, control=control, cfg=cfg, direct=direct,
                              negative=inp.negative, **options)
                out = res.target["samples"] if isinstance(res.target, dict) else res.target
                s = scores(model.decode(out), batch, coverage, tgt)
                back = res.source["samples"] if isinstance(res.source, dict) else res.source
                kept = scores(model.decode(back), batch, coverage, src)["psnr"]
                lo, hi = wilson(s["ok"], s["n"])
                print(f"| {method} | {label} | {cfg:g} | {s['psnr']:.2f} | {s['ssim']:.3f} | {s['iou']:.3f} | "
                      f"{s['ok']}/{s['n']} [{lo:.2f}, {hi:.2f}] | {inp.nfe + res.nfe} | {inp.seconds + res.seconds:.1f} | {kept:.2f} |",
                      flush=True)
    if args.overhead_rounds:
        overhead(model, latent, src, tgt, steps=args.steps, cfg=args.cfg[0], rounds=args.overhead_rounds)
    blend_coverage(model, latent, src, tgt, coverage, steps=args.steps, cfg=args.cfg[0])


if __name__ == "__main__":
    main()
