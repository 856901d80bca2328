"""COCO evaluation: result conversion, COCOeval wrapper, result files and tables."""

from cnet.evaluation.coco_eval import (
    IOU_TYPES,
    METRIC_NAMES,
    check_results,
    detections_to_coco,
    evaluate_coco,
    format_table,
    write_results,
)

__all__ = [
    "IOU_TYPES",
    "METRIC_NAMES",
    "check_results",
    "detections_to_coco",
    "evaluate_coco",
    "format_table",
    "write_results",
]
