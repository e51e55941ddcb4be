"""Running the plan: one inversion per group, then `evaluate_setting` per setting.

    evaluate_setting(model, [(inverted, setting)], refs, metrics=..., like=latents)
        = resample(unsampled(trajectory, end_at_step, normalize)) -> decode -> metric rows per item

is the one place "a setting -> its metric rows" is written: `run_groups` (the sweep) calls it for every
setting, the explorer (`lab.widgets`) for the setting its controls show. Several settings that share
steps, sampler, scheduler, end_at_step and seed can go through it together, as one network batch in
which each image carries its own noise, cfg and prompts (a packed batch, see `grid.pack`).

A *controlled* setting (control != "prompt_swap", or direct) runs alone, through `ul.edit` instead of
resample (`edit_setting`): source = the setting's positive, target = its resample prompt, cfg = its
resample cfg; the Unsampler's input is the noise `unsampled(trajectory, end_at_step, normalize)` edited
from start_at_step = end_at_step (with direct, the trajectory's states from there down to the input as the
path), a method's is its Inversion (direct: the path it records). Its metrics are the target branch's,
computed as for a plain setting; its nfe is the edit's (one evaluation per step and cfg pass, each over the
2B rows of source and target).
"""
from __future__ import annotations

import itertools
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..errors import UnsamplingError
from ..inversion import resample
from ..trajectory import stop_step
from .evaluate import References, evaluate, inversion_endpoints
from .grid import InversionGroup, Prompts, Setting, chunked, engine_prompt, item_text, prefix_consistent

if TYPE_CHECKING:
    from ..models.base import DiffusionModel
    from ..trajectory import Trajectory


@dataclass(frozen=True)
class Inverted:
    """What a setting's noise is read off: a recorded Unsampler trajectory, or an `ul.invert` result.

    trajectory: the states the noise metrics read (for a method, `inversion_endpoints`: the input
    and the state it stopped at); inversion: the method's Inversion (resampled through its own
    resampling side), None for the Unsampler.
    """

    trajectory: "Trajectory"
    inversion: Any = None

    def noise(self, model: "DiffusionModel", setting: Setting, like: Any) -> Any:
        """What resample starts from: the state unsample(end_at_step, normalize) returns, or the Inversion."""
        from .. import engine

        if self.inversion is not None:
            return self.inversion
        return engine.unsampled(model, self.trajectory, setting.end_at_step, setting.normalize, like=like)

    def start_at_step(self, setting: Setting) -> int:
        # a method's inversion stops where unsample would (end_at_step >= steps still takes one step)
        return setting.end_at_step if self.inversion is None else stop_step(setting.steps, setting.end_at_step)

    def metric_step(self, setting: Setting) -> int:
        """The end_at_step at which `trajectory` holds the noise (a method's endpoints end at it)."""
        return setting.end_at_step if self.inversion is None else 0


@dataclass
class Evaluated:
    """One setting through `evaluate_setting`: its noise, result and decoded images [B, ...], and per
    batch item its metric columns by metric set."""

    setting: Setting
    noise: Tensor  # raw latents, as unsample returns them
    result: Tensor  # raw latents, as resample returns them (a controlled setting: the edit's target branch)
    decoded: Tensor | None
    metrics: list[dict[str, dict[str, float]]]
    attention: Any = None  # a controlled setting's recorded cross-attention (`AttentionMaps`), when asked for

    def row(self, item: int) -> dict[str, float]:
        """The metric columns of one item, every metric set together."""
        return {k: v for cols in self.metrics[item].values() for k, v in cols.items()}


@dataclass
class SweepOutputs:
    """What one setting produced, for a `callback` (figures, keeping results): tensors for the whole batch."""

    params: dict[str, Any]
    noise: Tensor  # raw latents, as unsample returns them
    result: Tensor  # raw latents, as resample returns them
    trajectory: "Trajectory"
    images: Tensor | None  # decoded result [B, H, W, 3] when the model has a VAE


@dataclass
class SettingResult:
    """One finished setting of a group: per batch item its metric columns by metric set, and what it cost."""

    group: InversionGroup
    setting: Setting
    metrics: list[dict[str, dict[str, float]]]
    nfe: int
    nfe_naive: int
    seconds: float
    outputs: SweepOutputs | None = None


