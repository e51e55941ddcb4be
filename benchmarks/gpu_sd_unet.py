"""Seconds per inversion step on a Stable-Diffusion-sized UNet, and our overhead over bare UNet forwards.

    python benchmarks/gpu_sd_unet.py            # CUDA: SD1.5 UNet config, random weights, fp16 (no download)
    python benchmarks/gpu_sd_unet.py --tiny     # anywhere: a tiny UNet, to check the script itself

Per cfg: bare forward (batch B, or 2B with cfg) timed in a loop, then ul.unsample over `--steps`
steps; overhead = seconds per step / seconds per bare forward - 1.
"""
from __future__ import annotations

import argparse
import sys
import time

SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
)
TINY_UNET = dict(
    sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
)
SD15_SCHEDULER = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
                  "num_train_timesteps": 1000, "prediction_type": "epsilon"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny UNet on any device (checks the script)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10, help="bare forwards timed per setting")
    args = parser.parse_args()

    import torch
    from diffusers import UNet2DConditionModel

    import unsampling_lab as ul
    from unsampling_lab.models.unet import UNetModel

    cuda = torch.cuda.is_available()
    if not cuda and not args.tiny:
        print("no CUDA device: the SD-sized benchmark needs a GPU (fp16). Run with --tiny to check the script on "
              "the CPU.", file=sys.stderr)
        return 2
    if not cuda:
        torch.set_num_threads(1)  # tiny networks on shared CPUs: threads only contend
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.float16 if cuda else torch.float32
    config = TINY_UNET if args.tiny else SD15_UNET
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**config).to(device, dtype).eval()
    model = UNetModel(unet, SD15_SCHEDULER, device=device, dtype=dtype)
    size, width = config["sample_size"], config["cross_attention_dim"]
    latent = torch.randn(args.batch, 4, size, size) / model.latent_format.scale
    embeds = torch.randn(1, 77, width)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    print(f"{'SD1.5' if not args.tiny else 'tiny'} UNet ({sum(p.numel() for p in unet.parameters()) / 1e6:.0f} M "
          f"parameters), {dtype}, {device}, latent {tuple(latent.shape)}, {args.steps} steps")
    print(f"{'cfg':>4} {'forward s':>10} {'step s':>8} {'overhead':>9}")
    for cfg in (1.0, 7.5):
        rows = args.batch * (2 if cfg != 1.0 else 1)
        x = torch.randn(rows, 4, size, size, device=device, dtype=dtype)
        t = torch.full((rows,), 500.0, device=device)
        e = embeds.to(device, dtype).expand(rows, -1, -1)
        with torch.inference_mode():
            for _ in range(2):
                unet(x, t, encoder_hidden_states=e, return_dict=False)
            sync()
            t0 = time.perf_counter()
            for _ in range(args.repeats):
                unet(x, t, encoder_hidden_states=e, return_dict=False)
            sync()
        forward_s = (time.perf_counter() - t0) / args.repeats
        ul.unsample(model, latent, steps=2, cfg=cfg, positive=embeds, negative=torch.zeros_like(embeds), progress=False)
        sync()
        t0 = time.perf_counter()
        ul.unsample(model, latent, steps=args.steps, cfg=cfg, positive=embeds, negative=torch.zeros_like(embeds),
                    progress=False)
        sync()
        step_s = (time.perf_counter() - t0) / args.steps
        print(f"{cfg:>4g} {forward_s:>10.4f} {step_s:>8.4f} {step_s / forward_s - 1:>8.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
