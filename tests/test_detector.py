"""The rule-based detector agrees with the dataset it judges, and its IoU behaves."""
from __future__ import annotations

import math

import torch

from unsampling_lab.bundled.detector import detect, foreground_iou, hue_degrees
from unsampling_lab.bundled.shapes import make_shapes


def test_accuracy_on_dataset() -> None:
    batch = make_shapes(400, seed=123)
    det = detect(batch.images)
    colour = sum(d == c for d, c in zip(det.colours, batch.colours)) / len(batch.colours)
    shape = sum(d == s for d, s in zip(det.shapes, batch.shapes)) / len(batch.shapes)
    assert colour >= 0.99 and shape >= 0.99, (colour, shape)
    assert det.masks.shape == (400, 32, 32) and det.masks.dtype == torch.bool
    # foreground mask = the rendered coverage > 1/2
    truth = batch.images.max(-1).values > 0.5
    assert foreground_iou(det.masks, truth).min() > 0.99


def test_centroid_and_area_of_circles() -> None:
    batch = make_shapes(200, seed=5)
    det = detect(batch.images)
    for i, s in enumerate(batch.shapes):
        if s == "circle":
            r = batch.radii[i].item()
            assert torch.allclose(det.centroids[i], batch.centres[i], atol=0.3)
            assert abs(det.areas[i].item() - math.pi * r * r) < 2 * math.pi * r  # within one pixel ring


def test_empty_and_grey_images() -> None:
    images = torch.zeros(2, 32, 32, 3)
    images[1, 10:20, 10:20] = 0.8  # grey square: a shape, but no colour
    det = detect(images)
    assert det.colours == ["none", "unknown"] and det.shapes[0] == "none" and det.shapes[1] == "square"
    assert det.areas.tolist() == [0.0, 100.0]


def test_hue() -> None:
    rgb = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 1, 1], [0, 0, 1], [1, 0, 1.0]])
    assert torch.allclose(hue_degrees(rgb), torch.tensor([0, 60, 120, 180, 240, 300.0]))


def test_foreground_iou() -> None:
    a = torch.zeros(4, 8, 8, dtype=torch.bool)
    b = torch.zeros(4, 8, 8, dtype=torch.bool)
    a[0, :4], b[0, :4] = True, True  # identical -> 1
    a[1, :4], b[1, 4:] = True, True  # disjoint -> 0
    a[2, :4], b[2, 2:6] = True, True  # rows 2,3 shared of 0..5 -> 2/6
    # both empty -> 1
    assert torch.allclose(foreground_iou(a, b), torch.tensor([1.0, 0.0, 1 / 3, 1.0]))
    assert torch.equal(foreground_iou(a, b), foreground_iou(b, a))


def test_scattered_specks_are_no_shape_and_generated_shapes_are_solid() -> None:
    """Broken images (specks of the right colour) must not read as "red <shape>"; every generated shape and its
    VAE round trip stays a solid object (the thresholds' margins, measured in the module docstring)."""
    g = torch.Generator().manual_seed(0)
    specks = torch.zeros(8, 32, 32, 3)
    specks[..., 0] = (torch.rand(8, 32, 32, generator=g) < 0.06).float()
    det = detect(specks)
    assert det.colours == ["red"] * 8 and det.shapes == ["unknown"] * 8 and not det.solid.any()
    batch = make_shapes(200, seed=9)
    assert bool(detect(batch.images).solid.all())
    import unsampling_lab as ul

    model = ul.load_model()
    round_trip = model.decode(model.encode(batch.images[:32]))
    assert bool(detect(round_trip).solid.all())
    one = torch.zeros(1, 32, 32, 3)
    one[0, 10:20, 10:20, 2] = 1.0  # a clean blue square beside a far speck: still a square
    one[0, 2, 2, 2] = 1.0
    assert detect(one).shapes == ["square"]
