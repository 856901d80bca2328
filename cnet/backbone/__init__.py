"""Backbones: feature extractors returning a list of stride-4 maps (one per stack)."""

from cnet.backbone.hourglass import HourglassNet

__all__ = ["HourglassNet"]
