"""A sweep's report: figures and summary.md in one folder, from the command line or a notebook.

    df = ul.sweep(model, latents, grid, images=images, callback=keep)   # keep: {"reconstruction": outputs}
    write_report(model, df, "out/run", outputs=kept, images=images)

writes heatmap_<metric>.png (reconstruction rows), latent_stats.png and noise.png (the kept
reconstruction's trajectory, or `trajectory`), strip.png (input, noise, reconstruction, edit) and
summary.md (the settings, the cost, the reconstruction and edit tables). matplotlib loads here only,
on its non-interactive backend.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from ..analysis.running import SweepOutputs
    from ..trajectory import Trajectory


def write_report(model: Any, df: "pd.DataFrame", out: str | Path, *, outputs: Mapping[str, "SweepOutputs"] | None = None,
                 trajectory: "Trajectory | None" = None, images: Any = None, end_at_step: int | None = None,
                 figures: bool = True, model_name: str = "bundled shapes model", source: str = "",
                 table_path: Path | None = None, seconds: float | None = None) -> list[Path]:
    """Write the figures (unless `figures` is False) and summary.md for the sweep table `df` into `out`.

    outputs: a sweep callback's outputs by kind, "reconstruction" (normalize 'disable') and "edit";
    trajectory: the inversion the noise figures read when no reconstruction was kept (none: no noise
    figures); end_at_step: the state they show (default: the kept reconstruction's). Returns the files.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = _figures(model, df, dict(outputs or {}), images, out, trajectory=trajectory,
                       end_at_step=end_at_step) if figures else []
    workflow = best_workflow(df, out, checkpoint=model_name)
    text = summary(df, model_name=model_name, source=source, table_path=table_path, figures=written, seconds=seconds)
    if workflow is not None:
        text += (f"\nThe best reconstruction as a ComfyUI workflow: `{workflow.ui_path.name}` (editor) and "
                 f"`{workflow.api_path.name}` (API); set its LoadImage to your source image.\n")
        written = [*written, workflow.ui_path, workflow.api_path]
    (out / "summary.md").write_text(text, encoding="utf-8")
    return [*written, out / "summary.md"]


def best_workflow(df: "pd.DataFrame", out: Path, *, checkpoint: str) -> Any:
    """The reconstruction row with the lowest mean latent_mse that ComfyUI's Unsampler can express (method
    unsampler, normalize disable/enable), written as `best.json` + `best_api.json` (`ul.comfy.workflow_for_row`);
    None when the table has no such row."""
    from .comfy import workflow_for_row

    rows = df[df["edit"] == df["positive"]] if {"edit", "positive"} <= set(df.columns) else df.iloc[0:0]
    if "method" in rows:
        rows = rows[rows["method"] == "unsampler"]
    if "control" in rows:  # an edit through ul.edit is no Unsampler node
        rows = rows[(rows["control"] == "prompt_swap") & ~rows["direct"].astype(bool)]
    rows = rows[rows["normalize"].isin(["disable", "enable"])] if "normalize" in rows else rows
    if not len(rows) or "latent_mse" not in rows:
        return None
    keys = [c for c in ("cfg", "resample_cfg", "end_at_step", "normalize", "sampler_name", "scheduler", "steps")
            if c in rows.columns]
    means = rows.groupby(keys, as_index=False)["latent_mse"].mean()
    best = means.loc[means["latent_mse"].idxmin()]
    row = rows[(rows[keys] == best[keys]).all(axis=1)].iloc[0]
    name = Path(checkpoint).name if checkpoint and Path(checkpoint).suffix else "your_checkpoint.safetensors"
    return workflow_for_row(row, out / "best.json", checkpoint=name, image="source.png")


def _figures(model: Any, df: Any, kept: dict[str, Any], images: Any, out: Path, *, trajectory: Any,
             end_at_step: int | None) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from ..analysis import metrics as M
    from ..analysis import plots

    written: list[Path] = []

    def save(fig: Any, name: str) -> None:
        if fig.get_layout_engine() is None:  # figures drawn with layout="constrained" lay themselves out
            fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        written.append(out / name)

    recon = df[df["edit"] == df["positive"]]
    for value in ("latent_mse", "psnr", "fg_iou"):
        if len(recon) and value in recon.columns and recon[value].notna().any():
            axes = plots.error_heatmaps(recon, value=value, log=value == "latent_mse")
            axes[0].figure.suptitle(value, fontsize=10)
            save(axes[0].figure, f"heatmap_{value}.png")
    rec = kept.get("reconstruction")
    traj = rec.trajectory if rec is not None else trajectory
    if traj is not None:
        k = end_at_step if end_at_step is not None else int(rec.params["end_at_step"]) if rec is not None else 0
        z = M.standardized_noise(model, traj, _recorded_step(traj, k))
        ax = plots.latent_stats(traj, model_sampling=model.model_sampling)
        save(ax.figure, "latent_stats.png")
        fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(11, 3.3))
        plots.noise_histogram(z, ax=a1)
        plots.noise_qq(z, ax=a2)
        plots.autocorrelation_map(z, ax=a3)
        save(fig, "noise.png")
    if rec is not None and images is not None and rec.images is not None:
        edit = kept.get("edit")
        axes = plots.image_strip(images, rec.noise, rec.images, None if edit is None else edit.images)
        save(axes.flat[0].figure, "strip.png")
    return written


