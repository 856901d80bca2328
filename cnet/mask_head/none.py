"""``mask_head=none``: the detector alone (no parameters, no proposals, no masks)."""

from __future__ import annotations

from cnet.mask_head.base import MaskHead


class NoMask(MaskHead):
    """No mask head: every hook of :class:`MaskHead` keeps its empty default."""
