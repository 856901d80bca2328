"""Test-time views (cnet.views): each maps images and boxes into the view and back exactly."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from cnet.views import CORNERNET_SCALES, HFlip, Identity, Scale, test_views

SIZE = 255  # plain input, already |127


def image() -> Tensor:
    return torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


def test_views_mirror_boxes_and_invert_them():
    boxes = torch.tensor([[10.0, 5.0, 30.0, 25.0]])
    flip = HFlip()
    assert flip.apply_boxes(boxes, (64, 80)).tolist() == [[50.0, 5.0, 70.0, 25.0]]  # x' = W - x, x1 < x2
    assert flip.invert(torch.tensor([[50.0, 5.0, 70.0, 25.0]]), (64, 80)).tolist() == boxes.tolist()
    img = torch.arange(6.0).reshape(1, 1, 2, 3)
    assert flip.apply(img)[0, 0, 0].tolist() == [2.0, 1.0, 0.0]
    assert Identity().invert(boxes, (64, 80)) is boxes
    assert [type(v) for v in test_views(True)] == [Identity, HFlip]
    assert [type(v) for v in test_views(False)] == [Identity]


def test_mirrored_views_reverse_a_box_map_and_the_others_keep_it():
    maps = torch.arange(6.0).reshape(1, 2, 3)
    assert torch.equal(HFlip().invert_masks(maps), maps.flip(-1))
    assert torch.equal(Scale(0.5, 127, flip=True).invert_masks(maps), maps.flip(-1))
    assert Identity().invert_masks(maps) is maps and Scale(0.5, 127).invert_masks(maps) is maps


@pytest.mark.parametrize("scale", [0.5, 0.75, 1.25, 1.5, 0.6])
@pytest.mark.parametrize("flip", [False, True])
def test_scale_view_maps_boxes_and_back(scale, flip):
    view = Scale(scale, 127, flip)
    boxes = torch.tensor([[3.0, 5.0, 100.0, 200.0], [0.0, 0.0, 255.0, 255.0]])
    out = view.apply(image())
    assert tuple(out.shape[-2:]) == view.output_size((SIZE, SIZE))
    assert all(s % 128 == 127 for s in out.shape[-2:])  # padded as the test transform pads
    back = view.invert(view.apply_boxes(boxes, (SIZE, SIZE)), (SIZE, SIZE))
    torch.testing.assert_close(back, boxes, atol=1e-4, rtol=0)


@pytest.mark.parametrize("scale", [0.5, 0.75, 1.25, 1.5])
@pytest.mark.parametrize("flip", [False, True])
def test_scale_view_puts_a_box_where_its_pixels_go_on_a_non_square_input(scale, flip):
    """A 127 x 255 input (already |127, wider than tall) whose only bright pixels are the box
    x in [40, 120), y in [20, 60) (off-centre: a mirror moves it): in the view its pixels must lie
    where ``apply_boxes`` puts the box, found from the view's pixels alone (bilinear edges cross 0.5
    at the scaled edge; +-1 px for pixel rounding), and ``invert`` brings that found box back."""
    size = (127, 255)
    x = torch.zeros(1, 3, *size)
    x[..., 20:60, 40:120] = 1.0
    view = Scale(scale, 127, flip)
    out = view.apply(x)[0, 0]
    assert tuple(out.shape) == view.output_size(size)
    rows, cols = (out > 0.5).any(1).nonzero()[:, 0], (out > 0.5).any(0).nonzero()[:, 0]
    found = torch.tensor([[cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]], dtype=torch.float32)
    box = torch.tensor([[40.0, 20.0, 120.0, 60.0]])
    torch.testing.assert_close(view.apply_boxes(box, size), found, atol=1.0, rtol=0)
    torch.testing.assert_close(view.invert(found, size), box, atol=1.0 / scale, rtol=0)


def test_scale_one_view_is_the_plain_input():
    x = image()
    assert torch.equal(Scale(1.0, 127).apply(x), x) and torch.equal(Scale(1.0, 127, flip=True).apply(x), x.flip(-1))
    assert [type(v) for v in test_views(True, [1.0])] == [Identity, HFlip]
    assert [type(v) for v in test_views(False, CORNERNET_SCALES)] == [Scale, Scale, Identity, Scale, Scale]


def test_bad_scales_are_refused():
    with pytest.raises(ValueError, match="must be > 0"):
        Scale(0.0)
    with pytest.raises(ValueError, match=r"test\.scales is empty"):
        test_views(True, [])
