"""Predictor with a mask head: it asks every head for masks from its own forward passes; the plain
variant's detections carry them, the matching-only variant's never do."""

from __future__ import annotations

import functools

import torch
from test_oracle import targets
from test_predictor import IMAGES, setup

from cnet.adaption.none import NoAdaption
from cnet.backbone import HourglassNet
from cnet.detector import CornerDetector
from cnet.mask_head.centripetal_mask import CentripetalMask
from cnet.masks import decode_rle
from cnet.matching.centripetal import Centripetal
from cnet.oracle import CornerOracle
from cnet.postprocess import PostProcess
from cnet.predictor import Predictor
from cnet.types import ImageMeta
from cnet.views import test_views


class RecordingHead:
    """A stand-in mask head: one fake RLE per detection; records what the predictor hands it."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def segment(self, passes, input_size, detections, metas):
        self.calls.append((passes, input_size, detections, metas))
        return [[{"image": m.image_id, "n": k} for k in range(len(d.boxes))] for d, m in zip(detections, metas)]


def test_no_mask_head_leaves_every_detection_without_masks():
    predictor, images, metas = setup(flip=True)
    for det in predictor(images, metas)[""]:
        assert det.segmentations is None


def test_the_head_gets_the_forward_passes_and_masks_only_the_plain_variant():
    predictor, images, metas = setup(flip=True, oracle=CornerOracle(2), heat=False)
    head = predictor.mask_head = RecordingHead()
    out = predictor(images, metas, targets())
    ((passes, input_size, detections, seen_metas),) = head.calls
    assert input_size == tuple(images.shape[-2:]) and seen_metas == metas and detections is out[""]
    assert [len(p.views) for p in passes] == [2]  # identity and mirror: one forward pass
    assert passes[0].outputs.levels[-1]["tl_heat"].shape[0] == 2 * len(IMAGES)  # view-major batch
    for det, meta in zip(out[""], metas):
        assert det.segmentations == [{"image": meta.image_id, "n": k} for k in range(len(det.boxes))]
    assert all(det.segmentations is None for det in out["oracle_"])


def test_a_detector_with_a_mask_head_gives_each_detection_a_mask_of_its_image():
    torch.manual_seed(0)
    backbone = HourglassNet(num_stacks=1, stage_channels=(8, 8), stage_blocks=(1, 1), stem_channels=8, feat_channels=8)
    mask_head = functools.partial(CentripetalMask, start_epoch=0)
    model = CornerDetector(backbone, 2, Centripetal, NoAdaption, pool_channels=8, mask_head=mask_head).eval()
    postprocess = PostProcess(model.matching, max_per_image=10)
    predictor = Predictor(model, postprocess, test_views(True), mask_head=model.mask_head)
    meta = ImageMeta(3, (30, 40), (31, 47), border=(1.0, 4.0))
    (det,) = predictor(torch.randn(1, 3, 31, 47), [meta])[""]
    assert det.segmentations is not None and len(det.segmentations) == len(det.boxes) > 0
    assert decode_rle(det.segmentations, meta.orig_size).shape == (len(det.boxes), 30, 40)
