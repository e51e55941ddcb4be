"""Hostile and careless inputs (issue 13): each one gets a one-line UnsamplingError naming what was wrong
and what to do, or is accepted and does the right thing; the CLI never prints a traceback for them."""
from __future__ import annotations

import copy
import math
import re
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import pytest
import torch

import unsampling_lab as ul
from unsampling_lab.errors import UnsamplingError, UnsamplingWarning
from unsampling_lab.testing import tiny_sd_pipeline

FAST = dict(steps=2, progress=False)


def _pixels(h: int = 35, w: int = 50, seed: int = 0) -> np.ndarray:
    return (np.random.RandomState(seed).rand(h, w, 3) * 255).astype(np.uint8)


def _gradient(h: int = 35, w: int = 50) -> np.ndarray:
    """Smooth, so that JPEG keeps it within a few levels."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([yy * 255 // (h - 1), xx * 255 // (w - 1), (yy + xx) * 255 // (h + w - 2)], -1).astype(np.uint8)


@pytest.fixture(scope="module")
def pipe_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pipe")
    tiny_sd_pipeline(folder)
    return folder


@pytest.fixture(scope="module")
def env(pipe_dir: Path, tmp_path_factory) -> SimpleNamespace:
    """A tiny SD pipeline (16 px images, 8x8 latents, 8-token tokenizer) and files to break."""
    from PIL import Image

    model = ul.load_model(pipe_dir, device="cpu")
    images = torch.from_numpy(_pixels(16, 16)).float()[None] / 255
    files = tmp_path_factory.mktemp("files")
    Image.fromarray(_pixels()).save(files / "a.png")
    Image.fromarray(_pixels(16, 16)).save(files / "small.png")
    (files / "empty.png").write_bytes(b"")
    (files / "junk.png").write_text("not an image")
    (files / "junk.latent").write_text("not a safetensors file")
    from safetensors.torch import save_file

    save_file({"samples": torch.zeros(1, 4, 2, 2)}, str(files / "wrong_key.latent"))
    broken = {}
    for name, damage in (("empty_weights", "empty"), ("no_unet", "no_unet"), ("pickled", "pickled"),
                         ("cross_attention_dim", "config")):
        folder = files / name
        shutil.copytree(pipe_dir, folder)
        weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
        if damage == "empty":
            weights.write_bytes(b"")
        elif damage == "no_unet":
            shutil.rmtree(folder / "unet")
        elif damage == "config":  # a config edited away from its weights
            import json

            config = json.loads((folder / "unet" / "config.json").read_text())
            (folder / "unet" / "config.json").write_text(json.dumps({**config, "cross_attention_dim": 16}))
        else:  # the same weights, pickled the way old diffusers folders hold them
            from safetensors.torch import load_file

            torch.save(load_file(str(weights)), weights.with_suffix(".bin"))
            weights.unlink()
        broken[name] = folder
    return SimpleNamespace(model=model, images=images, latent=model.encode(images), files=files, broken=broken,
                           pipe=pipe_dir)


def _latent_with_mask(env: SimpleNamespace, mask: torch.Tensor) -> dict[str, Any]:
    return {**env.latent, "noise_mask": mask}


def _nan_weight_model(env: SimpleNamespace) -> Any:
    model = copy.deepcopy(env.model)
    with torch.no_grad():
        model.unet.conv_in.weight[0, 0, 0, 0] = float("nan")
    return model


_INVERSIONS: dict[tuple[str, int], Any] = {}


def _inverted(env: SimpleNamespace, method: str, steps: int = 4) -> Any:
    """One inversion per (method, steps), shared by the cases that resample it wrongly."""
    if (method, steps) not in _INVERSIONS:
        opts = dict(cfg=2.0, positive="red", inner_steps=1) if method == "null_text" else {}
        _INVERSIONS[method, steps] = ul.invert(env.model, env.latent, method=method, steps=steps, progress=False, **opts)
    return _INVERSIONS[method, steps]


def _option(method: str, **option: Any) -> Callable[[SimpleNamespace], Any]:
    cfg = dict(cfg=2.0, positive="red") if method == "null_text" else {}
    return lambda e: ul.invert(e.model, e.latent, method=method, **FAST, **cfg, **option)


def _sweep(e: SimpleNamespace, path: Any) -> Any:
    return ul.sweep(e.model, e.latent, {"cfg": [1.0]}, steps=2, path=path, metrics=["latent"], progress=False)


def _damaged_store(e: SimpleNamespace) -> Path:
    """A store a sweep wrote, then one params cell overwritten with text that is not JSON."""
    import sqlite3

    path = e.files / "damaged.sqlite"
    if not path.exists():
        _sweep(e, path)
        with sqlite3.connect(path) as db:
            db.execute("UPDATE rows SET params = '{\"cfg\": 1.0,' WHERE rowid = 1")
    return path


def _foreign_db(e: SimpleNamespace) -> Path:
    import sqlite3

    path = e.files / "app.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE IF NOT EXISTS people (name TEXT)")
    return path


def _other_csv(e: SimpleNamespace) -> Path:
    path = e.files / "other.csv"
    path.write_text("name,age\nann,3\n")
    return path


def _folder(e: SimpleNamespace, name: str) -> Path:
    (e.files / name).mkdir(exist_ok=True)
    return e.files / name


def _with_pixel_limit(limit: int, call: Callable[[], Any]) -> Any:
    """Pillow's decompression-bomb guard, lowered so a small file trips it as a huge one would."""
    from PIL import Image

    old, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, limit
    try:
        return call()
    finally:
        Image.MAX_IMAGE_PIXELS = old


def _with_dask(call: Callable[[], Any]) -> Any:
    pytest.importorskip("distributed")
    return call()


def _denied(target: str, call: Callable[[], Any], *, new: Any = None) -> Any:
    """`call()` while `target` (module.name) raises PermissionError, as that read or write would for a user without
    the permission (the tests run as root, where chmod cannot make it fail); `new`: another stand-in."""
    from unittest import mock

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise PermissionError(13, "Permission denied")

    with mock.patch(target, refuse if new is None else new, create=True):
        return call()


