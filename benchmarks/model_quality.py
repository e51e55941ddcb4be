"""Quality and speed of the bundled shapes model, judged by `unsampling_lab.bundled.detector`.

    python benchmarks/model_quality.py --n 200 [--cfg 1 3 5] [--write-card]

Generation uses diffusers' own StableDiffusionPipeline + EulerDiscreteScheduler (not the project's
engine). Prompts cycle through all captions; image i uses torch.Generator().manual_seed(seed + i).
"""
from __future__ import annotations

import argparse
import os
import re
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from unsampling_lab.bundled import BUNDLED_MODEL, RECOMMENDED_CFG
from unsampling_lab.bundled.detector import detect
from unsampling_lab.bundled.shapes import CAPTIONS, make_shapes


def load_pipeline(model: Path):
    """StableDiffusionPipeline with EulerDiscreteScheduler, quiet progress bars; returns (pipe, seconds)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline
    from diffusers.utils import logging

    logging.set_verbosity_error()
    t0 = time.perf_counter()
    pipe = StableDiffusionPipeline.from_pretrained(model)
    seconds = time.perf_counter() - t0
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe, seconds


def generate(pipe, prompts: list[str], *, cfg: float, steps: int = 20, seed: int = 0, batch: int = 50) -> torch.Tensor:
    """Images [N, 32, 32, 3] in 0..1; image i is seeded with seed + i."""
    out = []
    for i in range(0, len(prompts), batch):
        chunk = prompts[i:i + batch]
        gens = [torch.Generator().manual_seed(seed + i + j) for j in range(len(chunk))]
        with torch.inference_mode():
            images = pipe(chunk, num_inference_steps=steps, guidance_scale=cfg, height=32, width=32,
                          generator=gens, output_type="pt").images
        out.append(images.permute(0, 2, 3, 1).float())
    return torch.cat(out)


def adherence(images: torch.Tensor, prompts: list[str]) -> dict[str, float]:
    """Fractions of images whose detected colour / shape / both match the prompt."""
    det = detect(images)
    want = [p.split() for p in prompts]
    colour = [d == w[0] for d, w in zip(det.colours, want)]
    shape = [d == w[1] for d, w in zip(det.shapes, want)]
    return {"colour": sum(colour) / len(want), "shape": sum(shape) / len(want),
            "both": sum(c and s for c, s in zip(colour, shape)) / len(want),
            "empty": sum(d == "none" for d in det.shapes) / len(want)}


@torch.no_grad()
def vae_psnr(pipe, *, n: int = 512, seed: int = 10_000) -> float:
    """Mean round-trip PSNR (dB) of held-out shapes through encode (posterior mean) -> decode."""
    x = make_shapes(n, seed=seed).images
    z = pipe.vae.encode(x.permute(0, 3, 1, 2) * 2 - 1).latent_dist.mean
    rec = (pipe.vae.decode(z).sample / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)
    mse = (rec - x).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return (10 * torch.log10(1 / mse)).mean().item()


@torch.no_grad()
def unet_ms(pipe, *, batch: int = 2, repeats: int = 50) -> float:
    """Median milliseconds of one UNet forward at `batch` on 8x8 latents."""
    x, t = torch.randn(batch, 4, 8, 8), torch.tensor([500] * batch)
    c = torch.randn(batch, pipe.tokenizer.model_max_length, pipe.text_encoder.config.hidden_size)
    for _ in range(5):
        pipe.unet(x, t, c)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        pipe.unet(x, t, c)
        times.append(time.perf_counter() - t0)
    return 1000 * sorted(times)[len(times) // 2]


def main() -> None:
    """Print the quality/speed table; optionally write it into MODEL_CARD.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=BUNDLED_MODEL)
    parser.add_argument("--n", type=int, default=200, help="generations per cfg")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, nargs="+", default=[RECOMMENDED_CFG])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared CPU)")
    parser.add_argument("--write-card", action="store_true", help="replace the quality section of MODEL_CARD.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    pipe, load_s = load_pipeline(args.model)
    prompts = [CAPTIONS[i % len(CAPTIONS)] for i in range(args.n)]
    rows = []
    for cfg in args.cfg:
        t0 = time.perf_counter()
        images = generate(pipe, prompts, cfg=cfg, steps=args.steps, seed=args.seed)
        seconds = time.perf_counter() - t0
        rows.append((cfg, adherence(images, prompts), seconds))
    psnr = vae_psnr(pipe)
    ms = unet_ms(pipe)

    lines = [f"Generation: diffusers StableDiffusionPipeline + EulerDiscreteScheduler, {args.steps} steps, "
             f"{args.n} images per cfg (prompts cycle through the {len(CAPTIONS)} captions, seeds {args.seed}.."
             f"{args.seed + args.n - 1}), judged by `unsampling_lab.bundled.detector`. Recommended cfg: **{RECOMMENDED_CFG:g}**.",
             "", "| cfg | colour adherence | shape adherence | both | no foreground | seconds |",
             "| --- | --- | --- | --- | --- | --- |"]
    for cfg, acc, seconds in rows:
        lines.append(f"| {cfg:g} | {acc['colour']:.1%} | {acc['shape']:.1%} | {acc['both']:.1%} | "
                     f"{acc['empty']:.1%} | {seconds:.1f} |")
    lines += ["", "| measure | value |", "| --- | --- |",
              f"| VAE round-trip PSNR, 512 held-out images (seed 10000) | {psnr:.2f} dB |",
              f"| `StableDiffusionPipeline.from_pretrained` | {load_s:.2f} s |",
              f"| UNet forward, batch 2, 8x8 latents (median) | {ms:.2f} ms |",
              "", f"Command: `python benchmarks/model_quality.py --n {args.n} --cfg {' '.join(f'{c:g}' for c in args.cfg)}`"
              f" (torch {torch.__version__}, {torch.get_num_threads()} threads)."]
    table = "\n".join(lines)
    print(table)
    if args.write_card:
        card_path = args.model / "MODEL_CARD.md"
        card = card_path.read_text()
        new = re.sub(r"<!-- quality:start -->.*<!-- quality:end -->",
                     lambda _: f"<!-- quality:start -->\n{table}\n<!-- quality:end -->", card, flags=re.S)
        card_path.write_text(new)
        print(f"wrote {card_path}")


if __name__ == "__main__":
    main()
