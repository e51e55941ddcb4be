"""What the model fingerprint costs on Stable Diffusion-sized weights: SD 1.5's UNet (its config, built on
the meta device, so nothing is downloaded) with random float16 values in every tensor, hashed as
`model_fingerprint` hashes a network (every byte), then once more (the cached digest).

    python benchmarks/fingerprint_cost.py
"""
from __future__ import annotations

import time

import torch

from unsampling_lab.analysis.store import module_digest

SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, cross_attention_dim=768,
                 block_out_channels=(320, 640, 1280, 1280), attention_head_dim=8,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)


def main() -> None:
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15_UNET)
    unet = unet.to_empty(device="cpu").to(torch.float16)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in unet.state_dict(keep_vars=True).values():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32))
    n = sum(t.numel() for t in unet.state_dict().values())
    size = sum(t.numel() * t.element_size() for t in unet.state_dict().values())
    t0 = time.perf_counter()
    first = module_digest(unet)
    t1 = time.perf_counter()
    again = module_digest(unet)
    t2 = time.perf_counter()
    assert first == again
    print(f"SD 1.5 UNet, float16: {n / 1e6:.0f}M values, {size / 1e9:.2f} GB; every byte hashed in {t1 - t0:.2f} s "
          f"({size / 1e9 / (t1 - t0):.2f} GB/s, {torch.get_num_threads()} threads); cached: {(t2 - t1) * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