def _read_only_sqlite(store: Any) -> Any:
    """The store's connection as SQLite opens a file it may not write (mode=ro): writes fail as on a read-only file."""
    import sqlite3

    return sqlite3.connect(store.path.resolve().as_uri() + "?mode=ro", uri=True, isolation_level=None)


def _stored(e: SimpleNamespace, name: str) -> Path:
    path = e.files / name
    if not path.exists():
        _sweep(e, path)
    return path


def _a_file(e: SimpleNamespace) -> Path:
    (e.files / "afile").write_text("")
    return e.files / "afile"


#: (case, call(env), fragments the one-line error must contain)
BAD_INPUTS: list[tuple[str, Callable[[SimpleNamespace], Any], tuple[str, ...]]] = [
    # masks
    ("uint8 0/255 mask", lambda e: ul.unsample(e.model, _latent_with_mask(e, torch.full((8, 8), 255, dtype=torch.uint8)), **FAST),
     ("noise_mask is torch.uint8 with values 255..255", "mask.float() / 255")),
    ("float mask 5", lambda e: ul.unsample(e.model, _latent_with_mask(e, torch.full((8, 8), 5.0)), **FAST),
     ("noise_mask must be in 0..1", "got values in 5..5")),
    ("negative mask", lambda e: ul.unsample(e.model, _latent_with_mask(e, -torch.ones(8, 8)), **FAST),
     ("noise_mask must be in 0..1", "clamp")),
    ("[0, 0] mask", lambda e: ul.unsample(e.model, _latent_with_mask(e, torch.zeros(0, 0)), **FAST),
     ("noise_mask is empty (shape (0, 0))",)),
    # latents
    ("empty batch", lambda e: ul.unsample(e.model, torch.zeros(0, 4, 8, 8), **FAST), ("latent is empty (shape (0, 4, 8, 8))",)),
    ("0-size latent", lambda e: ul.resample(e.model, torch.zeros(1, 4, 0, 8), **FAST), ("latent is empty (shape (1, 4, 0, 8))",)),
    ("meta-device latent", lambda e: ul.unsample(e.model, torch.zeros(1, 4, 8, 8, device="meta"), **FAST), ("'meta' device",)),
    ("None latent", lambda e: ul.unsample(e.model, None, **FAST), ("latent must be a LATENT dict", "NoneType")),
    ("None model", lambda e: ul.unsample(None, e.latent, **FAST), ("model must be a loaded model", "ul.load_model()")),
    ("raw pipeline as model", lambda e: ul.unsample(tiny_sd_pipeline(), e.latent, **FAST), ("wrap it first", "ul.load_model(pipe)")),
    # callbacks (issue 19: `unsample(callback=5)` was a raw "int is not callable" at the first step)
    ("unsample callback 5", lambda e: ul.unsample(e.model, e.latent, callback=5, **FAST),
     ("callback must be a function called with each Step", "got int 5")),
    ("resample callback 'x'", lambda e: ul.resample(e.model, e.latent, callback="x", **FAST),
     ("callback must be a function", "got str 'x'")),
    # numbers
    ("float steps", lambda e: ul.unsample(e.model, e.latent, steps=4.0, progress=False), ("steps must be a whole number, got 4.0; use 4",)),
    ("bool steps", lambda e: ul.unsample(e.model, e.latent, steps=True, progress=False), ("steps must be a whole number, got True",)),
    ("seed 2**64", lambda e: ul.resample(e.model, e.latent, noise_seed=2**64, add_noise=True, **FAST),
     ("noise_seed must be in 0..18446744073709551615, got 18446744073709551616",)),
    ("seed -1", lambda e: ul.resample(e.model, e.latent, noise_seed=-1, add_noise=True, **FAST), ("noise_seed must be in 0..",)),
    ("cfg NaN", lambda e: ul.unsample(e.model, e.latent, cfg=math.nan, **FAST), ("cfg must be a finite number >= 0",)),
    ("cfg 1e30", lambda e: ul.unsample(e.model, e.latent, cfg=1e30, positive="red circle", **FAST),
     ("cfg=1e+30", "ComfyUI's range 0..100")),
    # issue 19 (wrong blame): a huge cfg blows the state up; every entry point names the cfg, not the sampler
    ("resample cfg 1e38", lambda e: ul.resample(e.model, e.latent, cfg=1e38, positive="red", add_noise=True, **FAST),
     ("because cfg=1e+38 blew the sampler state up", "ComfyUI's range 0..100")),
    ("sweep cfg 1e38", lambda e: ul.sweep(e.model, e.latent, {"cfg": [1e38]}, positive="red", **FAST),
     ("because cfg=1e+38 blew the sampler state up", "ComfyUI's range 0..100")),
    ("sweep resample_cfg 1e38", lambda e: ul.sweep(e.model, e.latent, {"cfg": [1.0], "resample_cfg": [1e38]}, positive="red",
                                                   **FAST), ("cfg=1e+38", "ComfyUI's range 0..100")),
    ("edit cfg 1e38", lambda e: ul.edit(e.model, e.latent, source="red", target="blue", steps=2, cfg=1e38),
     ("cfg=1e+38", "ComfyUI's range 0..100")),
    ("invert edict cfg 1e38", lambda e: ul.invert(e.model, e.latent, method="edict", cfg=1e38, positive="red", **FAST),
     ("because cfg=1e+38 blew the sampler state up", "ComfyUI's range 0..100")),
    ("invert null_text cfg 1e38", lambda e: ul.invert(e.model, e.latent, method="null_text", cfg=1e38, positive="red",
                                                          inner_steps=1, **FAST),
     ("because cfg=1e+38 blew the sampler state up", "ComfyUI's range 0..100")),
    ("NaN weight", lambda e: ul.unsample(_nan_weight_model(e), e.latent, **FAST),
     ("the model's own output is NaN/Inf at its first evaluation", "not the sampler", "unet.conv_in.weight")),
    # images into model.encode
    ("images 0..255 floats", lambda e: e.model.encode(e.images * 255), ("must be floats in 0..1", "divide by 255")),
    ("images -1..1", lambda e: e.model.encode(e.images * 2 - 1), ("(images + 1) / 2",)),
    ("channels-first images", lambda e: e.model.encode(e.images.permute(0, 3, 1, 2)), ("channels-first", "permute(0, 2, 3, 1)")),
    ("uint16 beyond 255", lambda e: e.model.encode(torch.full((1, 16, 16, 3), 1000, dtype=torch.int32)), ("outside 0..255", "65535")),
    ("image off the pixel grid", lambda e: e.model.encode(torch.rand(1, 15, 16, 3)), ("15x16", "2-pixel grid")),
    ("image path missing", lambda e: e.model.encode(e.files / "nope.png"), ("image file not found", "nope.png")),
    ("no images", lambda e: e.model.encode([]), ("empty list",)),
    # load_images
    ("load_images missing", lambda e: ul.load_images(e.files / "nope.png"), ("not found", "nope.png")),
    ("load_images 0-byte file", lambda e: ul.load_images(e.files / "empty.png"), ("empty.png is empty (0 bytes)",)),
    ("load_images unreadable", lambda e: ul.load_images(e.files / "junk.png"), ("cannot read", "junk.png")),
    ("load_images mixed sizes", lambda e: ul.load_images([e.files / "a.png", e.files / "small.png"]),
     ("different sizes", "a.png 32x48", "small.png 16x16", "size=")),
    ("load_images size off grid", lambda e: ul.load_images(e.files / "a.png", size=10), ("not a multiple", "use 8x8")),
    ("load_images empty folder", lambda e: ul.load_images(e.broken["no_unet"] / "scheduler"), ("has no .png/.jpg/.jpeg/.webp images",)),
    # .latent files
    ("load_latent not safetensors", lambda e: ul.load_latent(e.files / "junk.latent"), ("junk.latent is not a safetensors",)),
    ("load_latent wrong key", lambda e: ul.load_latent(e.files / "wrong_key.latent"), ("no 'latent_tensor'", "keys: samples")),
    ("load_latent missing", lambda e: ul.load_latent(e.files / "nope.latent"), ("nope.latent not found",)),
    ("save_latent of a 3-D tensor", lambda e: ul.save_latent(e.images[0], e.files / "x.latent"), ("[B, C, H, W]", "shape (16, 16, 3)")),
    # load_model
    ("missing local path", lambda e: ul.load_model(e.files / "no_such_model"), ("model folder not found", "no_such_model")),
    ("0-byte weights", lambda e: ul.load_model(e.broken["empty_weights"], device="cpu"),
     ("empty_weights/unet/diffusion_pytorch_model.safetensors is empty (0 bytes)",)),
    ("missing unet/", lambda e: ul.load_model(e.broken["no_unet"], device="cpu"), ("has no unet/ subfolder",)),
    ("pickled weights only", lambda e: ul.load_model(e.broken["pickled"], device="cpu"),
     ("only pickled weights (diffusion_pytorch_model.bin)", "allow_pickle=True")),
    ("device banana", lambda e: ul.load_model(e.pipe, device="banana"), ("device 'banana' is not a torch device",)),
    ("dtype typo", lambda e: ul.load_model(e.pipe, device="cpu", dtype="flaot16"), ("unknown dtype 'flaot16'; did you mean 'float16'",)),
    ("integer dtype", lambda e: ul.load_model(e.pipe, device="cpu", dtype=torch.int8), ("floating torch.dtype", "torch.int8")),
    ("config edited away from its weights", lambda e: ul.load_model(e.broken["cross_attention_dim"], device="cpu"),
     ("UNet2DConditionModel weights do not fit its config.json", "[32, 32] in the weights file but [32, 16]",
      "restore config.json")),
    ("load_images(42)", lambda e: ul.load_images(42), ("load_images takes a file, a folder or a list", "got int (42)")),
    ("decompression bomb", lambda e: _with_pixel_limit(100, lambda: ul.load_images(e.files / "a.png")),
     ("a.png is too large to open safely", "MAX_IMAGE_PIXELS")),
    ("metrics as one string", lambda e: ul.sweep(e.model, e.latent, {"cfg": [1.0]}, steps=2, metrics="latnt", progress=False),
     ("unknown metric set 'latnt'; did you mean 'latent'",)),
    ("decode a 3-channel latent", lambda e: e.model.decode(torch.zeros(1, 3, 8, 8)), ("latent has 3 channels but this model's latents have 4",)),
    ("decode a 3-D latent", lambda e: e.model.decode({"samples": torch.zeros(4, 8, 8)}), ("[B, C, H, W] tensor, got (4, 8, 8)",)),
    ("save_latent where the OS refuses", lambda e: ul.save_latent(e.latent, "/proc/x.latent"),
     ("cannot write /proc/x.latent", "check that its folder is writable")),
    # issue 19: consent to unpickle is a boolean
    ("allow_pickle 'no'", lambda e: ul.load_model(e.broken["pickled"], device="cpu", allow_pickle="no"),
     ("allow_pickle must be True or False, got 'no'",)),
    ("allow_pickle 1", lambda e: ul.load_model(e.pipe, device="cpu", allow_pickle=1), ("allow_pickle must be True or False, got 1",)),
    # issue 19: a method's resampling side runs only on the schedule its per-step data was built for
    ("edict resampled with other steps", lambda e: ul.resample(e.model, _inverted(e, "edict"), steps=6, progress=False),
     ("'edict' keeps a second latent coupled to it at every step of its 4-step schedule", "this resample has 6 steps",
      "steps=4")),
    ("edict resampled with another scheduler",
     lambda e: ul.resample(e.model, _inverted(e, "edict"), steps=4, scheduler="karras", progress=False),
     ("4-step schedule", "scheduler='normal'")),
    ("edict resampled stopping early",
     lambda e: ul.resample(e.model, _inverted(e, "edict"), steps=4, end_at_step=2, progress=False),
     ("this resample has 2 steps", "down to sigma 0")),
    ("null_text resampled with other steps",
     lambda e: ul.resample(e.model, _inverted(e, "null_text"), steps=5, cfg=2.0, progress=False),
     ("'null_text' keeps one embedding per step of its 4-step schedule", "steps=4")),
    ("edict resampled with another sampler",
     lambda e: ul.resample(e.model, _inverted(e, "edict"), steps=4, sampler_name="dpmpp_2m", progress=False),
     ("resamples with its own step", "'dpmpp_2m'", "sampler_name='euler'")),
    # issue 19: every method option has a type and a range, checked before anything runs
    ("null_text pivot_iterations 0", _option("null_text", pivot_iterations=0),
     ("option pivot_iterations must be a whole number >= 1, got 0",)),
    ("null_text pivot_iterations -2", _option("null_text", pivot_iterations=-2), ("pivot_iterations must be a whole number >= 1",)),
    ("null_text inner_steps -3", _option("null_text", inner_steps=-3), ("inner_steps must be a whole number >= 0, got -3",)),
    ("null_text lr -1", _option("null_text", lr=-1), ("option lr must be > 0, got -1.0",)),
    ("null_text lr nan", _option("null_text", lr=math.nan), ("option lr must be > 0, got nan",)),
    ("fixed_point iterations 0", _option("fixed_point", iterations=0), ("option iterations must be a whole number >= 1, got 0",)),
    ("fixed_point iterations -1", _option("fixed_point", iterations=-1), ("iterations must be a whole number >= 1, got -1",)),
    ("fixed_point tol -1", _option("fixed_point", tol=-1), ("option tol must be >= 0, got -1.0",)),
    ("fixed_point tol nan", _option("fixed_point", tol=math.nan), ("option tol must be >= 0, got nan",)),
    ("fixed_point averaging -1", _option("fixed_point", averaging=-1), ("averaging must be a whole number >= 0",)),
    ("fixed_point anderson -1", _option("fixed_point", anderson=-1), ("anderson must be a whole number >= 0",)),
    ("fixed_point damping 0", _option("fixed_point", damping=0), ("option damping must be in (0, 2), got 0.0",)),
    ("fixed_point damping -1", _option("fixed_point", damping=-1.0), ("damping must be in (0, 2)",)),
    ("fixed_point damping nan", _option("fixed_point", damping=math.nan), ("damping must be in (0, 2), got nan",)),
    ("edict mix 1", _option("edict", mix=1.0), ("option mix must be in [0.5, 1), got 1.0",)),
    ("rf_inversion seed -1", _option("rf_inversion", seed=-1), ("option seed must be a whole number in [0, 18446744073709551615]",)),
    ("rf_inversion seed 2**70", _option("rf_inversion", seed=2**70), ("seed must be a whole number in [0, ", "got 1180591620717411303424")),
    ("rf_inversion gamma 2", _option("rf_inversion", gamma=2), ("option gamma must be in [0, 1], got 2.0",)),
    ("invert None model", lambda e: ul.invert(None, e.latent, **FAST), ("model must be a loaded model", "NoneType")),
    ("invert raw pipeline", lambda e: ul.invert(tiny_sd_pipeline(), e.latent, **FAST), ("wrap it first", "ul.load_model(pipe)")),
    ("invert cfg list", lambda e: ul.invert(e.model, e.latent, cfg=[1, 3], **FAST), ("invert takes one cfg", "[1, 3]")),
    ("sweep method_options out of range",
     lambda e: ul.sweep(e.model, e.latent, {"method": ["fixed_point"]}, steps=2, method_options={"fixed_point": {"damping": 0}},
                        progress=False), ("option damping must be in (0, 2), got 0.0",)),
    # issue 19: the results store opens only what it owns, and says which
    ("sweep onto another application's SQLite", lambda e: _sweep(e, _foreign_db(e)),
     ("app.sqlite is an SQLite database of another application (tables: people)", "does not write into it")),
    ("load_results of another application's SQLite", lambda e: ul.load_results(_foreign_db(e)),
     ("SQLite database of another application",)),
    ("sweep onto a folder", lambda e: _sweep(e, _folder(e, "runs.sqlite")), ("runs.sqlite is a folder, not a results store",
                                                                            "runs.sqlite/results.sqlite")),
    ("sweep over an unrelated CSV", lambda e: _sweep(e, _other_csv(e)),
     ("other.csv exists and is not an export of the results store", "does not replace a file it did not write")),
    ("sweep path under a file", lambda e: _sweep(e, _a_file(e) / "out.csv"), ("cannot create the folder of the results store", "afile is a file, not a folder")),
    ("load_results of a folder", lambda e: ul.load_results(e.files), ("is a folder; load_results takes a results file",)),
    ("sweep on a damaged store cell", lambda e: _sweep(e, _damaged_store(e)),
     ("damaged.sqlite holds a damaged cell", "is not a JSON object", "move the store away")),
    ("load_results of a damaged store cell", lambda e: ul.load_results(_damaged_store(e)), ("holds a damaged cell",)),
    # a `~name` with no such user: pathlib's bare RuntimeError ("Could not determine home directory.") was raised
    ("sweep path ~nosuchuser", lambda e: _sweep(e, "~nosuchuser_ul/x.sqlite"),
     ("cannot expand '~nosuchuser_ul/x.sqlite'", "names no user's home folder", "give the full path")),
    ("load_latent ~nosuchuser", lambda e: ul.load_latent("~nosuchuser_ul/x.latent"), ("~nosuchuser_ul names no user's",)),
    ("load_model ~nosuchuser", lambda e: ul.load_model("~nosuchuser_ul/model"), ("~nosuchuser_ul names no user's",)),
    ("load_images ~nosuchuser", lambda e: ul.load_images("~nosuchuser_ul/a.png"), ("~nosuchuser_ul names no user's",)),
    ("sweep retries -1 without an executor", lambda e: ul.sweep(e.model, e.latent, {"cfg": [1.0]}, retries=-1, **FAST),
     ("retries must be >= 0, got -1",)),
    ("local_cluster threads_per_worker 0", lambda e: _with_dask(lambda: ul.local_cluster(1, threads_per_worker=0)),
     ("threads_per_worker must be >= 1, got 0",)),
    ("local_cluster memory_limit 'banana'", lambda e: _with_dask(lambda: ul.local_cluster(1, memory_limit="banana")),
     ("memory_limit must be a size per worker such as '4GB', or 'auto', got 'banana'",)),
    ("close_cluster of no client", lambda e: ul.close_cluster(5), ("close_cluster takes the Dask Client", "got int")),
    # issue 19 (wrong blame): what the OS or SQLite refuses is blamed on permissions, not "is not a results store"
    ("save_latent refused by the OS", lambda e: _denied("safetensors.torch.save_file",
                                                        lambda: ul.save_latent(e.latent, e.files / "ro.latent")),
     ("cannot write", "ro.latent: Permission denied")),
    ("sweep onto a read-only store", lambda e: _denied("unsampling_lab.analysis.store.ResultStore._connect",
                                                       lambda: _sweep(e, _stored(e, "ro.sqlite")), new=_read_only_sqlite),
     ("the results store", "ro.sqlite", "writable")),  # SQLite: "attempt to write a readonly database" or "unable to open"
    ("load_results of an unreadable store", lambda e: _denied("unsampling_lab.analysis.store.open",
                                                              lambda: ul.load_results(_stored(e, "ro.sqlite"))),
     ("cannot read the results store", "ro.sqlite: Permission denied", "check its permissions")),
    ("sweep export into a read-only folder", lambda e: _denied("unsampling_lab.analysis.store.export_table",
                                                               lambda: _sweep(e, e.files / "ro_export.csv")),
     ("cannot write the export", "ro_export.csv: Permission denied", "its rows are in the results store",
      "ro_export.sqlite")),
]
if not torch.cuda.is_available():
    BAD_INPUTS.append(("device cuda without CUDA", lambda e: ul.load_model(e.pipe, device="cuda"), ("device 'cuda'", "device='cpu'")))


