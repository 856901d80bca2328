"""Weights files are read without running code: mmdetection's checkpoints (2.x and 3.x meta) load,
a pickle that would run code is refused with one line naming it, and it does not run."""

from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from cnet.errors import UnsafeFileError
from cnet.mmdet_weights import COCO_CLASSES, HistoryBuffer, load_weights_file, mmdet_class_names, mmdet_state_dict
from tests.data.paths import find_coco_tiny


class RunsCode:
    """What a malicious checkpoint hides in its meta: unpickling it runs a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def evil_checkpoint(path: Path, marker: Path) -> Path:
    state = {"bbox_head.tl_heat.0.0.conv.weight": torch.zeros(2)}
    torch.save({"state_dict": state, "meta": {"CLASSES": ("person",), "hook": RunsCode(marker)}}, path)
    return path


def test_a_pickle_that_would_run_code_is_refused_and_does_not_run(tmp_path):
    marker = tmp_path / "ran"
    path = evil_checkpoint(tmp_path / "evil.pth", marker)
    with pytest.raises(UnsafeFileError) as err:
        load_weights_file(path)
    msg = str(err.value)
    assert f"{os.system.__module__}.system" in msg and str(path) in msg and "\n" not in msg
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the file is what it claims: read the unsafe way, it runs
    assert marker.exists()


def test_mmdetection_2_checkpoints_load_with_their_meta(tmp_path):
    meta = {"mmcv_version": "1.1.5", "time": "Tue Sep 15 20:48:04 2020", "CLASSES": COCO_CLASSES,
            "epoch": 210, "iter": 257_670, "config": "model = dict(type='CornerNet')", "hook_msgs": {}}  # fmt: skip
    weights = {"bbox_head.tl_heat.0.1.conv.bias": torch.arange(80.0)}
    torch.save({"meta": meta, "state_dict": weights}, tmp_path / "mmdet2.pth")
    raw = load_weights_file(tmp_path / "mmdet2.pth")
    assert raw["meta"]["epoch"] == 210
    assert torch.equal(mmdet_state_dict(raw)["bbox_head.tl_heat.0.1.conv.bias"], torch.arange(80.0))
    assert mmdet_class_names(raw, 80) == list(COCO_CLASSES)


def test_mmdetection_3_checkpoints_load_numpy_and_history_buffers_inertly(tmp_path, monkeypatch):
    # mmengine's HistoryBuffer, as its checkpoints pickle it (mmengine is not installed here)
    module = types.ModuleType("mmengine.logging.history_buffer")

    class Buffer:
        def __init__(self) -> None:
            self._log_history = np.array([1.5, 2.5])
            self.max_length = 1000

    Buffer.__module__, Buffer.__qualname__, Buffer.__name__ = module.__name__, "HistoryBuffer", "HistoryBuffer"
    module.HistoryBuffer = Buffer  # type: ignore[attr-defined]
    for name in ("mmengine", "mmengine.logging"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    meta = {"seed": np.int64(7), "lr": np.float64(0.1), "dataset_meta": {"classes": ("cat", "dog")},
            "message_hub": {"log_scalars": {"train/loss": Buffer()}}}  # fmt: skip
    torch.save({"meta": meta, "state_dict": {"backbone.stem.0.conv.weight": torch.ones(1)}}, tmp_path / "m3.pth")
    monkeypatch.delitem(sys.modules, module.__name__)  # reading needs no mmengine
    raw = load_weights_file(tmp_path / "m3.pth")
    buffer = raw["meta"]["message_hub"]["log_scalars"]["train/loss"]
    assert type(buffer) is HistoryBuffer and buffer.max_length == 1000
    assert np.array_equal(buffer._log_history, [1.5, 2.5]) and raw["meta"]["seed"] == 7
    assert mmdet_class_names(raw, 2) == ["cat", "dog"]


def test_class_names_fall_back_to_coco_only_for_80_rows():
    assert mmdet_class_names({"state_dict": {}}, 80) == list(COCO_CLASSES)
    assert mmdet_class_names({"state_dict": {}}, 4) is None


@pytest.mark.skipif(find_coco_tiny() is None, reason="coco_tiny not found (../shared/data/coco_tiny)")
def test_coco_classes_are_the_annotation_files_categories_in_id_order():
    data = json.loads((find_coco_tiny() / "val2017" / "annotations.json").read_text())  # type: ignore[operator]
    assert tuple(c["name"] for c in sorted(data["categories"], key=lambda c: c["id"])) == COCO_CLASSES


def test_a_file_that_is_no_torch_file_is_one_line(tmp_path):
    (tmp_path / "x.pth").write_bytes(b"<html>not found</html>")
    with pytest.raises(ValueError, match=r"cannot read .*x\.pth as a torch weights file") as err:
        load_weights_file(tmp_path / "x.pth")
    assert "\n" not in str(err.value)
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        load_weights_file(tmp_path / "missing.pth")