def evaluate_setting(model: "DiffusionModel", members: Sequence[tuple[Inverted, Setting]], references: References,
                     *, metrics: Sequence[str], like: dict[str, Any] | Tensor,
                     record_attention: bool = False) -> tuple[list[Evaluated], int]:
    """Settings -> resample -> decode -> metric rows: (one Evaluated per member, the resample's network evaluations).

    members: (inverted, setting) pairs resampled in ONE call; they share steps, sampler_name,
    scheduler, end_at_step and seed, and each brings its own noise, cfg and prompts (one member: the
    engine is called with that setting's own values). A method's Inversion, and a controlled setting
    (through `edit_setting`), are resampled alone. like: the input LATENT (its batch size and noise_mask).
    metrics: the metric sets, each computed on its own (the store keeps them per set). record_attention: a
    controlled setting's Evaluated carries the target's recorded cross-attention.
    """
    from ..guidance import EvalCounter

    inverted, first = members[0]
    if any((s.steps, s.sampler_name, s.scheduler, s.end_at_step, s.seed) !=
           (first.steps, first.sampler_name, first.scheduler, first.end_at_step, first.seed) for _, s in members):
        raise UnsamplingError("evaluate_setting packs settings that share steps, sampler_name, scheduler, end_at_step "
                              "and seed; call it once per setting for the others")
    if inverted.inversion is not None and len(members) > 1:
        raise UnsamplingError("a method's Inversion is resampled alone; call evaluate_setting once per setting")
    if len(members) > 1 and any(s.controlled for _, s in members):
        raise UnsamplingError("a controlled setting (control or direct) is edited alone through ul.edit; call "
                              "evaluate_setting once per setting")
    batch = int(samples_of(like).shape[0])
    attention = None
    if first.controlled:
        noise, res = edit_setting(model, inverted, first, like, record_attention=record_attention)
        noises, result, nfe, attention = [noise], samples_of(res.target), res.nfe, res.attention
    else:
        noises = [inv.noise(model, s, like) for inv, s in members]
        counter = EvalCounter()
        result = samples_of(resample(
            model, noises[0] if len(noises) == 1 else concat(noises), steps=first.steps,
            start_at_step=inverted.start_at_step(first), sampler_name=first.sampler_name, scheduler=first.scheduler,
            add_noise=False, noise_seed=first.seed, progress=False, counter=counter,
            **packed_prompts([(s.effective_resample_cfg, s.resample_prompt, s.negative) for _, s in members], batch)))
        nfe = counter.nfe
    decoded = model.decode(result) if references.decodes and ({"pixel", "detector"} & set(metrics)) else None
    out = []
    for j, (inv, s) in enumerate(members):
        part = slice(j * batch, (j + 1) * batch)
        res, dec = result[part], None if decoded is None else decoded[part]
        by_set: list[dict[str, dict[str, float]]] = [{} for _ in range(batch)]
        for name in metrics:
            cols = evaluate(model, res, trajectory=inv.trajectory, end_at_step=inv.metric_step(s), references=references,
                            decoded=dec, prompts=[item_text(s.resample_prompt, b) for b in range(batch)], metrics=(name,))
            for b in range(batch):
                by_set[b][name] = cols[b]
        noise = noises[j].samples if inv.inversion is not None else samples_of(noises[j])
        out.append(Evaluated(s, noise, res, dec, by_set, attention=attention))
    return out, nfe


