"""The explorer: ipywidgets controls over one image's inversion, updating live.

    ex = ul.widgets.explorer(model, images, source="red circle", edit="blue circle")
    ex                                   # in a notebook cell: controls, image strip, statistics, metrics
    ex.end_at_step.value = 5             # the controls are attributes; tests set them like this

The explorer holds state (the cached trajectory, counters), never maths. An update is what a sweep
does for one grid point: `unsampled(model, trajectory, end_at_step, normalize)`, then `resample` from
`start_at_step = end_at_step` with the source prompt (reconstruction) and the edit prompt, then the
sweep's own metric rows. The inversion (`unsample_trajectory`) reruns only when a parameter that
changes it moves: steps, cfg, sampler, scheduler, source or negative prompt. end_at_step, normalize,
the resampling cfg, the edit prompt, the editing control and direct read off the cached trajectory (a
controlled edit runs `ul.edit` on it, as a sweep's controlled setting). ipywidgets and matplotlib load
here and in `lab.views` (the pictures) only.
"""
from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .. import engine
from ..analysis import sweeps
from ..analysis.evaluate import METRIC_SETS, References, inversion_endpoints, references
from ..analysis.grid import PROMPT_SWAP, Setting, check_controlled
from ..analysis import running
from ..analysis.running import Inverted
from ..editing import CONTROLS, get_control
from ..engine import NORMALIZE_MODES
from ..errors import UnsamplingError
from ..inversion import methods_for
from ..samplers import INVERTIBLE_SAMPLERS
from ..schedulers import SCHEDULERS
from .views import TILE, StatsFigure, attention_png, latent_preview, tile_png  # noqa: F401 (the explorer's pictures)

if TYPE_CHECKING:
    import pandas as pd

    from ..models.base import DiffusionModel
    from ..trajectory import Trajectory

#: Parameters whose change needs a new recorded Unsampler inversion (the sweep's INVERSION_KEY but the method:
#: the Unsampler's trajectory is kept for the statistics plot whichever method the view shows).
INVERSION_KEY: tuple[str, ...] = tuple(k for k in sweeps.INVERSION_KEY if k != "method")
CONTROLS_WIDTH = 330  # pixels: the explorer fits a 1000-px output area (controls + view)
VIEW_WIDTH = 650


