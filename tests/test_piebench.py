"""PIE-Bench metrics, masks and data: each formula against a hand computation, the networks' plumbing on tiny
random models of the same architectures, and the learned-metric formulas against torchmetrics' own code."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from unsampling_lab.analysis.piebench import EDITING_TYPES, decode_mask, encode_mask, load_pie_bench, write_pie_bench
from unsampling_lab.analysis.piebench.metrics import quantise, region_scores, self_similarity, summarise
from unsampling_lab.analysis.piebench.networks import Clip, Dino, Lpips, MissingWeights, SqueezeFeatures, last_key_projection


# -- masks --------------------------------------------------------------------------------------------------
def test_rle_decodes_a_hand_drawn_mask_with_and_without_the_released_border():
    # 4 x 5 image, runs (6, 3) and (16, 10): row 1 cols 1-3, row 3 cols 1-4 (the last run is clipped at 20)
    inner = np.array([[0, 0, 0, 0, 0],
                      [0, 1, 1, 1, 0],
                      [0, 0, 0, 0, 0],
                      [0, 1, 1, 1, 1]], dtype=bool)
    assert (decode_mask([6, 3, 16, 10], (4, 5), border=False) == inner).all()
    bordered = inner.copy()
    bordered[0, :] = bordered[-1, :] = bordered[:, 0] = bordered[:, -1] = True
    assert (decode_mask("6 3 16 10", (4, 5)) == bordered).all()
    assert encode_mask(inner) == [6, 3, 16, 4]
    with pytest.raises(ValueError, match="pairs"):
        decode_mask([1, 2, 3], (4, 5))


# -- region metrics -----------------------------------------------------------------------------------------
def test_background_mse_psnr_multiply_both_images_and_average_over_the_whole_image():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(16, 16, 3, generator=g), torch.rand(16, 16, 3, generator=g)
    a, b = quantise(a), quantise(b)
    keep = np.zeros((16, 16))
    keep[4:10, 2:12] = 1.0
    out = region_scores(a, b, keep, "unedit_part")
    na, nb = a.numpy(), b.numpy()
    mse = np.mean((na * keep[..., None] - nb * keep[..., None]) ** 2)  # zeros outside count in the mean
    assert out["mse_unedit_part"] == pytest.approx(mse, rel=1e-5)
    assert out["psnr_unedit_part"] == pytest.approx(10 * math.log10(1 / mse), rel=1e-5)


def test_ssim_of_two_uniform_images_is_the_luminance_term():
    a = torch.full((24, 24, 3), 0.2, dtype=torch.float64)
    b = torch.full((24, 24, 3), 0.6, dtype=torch.float64)
    c1 = 0.01**2
    expected = (2 * 0.2 * 0.6 + c1) / (0.2**2 + 0.6**2 + c1)  # variances and covariance are 0: (C2 / C2) = 1
    # float32 as the released code: E[x^2] - mu^2 cancels to ~1e-8 against C2 = 9e-4 (measured 1.2e-4 relative
    # off here; the same torchmetrics call in float64 is off by 4e-13)
    assert region_scores(a, b, None, "whole")["ssim_whole"] == pytest.approx(expected, rel=3e-4)
    assert region_scores(a, a, None, "whole")["ssim_whole"] == pytest.approx(1.0, abs=1e-6)


def test_an_empty_region_is_nan_and_a_nan_image_is_refused():
    a = torch.rand(8, 8, 3)
    out = region_scores(quantise(a), quantise(a), np.zeros((8, 8)), "unedit_part")
    assert all(math.isnan(v) for v in out.values())
    with pytest.raises(ValueError, match="NaN"):
        quantise(torch.full((8, 8, 3), float("nan")))
    with pytest.raises(ValueError, match="mask"):
        region_scores(quantise(a), quantise(a), np.ones((4, 4)), "unedit_part")


def test_quantise_rounds_to_eight_bits():
    x = torch.tensor([[[0.0, 0.5, 1.0]]])
    assert quantise(x).tolist() == [[[0.0, 128 / 255, 1.0]]]


# -- structure distance -------------------------------------------------------------------------------------
def test_self_similarity_is_the_cosine_matrix():
    keys = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    s = 1 / math.sqrt(2)
    expected = torch.tensor([[1.0, s, 0.0], [s, 1.0, s], [0.0, s, 1.0]])
    assert torch.allclose(self_similarity(keys), expected, atol=1e-6)


@pytest.fixture(scope="module")
def tiny_dino():
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    cfg = ViTConfig(image_size=32, patch_size=8, hidden_size=24, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=48, layer_norm_eps=1e-6)
    return ViTModel(cfg, add_pooling_layer=False).eval()


def test_dino_keys_are_the_last_layers_key_projection_of_its_input(tiny_dino):
    dino = Dino(tiny_dino, size=32, max_size=60)
    image = torch.rand(48, 40, 3) * 255
    keys = dino.keys(image)
    # independent path: the hidden state entering the last layer, its first layer norm, the key projection
    x = torch.nn.functional.interpolate(image.permute(2, 0, 1)[None], size=(38, 32), mode="bilinear",
                                        align_corners=False)  # Resize(32, max_size=60): short side 32
    x = (x - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    with torch.no_grad():
        out = tiny_dino(pixel_values=x, interpolate_pos_encoding=True, output_hidden_states=True)
        layers = getattr(tiny_dino, "layers", None) or tiny_dino.encoder.layer
        expected = last_key_projection(tiny_dino)(layers[-1].layernorm_before(out.hidden_states[-2]))[0]
    assert keys.shape == (1 + (38 // 8) * (32 // 8), 24)
    assert torch.allclose(keys, expected, atol=1e-5)


def test_dino_resize_follows_torchvisions_max_size_rule(tiny_dino):
    dino = Dino(tiny_dino, size=224, max_size=480)
    assert dino._resize(torch.zeros(1, 3, 512, 512)).shape[-2:] == (224, 224)
    assert dino._resize(torch.zeros(1, 3, 100, 400)).shape[-2:] == (120, 480)  # 224 x 896 capped at 480


# -- LPIPS --------------------------------------------------------------------------------------------------
def test_lpips_equals_torchmetrics_formula_on_the_same_random_backbone(monkeypatch):
    import torchmetrics.functional.image.lpips as tm

    torch.manual_seed(1)
    features = SqueezeFeatures()
    monkeypatch.setattr(tm, "_get_tv_model_features", lambda net, pretrained=False: features)
    reference = tm._LPIPS(pretrained=True, net="squeeze", pnet_rand=True).eval()  # heads: the shipped squeeze.pth
    lin = torch.load(tm.__file__.replace("lpips.py", "lpips_models/squeeze.pth"), map_location="cpu", weights_only=True)
    ours = Lpips(features, [lin[f"lin{i}.model.1.weight"] for i in range(7)])
    a, b = torch.rand(2, 3, 48, 48) * 2 - 1, torch.rand(2, 3, 48, 48) * 2 - 1
    with torch.no_grad():
        expected = reference(a, b).flatten()
    assert torch.allclose(ours(a, b), expected, rtol=1e-5, atol=1e-7)
    assert torch.allclose(ours(a, a), torch.zeros(2), atol=1e-7)


def test_missing_weights_name_the_model_and_the_fetch_command(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(MissingWeights, match=r"facebook/dino-vitb8.*hf download facebook/dino-vitb8"):
        Dino.load()
    with pytest.raises(MissingWeights, match=r"squeezenet1_1.*load_state_dict_from_url"):
        Lpips.load(tmp_path / "nope.pth")


# -- CLIP ---------------------------------------------------------------------------------------------------
def test_clip_score_is_100_times_the_cosine_the_model_reports():
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    from unsampling_lab.bundled import BUNDLED_MODEL

    torch.manual_seed(2)
    cfg = CLIPConfig(text_config=dict(vocab_size=1000, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, max_position_embeddings=77),
                     vision_config=dict(image_size=32, patch_size=8, hidden_size=16, intermediate_size=32,
                                        num_hidden_layers=1, num_attention_heads=2), projection_dim=8)
    model = CLIPModel(cfg).eval()
    tokenizer = CLIPTokenizer.from_pretrained(BUNDLED_MODEL / "tokenizer")
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                 crop_size={"height": 32, "width": 32}),
                              tokenizer=tokenizer)
    clip = Clip(model, processor)
    image = (np.random.default_rng(0).random((40, 40, 3)) * 255).astype(np.uint8)
    score = clip.score(image, "red circle")
    inputs = processor(text=["red circle"], images=[image], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**inputs)
    cos = float(out.logits_per_image[0, 0] / model.logit_scale.exp().detach())
    assert score == pytest.approx(max(100 * cos, 0.0), rel=1e-4, abs=1e-4)


# -- summaries ----------------------------------------------------------------------------------------------
def test_summary_counts_nan_items_and_gives_a_t_interval_in_the_papers_scale():
    rows = [{"method": "a", "psnr_unedit_part": v} for v in (20.0, 22.0, 24.0, float("nan"))]
    rows += [{"method": "a", "mse_unedit_part": None}]
    table = summarise(rows, by=("method",), metrics=["psnr_unedit_part"], skipped={"lpips_unedit_part": "no weights"})
    line = table.iloc[0]
    assert line["n"] == 5 and line["psnr_unedit_part_nan"] == 2  # the NaN item and the row without the metric
    assert line["psnr_unedit_part"] == pytest.approx(22.0)
    assert line["psnr_unedit_part_ci95"] == pytest.approx(4.302652729911275 * 2.0 / math.sqrt(3))
    assert math.isnan(line["lpips_unedit_part"]) and "no weights" in line["skipped_metrics"]


# -- data ---------------------------------------------------------------------------------------------------
def _write_case(tmp_path):
    image = torch.zeros(8, 8, 3)
    image[2:5, 3:6] = torch.tensor([1.0, 0.0, 0.0])
    mask = np.zeros((8, 8), dtype=bool)
    mask[2:5, 3:6] = True
    write_pie_bench(tmp_path, [("000000000001", image, "a [red] square", "a [blue] square", 6, mask, "square square")])
    return image, mask


def test_the_release_layout_reads_back_prompts_type_mask_and_image(tmp_path):
    image, mask = _write_case(tmp_path)
    mapping = json.loads((tmp_path / "mapping_file.json").read_text())
    assert set(mapping["000000000001"]) >= {"image_path", "original_prompt", "editing_prompt", "editing_type_id", "mask"}
    (case,) = load_pie_bench(tmp_path)
    assert case.source_prompt == "a red square" and case.target_prompt == "a blue square"
    assert case.editing_type == 6 and case.category == EDITING_TYPES[6]
    assert (case.mask(border=False) == mask).all()
    assert torch.equal(case.image(), image)
    assert load_pie_bench(tmp_path, categories=[1]) == []


def test_the_parquet_mirror_reads_like_the_release(tmp_path):
    import pandas as pd

    image, mask = _write_case(tmp_path / "release")
    (case,) = load_pie_bench(tmp_path / "release")
    folder = tmp_path / "mirror" / "6_change_attribute_color_40" / "V1"
    folder.mkdir(parents=True)
    png = case.image_path.read_bytes()
    pd.DataFrame([{"id": "000000000001", "image": {"bytes": png, "path": None},
                   "source_prompt": "a [red] square", "target_prompt": "a [blue] square", "edit_action": "{}",
                   "aspect_mapping": "{}", "blended_words": "square,square",
                   "mask": " ".join(map(str, encode_mask(mask)))}]).to_parquet(folder / "0000.parquet")
    (mirrored,) = load_pie_bench(tmp_path / "mirror")
    assert mirrored.editing_type == 6 and mirrored.target_prompt == case.target_prompt
    assert mirrored.mask_runs == case.mask_runs and torch.equal(mirrored.image(), image)
    with pytest.raises(FileNotFoundError, match="mapping_file.json"):
        load_pie_bench(tmp_path / "absent")


def test_pie_shapes_is_deterministic_with_exact_masks_and_a_black_background():
    from unsampling_lab.analysis.piebench.suite import images_of, masks_of, pie_shapes

    cases, targets = pie_shapes(n_colour=6, n_shape=4)
    again, _ = pie_shapes(n_colour=6, n_shape=4)
    assert [c.key for c in cases] == [c.key for c in again] and len(cases) == 10
    images, masks = images_of(cases), masks_of(cases)
    assert torch.equal(images, images_of(again))
    lit = images.max(-1).values > 0
    assert (lit.numpy() <= masks).all()  # every lit pixel is in the edited region: the background is black
    for c in cases:
        t = targets[c.key]
        assert (t.target_colour in c.target_prompt) and (t.target_shape in c.target_prompt)
        assert c.source_prompt != c.target_prompt
    assert {c.editing_type for c in cases} == {1, 6}
