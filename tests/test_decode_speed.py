"""The faster CPU local-maximum filter (channels-last pooling, ``where``) changes no value: it equals
CornerNet's ``heat * (max_pool2d(heat) == heat)`` bit for bit, and every matching strategy decodes the
same detections from fixed inputs with either."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import cnet.decode as decode
import cnet.matching.center_heatmap as center_heatmap
from cnet.compose import group_options
from cnet.ops import local_maxima
from cnet.postprocess import PostProcess
from cnet.tools.bench import random_outputs
from cnet.types import ImageMeta


def reference(heat: torch.Tensor, kernel: int = 3) -> torch.Tensor:
    return heat * (F.max_pool2d(heat, kernel, stride=1, padding=(kernel - 1) // 2) == heat)


@pytest.mark.parametrize("kernel", [3, 5])
def test_local_maxima_equals_the_reference_bit_for_bit(kernel):
    g = torch.Generator().manual_seed(0)
    heat = torch.randn(2, 7, 33, 40, generator=g).sigmoid()
    heat[0, 0, 5:8, 5:8] = 0.5  # plateaus: ties are kept, as by the reference
    heat[1, 3] = heat[1, 3].round(decimals=1)
    out = local_maxima(heat, kernel)
    assert torch.equal(out, reference(heat, kernel)) and out.is_contiguous()


@pytest.mark.parametrize("name", group_options("matching"))
def test_every_matching_decodes_identical_detections(name, monkeypatch):
    outputs, matching = random_outputs(name, 2, 32, 5, torch.device("cpu"))
    metas = [ImageMeta(0, outputs.input_size, outputs.input_size)] * 2
    pp = PostProcess(matching, corner_topk=30, num_dets=200, max_per_image=50)
    fast = pp(outputs, metas)
    monkeypatch.setattr(decode, "local_maxima", reference)
    monkeypatch.setattr(center_heatmap, "local_maxima", reference)
    slow = pp(outputs, metas)
    for a, b in zip(fast, slow):
        assert torch.equal(a.boxes, b.boxes) and torch.equal(a.scores, b.scores) and torch.equal(a.labels, b.labels)