class Explorer:
    """Controls (attributes: method, steps, end_at_step, cfg, resample_cfg, normalize, sampler_name, scheduler,
    source, edit, negative, control, direct, show_attention, sweep_button), outputs (strip, stats, table,
    attention, warning, sweep_table, progress) and state (trajectory, inversions, updates, last_update_s, rows,
    attention_maps).

    `control` and `direct` edit the edit row through `ul.edit` (the sweep's controlled setting); its target
    cross-attention is then recorded and shown as a token x step image (`attention`) unless show_attention
    is off. The reconstruction row stays a plain resample.

    `cfg` is the inversion's guidance, `resample_cfg` the resampling's (default: the same); only `cfg`
    reruns the inversion. The layout fits a 1000-px output area: controls CONTROLS_WIDTH px, view
    VIEW_WIDTH px, the statistics plot drawn at the pixel size it is shown. `warning` names a prompt
    that the tokenizer cuts short."""

    def __init__(
        self,
        model: "DiffusionModel",
        image_or_latent: Tensor | dict[str, Any],
        *,
        steps: int = 10,
        end_at_step: int = 0,
        cfg: float = 1.0,
        resample_cfg: float | None = None,
        normalize: str = "disable",
        sampler_name: str = "euler",
        scheduler: str = "normal",
        source: str = "",
        edit: str = "",
        negative: str = "",
        grid: Mapping[str, Sequence[Any]] | None = None,
        sweep_path: str | None = None,
        samplers: Sequence[str] | None = None,
        method: str = "unsampler",
        control: str = PROMPT_SWAP,
        direct: bool = False,
        show_attention: bool = True,
    ) -> None:
        import ipywidgets as W

        self.model = model
        self.latent, self.images = _as_latent(model, image_or_latent)
        self.grid = dict(grid) if grid is not None else None
        self.sweep_path = sweep_path
        self.trajectory: Trajectory | None = None
        self._traj_key: tuple | None = None
        self.inversions = 0  # unsample_trajectory calls
        self.method_inversions = 0  # ul.invert calls for methods other than the Unsampler (one per setting)
        self._method_cache: dict[tuple, Any] = {}
        self.updates = 0
        self.last_update_s = math.nan
        self.last_update_cpu_s = math.nan  # this process's CPU time: what the update costs, whatever else runs
        self.rows: list[dict[str, Any]] = []  # the metric rows shown (reconstruction, edit)
        self.attention_maps: Any = None  # the edit's recorded cross-attention (`AttentionMaps`), when controlled
        self.sweep_frame: pd.DataFrame | None = None
        self._reference = None
        self._stats_fig: Any = None

        # -- controls ----------------------------------------------------------------------------
        slider = dict(continuous_update=False, style={"description_width": "90px"})
        self.steps = W.IntSlider(value=steps, min=1, max=50, description="steps", **slider)
        self.end_at_step = W.IntSlider(value=min(end_at_step, steps - 1), min=0, max=max(steps - 1, 0),
                                       description="end_at_step", **slider)
        self.cfg = W.FloatSlider(value=cfg, min=0.0, max=10.0, step=0.5, description="cfg", **slider)
        # the resampling's own cfg (ul.resample's cfg): inverting at 1 and resampling at w is the usual edit
        self.resample_cfg = W.FloatSlider(value=cfg if resample_cfg is None else resample_cfg, min=0.0, max=10.0,
                                          step=0.5, description="resample cfg", **slider)
        self.normalize = W.Dropdown(options=list(NORMALIZE_MODES), value=normalize, description="normalize")
        names = list(samplers) if samplers is not None else list(INVERTIBLE_SAMPLERS)
        self.sampler_name = W.Dropdown(options=names, value=sampler_name, description="sampler")
        self.scheduler = W.Dropdown(options=list(SCHEDULERS), value=scheduler, description="scheduler")
        text = dict(continuous_update=False, layout=W.Layout(width="260px"))
        self.source = W.Text(value=source, description="source", **text)
        self.edit = W.Text(value=edit, description="edit", **text)
        self.negative = W.Text(value=negative, description="negative", **text)
        self.sweep_button = W.Button(description="run sweep", icon="table")
        methods = methods_for(model)
        if method not in methods:
            raise UnsamplingError(f"method {method!r} does not run on this model; use one of {', '.join(methods)}")
        self.method = W.Dropdown(options=methods, value=method, description="method")
        # the edit's control (ul.edit) and Direct Inversion; the reconstruction row stays a plain resample
        get_control(control)  # an unknown name: did you mean ...?
        self.control = W.Dropdown(options=list(CONTROLS), value=control, description="control")
        self.direct = W.Checkbox(value=direct, description="direct inversion", indent=False)
        self.show_attention = W.Checkbox(value=show_attention, description="show attention", indent=False)

        # -- outputs -----------------------------------------------------------------------------
        self.strip = W.Image(format="png", layout=W.Layout(max_width=f"{VIEW_WIDTH}px"))
        self.caption = W.HTML(layout=W.Layout(max_width=f"{VIEW_WIDTH}px"))
        w, h = StatsFigure.pixel_size()
        self.stats = W.Image(format="png", layout=W.Layout(width=f"{w}px", height=f"{h}px"))  # shown 1:1: sharp
        self.table = W.HTML(layout=W.Layout(max_width=f"{VIEW_WIDTH - w - 8}px", overflow="auto"))
        self.warning = W.HTML()
        self.status = W.HTML()
        self.progress = W.IntProgress(value=0, min=0, max=1, description="sweep", layout=W.Layout(visibility="hidden"))
        self.sweep_table = W.HTML()
        self.attention = W.Image(format="png", layout=W.Layout(display="none"))  # token x step, for a controlled edit

        controls = W.VBox([self.method, self.steps, self.end_at_step, self.cfg, self.resample_cfg, self.normalize,
                           self.sampler_name, self.scheduler, self.source, self.edit, self.negative, self.control,
                           W.HBox([self.direct, self.show_attention]), W.HBox([self.sweep_button, self.progress])],
                          layout=W.Layout(width=f"{CONTROLS_WIDTH}px", min_width=f"{CONTROLS_WIDTH}px"))
        view = W.VBox([self.caption, self.strip, W.HBox([self.stats, self.table]), self.attention, self.warning,
                       self.status],
                      layout=W.Layout(width=f"{VIEW_WIDTH}px", overflow="hidden"))
        self.widget = W.VBox([W.HBox([controls, view]), self.sweep_table],
                             layout=W.Layout(max_width=f"{CONTROLS_WIDTH + VIEW_WIDTH}px"))

        for c in self.controls:
            c.observe(self._on_change, names="value")
        self.sweep_button.on_click(lambda _: self.run_sweep())
        self.update()

    # -- public -------------------------------------------------------------------------------------
    @property
    def controls(self) -> list[Any]:
        return [self.method, self.steps, self.end_at_step, self.cfg, self.resample_cfg, self.normalize,
                self.sampler_name, self.scheduler, self.source, self.edit, self.negative, self.control, self.direct,
                self.show_attention]

    @property
    def params(self) -> dict[str, Any]:
        """The current setting in the sweep's parameter names."""
        return dict(steps=int(self.steps.value), end_at_step=int(self.end_at_step.value), cfg=float(self.cfg.value),
                    resample_cfg=float(self.resample_cfg.value),
                    normalize=self.normalize.value, sampler_name=self.sampler_name.value,
                    scheduler=self.scheduler.value, positive=self.source.value, negative=self.negative.value,
                    edit=self.edit.value, method=self.method.value, control=self.control.value,
                    direct=bool(self.direct.value))

    def update(self) -> None:
        """Recompute the view for the current controls (a new inversion only if its key changed)."""
        t0, c0 = time.perf_counter(), time.process_time()
        p = self.params
        try:
            traj = self._trajectory(p)
            self._show(traj, p)
            self.status.value = ""
            notes = [n for n in (prompt_truncation(self.model, p[k]) for k in ("positive", "edit", "negative")) if n]
            self.warning.value = "".join(f"<div style='color:#8a5a00'>&#9888; {_escape(n)}</div>" for n in notes)
        except UnsamplingError as e:
            self.status.value = f"<span style='color:#b00'>{_escape(str(e))}</span>"
        self.updates += 1
        self.last_update_s = time.perf_counter() - t0
        self.last_update_cpu_s = time.process_time() - c0
        self.status.value += f"<small>update {self.last_update_s * 1000:.0f} ms, inversions {self.inversions}</small>"

    def run_sweep(self) -> "pd.DataFrame":
        """Run `sweep` over `grid` (default: end_at_step x {1, current cfg}) at the other current values."""
        grid = self.grid if self.grid is not None else self.default_grid()
        p = self.params
        fixed = {k: v for k, v in p.items() if k not in grid}
        if "resample_cfg" not in sweeps.DEFAULTS:  # until sweeps take resample_cfg (issue 12) they resample at cfg
            fixed.pop("resample_cfg", None)
        if fixed.get("edit") == "":
            fixed["edit"] = None
        n = 1
        for v in grid.values():
            n *= len(v)
        self.progress.max, self.progress.value = n, 0
        self.progress.layout.visibility = "visible"

        def tick(rows: list[dict[str, Any]], outputs: Any) -> None:
            self.progress.value += 1

        df = sweeps.sweep(self.model, self.latent, grid, path=self.sweep_path, images=self.images,
                          progress=False, callback=tick, **fixed)
        self.progress.value = self.progress.max
        self.sweep_frame = df
        cols = [c for c in ("control", "direct", "end_at_step", "cfg", "normalize", "sampler_name", "scheduler", "psnr", "ssim",
                            "latent_mse", "noise_std", "noise_ks_z", "fg_iou", "colour_match", "shape_match", "nfe")
                if c in df.columns]
        self.sweep_table.value = df[cols].to_html(index=False, float_format=lambda v: f"{v:.3g}", border=0)
        return df

    def default_grid(self) -> dict[str, list[Any]]:
        steps = int(self.steps.value)
        stride = max(1, steps // 5)
        cfgs = sorted({1.0, float(self.cfg.value)})
        return {"end_at_step": list(range(0, steps, stride)), "cfg": cfgs}

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    # -- internals ----------------------------------------------------------------------------------
    def _on_change(self, change: dict[str, Any]) -> None:
        if change["owner"] is self.steps:
            steps = int(self.steps.value)
            self.end_at_step.max = max(steps - 1, 0)  # may clip end_at_step's value: that fires one more update
            if self.end_at_step.value > steps - 1:
                return
        self.update()

    def _trajectory(self, p: Mapping[str, Any]) -> "Trajectory":
        key = tuple(p[k] for k in INVERSION_KEY)
        if key != self._traj_key or self.trajectory is None:
            self.trajectory = engine.unsample_trajectory(
                self.model, self.latent, steps=p["steps"], cfg=p["cfg"], sampler_name=p["sampler_name"],
                scheduler=p["scheduler"], positive=p["positive"], negative=p["negative"], progress=False,
                end_at_step=0 if sweeps.prefix_consistent(p["sampler_name"]) else p["end_at_step"])
            self._traj_key = key
            self.inversions += 1
            self._stats_fig = None
        elif not self.trajectory.params.get("prefix_consistent", True) and \
                self.trajectory.params.get("end_at_step") != p["end_at_step"]:
            self._traj_key = None  # this sampler needs one inversion per end_at_step
            return self._trajectory(p)
        return self.trajectory

    def _show(self, traj: "Trajectory", p: Mapping[str, Any]) -> None:
        """The current setting through the sweep's own `evaluate_setting`: the reconstruction (a plain resample)
        and the edit (under the chosen control and direct: `ul.edit`, its attention recorded when shown)."""
        model, refs = self.model, self.references()
        settings = [self.setting(p, edit=None, plain=True), self.setting(p, edit=p["edit"] or p["positive"])]
        check_controlled(settings[1], model.model_sampling.family)
        if p["method"] == "unsampler" and not settings[1].controlled:  # both from one noise, in one network batch
            done, _ = running.evaluate_setting(model, [(Inverted(traj), s) for s in settings], refs,
                                               metrics=METRIC_SETS, like=self.latent)
        else:  # a method's own inversion and resampling side (its noise is never normalized), or an edit: one each
            if p["method"] == "unsampler":
                inverted = Inverted(traj)
            else:
                inv = self._method_inversion(p)
                inverted = Inverted(inversion_endpoints(model, self.latent, inv), inv)
            done = [running.evaluate_setting(model, [(inverted, s)], refs, metrics=METRIC_SETS, like=self.latent,
                                             record_attention=bool(self.show_attention.value))[0][0] for s in settings]
        self.rows = [{**p, "edit": e.setting.resample_prompt, "control": e.setting.control, "direct": e.setting.direct,
                      **e.row(0), "row": name} for name, e in zip(("reconstruction", "edit"), done)]
        self.attention_maps = done[1].attention
        self._draw_attention()
        decoded = None if done[0].decoded is None else torch.cat([e.decoded for e in done])
        self._draw_strip(done[0].noise, decoded, p)
        self._draw_stats(traj, p["end_at_step"])
        self._draw_table()

    @staticmethod
    def setting(p: Mapping[str, Any], *, edit: str | None, plain: bool = False) -> Setting:
        """The sweep's Setting for the explorer's parameters `p` (seed 0, as a sweep's default); plain: a
        prompt_swap resample whatever the control."""
        return Setting(sampler_name=p["sampler_name"], scheduler=p["scheduler"], steps=int(p["steps"]),
                       cfg=float(p["cfg"]), positive=p["positive"], negative=p["negative"],
                       end_at_step=int(p["end_at_step"]), normalize=p["normalize"], edit=edit,
                       resample_cfg=float(p["resample_cfg"]), method=p["method"],
                       control=PROMPT_SWAP if plain else p.get("control", PROMPT_SWAP),
                       direct=False if plain else bool(p.get("direct", False)))

    def _method_inversion(self, p: Mapping[str, Any]) -> Any:
        """`ul.invert` for the current setting (methods other than the Unsampler), cached per setting."""
        from ..inversion import invert

        key = (p["method"], p["end_at_step"], *(p[k] for k in INVERSION_KEY))
        if key not in self._method_cache:
            self._method_cache = {key: invert(
                self.model, self.latent, method=p["method"], steps=p["steps"], end_at_step=p["end_at_step"],
                cfg=p["cfg"], sampler_name=p["sampler_name"], scheduler=p["scheduler"], positive=p["positive"],
                negative=p["negative"], progress=False)}  # one kept: a slider move recomputes, a return does not
            self.method_inversions += 1
        return self._method_cache[key]

    def references(self) -> References:
        """What the metrics compare against (the same as a sweep's), computed once."""
        if self._reference is None:
            self._reference = references(self.model, self.latent["samples"], self.images)
        return self._reference

    def _draw_strip(self, noise: Tensor, decoded: Tensor | None, p: Mapping[str, Any]) -> None:
        tiles, names = [], []
        reference = self.references().images
        if reference is not None:
            tiles.append(reference[0])
            names.append("input")
        tiles.append(latent_preview(noise[0]))
        names.append(f"noise (end_at_step {p['end_at_step']})")
        if decoded is not None:
            tiles += [decoded[0], decoded[1]]
            how = "" if p["control"] == PROMPT_SWAP and not p["direct"] else \
                f" ({p['control']}{' + direct' if p['direct'] else ''})"
            names += [f"resampled: {p['positive'] or '(empty)'}", f"edit{how}: {p['edit'] or p['positive'] or '(empty)'}"]
        self.strip.value = tile_png(tiles)
        self.caption.value = " | ".join(f"<b>{_escape(n)}</b>" for n in names)

    def _draw_attention(self) -> None:
        """The edit's target cross-attention, tokens x steps (`ul.plots.attention_by_step`); hidden without one."""
        if self.attention_maps is None:
            self.attention.layout.display = "none"
            return
        self.attention.value = attention_png(self.attention_maps, width=VIEW_WIDTH - 10, height=220)
        self.attention.layout.display = ""

    def _draw_stats(self, traj: "Trajectory", k: int) -> None:
        if self._stats_fig is None:
            self._stats_fig = StatsFigure(traj, self.model.model_sampling)
        self.stats.value = self._stats_fig.render(k)

    def _draw_table(self) -> None:
        import pandas as pd

        keep = [c for c in ("row", "edit", "psnr", "ssim", "latent_mse", "noise_std", "noise_ks_z", "noise_autocorr_1",
                            "sigma_final", "colour", "shape", "fg_iou", "colour_match", "shape_match")
                if c in self.rows[0]]
        frame = pd.DataFrame(self.rows)[keep].set_index("row")
        if "edit" in frame:  # a long prompt would widen the table past the output area: shorten it for display
            frame["edit"] = [e if len(e) <= 18 else e[:17] + "\u2026" for e in frame["edit"].astype(str)]
        html = frame.T.to_html(float_format=lambda v: f"{v:.3g}", border=0)
        self.table.value = f"<div style='font-size:11px;line-height:1.25'>{html}</div>"


def explorer(model: "DiffusionModel", image_or_latent: Tensor | dict[str, Any], **kwargs: Any) -> Explorer:
    """An `Explorer` on one image (float [1, H, W, 3] in 0..1) or LATENT dict; see `Explorer` for the options."""
    return Explorer(model, image_or_latent, **kwargs)


# -- small pure helpers (pictures, not maths) --------------------------------------------------------
def _as_latent(model: Any, x: Tensor | dict[str, Any]) -> tuple[dict[str, Tensor], Tensor | None]:
    if isinstance(x, dict):
        return x, None
    if isinstance(x, Tensor) and x.ndim == 4 and x.shape[-1] == 3:
        images = x.detach().float().cpu()[:1]
        return model.encode(images), images
    if isinstance(x, Tensor) and x.ndim == 4:
        return {"samples": x[:1]}, None
    raise UnsamplingError("the explorer takes one image float [1, H, W, 3] in 0..1, a LATENT dict or a latent "
                          f"tensor [1, C, H, W]; got {type(x).__name__} {tuple(getattr(x, 'shape', ()))}")


def prompt_truncation(model: Any, prompt: Any) -> str | None:
    """A warning when `prompt` has more tokens than the model's tokenizer keeps (the rest is silently cut), else None."""
    tok = getattr(model, "tokenizer", None)
    limit = getattr(tok, "model_max_length", None)
    if not isinstance(prompt, str) or not prompt or tok is None or not isinstance(limit, int) or limit > 100_000:
        return None
    n = len(tok(prompt, truncation=False, verbose=False).input_ids)
    if n <= limit:
        return None
    kept = tok.decode(tok(prompt, truncation=True, max_length=limit).input_ids, skip_special_tokens=True)
    return (f"prompt {prompt!r} has {n} tokens but the model reads {limit} (special tokens included); "
            f"it sees only {kept.strip()!r}. Shorten it or use words the tokenizer knows.")


def _escape(s: str) -> str:
    import html

    return html.escape(s)
