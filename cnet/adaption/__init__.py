"""Feature-adaption modules (the ``adaption`` Hydra group): one module, one class, one YAML each."""

from cnet.adaption.base import Adaption

__all__ = ["Adaption"]
