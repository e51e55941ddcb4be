"""Inversion quality of the bundled model: reconstruction and editing, measured with the project's engine.

    python benchmarks/inversion_quality.py [--n 64] [--seed 123]

Held-out shapes (a seed the training never used). Reconstruction: unsample -> resample at cfg 1
(euler, normal) with the caption as prompt, PSNR against the VAE round trip (the ceiling) and the
original. Editing: "<c1> <shape>" -> "<c2> <shape>" from the state at each end_at_step, with one
recorded inversion per image batch; success = the detector sees colour c2 and the same shape;
structure kept = IoU of the foreground masks before and after.
"""
from __future__ import annotations

import argparse
import time

import torch

import unsampling_lab as ul
from unsampling_lab.bundled import detector, shapes
from unsampling_lab.analysis import metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="held-out images")
    parser.add_argument("--seed", type=int, default=123_456)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--edit-cfg", type=float, nargs="+", default=[1.0, 3.0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model = ul.load_model(device="cpu")
    batch = shapes.make_shapes(args.n, seed=args.seed)
    latent = model.encode(batch.images)
    ceiling = model.decode(latent)
    vae_psnr = metrics.psnr(ceiling, batch.images)
    print(f"held-out images: {args.n} (seed {args.seed}); VAE round trip PSNR {vae_psnr.mean():.2f} dB "
          f"(min {vae_psnr.min():.2f})\n")

    print("reconstruction: unsample -> resample, cfg 1, euler, normal, prompt = caption")
    print(f"{'steps':>6} {'PSNR vs VAE':>12} {'PSNR vs original':>17} {'latent rel. err':>16}")
    for steps in (20, 50):
        noise = ul.unsample(model, latent, steps=steps, positive=batch.captions, progress=False)
        back = ul.resample(model, noise, steps=steps, positive=batch.captions, progress=False)
        images = model.decode(back)
        rel = metrics.relative_error(back["samples"], latent["samples"])
        print(f"{steps:6d} {float(metrics.psnr(images, ceiling).mean()):12.2f} "
              f"{float(metrics.psnr(images, batch.images).mean()):17.2f} {float(rel.mean()):16.4f}")

    edits = shapes.recolour_captions(batch)
    targets = [e.split()[0] for e in edits]
    source = detector.detect(batch.images)
    print(f"\nediting: '<c1> <shape>' -> '<c2> <shape>', {args.steps} steps, euler, normal")
    print(f"{'cfg':>5} {'end_at_step':>12} {'success':>8} {'colour':>7} {'shape':>6} {'IoU kept':>9}")
    for cfg in args.edit_cfg:
        traj = ul.unsample_trajectory(model, latent, steps=args.steps, cfg=cfg, positive=batch.captions,
                                      negative="", progress=False)
        for end_at_step in range(0, args.steps, 4):
            noisy = ul.unsampled(model, traj, end_at_step, like=latent)
            out = ul.resample(model, noisy, steps=args.steps, start_at_step=end_at_step, cfg=cfg, positive=edits,
                              negative="", progress=False)
            found = detector.detect(model.decode(out))
            colour_ok = torch.tensor([a == b for a, b in zip(found.colours, targets)])
            shape_ok = torch.tensor([a == b for a, b in zip(found.shapes, batch.shapes)])
            iou = detector.foreground_iou(found.masks, source.masks)
            print(f"{cfg:5.1f} {end_at_step:12d} {float((colour_ok & shape_ok).float().mean()):8.1%} "
                  f"{float(colour_ok.float().mean()):7.1%} {float(shape_ok.float().mean()):6.1%} {float(iou.mean()):9.3f}")
    print(f"\n({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
