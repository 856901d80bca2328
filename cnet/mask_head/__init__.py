"""Instance-mask heads (the ``mask_head`` Hydra group): one module, one class, one YAML each."""

from cnet.mask_head.base import Decoder, MaskHead

__all__ = ["Decoder", "MaskHead"]
