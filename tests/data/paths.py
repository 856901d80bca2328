"""Where the tests find coco_tiny, the real-COCO subset kept beside the project (never inside it)."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def find_coco_tiny() -> Path | None:
    """``$CNET_COCO_TINY`` if set and a folder, else the first ``shared/data/coco_tiny`` above the
    repository (the main checkout's ``../shared`` or a worktree's), else None."""
    env = os.environ.get("CNET_COCO_TINY")
    candidates = [Path(env)] if env else []
    candidates += [parent / "shared/data/coco_tiny" for parent in ROOT.parents]
    return next((p for p in candidates if p.is_dir()), None)
