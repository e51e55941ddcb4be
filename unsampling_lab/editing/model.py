"""The model an edit runs: the user's model, with each network call seen on its way in and out.

On the way in it learns the step (from the timestep, against the resample's schedule) and, with Direct
Inversion, gives the source rows the inversion path's state at that step: the network sees
c_in(σᵢ) x*ᵢ for the source branch at every call (Ju et al. 2024 pin the source branch's state to x*ᵢ
after each step; the target branch sees only what the network hands it, so both are the same edit, and
no extra network call is made). On the way out, with local blend, it moves the target rows' output so
that their denoised estimate is the source's outside the mask:

    D = c_skip x + c_out out,  x = in / c_in   ⇒   out_tgt += (1 − m) ((c_skip / (c_out c_in)) (in_src − in_tgt) + out_src − out_tgt)
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import UnsamplingError
from ..models.base import Conditioning
from .attention import EditState


class EditedModel:
    """A DiffusionModel that forwards to `model`; counts its network calls and rows (`calls`, `rows`)."""

    def __init__(self, model: Any, state: EditState, sigmas: Tensor, *, path: Tensor | None = None,
                 blend: dict[str, Any] | None = None) -> None:
        self._model = model
        self.state = state
        ms = model.model_sampling
        self.sigmas = sigmas.float().cpu()  # the resample's descending sigmas, n + 1
        self.timesteps = ms.timestep(self.sigmas[:-1]).double()
        self.path = path  # [n + 1, B, C, H, W] processed states, descending sigma, or None
        self.blend = blend
        self.mask: Tensor | None = None
        self.calls = 0
        self.rows = 0
        self._last_step = -1

    def __getattr__(self, name: str) -> Any:  # everything else is the user's model
        return getattr(self._model, name)

    def forward(self, x: Tensor, timestep: Tensor, cond: Conditioning) -> Tensor:
        s, b = self.state, self.state.b
        if x.shape[0] % (2 * b):
            raise UnsamplingError(f"edit: a network batch of {x.shape[0]} rows is not groups of 2 x {b} (source, target)")
        step, exact = self._step(timestep)
        s.step, s.first_call_of_step = step, step != self._last_step
        self._last_step = step
        self.calls += 1
        self.rows += int(x.shape[0])
        groups = x.shape[0] // (2 * b)
        sigma = self.sigmas[step] if exact else self._model.model_sampling.sigma(timestep.flatten()[:1].cpu())[0]
        ms = self._model.model_sampling
        if self.path is not None:
            if not exact:
                raise UnsamplingError(
                    f"direct inversion pins the source branch to the inversion's states at the schedule's sigmas; this "
                    f"sampler evaluated the model between them (timestep {float(timestep.flatten()[0]):.4g}); use a "
                    "sampler that evaluates only at the schedule's sigmas (euler, ddim, lms, dpmpp_2m, heun, ...)")
            x = x.clone()
            pinned = ms.calculate_input(sigma.reshape(1).expand(b).to(x), self.path[step].to(x))
            for g in range(groups):
                x[2 * b * g: 2 * b * g + b] = pinned
        out = self._model.forward(x, timestep, cond)
        if self.blend is not None:
            out = self._blend(x, out, sigma, step, groups)
        return out

    def _step(self, timestep: Tensor) -> tuple[int, bool]:
        """(step index i: the last schedule entry at or above this timestep, whether it is one exactly)."""
        t = float(timestep.flatten()[0])
        tol = 1e-6 * max(1.0, abs(t))
        at_or_above = int((self.timesteps >= t - tol).sum())
        i = min(max(at_or_above - 1, 0), len(self.timesteps) - 1)
        return i, abs(float(self.timesteps[i]) - t) <= tol

    def _blend(self, x: Tensor, out: Tensor, sigma: Tensor, step: int, groups: int) -> Tensor:
        s, b, opts = self.state, self.state.b, self.blend
        fixed = opts.get("mask")
        self.mask = fixed if fixed is not None else blend_mask(
            s.blend_sum, b, x.shape[-2:], threshold=opts["blend_threshold"], dilation=opts["blend_dilation"],
            layers=opts["blend_layers"], norm=opts["blend_norm"], rows=opts["blend_rows"])
        if self.mask is None or step < int(opts["blend_start"] * s.n_steps):
            return out
        ms = self._model.model_sampling
        one, zero = torch.ones(1, 1, 1, 1, dtype=torch.float64), torch.zeros(1, 1, 1, 1, dtype=torch.float64)
        sig = sigma.reshape(1).double()
        c_in = float(ms.calculate_input(sig, one))
        c_skip = float(ms.calculate_denoised(sig, zero, one))
        c_out = float(ms.calculate_denoised(sig, one, zero))
        keep = 1.0 - self.mask.to(out)
        out = out.clone()
        for g in range(groups):
            src, tgt = slice(2 * b * g, 2 * b * g + b), slice(2 * b * g + b, 2 * b * (g + 1))
            out[tgt] = out[tgt] + keep * (c_skip / (c_out * c_in) * (x[src] - x[tgt]).to(out) + out[src] - out[tgt])
        return out


def blend_mask(sums: dict[str, Tensor], b: int, size: Any, *, threshold: float, dilation: float, layers: str,
               norm: str, rows: str) -> Tensor | None:
    """The local-blend mask [B, 1, H, W] from the blend words' maps summed over the steps so far ([2B, Q] per layer).

    Each chosen layer's map (layers: "all", or only the "finest" / "coarsest" resolution present) is resized
    bilinearly to the H x W latent and the layers are averaged; the result is max-pooled over (2r + 1)² cells,
    r = ⌊dilation W⌋; scaled to [0, 1] by its maximum (norm "max", P2P's) or by its range (norm "range":
    (m − min) / (max − min), the same wherever the map falls to 0 away from the word); then > threshold.
    rows "both": source ∪ target (P2P's); "source": the source branch's maps alone.
    P2P (Hertz et al., LocalBlend) averages its 16 x 16 layers of a 64 x 64 latent, max-pools them 3 x 3 at 16 x 16
    (one map cell = 4 latent cells = 1/16 of the width: dilation 1/16), upsamples them nearest (here: bilinear,
    then the pool), divides by the maximum; threshold 0.3, source ∪ target. benchmarks/editing.py prints why the
    range and the rows matter on the bundled model's 8x8 latents.
    """
    if not sums:
        return None
    h, w = int(size[0]), int(size[1])
    queries = sorted({int(t.shape[1]) for t in sums.values()})
    keep = {"all": queries, "finest": queries[-1:], "coarsest": queries[:1]}[layers]
    maps = []
    for t in sums.values():
        q = int(t.shape[1])
        if q in keep:
            hh = max(1, round((q * h / w) ** 0.5))
            maps.append(F.interpolate(t.reshape(t.shape[0], 1, hh, q // hh), size=(h, w), mode="bilinear"))
    m = torch.stack(maps).mean(0)
    r = int(dilation * w)
    if r:
        m = F.max_pool2d(m, 2 * r + 1, 1, padding=r)
    low = m.amin(dim=(2, 3), keepdim=True) if norm == "range" else torch.zeros_like(m[..., :1, :1])
    m = ((m - low) / (m.amax(dim=(2, 3), keepdim=True) - low).clamp_min(1e-12)) > threshold
    return (m[:b] | m[b:]).float() if rows == "both" else m[:b].float()
