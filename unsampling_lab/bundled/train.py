"""Train the bundled shapes model from scratch: VAE, then text encoder + UNet on cached latents.

    python -m unsampling_lab.bundled.train [--out DIR] [--seed 0]

VAE:   loss = mean (x_hat - x)^2 + kl_weight * mean KL(q(z|x) || N(0, I)),  x in [-1, 1]
       scaling_factor = 1 / std(z) over the training set (as SD measured it)
       after the UNet: decoder-only fine-tune on mean (x_hat - x)^2 (encoder frozen, latents unchanged)
UNet:  x_t = sqrt(abar_t) * z0 + sqrt(1 - abar_t) * eps,  loss = mean (eps_theta(x_t, t, c) - eps)^2
       SD1.5 betas: beta_t = linspace(sqrt(0.00085), sqrt(0.012), 1000)_t^2,  abar_t = prod_{s<=t} (1 - beta_s)
       c = text_encoder(caption).last_hidden_state, caption -> "" with probability prompt_dropout (for CFG)
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .shapes import CAPTIONS, SIZE, WORDS, make_shapes

SCHEDULER_CONFIG: dict[str, Any] = {
    "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
    "prediction_type": "epsilon", "steps_offset": 1, "timestep_spacing": "leading", "interpolation_type": "linear",
    "use_karras_sigmas": False,
}
MAX_TOKENS = 8


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides the trained weights."""

    seed: int = 0
    n_train: int = 16384
    n_heldout: int = 512
    vae_steps: int = 500
    vae_batch: int = 48
    vae_lr: float = 2e-3
    kl_weight: float = 1e-6
    unet_steps: int = 4000
    unet_batch: int = 64
    unet_lr: float = 1e-3
    warmup: int = 200
    ema_decay: float = 0.998
    prompt_dropout: float = 0.1
    save_every: int = 500
    decoder_steps: int = 600
    decoder_lr: float = 1e-3
    threads: int = 2


def vae_config() -> dict[str, Any]:
    """AutoencoderKL 32x32x3 <-> 8x8x4 (two downsamples)."""
    return dict(in_channels=3, out_channels=3, latent_channels=4, sample_size=SIZE,
                down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                block_out_channels=(16, 32, 64), layers_per_block=1, norm_num_groups=8, mid_block_add_attention=False)


def text_config(vocab_size: int, bos: int, eos: int) -> dict[str, Any]:
    """A two-layer CLIP text transformer, width 64, 8 positions."""
    return dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=MAX_TOKENS, projection_dim=64,
                bos_token_id=bos, eos_token_id=eos, pad_token_id=eos)


def unet_config() -> dict[str, Any]:
    """UNet2DConditionModel on 8x8x4 latents, cross-attention to the 64-wide text states at both levels."""
    return dict(sample_size=SIZE // 4, in_channels=4, out_channels=4, block_out_channels=(32, 64),
                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
                attention_head_dim=4, norm_num_groups=16, cross_attention_dim=64)


