"""Editing with attention control on the bundled model: inversion method x control, the field's protocol.

    python benchmarks/editing.py [--n 16] [--seed 123456] [--steps 20] [--cfg 6 3] [--methods ...] [--threads 2]
    python benchmarks/editing.py --skip-table --overhead-rounds 0 --blend-study   # where the background goes

Images: `make_shapes(n, seed=123456)` (--seed); edit: the colour word swap `shapes.recolour_captions`
("red circle" -> "green circle"), whose object mask is exact (`shapes.shape_masks`, the generator's own
coverage). Protocol (`ul.editing.invert_for_edit` + `ul.edit`): invert with the source caption at cfg 1
(null_text: at the edit cfg), euler, normal; edit at cfg w. Controls: prompt swap (no control), P2P word swap
(cross 0.8, self 0.4), P2P + Direct Inversion (the source branch pinned to the inversion path; EDICT is exact,
so it has no separate row), the same + local blend on the shape word (the control's defaults: source ∪ target
maps, threshold 0.3 of the map's range), the same with the source branch's maps alone (`blend_rows="source"`:
the object keeps its place in a colour edit), the same from the finest maps only (8x8, the latent's own size)
pooled 3x3 (one cell of those maps, as P2P pools one cell of its 16x16 maps) at threshold 0.6 (chosen with
--blend-study on these images; check it on others with --seed), the same with the object's own latent cells
as the mask (`mask=`: any cell the object touches; the oracle, the ceiling of any blend mask on these
latents), PnP (conv2 features of up_blocks.0.resnets.1 for 0.8 of the steps, self-attention q/k of the later
decoder layers for 0.5).
Columns: background PSNR of the decoded edit against the source image outside the object (pixels of
coverage 0), its gain over the same method's prompt swap at the same cfg, background SSIM (SSIM on both
images with the object zeroed, as PIE-Bench), IoU of the detector's foreground of the edit with the exact
object (coverage > 0.5), edit success (the detector sees the new colour and the source's shape) with its
Wilson 95% interval, NFE (inversion + edit; null_text's gradient steps included) and seconds (inversion +
edit); last, the background PSNR of the source branch itself (what the target's maps and features come from:
the image at cfg w without Direct Inversion, the inversion path with it). The first row is the VAE round trip
(the ceiling every edit decodes through).
Then the editing overhead: ul.edit (P2P) against a plain ul.resample of the same 2B items, interleaved rounds,
and the local-blend mask against the object's own cells: the share of the latent it covers, IoU, recall (of
the object's cells), the edit's background PSNR and success, for the old mask (3x3 pool, divided by the
maximum), without the pool, the defaults, the source maps, the 8x8 source maps pooled 3x3, the object's cells
and those cells widened by one, and the floor of the averaged maps (min / max). --blend-study: every pooling,
norm, layer set, rows and threshold 0.3..0.8, and blend_start; --skip-table: only these.
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
OBJECT = "object"  # stands for the batch's own object cells (mask=)
CONTROLS = {"prompt swap": ("prompt_swap", False, {}), "P2P": ("p2p", False, {}), "P2P + Direct": ("p2p", True, {}),
            "P2P + Direct + blend": ("p2p", True, {"blend_words": shapes.SHAPES}),
            "P2P + Direct + blend (source maps)": ("p2p", True, {"blend_words": shapes.SHAPES, "blend_rows": "source"}),
            "P2P + Direct + blend (8x8 source maps, 3x3 pool, 0.6)": ("p2p", True, {
                "blend_words": shapes.SHAPES, "blend_rows": "source", "blend_layers": "finest", "blend_dilation": 1 / 8,
                "blend_threshold": 0.6}),
            "P2P + Direct + object mask": ("p2p", True, {"mask": OBJECT}),
            "PnP": ("pnp", False, {})}


def wilson(k: int, n: int) -> tuple[float, float]:
    """Wilson (1927) score interval for k successes of n (`ul.metrics.wilson_interval`)."""
    return ul.metrics.wilson_interval(k / n if n else math.nan, n)


def scores(images: torch.Tensor, batch: shapes.ShapesBatch, coverage: torch.Tensor, targets: list[str]) -> dict:
    """Background PSNR/SSIM against the source images (the mean over background pixels only; PIE-Bench's
    convention, `analysis.piebench`, averages the masked images over the whole image), IoU with the exact object,
    edit success."""
    bg = (coverage == 0).float()  # [B, H, W]
    psnr = metrics.psnr(images, batch.images, keep=bg)
    ssim = metrics.ssim(images * bg[..., None], batch.images * bg[..., None])
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


def object_cells(batch: shapes.ShapesBatch, size: int) -> torch.Tensor:
    """[B, 1, h, w] 1 on every latent cell the object touches (`ShapesBatch.latent_cells`)."""
    return batch.latent_cells(size)


def blend_study(model, latent, batch, coverage, src, tgt, *, steps: int, cfg: float, full: bool) -> None:
    """The local-blend mask (shape word, Unsampler, P2P + Direct) against the object's own latent cells."""
    inp = invert_for_edit(model, latent, source=src, cfg=cfg, steps=steps)
    cells = object_cells(batch, latent["samples"].shape[-1])[:, 0] > 0.5
    w = latent["samples"].shape[-1]
    old = dict(blend_dilation=1 / w, blend_norm="max")  # the 3x3 pool and P2P's division by the maximum
    if full:
        grid = [(f"dilation {d:.3g} ({2 * int(d * w) + 1}x{2 * int(d * w) + 1} pool), {n}, {layers}, {rows}",
                 dict(blend_dilation=d, blend_norm=n, blend_layers=layers, blend_rows=rows))
                for d in (1 / 16, 1 / w) for n in ("max", "range") for layers in ("all", "finest", "coarsest")
                for rows in ("both", "source")]
        thresholds = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
    else:
        grid = [("3x3 pool, max (the old mask)", old), ("no pool, max", dict(blend_norm="max")),
                ("defaults (no pool, range, all, both)", {}),
                ("source maps (blend_rows='source')", dict(blend_rows="source")),
                ("8x8 source maps, 3x3 pool", dict(blend_rows="source", blend_layers="finest", blend_dilation=1 / w))]
        thresholds = (0.3, 0.5, 0.6, 0.7)
    exact = object_cells(batch, w)
    wider = torch.nn.functional.max_pool2d(exact, 3, 1, padding=1)
    grid += [("object cells (mask=, the oracle)", dict(mask=exact)), ("object cells + 1 cell around", dict(mask=wider))]
    print(f"\n## local-blend mask (Unsampler, P2P + Direct, cfg {cfg:g}, shape word) against the object's latent cells "
          f"({float(cells.float().mean()):.2f} of the cells)\n")
    print("| mask | threshold | blend_start | cells masked | IoU | recall | bg PSNR (dB) | edit success |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    floor = None
    starts = (0.0, 0.2, 0.5) if full else (0.2,)
    for label, opts in grid:
        given = "mask" in opts
        for threshold in ((0.3,) if given else thresholds):
            for start in (starts if threshold == 0.3 else (0.2,)):
                words = {} if given else dict(blend_words=shapes.SHAPES, blend_threshold=threshold)
                res = ul.edit(model, inp.run_on, source=src, target=tgt, control="p2p", cfg=cfg, direct=True,
                              blend_start=start, record_attention=floor is None, **words, **opts)
                m = res.mask[:, 0] > 0.5
                iou = ((m & cells).flatten(1).sum(1) / (m | cells).flatten(1).sum(1)).mean()
                recall = ((m & cells).flatten(1).sum(1) / cells.flatten(1).sum(1)).mean()
                s = scores(model.decode(_samples(res.target)), batch, coverage, tgt)
                print(f"| {label} | {'-' if given else f'{threshold:g}'} | {start:g} | {m.float().mean():.2f} | {iou:.2f} | "
                      f"{recall:.2f} | {s['psnr']:.2f} | {s['ok']}/{s['n']} |", flush=True)
                floor = map_floor(res.attention, w) if floor is None else floor
    print(f"\nfloor of the shape word's map (summed over the steps, resized to the latent, averaged over the layers; "
          f"source rows): min / max = {floor:.2f}")


def map_floor(attention, size: int) -> float:
    """min / max of the shape word's map summed over the steps, at the latent size and averaged over the layers (the
    source rows; the mean over images): how far from 0 the map stays away from the word."""
    per_layer = []
    for name, m in attention.maps.items():  # [S, 2B, Q, K]
        b = m.shape[1] // 2
        word = torch.stack([m[:, i, :, _shape_token(attention.tokens[i])] for i in range(b)], 1).sum(0)  # [B, Q]
        q = word.shape[-1]
        hh = round(q ** 0.5)
        per_layer.append(torch.nn.functional.interpolate(word.reshape(b, 1, hh, q // hh), size=(size, size),
                                                         mode="bilinear"))
    avg = torch.stack(per_layer).mean(0)
    return float((avg.amin(dim=(1, 2, 3)) / avg.amax(dim=(1, 2, 3))).mean())


def _shape_token(tokens: list[str]) -> int:
    return next(i for i, t in enumerate(tokens) if t.strip().removesuffix("</w>") in shapes.SHAPES)


def _samples(latent):
    return latent["samples"] if isinstance(latent, dict) else latent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--seed", type=int, default=123_456, help="make_shapes seed (another: images no choice was made on)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cfg", type=float, nargs="+", default=[6.0, 3.0], help="edit cfgs (6: the model card's)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--controls", nargs="+", default=list(CONTROLS), choices=list(CONTROLS))
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    ap.add_argument("--overhead-rounds", type=int, default=3)
    ap.add_argument("--skip-table", action="store_true", help="only the overhead and the blend-mask study")
    ap.add_argument("--blend-study", action="store_true", help="the blend mask over every pooling, norm, layer set, "
                    "rows, threshold 0.3..0.8 and blend_start (else three masks at 0.3/0.5/0.7)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = ul.load_model(device="cpu")
    batch = shapes.make_shapes(args.n, seed=args.seed)
    coverage = batch.coverage()
    src, tgt = batch.captions, shapes.recolour_captions(batch)
    latent = model.encode(batch.images)
    print(f"# editing benchmark: {args.n} shapes images (seed {args.seed}), colour word swap, euler, normal, {args.steps} steps, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    ceiling = scores(model.decode(latent), batch, coverage, src)
    print("| method | control | cfg | bg PSNR (dB) | vs prompt swap (dB) | bg SSIM | IoU | edit success [95% CI] | NFE | s | "
          "source branch bg PSNR |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    print(f"| (VAE round trip) | - | - | {ceiling['psnr']:.2f} | - | {ceiling['ssim']:.3f} | {ceiling['iou']:.3f} | - | 0 | - | "
          "- |", flush=True)
    for cfg in ([] if args.skip_table else args.cfg):
        for method in args.methods:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                inp = invert_for_edit(model, latent, source=src, method=method, cfg=cfg, steps=args.steps)
            swap = None  # this method's prompt-swap background PSNR at this cfg
            for label in args.controls:
                control, direct, options = CONTROLS[label]
                if direct and method == "edict":  # its own resampling side is exact; nothing to pin
                    print(f"| {method} | {label} | {cfg:g} | (exact inversion: Direct does not apply) | | | | | | | |",
                          flush=True)
                    continue
                if options.get("mask") == OBJECT:
                    options = {**options, "mask": object_cells(batch, latent["samples"].shape[-1])}
                res = ul.edit(model, inp.run_on, source=src, target=tgt, control=control, cfg=cfg, direct=direct,
                              negative=inp.negative, **options)
                out = res.target["samples"] if isinstance(res.target, dict) else res.target
                s = scores(model.decode(out), batch, coverage, tgt)
                back = res.source["samples"] if isinstance(res.source, dict) else res.source
                kept = scores(model.decode(back), batch, coverage, src)["psnr"]
                lo, hi = wilson(s["ok"], s["n"])
                swap = s["psnr"] if control == "prompt_swap" else swap
                gain = "-" if swap is None or control == "prompt_swap" else f"{s['psnr'] - swap:+.2f}"
                print(f"| {method} | {label} | {cfg:g} | {s['psnr']:.2f} | {gain} | {s['ssim']:.3f} | {s['iou']:.3f} | "
                      f"{s['ok']}/{s['n']} [{lo:.2f}, {hi:.2f}] | {inp.nfe + res.nfe} | {inp.seconds + res.seconds:.1f} | {kept:.2f} |",
                      flush=True)
    if args.overhead_rounds:
        overhead(model, latent, src, tgt, steps=args.steps, cfg=args.cfg[0], rounds=args.overhead_rounds)
    blend_study(model, latent, batch, coverage, src, tgt, steps=args.steps, cfg=args.cfg[0], full=args.blend_study)


if __name__ == "__main__":
    main()
