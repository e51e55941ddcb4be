"""The denoiser a sampler calls: network + classifier-free guidance + inpainting mask, as ComfyUI wires it.

    denoised(x, sigma) = uncond + cfg * (cond - uncond)        (in x0 space; at cfg == 1 only cond)
    with a noise mask m (1 = may change):  input x*m + noised(latent)*(1-m),  output out*m + latent*(1-m)

cond and uncond go through the network as one batch, uncond first as in ComfyUI (two separate calls
change results by ~1e-4 relative).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .conditioning import concat
from .errors import UnsamplingError
from .models.base import Conditioning, DiffusionModel

#: ComfyUI's KSampler cfg widget goes up to 100; far beyond it guidance overflows float32.
MAX_SENSIBLE_CFG = 100.0


def _bad_parameters(model: DiffusionModel) -> str:
    """'3 weight tensors contain NaN/Inf, e.g. unet.conv_in.weight' for the model's networks, or ''."""
    bad: list[str] = []
    for part in ("unet", "transformer"):
        net = getattr(model, part, None)
        if net is None or not hasattr(net, "named_parameters"):
            continue
        bad += [f"{part}.{name}" for name, p in net.named_parameters() if not bool(torch.isfinite(p).all())]
    if not bad:
        return ""
    return f"{len(bad)} of its weight tensors contain NaN/Inf (e.g. {bad[0]})" if len(bad) > 1 else f"its weight {bad[0]} contains NaN/Inf"


@dataclass
class EvalCounter:
    """Counts denoiser evaluations (NFE: one per sigma, cond and uncond together) and network rows."""

    nfe: int = 0
    rows: int = 0


@dataclass
class GuidedDenoiser:
    """`model(x, sigma) -> x0` for the samplers; sigma is a [B] tensor."""

    model: DiffusionModel
    positive: Conditioning
    negative: Conditioning | None
    cfg: float
    latent: Tensor | None = None  # the processed input latent, for the mask blend
    mask: Tensor | None = None
    noise: Tensor | None = None  # the noise sampling started from (zeros when unsampling), for the mask blend
    counter: EvalCounter = field(default_factory=EvalCounter)

    def __post_init__(self) -> None:
        self.use_uncond = not math.isclose(self.cfg, 1.0) and self.negative is not None
        self._batched = concat([self.negative, self.positive]) if self.use_uncond else self.positive  # type: ignore[list-item]

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        m = self.mask
        if m is not None:
            # outside the mask the network sees the input latent noised to this sigma (ComfyUI's
            # scale_latent_inpaint): latent + sigma * noise (VP), (1 - sigma) latent + sigma noise (flow)
            noise = self.noise if self.noise is not None else torch.zeros_like(self.latent)
            known = self.model.model_sampling.noise_scaling(sigma, noise, self.latent)
            x = x * m + known * (1.0 - m)
        self.counter.nfe += 1
        if self.use_uncond:
            both = self._run(torch.cat([x, x]), torch.cat([sigma, sigma]), self._batched)
            uncond, cond = both.chunk(2)
            out = uncond + (cond - uncond) * self.cfg
        else:
            both = out = self._run(x, sigma, self._batched)
        if not bool(torch.isfinite(out).all()):
            raise self._non_finite(x, sigma, both)
        if m is not None:
            out = out * m + self.latent * (1.0 - m)
        return out

    def _non_finite(self, x: Tensor, sigma: Tensor, raw: Tensor) -> UnsamplingError:
        """Say what produced NaN/Inf: the network itself (on its first call: its weights or dtype), the
        state it was given (grown by a huge cfg), or the guidance sum overflowing float32."""
        n, s = self.counter.nfe, float(sigma.flatten()[0])
        big_cfg = self.use_uncond and abs(self.cfg) > MAX_SENSIBLE_CFG
        if bool(torch.isfinite(raw).all()):  # cond and uncond finite: the cfg product overflowed
            return UnsamplingError(
                f"cfg={self.cfg:g} overflowed float32: uncond + cfg * (cond - uncond) is Inf at sigma {s:.4g}; use a "
                f"cfg within ComfyUI's range 0..{MAX_SENSIBLE_CFG:g}"
            )
        if n == 1:
            bad = _bad_parameters(self.model)
            where = f"; {bad}" if bad else ""
            return UnsamplingError(
                f"the model's own output is NaN/Inf at its first evaluation (sigma {s:.4g}, finite input), before any "
                f"sampler step: the model is broken, not the sampler{where}. Check its weights, or load it with "
                "dtype='float32' if float16 overflows"
            )
        grown = float(x.abs().max()) if bool(torch.isfinite(x).all()) else float("inf")
        if big_cfg:
            return UnsamplingError(
                f"the model's output became NaN/Inf at evaluation {n} (sigma {s:.4g}) because cfg={self.cfg:g} blew "
                f"the sampler state up to |x| = {grown:.3g}; use a cfg within ComfyUI's range 0..{MAX_SENSIBLE_CFG:g}"
            )
        return UnsamplingError(
            f"the model's output became NaN/Inf at evaluation {n} (sigma {s:.4g}; the state had reached |x| = "
            f"{grown:.3g}): the sampler diverged on this input; try another sampler or scheduler, or a smaller cfg"
        )

    def _run(self, x: Tensor, sigma: Tensor, cond: Conditioning) -> Tensor:
        ms = self.model.model_sampling
        self.counter.rows += x.shape[0]
        model_output = self.model.forward(ms.calculate_input(sigma, x), ms.timestep(sigma).to(x.dtype), cond)
        return ms.calculate_denoised(sigma, model_output.to(x.dtype), x)  # timestep: float32 as ComfyUI, float64 for exact models