def build_models(tokenizer_dir: Path) -> tuple[Any, Any, Any, Any]:
    """Fresh (vae, tokenizer, text_encoder, unet) from the configs above; call under a fixed torch seed."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    vae = AutoencoderKL(**vae_config())
    text_encoder = CLIPTextModel(CLIPTextConfig(**text_config(len(tokenizer), tokenizer.bos_token_id,
                                                              tokenizer.eos_token_id)))
    unet = UNet2DConditionModel(**unet_config())
    return vae, tokenizer, text_encoder, unet


def n_params(module: torch.nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in module.parameters())


def to_model_space(images: Tensor) -> Tensor:
    """[B, H, W, 3] in 0..1 -> [B, 3, H, W] in -1..1."""
    return images.permute(0, 3, 1, 2) * 2 - 1


def psnr(a: Tensor, b: Tensor) -> Tensor:
    """Per-image PSNR = 10 log10(1 / mse) of images in 0..1."""
    mse = (a - b).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return 10 * torch.log10(1 / mse)


def lr_at(step: int, *, total: int, warmup: int, base: float) -> float:
    """Linear warmup, then cosine decay to 10% of `base`."""
    if step < warmup:
        return base * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


def train_vae(vae: Any, data: Tensor, cfg: TrainConfig, *, log: Any) -> float:
    """Fit the VAE on data [N, 3, H, W] in -1..1; returns the mean loss over the last 100 steps."""
    g = torch.Generator().manual_seed(cfg.seed + 1)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    vae.train()
    recent: list[float] = []
    for step in range(cfg.vae_steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, total=cfg.vae_steps, warmup=50, base=cfg.vae_lr)
        x = data[torch.randint(len(data), (cfg.vae_batch,), generator=g)]
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=g)
        rec = (vae.decode(z).sample - x).pow(2).mean()
        kl = posterior.kl().mean() / posterior.mean[0].numel()
        loss = rec + cfg.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        recent = (recent + [loss.item()])[-100:]
        if step % 100 == 0 or step == cfg.vae_steps - 1:
            log(f"vae {step:5d} loss {loss.item():.5f} rec {rec.item():.5f} kl/elem {kl.item():.3f}")
    vae.eval()
    return sum(recent) / len(recent)


def finetune_decoder(vae: Any, data: Tensor, cfg: TrainConfig, *, log: Any) -> float:
    """Fine-tune only the decoder on mean (x_hat - x)^2 (as SD's ft-MSE decoder); the frozen encoder keeps the UNet's latents valid."""
    g = torch.Generator().manual_seed(cfg.seed + 4)
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.decoder_lr, weight_decay=0.0)
    recent: list[float] = []
    for step in range(cfg.decoder_steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, total=cfg.decoder_steps, warmup=20, base=cfg.decoder_lr)
        x = data[torch.randint(len(data), (cfg.vae_batch,), generator=g)]
        with torch.no_grad():
            posterior = vae.encode(x).latent_dist
            z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=g)
        loss = (vae.decode(z).sample - x).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        recent = (recent + [loss.item()])[-100:]
        if step % 100 == 0 or step == cfg.decoder_steps - 1:
            log(f"decoder {step:5d} loss {loss.item():.5f}")
    vae.eval()
    return sum(recent) / len(recent)


def heldout_psnr(vae: Any, images: Tensor) -> float:
    """Mean round-trip PSNR (encode posterior mean -> decode) of images [B, H, W, 3] in 0..1."""
    with torch.no_grad():
        rec = vae.decode(vae.encode(to_model_space(images)).latent_dist.mean).sample
    return psnr((rec / 2 + 0.5).clamp(0, 1), images.permute(0, 3, 1, 2)).mean().item()


@torch.no_grad()
def encode_all(vae: Any, data: Tensor, *, batch: int = 1024) -> tuple[Tensor, Tensor]:
    """Posterior (mean, std) of every image."""
    means, stds = [], []
    for i in range(0, len(data), batch):
        d = vae.encode(data[i:i + batch]).latent_dist
        means.append(d.mean)
        stds.append(d.std)
    return torch.cat(means), torch.cat(stds)


def sd_alphas_cumprod() -> Tensor:
    """abar_t of SD1.5's scaled_linear schedule, t = 0..999."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0).float()


def train_unet(unet: Any, text_encoder: Any, tokens: dict[str, Tensor], latents: tuple[Tensor, Tensor],
               caption_idx: Tensor, scaling_factor: float, cfg: TrainConfig, *, log: Any,
               checkpoint: Any = None) -> tuple[float, Any, Any]:
    """Joint eps-prediction training; returns (mean loss over the last 200 steps, EMA unet, EMA text encoder).

    `checkpoint(step, ema_unet, ema_text)` is called every `cfg.save_every` steps (a usable partial model).
    """
    g = torch.Generator().manual_seed(cfg.seed + 2)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.unet_lr, weight_decay=0.01)
    ema_unet, ema_text = copy.deepcopy(unet).eval(), copy.deepcopy(text_encoder).eval()
    ema_params = list(ema_unet.parameters()) + list(ema_text.parameters())
    abar = sd_alphas_cumprod()
    mean, std = latents
    ids_all = tokens["input_ids"]  # [n_captions + 1, T]; last row is ""
    empty = len(ids_all) - 1
    unet.train(), text_encoder.train()
    recent: list[float] = []
    for step in range(cfg.unet_steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, total=cfg.unet_steps, warmup=cfg.warmup, base=cfg.unet_lr)
        idx = torch.randint(len(mean), (cfg.unet_batch,), generator=g)
        z0 = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=g)) * scaling_factor
        cap = caption_idx[idx].clone()
        cap[torch.rand(cfg.unet_batch, generator=g) < cfg.prompt_dropout] = empty
        t = torch.randint(1000, (cfg.unet_batch,), generator=g)
        eps = torch.randn(z0.shape, generator=g)
        a = abar[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * z0 + (1 - a).sqrt() * eps
        cond = text_encoder(ids_all[cap]).last_hidden_state
        loss = (unet(xt, t, cond).sample - eps).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1 - decay)
        recent = (recent + [loss.item()])[-200:]
        if step % 200 == 0 or step == cfg.unet_steps - 1:
            log(f"unet {step:5d} loss {loss.item():.4f} (mean of last {len(recent)}: {sum(recent) / len(recent):.4f})")
        if checkpoint is not None and cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < cfg.unet_steps:
            checkpoint(step + 1, ema_unet, ema_text)
    return sum(recent) / len(recent), ema_unet, ema_text