def edit_setting(model: "DiffusionModel", inverted: Inverted, setting: Setting, like: dict[str, Any] | Tensor, *,
                 record_attention: bool = False) -> tuple[Any, Any]:
    """A controlled setting through `ul.edit`: (what was edited, the EditResult).

    The Unsampler: the noise `unsampled(trajectory, end_at_step, normalize)`, edited from start_at_step =
    end_at_step; with direct, the trajectory's states from that step down to the input (descending sigma,
    [n + 1, B, C, H, W]) are the path. A method: its Inversion (its own resampling side; direct: its path).
    source = the positive prompt, target = the resample prompt, cfg = the resample cfg, the setting's negative.
    """
    from ..editing import edit

    s = setting
    noise = inverted.noise(model, s, like)
    direct: Any = s.direct
    if s.direct and inverted.inversion is None:
        traj = inverted.trajectory
        direct = traj.xs[: traj.index(s.end_at_step) + 1].flip(0)
    res = edit(model, noise, source=engine_prompt(s.positive), target=engine_prompt(s.resample_prompt),
               control=s.control, cfg=s.effective_resample_cfg, direct=direct, record_attention=record_attention,
               steps=s.steps, sampler_name=s.sampler_name, scheduler=s.scheduler,
               start_at_step=inverted.start_at_step(s), negative=engine_prompt(s.negative), **dict(s.control_options))
    return noise, res


