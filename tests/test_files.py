"""cnet.files: an atomic write replaces the whole file or leaves the old one untouched."""

from __future__ import annotations

import stat

import pytest

from cnet.files import write_text_atomic


def test_writes_creates_the_folder_and_replaces_in_place(tmp_path):
    path = write_text_atomic(tmp_path / "sub" / "r.json", "first")
    assert path == tmp_path / "sub" / "r.json" and path.read_text() == "first"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # readable by others, unlike mkstemp's files
    write_text_atomic(path, "second")
    assert path.read_text() == "second" and [p.name for p in path.parent.iterdir()] == ["r.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = write_text_atomic(tmp_path / "r.md", "old")
    with pytest.raises(TypeError):
        write_text_atomic(path, 123)  # type: ignore[arg-type]  # fails inside the write
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["r.md"]