def save_pipeline(out: Path, vae: Any, tokenizer: Any, text_encoder: Any, unet: Any) -> None:
    """Write a StableDiffusionPipeline folder (fp32 safetensors, no safety checker) and drop the null entries."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=EulerDiscreteScheduler(**SCHEDULER_CONFIG), safety_checker=None,
                                   feature_extractor=None, image_encoder=None, requires_safety_checker=False)
    pipe.save_pretrained(out, safe_serialization=True)
    index_path = Path(out) / "model_index.json"
    index = json.loads(index_path.read_text())
    for key in ("safety_checker", "feature_extractor", "image_encoder"):
        index.pop(key, None)
    index_path.write_text(json.dumps(index, indent=2) + "\n")


CARD = """# Bundled shapes model

A tiny Stable-Diffusion-1.5-shaped text-to-image model trained from scratch on the procedural shapes
dataset (`unsampling_lab/shapes.py`): 32x32 RGB images of one filled shape on black, caption
"<colour> <shape>", colours {colours}, shapes {shapes}. Same code path as a real SD checkpoint:
`StableDiffusionPipeline.from_pretrained(BUNDLED_MODEL)` (offline), eps prediction, SD1.5 betas
(scaled_linear 0.00085..0.012, 1000 steps), "" is the unconditional prompt (10% prompt dropout).

## Architecture

| part | config | parameters |
| --- | --- | --- |
| VAE (`AutoencoderKL`) | 32x32x3 <-> 8x8x4, blocks (16, 32, 64), 1 layer/block, no mid attention; scaling_factor {scaling_factor:.4f} (1/std of the training latents) | {n_vae:,} |
| text encoder (`CLIPTextModel`) | 2 layers, width 64, 2 heads, 8 positions; `CLIPTokenizer` with one token per caption word | {n_text:,} |
| UNet (`UNet2DConditionModel`) | 8x8x4, blocks (32, 64), cross-attention at both levels to `last_hidden_state` (dim 64) | {n_unet:,} |
| total | fp32 safetensors | {n_total:,} ({mb:.2f} MB on disk) |

## Training

    {command}

Seeded ({seed}); {n_train} training images (seed {seed}), held-out images from seed {heldout_seed}.
VAE {vae_steps} steps (batch {vae_batch}, AdamW lr {vae_lr}, kl_weight {kl_weight}), then text encoder + UNet jointly
{unet_steps} steps on cached latents (batch {unet_batch}, AdamW lr {unet_lr}, cosine, EMA {ema_decay}; weights saved are the EMA),
then the VAE decoder alone {decoder_steps} steps on MSE (lr {decoder_lr}; encoder frozen, so the latents the UNet learned stay valid).

| | value |
| --- | --- |
| wall time | {wall:.0f} s ({wall_min:.1f} min) on {machine} ({threads} threads) |
| VAE final loss (mean of last 100 steps) | {vae_loss:.5f} |
| UNet final eps loss (mean of last 200 steps) | {unet_loss:.4f} |
| decoder fine-tune final loss (mean of last 100 steps) | {decoder_loss:.5f} |
| VAE round-trip PSNR, {n_heldout} held-out images | {heldout_psnr:.2f} dB |

## Quality (generation)

<!-- quality:start -->
Not measured yet: run `python benchmarks/model_quality.py --n 200 --write-card`.
<!-- quality:end -->

## Inversion (to be added by the lead)

