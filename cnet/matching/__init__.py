"""Corner-matching strategies: one module, one class and one ``conf/matching`` YAML each."""

from cnet.matching.base import Matching

__all__ = ["Matching"]
