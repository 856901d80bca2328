"""mmdetection <-> cnet weights for CentripetalNet HG-104, on a state dict built from mmdetection's
schema (tests/data/mmdet_centripetalnet_hg104_state_dict.tsv: every key, shape and dtype of the
released checkpoint). Tensors are zeros (lazily allocated) tagged with their index, so every one is
traced through the conversion."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cnet.compose import build_detector, compose_config
from cnet.tools.convert import MODEL_OVERRIDES, cnet2mmdet, cnet_to_mmdet_key, mmdet2cnet, mmdet_to_cnet_key

SCHEMA = Path(__file__).parent / "data" / "mmdet_centripetalnet_hg104_state_dict.tsv"


def schema_state() -> dict[str, torch.Tensor]:
    state = {}
    for i, line in enumerate(SCHEMA.read_text().splitlines()):
        key, shape, dtype = line.split("\t")
        dims = [] if shape == "scalar" else [int(d) for d in shape.split("x")]
        t = torch.zeros(dims, dtype=getattr(torch, dtype))
        t.view(-1)[0] = i  # tag: which schema entry this tensor is
        state[key] = t
    return state


@pytest.fixture(scope="module")
def mmdet_state() -> dict[str, torch.Tensor]:
    return schema_state()


def test_schema_is_the_released_checkpoints(mmdet_state):
    assert len(mmdet_state) == 1152
    assert sum(t.numel() for k, t in mmdet_state.items() if t.is_floating_point() and "running" not in k) == 205_758_056


def test_converts_loads_strictly_uses_every_tensor_once_and_converts_back(mmdet_state):
    converted = mmdet2cnet(mmdet_state)
    # every tensor used exactly once: the same objects, none dropped, none duplicated
    assert len(converted) == len(mmdet_state)
    assert {id(t) for t in converted.values()} == {id(t) for t in mmdet_state.values()}
    with torch.device("meta"):
        model = build_detector(compose_config(list(MODEL_OVERRIDES)), 80)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in converted.items()} == expected  # key/shape lists agree
    result = model.load_state_dict(converted, strict=True, assign=True)
    assert not result.missing_keys and not result.unexpected_keys
    back = cnet2mmdet(converted)
    assert list(back) == list(mmdet_state)  # same keys, same order
    assert all(back[k] is mmdet_state[k] for k in back)  # identical tensors


def test_key_rules_are_inverse(mmdet_state):
    for key in mmdet_state:
        assert cnet_to_mmdet_key(mmdet_to_cnet_key(key)) == key
    assert mmdet_to_cnet_key("bbox_head.tl_heat.1.1.conv.bias") == "heads.1.tl_heat.2.bias"
    assert mmdet_to_cnet_key("backbone.stem.1.0.downsample.1.weight") == "backbone.stem.1.skip.1.weight"
    assert mmdet_to_cnet_key("bbox_head.br_dcn_offset.0.conv.weight") == "heads.0.adaption.br.offset.weight"


def test_a_foreign_key_or_shape_is_one_line(mmdet_state, tmp_path):
    with pytest.raises(ValueError, match=r"bbox_head\.mask_head"):
        mmdet2cnet({**mmdet_state, "bbox_head.mask_head.0.weight": torch.zeros(1)})
    bad = dict(mmdet_state)
    bad["bbox_head.tl_heat.1.1.conv.bias"] = torch.zeros(81)
    with pytest.raises(ValueError, match=r"heads.1.tl_heat.2.bias: shape \(81,\)"):
        mmdet2cnet(bad)
    res = subprocess.run(
        [sys.executable, "-m", "cnet.convert", "mmdet2cnet", str(tmp_path / "no.pth"), str(tmp_path / "o.pt")],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "no.pth" in res.stderr


def test_cli_writes_a_cnet_checkpoint_and_back(tmp_path, monkeypatch):
    import cnet.tools.convert as convert
    from cnet.trainer import TrainState

    monkeypatch.setattr(convert, "model_shapes", lambda: {"heads.0.tl_heat.0.weight": (2,)})  # a 1-tensor model
    torch.save({"state_dict": {"bbox_head.tl_heat.0.0.conv.weight": torch.arange(2.0)}, "meta": {}}, tmp_path / "a.pth")
    assert convert.main(["mmdet2cnet", str(tmp_path / "a.pth"), str(tmp_path / "b.pt")]) == 0
    state = TrainState.load(tmp_path / "b.pt")  # what cnet.tools.test / predict read
    assert torch.equal(state.model["heads.0.tl_heat.0.weight"], torch.arange(2.0))
    assert convert.main(["cnet2mmdet", str(tmp_path / "b.pt"), str(tmp_path / "c.pth")]) == 0
    back = torch.load(tmp_path / "c.pth")["state_dict"]
    assert list(back) == ["bbox_head.tl_heat.0.0.conv.weight"] and torch.equal(
        back[next(iter(back))], torch.arange(2.0)
    )


def test_cli_converts_a_schema_built_file_with_mmdetections_meta(tmp_path):
    """The released file's layout (1152 tensors, mmcv 1.x meta with CLASSES), its tensors on the meta
    device (no memory): read with weights_only, converted, checked, and saved with the class names."""
    import cnet.tools.convert as convert
    from cnet.mmdet_weights import COCO_CLASSES
    from cnet.trainer import TrainState

    state = {k: torch.empty(v.shape, dtype=v.dtype, device="meta") for k, v in schema_state().items()}
    meta = {"mmcv_version": "1.1.5", "time": "Tue Sep 15 20:48:04 2020", "CLASSES": COCO_CLASSES, "epoch": 210}
    torch.save({"meta": meta, "state_dict": state}, tmp_path / "hg104.pth")
    assert convert.main(["mmdet2cnet", str(tmp_path / "hg104.pth"), str(tmp_path / "hg104.pt")]) == 0
    out = TrainState.load(tmp_path / "hg104.pt")
    assert len(out.model) == 1152 and out.class_names == list(COCO_CLASSES)
    assert tuple(out.model["heads.1.tl_heat.2.bias"].shape) == (80,)


def test_cli_refuses_a_file_that_would_run_code_and_runs_none_of_it(tmp_path):
    from tests.test_mmdet_weights import evil_checkpoint

    marker = tmp_path / "ran"
    evil = evil_checkpoint(tmp_path / "evil.pth", marker)
    res = subprocess.run(
        [sys.executable, "-m", "cnet.convert", "mmdet2cnet", str(evil), str(tmp_path / "o.pt")],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "evil.pth was refused" in res.stderr and ".system" in res.stderr
    assert not marker.exists() and not (tmp_path / "o.pt").exists()
