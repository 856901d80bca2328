"""Instance-mask heads (the ``mask_head`` Hydra group): one module, one class, one YAML each."""

from cnet.mask_head.base import MaskHead, Propose

__all__ = ["MaskHead", "Propose"]
