"""Convert mmdetection's CentripetalNet HG-104 weights to cnet and back.

    python -m cnet.convert mmdet2cnet IN.pth OUT.pt   # mmdetection checkpoint -> cnet checkpoint
    python -m cnet.convert cnet2mmdet IN.pt OUT.pth   # cnet checkpoint -> mmdetection state dict

The cnet model is ``backbone=hourglass104 matching=centripetal_mmdet adaption=cross_star`` with 80
classes (:data:`MODEL_OVERRIDES`); the key schema is mmdetection's
(``tests/data/mmdet_centripetalnet_hg104_state_dict.tsv``: 1152 tensors). Keys are renamed by rules
(:func:`~cnet.mmdet_weights.mmdet_to_cnet_key`, :func:`~cnet.mmdet_weights.cnet_to_mmdet_key`), tensors
are not touched. The input is read with ``weights_only=True`` and the allow-list of
:func:`cnet.mmdet_weights.load_weights_file`: a file that needs anything else (code) is refused with
one line naming the object, and nothing in it runs. The result is
checked against the composed model (built on the meta device: no memory for the weights): every key
present, none left over, every shape equal; a failure is one line naming the key. ``OUT.pt`` is a
cnet checkpoint (epoch 0, no optimizer, the class names of the file's meta, else COCO's) for
``cnet.test`` / ``cnet.predict`` and ``train.py init_from=OUT.pt``, e.g.
``python -m cnet.test OUT.pt backbone=hourglass104 matching=centripetal_mmdet adaption=cross_star
test=mmdet data=coco data.root=/data/coco`` (expected ≈ 44.8 box AP on val2017).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor

from cnet.checkpoint import TrainState, save_checkpoint
from cnet.compose import build_model, compose_config
from cnet.mmdet_weights import (
    ConversionError,
    cnet_to_mmdet_key,
    load_weights_file,
    mmdet_class_names,
    mmdet_state_dict,
    mmdet_to_cnet_key,
    rename,
)

PROG = "python -m cnet.convert"
MODEL_OVERRIDES = ("backbone=hourglass104", "matching=centripetal_mmdet", "adaption=cross_star")
NUM_CLASSES = 80


def model_shapes() -> dict[str, tuple[int, ...]]:
    """Key -> shape of the cnet model of :data:`MODEL_OVERRIDES` (built on the meta device)."""
    with torch.device("meta"):
        model = build_model(compose_config(list(MODEL_OVERRIDES)), NUM_CLASSES).model
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_against_model(state: Mapping[str, Tensor], shapes: Mapping[str, tuple[int, ...]] | None = None) -> None:
    """``state`` has exactly the model's keys, each with the model's shape."""
    shapes = model_shapes() if shapes is None else shapes
    missing = [k for k in shapes if k not in state]
    unexpected = [k for k in state if k not in shapes]
    if missing or unexpected:
        raise ConversionError(
            f"{len(missing)} missing keys (first: {missing[:1]}), "
            f"{len(unexpected)} unexpected (first: {unexpected[:1]})"
        )
    for k, shape in shapes.items():
        if tuple(state[k].shape) != shape:
            raise ConversionError(f"{k}: shape {tuple(state[k].shape)} in the checkpoint, {shape} in the model")


def mmdet2cnet(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """mmdetection state dict -> cnet state dict, checked against the model."""
    out = rename(state, mmdet_to_cnet_key)
    check_against_model(out)
    return out


def cnet2mmdet(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """cnet state dict (checked against the model) -> mmdetection state dict."""
    check_against_model(state)
    return rename(state, cnet_to_mmdet_key)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the process exit code."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("direction", choices=("mmdet2cnet", "cnet2mmdet"))
    parser.add_argument("input", type=Path)
    parser.add_argument("output", type=Path)
    args = parser.parse_args(argv)
    try:
        raw = load_weights_file(args.input)  # weights_only: a file that names code is refused, never run
        if args.direction == "mmdet2cnet":
            state = mmdet_state_dict(raw) or (raw if isinstance(raw, dict) else None)
            if state is None:
                raise ConversionError(f"{args.input} holds a {type(raw).__name__}, not an mmdetection state_dict")
            names = mmdet_class_names(raw, NUM_CLASSES) or []
            ckpt = TrainState(0, 0, mmdet2cnet(state), {}, {}, {}, class_names=names)
            save_checkpoint(args.output, {**ckpt.__dict__, "source": str(args.input)})
        else:
            state = raw["model"] if isinstance(raw, dict) and "model" in raw else raw
            classes = raw.get("class_names") if isinstance(raw, dict) else None
            meta = {"converted_from": str(args.input)} | ({"CLASSES": tuple(classes)} if classes else {})
            args.output.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"state_dict": cnet2mmdet(state), "meta": meta}, args.output)
    except (ConversionError, FileNotFoundError, ValueError) as e:  # UnsafeFileError among them
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    print(f"{args.input} -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
