"""ComfyUI workflows in and out: hand-written files in both formats and a ComfyUI PNG (tests/data/comfy_workflows)."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

import unsampling_lab as ul
from unsampling_lab.errors import UnsamplingError, UnsamplingWarning

DATA = Path(__file__).parent / "data" / "comfy_workflows"

#: Required inputs of each node, read from ComfyUI's nodes.py (INPUT_TYPES()["required"]) and ComfyUI_Noise's
#: Unsampler; written out here independently of unsampling_lab.lab.comfy.nodes.
COMFY_REQUIRED = {
    "CheckpointLoaderSimple": {"ckpt_name"},
    "CLIPTextEncode": {"text", "clip"},
    "LoadImage": {"image"},
    "LoadLatent": {"latent"},
    "VAEEncode": {"pixels", "vae"},
    "VAEDecode": {"samples", "vae"},
    "SaveImage": {"images", "filename_prefix"},
    "KSamplerAdvanced": {"model", "add_noise", "noise_seed", "steps", "cfg", "sampler_name", "scheduler", "positive",
                         "negative", "latent_image", "start_at_step", "end_at_step", "return_with_leftover_noise"},
    "BNK_Unsampler": {"model", "steps", "end_at_step", "cfg", "sampler_name", "scheduler", "normalize", "positive",
                      "negative", "latent_image"},
}

FOX_UNSAMPLE = {"steps": 25, "end_at_step": 3, "cfg": 1.5, "sampler_name": "dpmpp_2m", "scheduler": "karras",
                "normalize": "enable", "positive": "a photo of a red fox in the snow", "negative": "blurry, low quality"}
FOX_RESAMPLE = {"steps": 25, "cfg": 6.5, "sampler_name": "dpmpp_2m", "scheduler": "karras", "start_at_step": 3,
                "end_at_step": 10000, "add_noise": False, "noise_seed": 1234, "return_with_leftover_noise": False,
                "positive": "a photo of a grey wolf in the snow", "negative": "blurry, low quality"}


def _read(path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnsamplingWarning)
        return ul.comfy.read_workflow(path, **kw)


def _summary(wf) -> tuple:
    return wf.unsample, wf.resample, wf.checkpoint, wf.image, wf.latent


def test_ui_format_gives_the_unsampler_and_sampler_inputs():
    wf = ul.comfy.read_workflow(DATA / "unsampler_ui.json")
    assert wf.source_format == "ui" and wf.unknown_nodes == []
    assert wf.unsample == FOX_UNSAMPLE and wf.resample == FOX_RESAMPLE
    assert (wf.checkpoint, wf.image, wf.unsamplers, wf.samplers) == ("v1-5-pruned-emaonly.safetensors", "fox.png", ["3"], ["5"])
    assert wf.sweep_base() == {**{k: FOX_UNSAMPLE[k] for k in FOX_UNSAMPLE}, "edit": "a photo of a grey wolf in the snow",
                               "resample_cfg": 6.5, "seed": 1234}


def test_png_chunks_read_like_the_workflow_files(tmp_path):
    png = ul.comfy.read_workflow(DATA / "comfyui_output.png")  # its 'prompt' chunk: the API format
    assert png.source_format == "api" and _summary(png) == _summary(ul.comfy.read_workflow(DATA / "unsampler_ui.json"))
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    only_ui = tmp_path / "ui_only.png"
    info = PngInfo()
    info.add_text("workflow", (DATA / "unsampler_ui.json").read_text())
    Image.new("RGB", (4, 4)).save(only_ui, pnginfo=info)
    assert ul.comfy.read_workflow(only_ui).source_format == "ui"
    Image.new("RGB", (4, 4)).save(tmp_path / "plain.png")
    with pytest.raises(UnsamplingError, match="no ComfyUI workflow in it") as e:
        ul.comfy.read_workflow(tmp_path / "plain.png")
    assert "\n" not in str(e.value)


def test_api_format_follows_a_lora_and_names_custom_nodes():
    with pytest.warns(UnsamplingWarning, match=r"ImageResize\+ \(node 12\)"):
        wf = ul.comfy.read_workflow(DATA / "unsampler_api.json")
    assert wf.checkpoint == "sd_xl_base_1.0.safetensors" and wf.image == "lighthouse.png"
    assert wf.unsample["positive"] == "a watercolour lighthouse at dusk" and wf.unsample["negative"] == ""
    assert wf.resample["noise_seed"] == 7 and wf.resample["start_at_step"] == 0


def test_several_unsamplers_are_listed_not_guessed():
    with pytest.raises(UnsamplingError, match=r"2 Unsampler nodes: 10 .*20 .*unsampler='ID'") as e:
        ul.comfy.read_workflow(DATA / "two_unsamplers_api.json")
    assert "\n" not in str(e.value)
    wf = ul.comfy.read_workflow(DATA / "two_unsamplers_api.json", unsampler=20)
    assert wf.unsample["steps"] == 40 and wf.resample["start_at_step"] == 5  # the sampler fed by node 20
    assert wf.latent == "cat.latent" and wf.image is None and wf.unsamplers == ["10", "20"]
    with pytest.raises(UnsamplingError, match="not a Unsampler node"):
        ul.comfy.read_workflow(DATA / "two_unsamplers_api.json", unsampler=11)


@pytest.mark.parametrize("name", ["unsampler_ui.json", "unsampler_api.json", "comfyui_output.png", "two_unsamplers_api.json"])
def test_read_write_read_is_the_identity_on_parameters(name, tmp_path):
    kw = {"unsampler": "20"} if name.startswith("two") else {}
    wf = _read(DATA / name, **kw)
    out = ul.comfy.to_workflow(wf, tmp_path / "again.json", checkpoint=wf.checkpoint, image=wf.image or "unused.png")
    for path in (out.ui_path, out.api_path):
        back = _read(path)
        assert _summary(back) == _summary(wf)  # parameters, checkpoint, image or latent
        assert back.latent == wf.latent
    assert json.loads(out.api_path.read_text()) == out.api and _read(out.ui).unsample == wf.unsample


def _assert_core_nodes(api: dict) -> None:
    for node_id, node in api.items():
        assert node["class_type"] in COMFY_REQUIRED, node["class_type"]
        assert COMFY_REQUIRED[node["class_type"]] <= set(node["inputs"]), node_id
        for value in node["inputs"].values():
            if isinstance(value, list):
                assert value[0] in api


def test_a_sweep_row_exports_a_comfyui_graph(tmp_path):
    from unsampling_lab.analysis.sweeps import Setting

    row = Setting(steps=12, end_at_step=2, cfg=2.5, sampler_name="heun", scheduler="karras", positive="red circle",
                  negative="", edit="blue circle", seed=9, resample_cfg=4.0).row(0)
    out = ul.comfy.workflow_for_row(row, tmp_path / "best.json", checkpoint="mine.safetensors", image="shape.png")
    _assert_core_nodes(out.api)
    kinds = [n["class_type"] for n in out.api.values()]
    assert kinds.count("BNK_Unsampler") == 1 and out.latent_path is None and "LoadImage" in kinds
    wf = _read(out.api_path)
    assert wf.unsample == {"steps": 12, "end_at_step": 2, "cfg": 2.5, "sampler_name": "heun", "scheduler": "karras",
                           "normalize": "disable", "positive": "red circle", "negative": ""}
    assert wf.resample["positive"] == "blue circle" and wf.resample["cfg"] == 4.0 and wf.resample["start_at_step"] == 2
    assert wf.resample["add_noise"] is False and wf.resample["noise_seed"] == 9
    ui = json.loads(out.ui_path.read_text())
    assert len(ui["links"]) == sum(isinstance(v, list) for n in out.api.values() for v in n["inputs"].values())


@pytest.mark.filterwarnings("ignore::unsampling_lab.inversion.InversionWarning")  # 4 steps: not converged, not the point
def test_methods_comfyui_cannot_run_export_their_noise(sd_model, tmp_path):
    latent = {"samples": torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))}
    with pytest.raises(UnsamplingError, match="pass noise="):
        ul.comfy.to_workflow({"method": "edict", "steps": 4}, tmp_path / "x.json")
    inv = ul.invert(sd_model, latent, method="fixed_point", steps=4, cfg=2.0, positive="red", progress=False, iterations=2)
    out = ul.comfy.to_workflow(inv, tmp_path / "fp.json")
    assert "'fixed_point' has no ComfyUI node" in out.note and out.latent_path.name in out.note
    _assert_core_nodes(out.api)
    kinds = {n["class_type"] for n in out.api.values()}
    assert "LoadLatent" in kinds and "BNK_Unsampler" not in kinds
    assert torch.equal(ul.load_latent(out.latent_path)["samples"], inv.noise["samples"])
    wf = _read(out.api_path)
    assert wf.latent == out.latent_path.name and wf.resample["steps"] == 4 and wf.resample["positive"] == "red"
    per_sample = ul.comfy.to_workflow({"normalize": "per_sample", "steps": 4}, tmp_path / "ps.json", noise=inv.noise)
    assert "normalize='per_sample'" in per_sample.note


@pytest.mark.filterwarnings("ignore::unsampling_lab.errors.UnsamplingWarning")  # the tiny tokenizer cuts the prompts
def test_a_read_workflow_runs_in_the_lab(sd_model):
    wf = _read(DATA / "unsampler_ui.json")
    latent = {"samples": torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))}
    noise = ul.unsample(sd_model, latent, **{**wf.unsample, "steps": 4, "end_at_step": 1}, progress=False)
    out = ul.resample(sd_model, noise, **{**wf.resample, "steps": 4, "start_at_step": 1}, progress=False)
    assert out["samples"].shape == latent["samples"].shape and torch.isfinite(out["samples"]).all()


def test_not_a_workflow_is_one_line(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps({"hello": 1}))
    with pytest.raises(UnsamplingError, match="not a ComfyUI workflow") as e:
        ul.comfy.read_workflow(bad)
    assert "\n" not in str(e.value)
    bad.write_text("{")
    with pytest.raises(UnsamplingError, match="not a readable JSON workflow"):
        ul.comfy.read_workflow(bad)


def test_the_readme_comfyui_block_runs(tmp_path, monkeypatch):
    """README "From your ComfyUI workflow to a sweep and back", as written, on a ComfyUI folder made here: the
    bundled model as a single-file checkpoint, its tokenizer as comfy/sd1_tokenizer, an output PNG with its workflow."""
    import re

    from diffusers import StableDiffusionPipeline
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    from unsampling_lab.models.ldm_layout import write_single_file

    if not Path(ul.BUNDLED_MODEL, "model_index.json").exists():
        pytest.skip("bundled model not installed")
    torch.set_num_threads(1)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    root = tmp_path / "ComfyUI"
    pipe = StableDiffusionPipeline.from_pretrained(str(ul.BUNDLED_MODEL), local_files_only=True)
    pipe.tokenizer.save_pretrained(str(root / "comfy" / "sd1_tokenizer"))
    write_single_file(pipe, root / "models" / "checkpoints" / "shapes.safetensors")
    batch = ul.shapes.make_shapes(1, seed=3)
    (root / "input").mkdir()
    Image.fromarray((batch.images[0].numpy() * 255).round().astype("uint8")).save(root / "input" / "shape.png")
    made = ul.comfy.to_workflow({"steps": 6, "positive": batch.captions[0], "edit": "blue " + batch.shapes[0]},
                                tmp_path / "made.json", checkpoint="shapes.safetensors", image="shape.png")
    info = PngInfo()
    info.add_text("prompt", json.dumps(made.api))
    info.add_text("workflow", json.dumps(made.ui))
    (root / "output").mkdir()
    Image.new("RGB", (32, 32)).save(root / "output" / "ComfyUI_00001_.png", pnginfo=info)

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text[text.index("## From your ComfyUI workflow"):], re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"ul": ul}
    exec(compile(code, "README.md", "exec"), namespace)
    df, best = namespace["df"], namespace["best"]
    assert len(df) == 4 and namespace["edit"]["samples"].shape == namespace["latent"]["samples"].shape
    back = ul.comfy.read_workflow(tmp_path / "best_api.json")
    assert back.unsample["end_at_step"] == best["end_at_step"] and back.unsample["cfg"] == best["cfg"]
    assert back.resample["positive"] == "blue " + batch.shapes[0] and back.checkpoint == "shapes.safetensors"
    assert (tmp_path / "best.json").exists()
