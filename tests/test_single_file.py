"""Single-file checkpoints: the project's writer puts a diffusers pipeline in the LDM key layout, load_model
reads it back through diffusers' converters; weights equal, outputs equal, and bad files give one line."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

import unsampling_lab as ul
from unsampling_lab.errors import UnsamplingError
from unsampling_lab.models.ldm_layout import open_clip_to_ldm, unet_to_ldm, vae_to_ldm, write_single_file
from unsampling_lab.models.single_file import (
    architecture_configs, detect_architecture, load_single_file, prediction_type, read_single_file,
)


def _comfyui(root: Path, tokenizer) -> Path:
    """A ComfyUI installation as load_model finds it: comfy/sd1_tokenizer and models/checkpoints/."""
    (root / "models" / "checkpoints").mkdir(parents=True)
    tokenizer.save_pretrained(str(root / "comfy" / "sd1_tokenizer"))
    return root / "models" / "checkpoints"


@pytest.fixture(scope="module")
def no_hub_cache(tmp_path_factory):
    """An empty Hugging Face cache: tokenizers can only come from the ComfyUI folder."""
    mp = pytest.MonkeyPatch()
    cache = tmp_path_factory.mktemp("hf")
    mp.setenv("HF_HUB_CACHE", str(cache))
    mp.setenv("HF_HOME", str(cache))
    import huggingface_hub.constants as c

    mp.setattr(c, "HF_HUB_CACHE", str(cache))
    yield
    mp.undo()


def _same_weights(a, b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.fixture(scope="module")
def bundled_file(tmp_path_factory, no_hub_cache):
    from diffusers import StableDiffusionPipeline

    if not Path(ul.BUNDLED_MODEL, "model_index.json").exists():
        pytest.skip("bundled model not installed")
    pipe = StableDiffusionPipeline.from_pretrained(str(ul.BUNDLED_MODEL), local_files_only=True)
    checkpoints = _comfyui(tmp_path_factory.mktemp("c") / "ComfyUI", pipe.tokenizer)
    return pipe, write_single_file(pipe, checkpoints / "shapes.safetensors")


def test_bundled_model_round_trips_through_a_single_file(bundled_file):
    pipe, path = bundled_file
    assert detect_architecture(read_single_file(path)[0]) == "sd1"
    model = ul.load_model(path, device="cpu")
    folder = ul.load_model(device="cpu")
    for name in ("unet", "vae", "text_encoder"):
        _same_weights(getattr(model, name), getattr(folder, name))
    assert dict(model.model_sampling.__dict__).keys() and torch.equal(model.model_sampling.sigmas, folder.model_sampling.sigmas)
    batch = ul.shapes.make_shapes(1, seed=3)
    latent = folder.encode(batch.images)
    assert torch.equal(model.encode(batch.images)["samples"], latent["samples"])
    assert torch.equal(model.encode_prompt(batch.captions).embeds, folder.encode_prompt(batch.captions).embeds)
    # Same weights, but the folder's tensors are memory-mapped: CPU kernels then differ in the last bits
    # (a deepcopy of the folder's own UNet differs from it by ~5e-7 too), so outputs are compared closely, not bitwise.
    got = ul.unsample(model, latent, steps=4, positive=batch.captions[0])["samples"]
    want = ul.unsample(folder, latent, steps=4, positive=batch.captions[0])["samples"]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-3)
    twin = copy.deepcopy(folder.unet)
    x, t, e = torch.randn(1, 4, 8, 8), torch.tensor([500.0]), torch.randn(1, 8, folder.embed_width)
    with torch.no_grad():
        assert torch.equal(model.unet(x, t, e).sample, twin(x, t, e).sample)  # same memory kind: bit for bit


def _tiny_sdxl(folder: Path):
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline

    from unsampling_lab.testing import TINY_WORDS, tiny_text_encoder, tiny_unet
    from unsampling_lab.bundled.tokenizer import write_tokenizer
    from transformers import CLIPTokenizer

    write_tokenizer(folder, TINY_WORDS, model_max_length=8)
    tok = CLIPTokenizer.from_pretrained(str(folder))
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(16, 32), latent_channels=4, layers_per_block=1, norm_num_groups=8,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, sample_size=16)
    enc1 = tiny_text_encoder(seed=2, hidden=16, vocab_size=len(tok))
    enc2 = tiny_text_encoder(seed=3, hidden=16, vocab_size=len(tok), projection=16)
    sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1)
    return StableDiffusionXLPipeline(unet=tiny_unet(seed=4, sdxl=True), vae=vae.eval(), text_encoder=enc1, text_encoder_2=enc2,
                                     tokenizer=tok, tokenizer_2=tok, scheduler=sched)


def test_tiny_sdxl_round_trips_with_both_text_encoders(tmp_path, no_hub_cache):
    pipe = _tiny_sdxl(tmp_path / "tok")
    path = write_single_file(pipe, _comfyui(tmp_path / "ComfyUI", pipe.tokenizer) / "xl.safetensors")
    state, _ = read_single_file(path)
    assert detect_architecture(state) == "sdxl" and "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight" in state
    model = ul.load_model(path, device="cpu")
    folder = ul.load_model(pipe, device="cpu")
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        _same_weights(getattr(model, name), getattr(folder, name))
    a, b = model.encode_prompt(["red circle"]), folder.encode_prompt(["red circle"])
    assert torch.equal(a.embeds, b.embeds) and torch.equal(a.pooled, b.pooled)
    latent = {"samples": torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))}
    got = ul.unsample(model, latent, steps=3, cfg=2.0, positive="red circle", negative="blue")["samples"]
    want = ul.unsample(folder, latent, steps=3, cfg=2.0, positive="red circle", negative="blue")["samples"]
    assert torch.equal(got, want)


def test_sd2_open_clip_layout_and_comfyui_v_rule(tmp_path, no_hub_cache):
    from diffusers import EulerDiscreteScheduler

    pipe = ul.testing.tiny_sd_pipeline(seed=1)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, prediction_type="v_prediction")
    path = write_single_file(pipe, _comfyui(tmp_path / "ComfyUI", pipe.tokenizer) / "sd2.safetensors")
    state, _ = read_single_file(path)
    assert detect_architecture(state) == "sd2"
    model = ul.load_model(path, device="cpu")
    assert model.model_sampling.prediction == "v"
    _same_weights(model.text_encoder, pipe.text_encoder)
    _same_weights(model.unet, pipe.unet)
    # ComfyUI's rule for files without a config: std of output_blocks.11's first norm bias above 0.09 means v.
    key = "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias"
    assert prediction_type({key: torch.tensor([-0.15, -0.05, 0.05, 0.15])}, "sd2") == "v_prediction"
    assert prediction_type({key: torch.tensor([-0.03, -0.01, 0.01, 0.03])}, "sd2") == "epsilon"
    assert prediction_type({}, "sd2") == "epsilon" and prediction_type({"v_pred": torch.tensor([])}, "sdxl") == "v_prediction"


def test_writer_layout_is_what_diffusers_reads():
    """Names of the released layout, checked on a few well-known keys (SD1.5's UNet, VAE, OpenCLIP)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    config = architecture_configs("sd1")
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config({k: v for k, v in config["unet"].items() if k != "_class_name"})
        vae = AutoencoderKL.from_config({k: v for k, v in config["vae"].items() if k != "_class_name"})
    names = set(unet_to_ldm(unet.state_dict(), unet.config))
    assert {"input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight", "input_blocks.3.0.op.weight",
            "middle_block.2.out_layers.3.weight", "output_blocks.11.0.skip_connection.weight",
            "output_blocks.2.1.conv.weight", "output_blocks.5.2.conv.weight", "time_embed.2.bias", "out.2.weight"} <= names
    assert len(names) == len(unet.state_dict())
    vae_names = set(vae_to_ldm(vae.state_dict(), vae.config))
    assert {"encoder.down.0.block.0.conv1.weight", "decoder.up.3.block.2.norm2.bias", "encoder.mid.attn_1.q.weight",
            "decoder.up.1.upsample.conv.weight", "encoder.down.1.block.0.nin_shortcut.weight"} <= vae_names
    clip = {f"text_model.encoder.layers.0.self_attn.{n}_proj.weight": torch.randn(4, 4) for n in "qkv"}
    fused = open_clip_to_ldm(clip)["transformer.resblocks.0.attn.in_proj_weight"]
    assert torch.equal(fused[4:8], clip["text_model.encoder.layers.0.self_attn.k_proj.weight"])


def test_shipped_configs_have_the_released_sizes():
    """Parameter counts of the released models (SD1.5, SD2.1, SDXL base, SD3 medium, Flux dev), built on the meta device."""
    from unsampling_lab.models.single_file import _build

    want = {"sd1": {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480},
            "sd2": {"unet": 865_910_724, "text_encoder": 340_387_840},
            "sdxl": {"unet": 2_567_463_684, "text_encoder_2": 694_659_840},
            "sd3": {"transformer": 2_028_328_000, "text_encoder_3": 4_762_310_656},
            "flux": {"transformer": 11_901_408_320, "vae": 83_819_683}}
    for arch, sizes in want.items():
        with torch.device("meta"):
            networks, encoders = _build(architecture_configs(arch), arch)
        for encoder in encoders.values():
            encoder.tie_weights()  # built without init, as load_single_file does; loading ties them
        parts = {**networks, **encoders}
        assert {n: sum(p.numel() for p in parts[n].parameters()) for n in sizes} == sizes, arch


def test_bad_files_give_one_line(bundled_file, tmp_path):
    _, path = bundled_file
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(UnsamplingError, match="corrupt or truncated") as e:
        ul.load_model(cut, device="cpu")
    assert "\n" not in str(e.value)
    from safetensors.torch import save_file

    wrong = tmp_path / "wrong.safetensors"
    save_file({"encoder.weight": torch.zeros(2)}, str(wrong))
    with pytest.raises(UnsamplingError, match="not a Stable Diffusion"):
        ul.load_model(wrong, device="cpu")
    pickled = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1)}}, str(pickled))
    with pytest.raises(UnsamplingError, match="allow_pickle=True"):
        ul.load_model(pickled, device="cpu")
    with pytest.raises(UnsamplingError, match="not a Stable Diffusion"):  # allowed, then read: still no checkpoint
        ul.load_model(pickled, device="cpu", allow_pickle=True)
    unet_only = tmp_path / "unet.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)}, str(unet_only))
    with pytest.raises(UnsamplingError, match="without its text encoder"):
        ul.load_model(unet_only, device="cpu")


