"""Flip TTA end to end: hand-built maps for each view -> Predictor(test_views(flip=True)) -> image pixels.

The stand-in model recognises each batch entry by its pixels (plain or mirrored image i), so it
does not assume the predictor's batch layout, and writes the corner maps of the boxes that entry
shows. The answer is known without the code under test: every object comes back at its box in
original-image pixels (border removed), once at its score and once, as the mirrored view's
duplicate decayed by soft-NMS, at score * exp(-1 / sigma).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from cnet.matching.centripetal import Centripetal
from cnet.ops import mirror_boxes
from cnet.postprocess import PostProcess
from cnet.predictor import Predictor
from cnet.types import Detections, ImageMeta, Outputs
from cnet.views import test_views

IN_H, IN_W, OUT_H, OUT_W = 64, 80, 16, 20  # 4 input pixels per cell
LOGIT_OFF = -20.0  # background heat: sigmoid ~ 2e-9

# per image: border (top, left), original size (h, w), boxes in original pixels, labels, tl/br scores.
# tl and br scores are ordered differently so a pair's tl and br sit at different top-k ranks.
IMAGES = [
    dict(
        border=(7.0, 10.0),
        orig=(50, 60),
        boxes=[[4.0, 6.0, 20.0, 26.0], [30.0, 28.0, 52.0, 44.0]],
        labels=[0, 1],
        tl=[0.9, 0.8],
        br=[0.7, 0.95],
    ),
    dict(
        border=(4.0, 5.0),
        orig=(56, 70),
        boxes=[[40.0, 2.0, 66.0, 22.0]],
        labels=[1],
        tl=[0.85],
        br=[0.75],
    ),
]


def input_boxes(spec: dict) -> Tensor:
    top, left = spec["border"]
    return torch.tensor(spec["boxes"]) + torch.tensor([left, top, left, top])


def corner_maps(boxes: Tensor, labels: list[int], tl_p: list[float], br_p: list[float], heat: bool) -> dict:
    """Maps [1, C, H, W] of boxes (input pixels): peaks with the given scores, sub-cell offsets and
    log centripetal shifts (Eq. 1) at the corner cells. ``heat=False`` leaves the heatmaps flat."""
    level = {k: torch.full((1, 2, OUT_H, OUT_W), LOGIT_OFF) for k in ("tl_heat", "br_heat")}
    level |= {k: torch.zeros(1, 2, OUT_H, OUT_W) for k in ("tl_off", "br_off", "tl_cs", "br_cs")}
    for box, c, ps in zip(boxes / 4, labels, zip(tl_p, br_p)):  # map units
        ctr = (box[:2] + box[2:]) / 2
        for name, xy, shift, p in (("tl", box[:2], ctr - box[:2], ps[0]), ("br", box[2:], box[2:] - ctr, ps[1])):
            x, y = int(xy[0]), int(xy[1])
            if heat:
                level[f"{name}_heat"][0, c, y, x] = math.log(p / (1 - p))
            level[f"{name}_off"][0, :, y, x] = xy - xy.floor()
            level[f"{name}_cs"][0, :, y, x] = shift.log()
    return level


class MapModel(nn.Module):
    """``model(images) -> Outputs`` whose maps show the boxes each entry's pixels hold."""

    def __init__(self, images: Tensor, heat: bool = True) -> None:
        super().__init__()
        self.images, self.heat = images, heat

    def forward(self, x: Tensor) -> Outputs:
        levels = []
        for entry in x:
            i, flipped = next(
                (i, f)
                for i in range(len(self.images))
                for f in (False, True)
                if torch.equal(entry, self.images[i].flip(-1) if f else self.images[i])
            )
            spec = IMAGES[i]
            boxes = input_boxes(spec)
            boxes = mirror_boxes(boxes, IN_W) if flipped else boxes
            levels.append(corner_maps(boxes, spec["labels"], spec["tl"], spec["br"], self.heat))
        level = {k: torch.cat([lv[k] for lv in levels]) for k in levels[0]}
        return Outputs([level], (IN_H, IN_W))


def setup(flip: bool, oracle=None, heat: bool = True) -> tuple[Predictor, Tensor, list[ImageMeta]]:
    torch.manual_seed(0)
    images = torch.rand(len(IMAGES), 3, IN_H, IN_W)
    metas = [ImageMeta(i, s["orig"], (IN_H, IN_W), border=s["border"]) for i, s in enumerate(IMAGES)]
    matching = Centripetal(8, 2)  # the paper's rule: perfect centres -> score sqrt(s_tl * s_br)
    predictor = Predictor(MapModel(images, heat), PostProcess(matching, corner_topk=10), test_views(flip), oracle)
    return predictor, images, metas


def expected(spec: dict, flip: bool, sigma: float = 0.5) -> list[tuple[list[float], float, int]]:
    """(box in original pixels, score, label) of every detection scoring above 0.01."""
    out = []
    for box, label, s_tl, s_br in zip(spec["boxes"], spec["labels"], spec["tl"], spec["br"]):
        s = math.sqrt(s_tl * s_br)
        out.append((box, s, label))
        if flip:  # the mirrored view's copy, decayed by exp(-IoU^2 / sigma) with IoU = 1
            out.append((box, s * math.exp(-1 / sigma), label))
    return out


def check(dets: Detections, want: list[tuple[list[float], float, int]]) -> None:
    """The detections scoring above 0.01 are exactly ``want`` (equal scores in any order)."""
    keep = dets.scores > 0.01
    got = [(b.tolist(), float(s), int(c)) for b, s, c in zip(dets.boxes[keep], dets.scores[keep], dets.labels[keep])]
    assert len(got) == len(want), got
    key = lambda d: (-round(d[1], 3), d[0], d[2])  # noqa: E731
    for g, w in zip(sorted(got, key=key), sorted(want, key=key)):
        assert g[0] == pytest.approx(w[0], abs=1e-3) and g[1] == pytest.approx(w[1], rel=1e-4) and g[2] == w[2], (g, w)


@pytest.mark.parametrize("flip", [False, True], ids=["plain", "flip"])
def test_tta_returns_exact_boxes_in_image_pixels(flip):
    predictor, images, metas = setup(flip)
    dets = predictor(images, metas)[""]
    assert len(dets) == len(IMAGES)
    for d, spec in zip(dets, IMAGES):
        check(d, expected(spec, flip))


def test_predictor_needs_a_view():
    with pytest.raises(ValueError, match="view"):
        Predictor(nn.Identity(), PostProcess(Centripetal(8, 2)), [])