@pytest.mark.parametrize("case, call, fragments", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_a_one_line_error(env, case, call, fragments, one_thread):
    with pytest.raises(UnsamplingError) as info:
        call(env)
    message = str(info.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    assert "huggingface-cli" not in message or case not in ("missing local path",)


def test_load_results_reads_a_store_sqlite_cannot_open_read_only(env, one_thread):
    """Issue 19 (poor): a store in a read-only folder could not be read (SQLite's mode=ro needs to create the WAL
    index beside it); load_results falls back to immutable=1 and reads every row without writing."""
    import sqlite3

    path = _stored(env, "ro.sqlite")
    connect = sqlite3.connect

    def no_wal_index(database: Any, *args: Any, **kwargs: Any) -> Any:
        if "mode=ro" in str(database):
            raise sqlite3.OperationalError("unable to open database file")
        return connect(database, *args, **kwargs)

    before = path.read_bytes()
    table = _denied("unsampling_lab.analysis.store.sqlite3.connect", lambda: ul.load_results(path), new=no_wal_index)
    assert len(table) == 1 and path.read_bytes() == before


def test_every_method_option_declares_its_type_and_range():
    """Options are data (issue 19): every option of every registered method is an Option with a kind and,
    for numbers, a range; a plain default cannot enter the registry; out-of-range values are refused."""
    from unsampling_lab.inversion import METHOD_SPECS, MethodSpec, Option

    count = 0
    for spec in METHOD_SPECS.values():
        for name, opt in spec.options.items():
            assert isinstance(opt, Option) and opt.kind in (bool, int, float, str), (spec.name, name)
            if opt.kind is str:
                assert opt.default in opt.choices and not opt.admits("no-such-choice"), (spec.name, name)
            elif opt.kind is not bool:
                assert opt.low is not None and opt.high is not None, (spec.name, name)
                assert opt.admits(opt.default) and not opt.admits(math.nan), (spec.name, name)
            count += 1
    assert count >= 10
    with pytest.raises(TypeError, match="must be declared as Option"):
        MethodSpec("x", lambda p: None, predictions=("eps",), samplers=None, options={"k": 3}, cost="", paper="")
    with pytest.raises(TypeError, match="must declare its range"):
        Option(3, int)


# -- accepted and right -------------------------------------------------------------------------
def test_numpy_scalars_are_accepted_and_mean_the_same(env, one_thread):
    plain = ul.unsample(env.model, env.latent, steps=3, end_at_step=1, cfg=2.0, positive="red", progress=False)
    numpy = ul.unsample(env.model, env.latent, steps=np.int64(3), end_at_step=np.int32(1), cfg=np.float32(2.0),
                        positive="red", progress=False)
    assert torch.equal(plain["samples"], numpy["samples"])


def test_seeds_cover_comfyui_range_and_draw_its_noise(env, one_thread):
    """ComfyUI's prepare_noise: torch.manual_seed(seed) then one CPU randn of the whole batch. torch's CPU
    generator keeps the seed's low 32 bits, so 0 and 2**32 draw the same noise in ComfyUI too."""
    from unsampling_lab.engine import _seeded_randn

    shape = (2, 4, 8, 8)
    state = torch.random.get_rng_state()
    try:
        for seed in (0, 2**32, 2**63 + 5, 2**64 - 1):
            assert torch.equal(_seeded_randn(torch.Size(shape), seed), torch.randn(shape, generator=torch.manual_seed(seed)))
    finally:
        torch.random.set_rng_state(state)
    out = ul.resample(env.model, env.latent, add_noise=True, noise_seed=2**64 - 1, **FAST)
    assert torch.isfinite(out["samples"]).all()


def test_images_in_every_form_encode_alike(env, tmp_path, one_thread):
    from PIL import Image

    u8 = _pixels(16, 16)
    Image.fromarray(u8).save(tmp_path / "x.png")
    reference = env.model.encode(torch.from_numpy(u8).float()[None] / 255)["samples"]
    for form in (u8, torch.from_numpy(u8), u8[None], Image.fromarray(u8), tmp_path / "x.png", str(tmp_path / "x.png"),
                 [Image.fromarray(u8)]):
        assert torch.equal(env.model.encode(form)["samples"], reference), type(form)


def test_bool_mask_equals_float_mask(env, one_thread):
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[2:6, 2:6] = True
    a = ul.unsample(env.model, _latent_with_mask(env, mask), **FAST)
    b = ul.unsample(env.model, _latent_with_mask(env, mask.float()), **FAST)
    assert torch.equal(a["samples"], b["samples"])


def test_dtype_names_are_accepted(pipe_dir):
    assert ul.load_model(pipe_dir, device="cpu", dtype="bfloat16").dtype == torch.bfloat16
    assert ul.load_model(pipe_dir, device="cpu", dtype="fp16").dtype == torch.float16


def test_pickled_weights_load_when_allowed(env):
    assert ul.load_model(env.broken["pickled"], device="cpu", allow_pickle=True).latent_format.channels == 4


def test_cut_prompt_warns_once_naming_the_kept_text(env, one_thread):
    prompt = "red circle on a large blue square"  # 14 tokens (unknown words go letter by letter); 8 are kept
    with pytest.warns(UnsamplingWarning, match=r"is 14 tokens, .* the model sees only 'red circle on a l'") as record:
        env.model.encode_prompt([prompt])
    assert len(record) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        env.model.encode_prompt([prompt])  # remembered: no second warning
        env.model.encode_prompt(["red circle"])  # fits: no warning


def test_a_latent_far_above_the_models_size_warns_once_before_any_work(env, one_thread):
    """Issue 19 (poor): a 2048 px image on the 32 px bundled model ran for hours without a word. A latent of 16x
    or more the area of the network's sample_size (8x8 here) is warned about, with the work ratio, before step 0."""
    big, steps = torch.zeros(1, 4, 40, 40), []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        env.model.decode(env.latent)  # the native size: no warning
        with pytest.raises(UnsamplingWarning, match=r"latent is 40x40, 25x the area of the 8x8 latent this model was made "
                                                    r"for .* 25x \(convolutions\) to 625x \(self-attention\).* --size S"):
            ul.unsample(env.model, big, steps=1, progress=False, callback=steps.append)
        assert steps == []  # before any work
        ul.unsample(env.model, big, steps=1, progress=False, callback=steps.append)  # said once per model and size
    assert len(steps) == 1


def test_progress_bars_stay_out_of_logs(env, capfd, one_thread):
    """stderr is not a terminal here (as in a log or CI): tqdm's disable=None writes nothing."""
    ul.unsample(env.model, env.latent, steps=3, progress=True)
    assert capfd.readouterr().err == ""


# -- load_images ---------------------------------------------------------------------------------
@pytest.fixture()
def image_files(tmp_path: Path) -> Path:
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(_pixels()).save(folder / "a.png")
    Image.fromarray(_pixels(seed=1)).save(folder / "b.webp", lossless=True)
    Image.fromarray(_gradient()).save(folder / "c.jpg", quality=95)
    (folder / "notes.txt").write_text("not an image, and not picked from a folder")
    return folder


def test_load_images_folder_keeps_pixels_and_crops_to_the_grid(image_files: Path) -> None:
    x = ul.load_images(image_files)
    assert x.shape == (3, 32, 48, 3) and x.dtype == torch.float32
    # 35x50 -> 32x48: rows 1..32 and columns 1..48 (3 rows: 1 top, 2 bottom; 2 columns: 1 each side)
    for i, seed in enumerate((0, 1)):  # PNG and lossless WebP are exact
        expected = torch.from_numpy(_pixels(seed=seed)[1:33, 1:49].astype(np.float32) / 255)
        assert torch.equal(x[i], expected)
    assert (x[2] - torch.from_numpy(_gradient()[1:33, 1:49] / 255).float()).abs().max() < 0.05  # JPEG: close


def test_load_images_size_scales_and_centre_crops(image_files: Path) -> None:
    x = ul.load_images([image_files / "a.png", image_files / "c.jpg"], size=(16, 24))
    assert x.shape == (2, 16, 24, 3) and 0 <= float(x.min()) and float(x.max()) <= 1
    assert ul.load_images(image_files / "a.png", size=16).shape == (1, 16, 16, 3)
    # a smooth image scaled by 1/2 stays close to the image subsampled by 2 (Lanczos, not nearest garbage)
    half = ul.load_images(image_files / "c.jpg", size=(16, 24), multiple_of=8)[0]
    assert half.shape == (16, 24, 3)


@pytest.mark.slow  # a subprocess
def test_load_images_is_lazy_and_not_in_the_core() -> None:
    code = "import sys, unsampling_lab as ul; assert 'unsampling_lab.lab' not in sys.modules; ul.load_images"
    subprocess.run([sys.executable, "-c", code], check=True)


# -- ComfyUI .latent files -------------------------------------------------------------------------
def test_latent_file_round_trip_and_comfyui_layout(tmp_path):
    from safetensors.torch import load_file

    samples = torch.randn(2, 4, 8, 8)
    mask = torch.rand(8, 8)
    path = ul.save_latent({"samples": samples, "noise_mask": mask}, tmp_path / "x.latent", metadata={"prompt": "{}"})
    raw = load_file(str(path))
    assert torch.equal(raw["latent_tensor"], samples) and raw["latent_format_version_0"].numel() == 0
    back = ul.load_latent(path)
    assert torch.equal(back["samples"], samples) and torch.equal(back["noise_mask"], mask)


def test_old_latent_format_is_scaled_as_comfyui_loadlatent(tmp_path):
    """ComfyUI's LoadLatent: no 'latent_format_version_0' key -> samples * (1 / 0.18215)."""
    from safetensors.torch import save_file

    stored = torch.randn(1, 4, 8, 8)
    save_file({"latent_tensor": stored}, str(tmp_path / "old.latent"))
    assert torch.equal(ul.load_latent(tmp_path / "old.latent")["samples"], stored.float() * (1.0 / 0.18215))


# -- the CLI: one line, exit code 2, no traceback ------------------------------------------------------
@pytest.mark.slow  # five subprocesses
def test_cli_user_errors_never_print_a_traceback(env, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    corrupt = tmp_path / "corrupt"
    shutil.copytree(env.pipe, corrupt)
    (corrupt / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00" * 64)
    cases = [
        (["--device", "banana"], "not a torch device"),
        (["--sampler", "eulr"], "did you mean 'euler'"),
        (["--model", str(corrupt)], "diffusion_pytorch_model.safetensors is corrupt or truncated"),
        (["--model", str(env.pipe), "--out", str(a_file)], "is a file; pass a folder"),
        (["--model", str(env.pipe), "--images", str(tmp_path / "missing.png")], "not found"),
    ]
    environ = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    for flags, fragment in cases:
        run = subprocess.run([sys.executable, "-m", "unsampling_lab", "sweep", "--no-progress", *flags],
                             capture_output=True, text=True, env=environ, cwd=tmp_path, timeout=300)
        assert run.returncode == 2, (flags, run.stderr)
        assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1, (flags, run.stderr)
        assert fragment in run.stderr, (flags, run.stderr)


# -- the checks themselves (unsampling_lab.inputs, errors.check_int): one owner each --------------------
def test_check_int_cfg_and_switches_convert_once():
    from unsampling_lab.errors import check_int
    from unsampling_lab.inputs import cfg_is_one, check_cfg, normalize_mode, on_off, unguided

    assert check_int("steps", np.int64(4), minimum=1) == 4 and type(check_int("steps", np.int64(4), minimum=1)) is int
    for bad, message in ((4.0, "steps must be a whole number, got 4.0; use 4"), (np.True_, "must be a whole number"),
                         ("4", "must be a whole number, got '4'"), (0, "steps must be >= 1, got 0")):
        with pytest.raises(ul.UnsamplingError, match=message):
            check_int("steps", bad, minimum=1)
    with pytest.raises(ul.UnsamplingError, match=r"seed must be in 0\.\.9, got 10"):
        check_int("seed", 10, minimum=0, maximum=9)
    assert check_cfg(np.float32(2.0)) == 2.0 and type(check_cfg(2)) is float
    assert check_cfg((1, 3.5)) == [1.0, 3.5]
    for bad in (-1.0, math.inf, True, "2", [1.0, math.nan]):
        with pytest.raises(ul.UnsamplingError, match="cfg must be a finite number >= 0"):
            check_cfg(bad)
    assert cfg_is_one(1.0) and cfg_is_one(1 + 1e-12) and not cfg_is_one(1.01)
    assert unguided(1.0) and unguided([1.0, 1.0]) and unguided(torch.tensor([1.0, 1.0]))
    assert not unguided([1.0, 2.0]) and not unguided(torch.tensor([2.0, 1.0])) and not unguided(0.0)
    assert on_off("add_noise", "enable") is True and on_off("add_noise", False) is False
    with pytest.raises(ul.UnsamplingError, match="add_noise must be True/False or 'enable'/'disable', got 'on'"):
        on_off("add_noise", "on")
    assert normalize_mode(True) == "enable" and normalize_mode("per_sample") == "per_sample"
    with pytest.raises(ul.UnsamplingError, match="did you mean 'enable'"):
        normalize_mode("enabel")


# -- the CLI's items and files (issue 19) ---------------------------------------------------------------
_CLI_SMALL = ["--device", "cpu", "--steps", "2", "--end-at-step", "0", "--cfg", "1", "--normalize", "disable",
              "--no-progress", "--format", "csv", "--no-figures"]


def test_cli_seed_range_and_scheduler_address_are_one_line_errors(env, capsys, tmp_path):
    from unsampling_lab.lab import cli

    for flags, fragment in ((["--seed", str(2**64)], "expected a whole number in 0..18446744073709551615"),
                            (["--scheduler-address", "not-an-address"], "--scheduler-address not-an-address: missing port"),
                            (["--cfg", "1e38", "--positive", "red"], "because cfg=1e+38 blew the sampler state up")):
        try:
            code = cli.main(["sweep", "--model", str(env.pipe), "--out", str(tmp_path / "out"), *_CLI_SMALL, *flags])
        except SystemExit as e:
            code = e.code
        err = capsys.readouterr().err
        assert code == 2 and fragment in err and "Traceback" not in err, err


def test_cli_ctrl_c_after_the_sweep_says_the_rows_are_saved(env, tmp_path, capsys, monkeypatch, one_thread):
    """Ctrl-C while the figures and summary.md were written said 'interrupted before any row was saved' (wrong blame
    found re-probing issue 19's start-up case: every row was in the table)."""
    from unsampling_lab.lab import cli, report

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "write_report", interrupted)
    out = tmp_path / "run"
    assert cli.main(["sweep", "--model", str(env.pipe), "--images", str(env.files / "small.png"), "--out", str(out),
                     *_CLI_SMALL]) == 130
    err = capsys.readouterr().err.strip()
    assert err == (f"unsampling-lab sweep: interrupted after the sweep: every row is saved in {out / 'results.csv'}; rerun "
                   "the same command to write the figures and summary.md (no row is recomputed)"), err
    assert len(ul.load_results(out / "results.csv")) == 1


def test_cli_numbers_every_latent_of_a_multi_latent_file(env, tmp_path, one_thread):
    """A .latent file holding 2 latents and one holding 1: items 0, 1, 2 (was 2 items, or 0, 1, 1 with --batch-size 1)."""
    from unsampling_lab.lab import cli
    import pandas as pd

    two = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    ul.save_latent(two, tmp_path / "two.latent")
    ul.save_latent(env.latent["samples"], tmp_path / "one.latent")
    for size in ("1", "2"):
        out = tmp_path / f"run{size}"
        assert cli.main(["sweep", "--model", str(env.pipe), "--images", str(tmp_path / "two.latent"),
                         str(tmp_path / "one.latent"), "--batch-size", size, "--out", str(out), *_CLI_SMALL]) == 0
        table = pd.read_csv(out / "results.csv", keep_default_na=False)
        assert sorted(table["item"]) == [0, 1, 2], size
        items = pd.read_csv(out / "items.csv")
        assert [(Path(f).name, k) for f, k in zip(items["file"], items["index_in_file"])] == \
            [("two.latent", 0), ("two.latent", 1), ("one.latent", 0)]
        if size == "1":
            first = table.set_index("item")["latent_mse"]
    assert table.set_index("item")["latent_mse"].tolist() == pytest.approx(first.tolist(), rel=1e-5)


@pytest.mark.filterwarnings("ignore:fixed_point. . of . steps did not reach tol")
def test_cli_save_noise_names_files_by_method_and_options(env, tmp_path, one_thread):
    from unsampling_lab.lab import cli

    out = tmp_path / "run"
    assert cli.main(["sweep", "--model", str(env.pipe), "--images", str(env.files / "small.png"), "--save-noise",
                     "--method", "unsampler", "edict", "fixed_point", "--method-option", "fixed_point.iterations=2",
                     "--out", str(out), *_CLI_SMALL]) == 0
    files = sorted(p.name for p in (out / "noise").glob("*.latent"))
    assert len(files) == 3, files
    assert [f.split("_euler")[0] for f in files] == ["noise_edict", "noise_fixed_point_iterations2", "noise_unsampler"]
    noises = [ul.load_latent(out / "noise" / f)["samples"] for f in files]
    assert not torch.equal(noises[0], noises[2]) and not torch.equal(noises[1], noises[2])


def test_metrics_as_one_string_is_that_set(env, one_thread):
    df = ul.sweep(env.model, env.latent, {"cfg": [1.0]}, steps=2, metrics="latent", progress=False)
    assert "latent_mse" in df.columns and "noise_ks" not in df.columns


def test_16bit_rgb_png_warns_that_it_is_read_at_8_bits(tmp_path):
    import struct
    import zlib

    values = (np.random.RandomState(0).rand(4, 6, 3) * 65535).astype(np.uint16)
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in values)  # filter 0 per scanline

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path = tmp_path / "deep.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 6, 4, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    with pytest.warns(UnsamplingWarning, match="16-bit RGB PNG; Pillow reads it at 8 bits"):
        x = ul.load_images(path, multiple_of=2)
    assert (x[0] - torch.from_numpy(values[:4, :6].astype(np.float32) / 65535)).abs().max() < 1 / 255


def test_a_sweep_grid_cfg_that_is_no_number_is_a_one_line_error():
    """Issue 19 (poor): grid cfg=['a'] raised a raw ValueError; every cfg goes through inputs.check_cfg."""
    from unsampling_lab.analysis.grid import grid_values

    for grid, fragment in (({"cfg": ["a"]}, "cfg must be a finite number >= 0"),
                           ({"resample_cfg": [math.inf]}, "resample_cfg must be a finite number >= 0"),
                           ({"cfg": [[1, 2]]}, "each grid value of cfg is one number")):
        with pytest.raises(ul.UnsamplingError, match=fragment):
            grid_values(grid, {})


def test_sweep_images_take_what_encode_takes_and_must_match_the_latents(env):
    """Issue 19 (poor): numpy images crashed in a metric (`.detach`), and a batch or size mismatch was a raw tensor
    error; the sweep's images go through the same converter as `model.encode` and are checked against the latents."""
    latent = env.model.encode(env.images)
    rows = ul.sweep(env.model, latent, {"cfg": [1.0]}, steps=2, images=env.images.numpy(), metrics=["pixel"],
                    progress=False)
    assert len(rows) == 1 and math.isfinite(rows["psnr"].iloc[0])
    with pytest.raises(ul.UnsamplingError, match="images holds 2 images for 1 latents"):
        ul.sweep(env.model, latent, {"cfg": [1.0]}, steps=2, images=torch.cat([env.images] * 2), progress=False)
    with pytest.raises(ul.UnsamplingError, match="images are 8x8 pixels but the latents decode to 16x16"):
        ul.sweep(env.model, latent, {"cfg": [1.0]}, steps=2, images=env.images[:, :8, :8], progress=False)


def test_every_control_option_is_a_declared_option_checked_by_the_one_checker():
    """Issue 19: 'every method's and control's option declares its type and valid range'; the editing controls'
    options are Option records checked by the same function as the inversion methods'."""
    from unsampling_lab.editing import CONTROL_SPECS
    from unsampling_lab.editing.controls import ControlSpec, control_options
    from unsampling_lab.inversion import Option

    for spec in CONTROL_SPECS.values():
        for name, opt in spec.options.items():
            assert isinstance(opt, Option) and opt.admits(opt.default), (spec.name, name)
    assert control_options("p2p", {"blend_words": "circle"})["blend_words"] == ("circle",)  # one word is a str
    for bad, fragment in (({"cross_steps": math.nan}, "option cross_steps must be in [0, 1]"),
                          ({"scale": -1.0}, "option scale must be >= 0"),
                          ({"blend_words": [1]}, "option blend_words must be words")):
        with pytest.raises(ul.UnsamplingError, match=re.escape(fragment)):
            control_options("p2p_reweight", bad)
    with pytest.raises(TypeError, match="must be declared as Option"):
        ControlSpec("x", "none", {"k": 3}, ("eps",), "")
