"""Atomic checkpoint writes, the previous checkpoint as a fallback, full disks, weights-only loading,
corrupt-file errors and RNG round trips."""

from __future__ import annotations

import errno
import os
import random

import numpy as np
import pytest
import torch

import cnet.checkpoint as ckpt
from cnet.checkpoint import checkpoint_exists, load_checkpoint, previous_path, save_checkpoint
from cnet.errors import ResumeError


def _state(value: float) -> dict:
    model = torch.nn.Linear(3, 2)
    torch.nn.init.constant_(model.weight, value)
    return {"model": model.state_dict(), "epoch": int(value), "rng": ckpt.rng_state(), "best": {"ap": 0.5}}


def test_save_load_round_trip(tmp_path):
    path = tmp_path / "sub" / "last.pt"  # parent folder does not exist yet
    state = _state(1.0)
    ckpt.save_checkpoint(path, state)
    loaded = ckpt.load_checkpoint(path)
    assert loaded["epoch"] == 1 and loaded["best"] == {"ap": 0.5}
    assert torch.equal(loaded["model"]["weight"], state["model"]["weight"])
    assert loaded["model"]["weight"].device.type == "cpu"
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temp file left


def test_interrupted_save_keeps_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    ckpt.save_checkpoint(path, _state(1.0))

    def partial_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip archive")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", partial_save)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(path, _state(2.0))
    monkeypatch.undo()

    loaded = ckpt.load_checkpoint(path)
    assert loaded["epoch"] == 1
    assert torch.all(loaded["model"]["weight"] == 1.0)
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_save_overwrites(tmp_path):
    path = tmp_path / "last.pt"
    ckpt.save_checkpoint(path, _state(1.0))
    ckpt.save_checkpoint(path, _state(3.0))
    assert ckpt.load_checkpoint(path)["epoch"] == 3


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04truncated"])
def test_corrupt_checkpoint_error_names_file(tmp_path, content):
    path = tmp_path / "broken.pt"
    path.write_bytes(content)
    with pytest.raises(RuntimeError, match=r"broken\.pt.*delete it"):
        ckpt.load_checkpoint(path)


def test_truncated_real_checkpoint_error(tmp_path):
    path = tmp_path / "cut.pt"
    ckpt.save_checkpoint(path, _state(1.0))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(RuntimeError, match=r"cut\.pt"):
        ckpt.load_checkpoint(path)


def test_missing_and_non_dict_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.pt"):
        ckpt.load_checkpoint(tmp_path / "nope.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(RuntimeError, match=r"list\.pt.*not a dict"):
        ckpt.load_checkpoint(tmp_path / "list.pt")


def _draws() -> tuple:
    """One draw from each global generator."""
    return (
        random.random(),
        np.random.rand(3).tolist(),
        torch.rand(3).tolist(),
        torch.randint(0, 1000, (2,)).tolist(),
    )


def test_rng_round_trip_through_checkpoint(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    _draws()  # advance away from the seeded state so restoring cannot just mean "re-seed"
    ckpt.save_checkpoint(tmp_path / "rng.pt", {"rng": ckpt.rng_state()})
    expected = _draws()
    _draws()
    ckpt.set_rng_state(ckpt.load_checkpoint(tmp_path / "rng.pt")["rng"])
    assert _draws() == expected


def test_set_rng_state_rejects_incomplete_state():
    with pytest.raises(ValueError, match="numpy"):
        ckpt.set_rng_state({"python": random.getstate(), "torch": torch.get_rng_state()})


def test_previous_checkpoint_is_kept_and_stands_in_for_a_corrupt_last(tmp_path, caplog):
    path = tmp_path / "ckpt" / "last.pt"
    save_checkpoint(path, {"epoch": 1})
    save_checkpoint(path, {"epoch": 2})
    assert load_checkpoint(path)["epoch"] == 2
    assert load_checkpoint(previous_path(path))["epoch"] == 1
    path.write_bytes(path.read_bytes()[:40])  # truncated by a crash of the storage, not by us
    with caplog.at_level("WARNING"):
        assert load_checkpoint(path)["epoch"] == 1
    assert "corrupt" in caplog.text and "previous checkpoint" in caplog.text
    path.unlink()  # killed between the two renames: only the previous one is left
    assert checkpoint_exists(path) and load_checkpoint(path)["epoch"] == 1


def test_full_disk_leaves_both_checkpoints_and_says_so(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"epoch": 1})
    save_checkpoint(path, {"epoch": 2})
    before = (path.read_bytes(), previous_path(path).read_bytes())

    def full_disk(obj, f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match=r"no space left to write checkpoint .*previous checkpoint is intact"):
        save_checkpoint(path, {"epoch": 3})
    assert (path.read_bytes(), previous_path(path).read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.prev.pt", "last.pt"]  # no temp file left


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_checkpoint_cannot_run_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    torch.save({"model": _RunsCode()}, path)
    with pytest.raises(ResumeError, match=r"evil\.pt"):
        load_checkpoint(path)
    assert not (tmp_path / "pwned").exists()
