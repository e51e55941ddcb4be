"""A recorded inversion: every step's state, denoised estimate and sigma.

One full unsample (end_at_step = 0) passes through the state that `unsample(end_at_step=k)`
returns for every k (for prefix-consistent samplers), so a sweep over end_at_step needs one
inversion, not one per value: `traj.state(k)` reads it, `engine.unsampled` returns it as the node would.
A data object: per-step statistics live in `analysis.metrics.trajectory_frame`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .errors import UnsamplingError, check_int


def stop_step(steps: int, end_at_step: int) -> int:
    """The step `unsample(steps=N, end_at_step=k)` stops at, min(k, N - 1) (ComfyUI's Unsampler: k >= N still
    takes one step); the resample that continues it starts there (`start_at_step`). The one place this rule
    lives; `state_index` and `Trajectory.index` read it."""
    return min(end_at_step, steps - 1)


def state_index(steps: int, end_at_step: int) -> int:
    """Where `unsample(steps=N, end_at_step=k)` stops, as an index into the N + 1 states of a full unsample:
    N - stop_step(N, k) (ComfyUI's `last_step`). A recorded run answers it as `Trajectory.index(k)`."""
    return steps - stop_step(steps, end_at_step)


def end_at_step_for(steps: int, index: int) -> int:
    """The inverse of `state_index` for index 1..N: the end_at_step whose unsample stops at state `index`
    (index 0, the input latent itself, maps to N, which no unsample returns)."""
    return steps - index


@dataclass
class Trajectory:
    """States in the model's (processed) latent space, on the CPU in float32.

    sigmas: [n+1] the sigmas the sampler visited, in order (ascending for an inversion).
    xs: [n+1, B, C, H, W] the state at each sigma; xs[0] is the starting latent.
    denoised: [n, B, C, H, W] the model's x0 estimate at step i (at sigmas[i], xs[i]).
    params: the call's parameters (steps, cfg, sampler_name, scheduler, prompts as text, ...).
    """

    sigmas: Tensor
    xs: Tensor
    denoised: Tensor
    params: dict[str, Any] = field(default_factory=dict)
    nfe: int = 0

    @property
    def n_steps(self) -> int:
        return int(self.sigmas.shape[0]) - 1

    def index(self, end_at_step: int) -> int:
        """Where `unsample(..., end_at_step=end_at_step)` with this run's steps stops, as an index into `xs`
        and `sigmas` (`state_index`); an end_at_step this recording does not reach is an error."""
        end_at_step = check_int("end_at_step", end_at_step, minimum=0)
        index = state_index(int(self.params["steps"]), end_at_step)
        if index > self.n_steps:
            raise UnsamplingError(f"the trajectory has {self.n_steps} steps; it does not reach end_at_step={end_at_step}")
        return index

    def state(self, end_at_step: int) -> Tensor:
        """The processed-space state that `unsample(..., end_at_step=end_at_step)` stops at, read off this
        recording (refused for samplers whose rule depends on the number of sigmas)."""
        index = self.index(end_at_step)
        if not self.params.get("prefix_consistent", True) and index != self.n_steps:
            raise UnsamplingError(
                f"sampler {self.params.get('sampler_name')!r} changes its rule with the number of steps, so a partial "
                "unsample is not a prefix of the full one; call unsample(..., end_at_step=k) for this sampler"
            )
        return self.xs[index]

    def save(self, path: str | Path) -> Path:
        """Write `path` (.safetensors: sigmas, xs, denoised) and `path` with suffix .json (params, nfe)."""
        import json

        from safetensors.torch import save_file

        path = Path(path)
        if path.suffix != ".safetensors":
            path = path.with_suffix(".safetensors")
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"sigmas": self.sigmas.contiguous(), "xs": self.xs.contiguous(),
                   "denoised": self.denoised.contiguous()}, str(path))
        sidecar = {"params": self.params, "nfe": self.nfe, "format": "unsampling_lab.Trajectory/1"}
        path.with_suffix(".json").write_text(json.dumps(sidecar, indent=1, default=str), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Trajectory":
        """Read a trajectory written by `save` (the .safetensors file and its .json sidecar)."""
        import json

        from safetensors.torch import load_file

        path = Path(path)
        if path.suffix != ".safetensors":
            path = path.with_suffix(".safetensors")
        if not path.exists() or not path.with_suffix(".json").exists():
            raise UnsamplingError(f"no saved trajectory at {path} (expected {path.name} and {path.with_suffix('.json').name}); "
                                  "write one with Trajectory.save(path)")
        tensors = load_file(str(path))
        sidecar = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
        return cls(sigmas=tensors["sigmas"], xs=tensors["xs"], denoised=tensors["denoised"],
                   params=dict(sidecar.get("params", {})), nfe=int(sidecar.get("nfe", 0)))

    def __repr__(self) -> str:
        p = self.params
        return (f"Trajectory({self.n_steps} steps, sampler={p.get('sampler_name')!r}, scheduler={p.get('scheduler')!r}, "
                f"cfg={p.get('cfg')}, sigma {float(self.sigmas[0]):.4g} -> {float(self.sigmas[-1]):.4g}, nfe={self.nfe})")


class TrajectoryRecorder:
    """A sampler callback that keeps every step on the CPU."""

    def __init__(self) -> None:
        self.sigmas: list[float] = []
        self.xs: list[Tensor] = []
        self.denoised: list[Tensor] = []

    def __call__(self, step: Any) -> None:
        self.sigmas.append(step.sigma)
        self.xs.append(step.x.detach().float().cpu())
        self.denoised.append(step.denoised.detach().float().cpu())
        self._last_sigma = step.sigma_next

    def finish(self, x_final: Tensor, sigmas: Tensor, params: dict[str, Any], nfe: int) -> Trajectory:
        xs = self.xs + [x_final.detach().float().cpu()]
        den = torch.stack(self.denoised) if self.denoised else x_final.new_zeros((0, *x_final.shape)).cpu()
        return Trajectory(sigmas=sigmas.detach().float().cpu(), xs=torch.stack(xs), denoised=den, params=params, nfe=nfe)
