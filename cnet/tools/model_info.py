"""Parameter counts of the composed detector: `python -m cnet.tools.model_info [overrides...]`.

Composes the same Hydra config as train.py (e.g. ``backbone=hourglass104 matching=ae1d``) and
prints the total, the backbone's and the count used at inference (backbone + last stack's head:
earlier stacks' heads only serve intermediate supervision). No dataset is read: the number of
classes is ``num_classes`` (default 80, COCO).
"""

from __future__ import annotations

import argparse
import json

from torch import nn

from cnet.compose import build_model, compose_config
from cnet.detector import CornerDetector


def count(module: nn.Module) -> int:
    """Learnable parameters (BN running statistics are buffers and not counted)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def parameter_counts(model: CornerDetector) -> dict[str, int]:
    backbone = count(model.backbone)
    return {
        "total": count(model),
        "backbone": backbone,
        "head_per_level": count(model.heads[-1]),
        "inference": backbone + count(model.heads[-1]),
    }


def composed_detector(overrides: list[str], num_classes: int = 80) -> CornerDetector:
    """The detector ``train.py`` would build with ``overrides`` (no dataset: ``num_classes`` given)."""
    return build_model(compose_config(overrides), num_classes).model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. backbone=hourglass104")
    parser.add_argument("--num-classes", type=int, default=80)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    counts = parameter_counts(composed_detector(args.overrides, args.num_classes))
    if args.json:
        print(json.dumps(counts))
        return
    print(f"model: {' '.join(args.overrides) or '(defaults)'}, {args.num_classes} classes")
    for k, v in counts.items():
        print(f"  {k:<15} {v:>14,}")


if __name__ == "__main__":
    main()