def test_missing_tokenizer_names_where_it_looked(bundled_file, tmp_path):
    _, path = bundled_file
    alone = tmp_path / "elsewhere" / "shapes.safetensors"
    alone.parent.mkdir()
    alone.write_bytes(path.read_bytes())
    with pytest.raises(UnsamplingError) as e:
        load_single_file(alone)
    text = str(e.value)
    assert "\n" not in text and "tokenizer" in text and "stable-diffusion-v1-5/stable-diffusion-v1-5" in text
    assert "comfyui=PATH" in text
    model = ul.load_model(alone, device="cpu", comfyui=path.parents[2])  # given explicitly: found
    assert model.tokenizer is not None
    with pytest.raises(UnsamplingError, match="not a ComfyUI installation"):
        ul.load_model(alone, device="cpu", comfyui=tmp_path)


def test_t5_of_an_all_in_one_file_loads_with_its_tied_embedding():
    """SD3 / Flux files hold T5 under text_encoders.t5xxl.transformer. (one copy of the tied token embedding)."""
    from transformers import T5Config, T5EncoderModel

    from unsampling_lab.models.single_file import _load_weights

    config = T5Config(vocab_size=32, d_model=8, d_ff=16, d_kv=4, num_heads=2, num_layers=1, feed_forward_proj="gated-gelu")
    torch.manual_seed(0)
    source = T5EncoderModel(config).eval()
    state = {"text_encoders.t5xxl.transformer." + k: v for k, v in source.state_dict().items()
             if k != "encoder.embed_tokens.weight"}
    from diffusers.loaders.single_file_utils import convert_sd3_t5_checkpoint_to_diffusers

    from transformers.initialization import no_init_weights

    with no_init_weights():  # as load_single_file builds it: not initialised, not tied
        target = T5EncoderModel(config).eval()
    _load_weights(target, convert_sd3_t5_checkpoint_to_diffusers(state), "text_encoder_3", Path("x.safetensors"))
    _same_weights(target, source)
    ids = torch.tensor([[1, 2, 3]])
    assert torch.equal(target(ids).last_hidden_state, source(ids).last_hidden_state)
    with pytest.raises(UnsamplingError, match="is missing 1 text_encoder_3 weights"):
        partial = {k: v for k, v in convert_sd3_t5_checkpoint_to_diffusers(state).items() if not k.endswith("final_layer_norm.weight")}
        _load_weights(T5EncoderModel(config), partial, "text_encoder_3", Path("x.safetensors"))