def run_groups(model: "DiffusionModel", latents: dict[str, Any] | Tensor, refs: References,
               groups: Sequence[InversionGroup], chosen: Sequence[str], *, max_batch: int,
               keep_outputs: bool = False) -> Iterator[SettingResult]:
    """Run `groups` (all sharing sigmas) as one inversion, then their settings through `evaluate_setting`.

    With one group and max_batch = the batch size this is exactly the unpacked computation: the
    engine is called with the setting's own cfg and prompts. Packed, each image of the network batch
    carries its own cfg and prompts; rows agree with unpacked ones to float rounding (a packed cfg-1 item
    gets no uncond rows, as alone; see benchmarks/sweep_scaling.py). A method other than the Unsampler
    inverts once (`ul.invert`) and resamples each setting alone; a controlled setting is edited alone
    (`edit_setting`), from the same inversion. Yields each setting as it finishes.

    nfe: the inversion is charged to the first setting that finishes, a packed resample to its first
    member; nfe_naive is what unsample + resample of the setting alone would cost.
    """
    t0 = time.perf_counter()
    batch = int(samples_of(latents).shape[0])
    inverted, inversion_nfe, alone = _invert(model, latents, groups)
    work = [(i, s) for i, g in enumerate(groups) for s in g.settings]
    per_chunk = max(1, max_batch // batch)
    if groups[0].is_unsampler and (len(groups) > 1 or per_chunk > 1):  # settings that can share one resample batch
        same = lambda w: (w[1].end_at_step, w[1].seed)  # noqa: E731
        plain = [w for w in work if not w[1].controlled]
        chunks = [c for _, part in itertools.groupby(sorted(plain, key=same), key=same)
                  for c in chunked(list(part), per_chunk)] + [[w] for w in work if w[1].controlled]
    else:
        chunks = [[w] for w in work]
    charge = inversion_nfe
    for chunk in chunks:
        done, nfe = evaluate_setting(model, [(inverted[i], s) for i, s in chunk], refs, metrics=chosen, like=latents)
        seconds = (time.perf_counter() - t0) / len(chunk)
        t0 = time.perf_counter()
        for j, ((i, s), e) in enumerate(zip(chunk, done)):
            outputs = SweepOutputs(params=asdict(s), noise=e.noise, result=e.result, trajectory=inverted[i].trajectory,
                                   images=e.decoded) if keep_outputs else None
            yield SettingResult(groups[i], s, e.metrics, nfe=charge + (nfe if j == 0 else 0),
                                nfe_naive=alone(i, s) + nfe, seconds=seconds, outputs=outputs)
            charge = 0


def _invert(model: "DiffusionModel", latents: dict[str, Any] | Tensor, groups: Sequence[InversionGroup]) -> tuple[
        list[Inverted], int, Any]:
    """(one Inverted per group, the network evaluations spent, alone(i, setting): the inversion cost of the
    setting run by itself). Unsampler groups share one recorded trajectory (a packed batch when several)."""
    from .. import engine

    first = groups[0]
    if not first.is_unsampler:
        from ..inversion import invert

        (group,) = groups
        inv = invert(model, latents, method=group.method, steps=group.steps, end_at_step=group.end_at_step, cfg=group.cfg,
                     sampler_name=group.sampler_name, scheduler=group.scheduler, positive=engine_prompt(group.positive),
                     negative=engine_prompt(group.negative), progress=False, **dict(group.method_options))
        return [Inverted(inversion_endpoints(model, latents, inv), inv)], inv.nfe, lambda i, s: inv.nfe
    batch, n = int(samples_of(latents).shape[0]), len(groups)
    traj = engine.unsample_trajectory(
        model, repeat(latents, n), steps=first.steps, sampler_name=first.sampler_name, scheduler=first.scheduler,
        end_at_step=first.end_at_step, progress=False, **packed_prompts([(g.cfg, g.positive, g.negative) for g in groups], batch))
    trajs = [_slice_trajectory(traj, i * batch, (i + 1) * batch, g) for i, g in enumerate(groups)] if n > 1 else [traj]
    shared = prefix_consistent(first.sampler_name)

    def alone(i: int, s: Setting) -> int:
        if not shared or traj.n_steps == 0:
            return trajs[i].nfe
        return int(round(traj.nfe * engine.state_index(s.steps, s.end_at_step) / traj.n_steps))

    return [Inverted(t) for t in trajs], traj.nfe, alone


def packed_prompts(parts: Sequence[tuple[float, Prompts, Prompts]], batch: int) -> dict[str, Any]:
    """The engine's cfg / positive / negative for (cfg, positive, negative) per packed member: one value where
    every member has the same one (a cfg, or one prompt text), else one value per image of the packed
    network batch (members x batch items)."""
    cfgs, positives, negatives = zip(*parts)

    def one(values: Sequence[Any]) -> bool:
        return len(set(values)) == 1 and (isinstance(values[0], str) or len(values) == 1)

    return {"cfg": cfgs[0] if len(set(cfgs)) == 1 else [c for c in cfgs for _ in range(batch)],
            "positive": engine_prompt(positives[0]) if one(positives) else
            [item_text(p, b) for p in positives for b in range(batch)],
            "negative": engine_prompt(negatives[0]) if one(negatives) else
            [item_text(p, b) for p in negatives for b in range(batch)]}


# -- tensors ---------------------------------------------------------------------------------------------
def samples_of(latent: dict[str, Any] | Tensor) -> Tensor:
    samples = latent["samples"] if isinstance(latent, dict) else latent
    if not isinstance(samples, Tensor) or samples.ndim != 4:
        raise UnsamplingError("latents must be a LATENT dict {'samples': Tensor[B, C, H, W]} or such a tensor")
    return samples


def mask_of(latent: dict[str, Any] | Tensor) -> Tensor | None:
    return latent.get("noise_mask") if isinstance(latent, dict) else None


def repeat(latent: dict[str, Any] | Tensor, n: int) -> dict[str, Any] | Tensor:
    """`latent` n times along the batch (its per-item noise_mask too)."""
    if n == 1:
        return latent
    samples = samples_of(latent)
    if not isinstance(latent, dict):
        return samples.repeat(n, 1, 1, 1)
    out = dict(latent, samples=samples.repeat(n, 1, 1, 1))
    mask = latent.get("noise_mask")
    if isinstance(mask, Tensor) and mask.ndim >= 3 and mask.shape[0] == samples.shape[0] > 1:
        out["noise_mask"] = mask.repeat(n, *([1] * (mask.ndim - 1)))
    return out


def concat(latents: Sequence[dict[str, Any] | Tensor]) -> dict[str, Any] | Tensor:
    if len(latents) == 1:
        return latents[0]
    out = repeat(latents[0], len(latents))
    samples = torch.cat([samples_of(x) for x in latents])
    return dict(out, samples=samples) if isinstance(out, dict) else samples


def _slice_trajectory(traj: "Trajectory", start: int, stop: int, group: InversionGroup) -> "Trajectory":
    from ..trajectory import Trajectory

    params = dict(traj.params, cfg=group.cfg, positive=engine_prompt(group.positive),
                  negative=engine_prompt(group.negative))
    return Trajectory(sigmas=traj.sigmas, xs=traj.xs[:, start:stop].clone(), denoised=traj.denoised[:, start:stop].clone(),
                      params=params, nfe=traj.nfe)