<!-- inversion:start -->
TODO (lead): unsample -> resample PSNR and edit success over `end_at_step`, measured with the project's own engine.
<!-- inversion:end -->
"""


def main(argv: list[str] | None = None) -> None:
    """CLI: train everything and write the pipeline folder plus MODEL_CARD.md and training.json."""
    from . import BUNDLED_MODEL
    from .tokenizer import write_tokenizer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=BUNDLED_MODEL, help="pipeline folder to write")
    defaults = TrainConfig()
    for name, value in asdict(defaults).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    args = parser.parse_args(argv)
    cfg = TrainConfig(**{k: getattr(args, k) for k in asdict(defaults)})
    out: Path = args.out
    command = "python -m unsampling_lab.bundled.train " + shlex.join(argv if argv is not None else sys.argv[1:])

    start = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - start:7.1f}s] {msg}", flush=True)

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out.mkdir(parents=True, exist_ok=True)
    write_tokenizer(out / "tokenizer", WORDS, model_max_length=MAX_TOKENS)
    vae, tokenizer, text_encoder, unet = build_models(out / "tokenizer")
    sizes = {"vae": n_params(vae), "text_encoder": n_params(text_encoder), "unet": n_params(unet)}
    log(f"parameters {sizes}, total {sum(sizes.values()):,} ({4 * sum(sizes.values()) / 2**20:.2f} MiB fp32)")

    train = make_shapes(cfg.n_train, seed=cfg.seed)
    heldout_seed = cfg.seed + 10_000
    heldout = make_shapes(cfg.n_heldout, seed=heldout_seed)
    data = to_model_space(train.images).contiguous()
    log(f"dataset {tuple(data.shape)}")

    vae_loss = train_vae(vae, data, cfg, log=log)
    log(f"vae done: loss {vae_loss:.5f}, held-out PSNR {heldout_psnr(vae, heldout.images):.2f} dB")

    mean, std = encode_all(vae, data)
    gz = torch.Generator().manual_seed(cfg.seed + 3)
    z = mean + std * torch.randn(mean.shape, generator=gz)
    scaling_factor = 1.0 / z.std().item()
    vae.register_to_config(scaling_factor=scaling_factor)
    log(f"latents {tuple(mean.shape)}, std {z.std().item():.4f} -> scaling_factor {scaling_factor:.4f}")

    prompts = list(CAPTIONS) + [""]
    tokens = tokenizer(prompts, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt")
    lookup = {c: i for i, c in enumerate(CAPTIONS)}
    caption_idx = torch.tensor([lookup[c] for c in train.captions])
    def checkpoint(step: int, ema_unet: Any, ema_text: Any) -> None:
        save_pipeline(out, vae, tokenizer, ema_text, ema_unet)
        (out / "training.json").write_text(json.dumps({"partial": True, "unet_step": step,
                                                       "wall_s": time.time() - start}, indent=2) + "\n")
        log(f"checkpoint at unet step {step} -> {out}")

    unet_loss, ema_unet, ema_text = train_unet(unet, text_encoder, dict(tokens), (mean, std), caption_idx,
                                               scaling_factor, cfg, log=log, checkpoint=checkpoint)

    decoder_loss = finetune_decoder(vae, data, cfg, log=log)
    psnr_db = heldout_psnr(vae, heldout.images)
    log(f"decoder done: loss {decoder_loss:.5f}, held-out PSNR {psnr_db:.2f} dB")
    save_pipeline(out, vae, tokenizer, ema_text, ema_unet)
    wall = time.time() - start
    mb = sum(f.stat().st_size for f in out.rglob("*.safetensors")) / 1e6
    record = {"command": command, "config": asdict(cfg), "parameters": sizes, "wall_s": wall, "vae_loss": vae_loss,
              "unet_loss": unet_loss, "decoder_loss": decoder_loss, "heldout_psnr_db": psnr_db, "scaling_factor": scaling_factor,
              "weights_mb": mb, "torch": torch.__version__, "machine": platform.machine()}
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    card = CARD.format(colours=", ".join(dict.fromkeys(c.split()[0] for c in CAPTIONS)),
                       shapes=", ".join(dict.fromkeys(c.split()[1] for c in CAPTIONS)), scaling_factor=scaling_factor,
                       n_vae=sizes["vae"], n_text=sizes["text_encoder"], n_unet=sizes["unet"],
                       n_total=sum(sizes.values()), mb=mb, command=command, seed=cfg.seed, n_train=cfg.n_train,
                       heldout_seed=heldout_seed, vae_steps=cfg.vae_steps, vae_batch=cfg.vae_batch, vae_lr=cfg.vae_lr,
                       kl_weight=cfg.kl_weight, unet_steps=cfg.unet_steps, unet_batch=cfg.unet_batch,
                       unet_lr=cfg.unet_lr, ema_decay=cfg.ema_decay, wall=wall, wall_min=wall / 60,
                       machine=f"{platform.machine()} CPU", threads=cfg.threads, vae_loss=vae_loss,
                       unet_loss=unet_loss, decoder_loss=decoder_loss, decoder_steps=cfg.decoder_steps,
                       decoder_lr=cfg.decoder_lr, n_heldout=cfg.n_heldout, heldout_psnr=psnr_db)
    (out / "MODEL_CARD.md").write_text(card)
    log(f"wrote {out} ({mb:.2f} MB of weights) in {wall:.0f} s")


if __name__ == "__main__":
    main()
