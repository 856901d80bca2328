"""Corner-matching strategies: one module, one class and one ``conf/matching`` YAML each."""
from cnet.matching.base import Matching, gather_at

__all__ = ["Matching", "gather_at"]