def _recorded_step(traj: Any, end_at_step: int) -> int:
    """`end_at_step`, or where `traj` stops when it was recorded for another one (a sampler that is not
    prefix-consistent, or a method's two endpoints): the state the noise figures can show."""
    from .. import engine

    steps = int(traj.params["steps"])
    index = min(engine.state_index(steps, end_at_step), traj.n_steps)
    if not traj.params.get("prefix_consistent", True):
        index = traj.n_steps
    return engine.end_at_step_for(steps, index)


def markdown_table(df: Any, floatfmt: str = ".4g") -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    for rec in df.itertuples(index=False):
        cells = [format(v, floatfmt) if isinstance(v, float) else str(v) for v in rec]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary(df: Any, *, model_name: str = "bundled shapes model", source: str = "", table_path: Path | None = None,
            figures: Sequence[Path] = (), seconds: float | None = None) -> str:
    """summary.md: the settings (read from the table), rows and cost, reconstruction and edit tables, figures."""
    a = df.attrs
    naive, total = a.get("nfe_naive", 0), a.get("nfe_total", 0)
    spent = int(df["nfe"].sum()) if "nfe" in df else 0

    def values(col: str) -> list[Any]:
        return sorted(df[col].dropna().unique().tolist()) if col in df else []

    edits = sorted(set(df["edit"]) - set(df["positive"])) if {"edit", "positive"} <= set(df.columns) else []
    where = f"`{table_path.name}`" if table_path is not None else "the store"
    wall = f"; wall time {seconds:.1f} s" if seconds is not None else ""
    lines = [
        "# Unsampling sweep", "",
        f"- model: {model_name}" + (f"; source: {source}" if source else ""),
        f"- steps {values('steps')}; end_at_step {values('end_at_step')}; cfg {values('cfg')}; normalize "
        f"{values('normalize')}; sampler {values('sampler_name')}; scheduler {values('scheduler')}; edit {edits}",
        f"- rows: {len(df)} ({a.get('rows_computed', 0)} computed now, {a.get('rows_skipped', 0)} resumed from "
        f"{where}){wall}",
        f"- model evaluations: {spent} for the whole table ({total} in this run) against {naive} for unsample + "
        f"resample per row (ratio {spent / naive:.2f})" if naive else f"- model evaluations: {spent}",
        "",
    ]
    metrics = [c for c in ("latent_mse", "relative_error", "psnr", "ssim", "psnr_vae", "ssim_vae", "noise_std",
                           "noise_ks", "noise_autocorr_1", "fg_iou") if c in df.columns]
    recon = df[df["edit"] == df["positive"]]
    by = [c for c in ("control", "direct") if c in df and df[c].nunique() > 1]  # swept editing keys: kept apart
    if len(recon):
        table = recon.groupby([*by, "normalize", "cfg", "end_at_step"], as_index=False)[metrics].mean()
        lines += ["## Reconstruction (mean over images)", "", markdown_table(table), ""]
        best = table.loc[table["latent_mse"].idxmin()] if "latent_mse" in table else None
        if best is not None:
            lines += [f"Best reconstruction: {''.join(f'{c}={best[c]}, ' for c in by)}normalize={best['normalize']}, "
                      f"cfg={best['cfg']:g}, "
                      f"end_at_step={int(best['end_at_step'])} (latent_mse {best['latent_mse']:.4g}).", ""]
        if "psnr_vae" in table:
            lines += [f"VAE-only reference (encode -> decode, not a bound): PSNR {recon['psnr_vae'].mean():.2f} dB, "
                      f"SSIM {recon['ssim_vae'].mean():.3f}.", ""]
    edited = df[df["edit"] != df["positive"]]
    if len(edited):
        cols = [c for c in ("latent_mse", "fg_iou", "colour_match", "shape_match") if c in df.columns]
        table = edited.groupby(["edit", *by, "normalize", "cfg", "end_at_step"], as_index=False)[cols].mean()
        lines += ["## Edits (mean over images)", "", markdown_table(table), ""]
    if figures:
        lines += ["## Figures", ""] + [f"![{f.stem}]({f.name})" for f in figures] + [""]
    return "\n".join(lines)
