"""Engine overhead: wall time of `ul.unsample` against the same number of bare network forwards.

Both sides run the same network on the same inputs in one process, interleaved, best of several
repeats. The ratio is what the sampler loop, guidance, sigma/timestep maps and callbacks cost on
top of the network itself. Target: <= 1.03 on the CPU with a tiny model.

    python benchmarks/overhead.py [--steps 20] [--cfg 1.0] [--repeats 7] [--model bundled|comfy_tiny]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import unsampling_lab as ul


def _model(name: str):
    if name == "bundled":
        return ul.load_model(device="cpu")
    from diffusers import UNet2DConditionModel

    from unsampling_lab.models.unet import UNetModel

    ref = Path(__file__).resolve().parents[2] / "shared" / "comfy_reference" / "tiny_sd"
    return UNetModel(UNet2DConditionModel.from_pretrained(str(ref / "unet")), ul.ModelSampling.discrete(), device="cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--model", choices=["bundled", "comfy_tiny"], default="bundled")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = _model(args.model)
    latent = torch.randn(1, model.latent_format.channels, 8, 8)
    positive = model.encode_prompt(["red circle"]) if model.__dict__.get("text_encoder") is not None else torch.randn(1, 4, model.embed_width)
    negative = model.encode_prompt([""]) if model.__dict__.get("text_encoder") is not None else torch.randn(1, 4, model.embed_width)
    from unsampling_lab.guidance import concat, to_conditioning

    pos = to_conditioning(model, positive, batch_size=1, name="positive")
    cond = concat([to_conditioning(model, negative, batch_size=1, name="negative"), pos]) if args.cfg != 1 else pos
    rows = 2 if args.cfg != 1 else 1
    sigmas = ul.unsample_sigmas(model, steps=args.steps, end_at_step=0, sampler_name="euler", scheduler="normal")
    ms = model.model_sampling
    inputs = [(ms.calculate_input(s, latent.repeat(rows, 1, 1, 1)), ms.timestep(s.reshape(1)).float().repeat(rows)) for s in sigmas[:-1]]

    def bare() -> None:
        with torch.inference_mode():
            for x, t in inputs:
                model.forward(x, t, cond)

    def ours() -> None:
        ul.unsample(model, latent, steps=args.steps, cfg=args.cfg, positive=positive, negative=negative, progress=False)

    network = model.forward
    inside = [0.0]

    def timed_forward(*args):  # time spent in the network during ul.unsample
        start = time.perf_counter()
        out = network(*args)
        inside[0] += time.perf_counter() - start
        return out

    ours(), bare()  # warm up
    t_bare, t_ours = [], []
    for _ in range(args.repeats):
        for fn, bucket in ((bare, t_bare), (ours, t_ours)):
            start = time.perf_counter()
            fn()
            bucket.append(time.perf_counter() - start)
    model.forward = timed_forward
    engine_share = []
    for _ in range(args.repeats):
        inside[0] = 0.0
        start = time.perf_counter()
        ours()
        engine_share.append((time.perf_counter() - start) / inside[0])
    model.forward = network
    b, o = min(t_bare), min(t_ours)
    print(f"model={args.model} steps={args.steps} cfg={args.cfg} threads={torch.get_num_threads()}")
    print(f"{'':24s}{'seconds':>10s}{'per step':>12s}")
    print(f"{'bare forwards':24s}{b:10.4f}{b / args.steps * 1e3:10.2f}ms")
    print(f"{'ul.unsample':24s}{o:10.4f}{o / args.steps * 1e3:10.2f}ms")
    print(f"ratio unsample / bare forwards: {o / b:.3f}  (target <= 1.03)")
    print(f"ratio unsample / its own network time: {min(engine_share):.3f}  (engine work outside the network)")


if __name__ == "__main__":
    main()
