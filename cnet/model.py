"""The built model, DETR's triple: ``Model(model, criterion, predictor)``, and what it is built from.

``model(images) -> Outputs`` (the :class:`~cnet.detector.CornerDetector`), ``criterion(outputs,
targets) -> losses`` and ``predictor(images, metas) -> detections`` are built together, once, by
:func:`cnet.compose.build_model`; training (:class:`cnet.run.Run`), evaluation
(:class:`cnet.run.Evaluation`) and the tools receive them built. Here: the triple, the test-time
settings the predictor is built from (:class:`TestConfig`, ``conf/test``), :func:`build_predictor`
and :func:`seed_everything` (the global RNGs that weight initialisation draws from). No config objects.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch

from cnet.criterion import Criterion
from cnet.detector import CornerDetector
from cnet.oracle import CornerOracle
from cnet.postprocess import PostProcess
from cnet.predictor import Predictor
from cnet.views import test_views


class Model(NamedTuple):
    """The detector with its loss and its inference around it (one object graph: ``criterion`` and
    ``predictor`` hold the detector's parts and the detector itself)."""

    model: CornerDetector
    criterion: Criterion
    predictor: Predictor


@dataclass
class TestConfig:
    """``conf/test``: inference settings (see cnet.postprocess.PostProcess)."""

    __test__ = False  # not a pytest test class

    flip: bool = True
    scales: list[float] = field(default_factory=lambda: [1.0])  # multi-scale testing (with flip per scale)
    matching_only: bool = True
    corner_topk: int = 100
    num_dets: int = 1000
    max_per_image: int = 100
    nms_sigma: float = 0.5
    nms_min_score: float = 1e-3
    kernel: int = 3
    bootstrap: int = 1000  # image resamples for each evaluation's AP interval (bbox_AP_ci_low/high); 0: off

    def __post_init__(self) -> None:
        if self.bootstrap < 0:
            raise ValueError(f"test.bootstrap={self.bootstrap}: give a number of resamples >= 0 (0 turns it off)")


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (what ``nn.init`` draws from)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_predictor(model: CornerDetector, num_classes: int, test: TestConfig, pad_logical_or: int = 127) -> Predictor:
    """The post-processor and test-time views of ``test`` around ``model`` (``pad_logical_or``: the test
    transform's padding, which scaled views repeat)."""
    postprocess = PostProcess(
        model.matching, test.corner_topk, test.num_dets, test.max_per_image,
        test.nms_sigma, test.nms_min_score, test.kernel,
    )  # fmt: skip
    oracle = CornerOracle(num_classes) if test.matching_only else None
    views = test_views(test.flip, test.scales, pad_logical_or)
    return Predictor(model, postprocess, views, oracle, mask_head=model.mask_head, bootstrap=test.bootstrap)
