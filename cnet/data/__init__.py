"""Datasets, augmentation and collation (COCO format; the synthetic shapes set is COCO format too)."""

from cnet.data.coco import CocoData, CocoDetection, SyntheticData
from cnet.data.collate import collate
from cnet.data.synthetic import generate_synthetic
from cnet.data.transforms import TestTransform, TrainTransform
from cnet.types import unpad_boxes

__all__ = [
    "CocoData",
    "CocoDetection",
    "SyntheticData",
    "TestTransform",
    "TrainTransform",
    "collate",
    "generate_synthetic",
    "unpad_boxes",
]