def test_what_released_files_also_hold_is_skipped(bundled_file, tmp_path):
    """Released SD1 files carry EMA copies, CLIP's position_ids buffer and fp16 weights; none of it gets in the way."""
    from safetensors.torch import save_file

    _, path = bundled_file
    state, metadata = read_single_file(path)
    extra = {k: v.half() for k, v in state.items()}
    extra["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(8)[None]
    extra["model_ema.decay"] = torch.tensor(0.9999)
    extra["model_ema.num_updates"] = torch.tensor(0)
    halved = path.parent / "shapes_fp16.safetensors"
    save_file(extra, str(halved), metadata=metadata)
    model = ul.load_model(halved, device="cpu")
    assert model.dtype == torch.float32  # as a diffusers folder loads without dtype=
    unet = model.unet.state_dict()
    want = {k: v.half().float() for k, v in ul.load_model(path, device="cpu").unet.state_dict().items()}
    assert all(torch.equal(unet[k], want[k]) for k in want)
    assert ul.load_model(halved, device="cpu", dtype="float16").unet.dtype == torch.float16


@pytest.mark.parametrize("arch,key", [
    ("sd3", "model.diffusion_model.joint_blocks.0.context_block.adaLN_modulation.1.bias"),
    ("flux", "model.diffusion_model.double_blocks.0.img_attn.norm.key_norm.scale"),
])
def test_sd3_and_flux_files_are_named_and_need_their_t5_tokenizer(arch, key, tmp_path, no_hub_cache):
    from safetensors.torch import save_file

    assert detect_architecture({key, "first_stage_model.encoder.conv_in.weight"}) == arch
    root = tmp_path / "ComfyUI"
    (root / "models" / "checkpoints").mkdir(parents=True)
    (root / "comfy" / "sd1_tokenizer").mkdir(parents=True)  # CLIP's is there, T5's is not
    ul.testing.tiny_sd_pipeline().tokenizer.save_pretrained(str(root / "comfy" / "sd1_tokenizer"))
    path = root / "models" / "checkpoints" / f"{arch}.safetensors"
    save_file({key: torch.zeros(1)}, str(path))
    with pytest.raises(UnsamplingError) as e:
        ul.load_model(path, device="cpu")
    text = str(e.value)
    assert "\n" not in text and f"{arch} checkpoint {path.name} needs its tokenizer_" in text
    assert "comfy/text_encoders/t5_tokenizer" in text and str(root) in text
