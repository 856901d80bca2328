"""Convert mmdetection's CentripetalNet HG-104 weights to cnet and back.

    python -m cnet.convert mmdet2cnet IN.pth OUT.pt   # mmdetection checkpoint -> cnet checkpoint
    python -m cnet.convert cnet2mmdet IN.pt OUT.pth   # cnet checkpoint -> mmdetection state dict

The cnet model is ``backbone=hourglass104 matching=centripetal_mmdet adaption=cross_star`` with 80
classes (:data:`MODEL_OVERRIDES`); the key schema is mmdetection's
(``tests/data/mmdet_centripetalnet_hg104_state_dict.tsv``: 1152 tensors). Keys are renamed by rules
(:func:`mmdet_to_cnet_key`, :func:`cnet_to_mmdet_key`), tensors are not touched. The result is
checked against the composed model (built on the meta device: no memory for the weights): every key
present, none left over, every shape equal; a failure is one line naming the key. ``OUT.pt`` is a
cnet checkpoint (epoch 0, no optimizer) for ``cnet.test`` / ``cnet.predict``, e.g.
``python -m cnet.test OUT.pt backbone=hourglass104 matching=centripetal_mmdet adaption=cross_star
test=mmdet data=coco data.root=/data/coco`` (expected ≈ 44.8 box AP on val2017).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cnet.checkpoint import save_checkpoint
from cnet.compose import build_model, compose_config
from cnet.trainer import TrainState

PROG = "python -m cnet.convert"
MODEL_OVERRIDES = ("backbone=hourglass104", "matching=centripetal_mmdet", "adaption=cross_star")
NUM_CLASSES = 80

POOL = {"direction1_conv": "branch_1", "direction2_conv": "branch_2", "aftpool_conv": "merge",
        "conv1": "skip", "conv2": "out_conv"}  # fmt: skip
POOL_BACK = {v: k for k, v in POOL.items()}
CONV_BN = {"conv": "0", "bn": "1"}  # mmcv ConvModule -> nn.Sequential(conv, bn, ...)
HEAD_CONV = {"0": "0", "1": "2"}  # mmdet head branch (ConvModule, ConvModule) -> Sequential(conv, relu, conv)


class ConversionError(ValueError):
    """A key or shape that does not fit; the message names it."""


def _residual(key: str) -> str:
    """mmdet BasicBlock names -> cnet residual names (conv1/bn1 -> conv1.0/conv1.1, downsample -> skip)."""
    key = re.sub(r"\.conv([12])\.(weight|bias)$", r".conv\1.0.\2", key)
    key = re.sub(r"\.bn([12])\.(\w+)$", r".conv\1.1.\2", key)
    return key.replace(".downsample.", ".skip.")


def mmdet_to_cnet_key(key: str) -> str:
    """One mmdetection key -> the cnet key (raises ConversionError for a key of no known part)."""
    if key.startswith("backbone."):
        k = re.sub(r"^backbone\.stem\.0\.(conv|bn)\.", lambda m: f"backbone.stem.0.{CONV_BN[m[1]]}.", key)
        k = re.sub(r"^backbone\.stem\.1\.0\.", "backbone.stem.1.", k)
        k = re.sub(r"^backbone\.hourglass_modules\.", "backbone.hourglasses.", k)
        k = re.sub(
            r"^backbone\.conv1x1s\.(\d+)\.(conv|bn)\.", lambda m: f"backbone.inter_convs.{m[1]}.{CONV_BN[m[2]]}.", k
        )
        k = re.sub(
            r"^backbone\.(out_convs|remap_convs)\.(\d+)\.(conv|bn)\.",
            lambda m: f"backbone.{m[1]}.{m[2]}.{CONV_BN[m[3]]}.",
            k,
        )
        return _residual(k)
    rules: list[tuple[str, Callable[[re.Match[str]], str]]] = [
        (r"^bbox_head\.(tl|br)_pool\.(\d+)\.(\w+)\.(conv|bn)\.(\w+)$",
         lambda m: f"heads.{m[2]}.{m[1]}_pool.{POOL[m[3]]}.{CONV_BN[m[4]]}.{m[5]}"),
        (r"^bbox_head\.(tl|br)_(heat|off)\.(\d+)\.([01])\.conv\.(\w+)$",
         lambda m: f"heads.{m[3]}.{m[1]}_{m[2]}.{HEAD_CONV[m[4]]}.{m[5]}"),
        (r"^bbox_head\.(tl|br)_feat_adaption\.(\d+)\.weight$", lambda m: f"heads.{m[2]}.adaption.{m[1]}.weight"),
        (r"^bbox_head\.(tl|br)_dcn_offset\.(\d+)\.conv\.weight$",
         lambda m: f"heads.{m[2]}.adaption.{m[1]}.offset.weight"),
        (r"^bbox_head\.(tl|br)_guiding_shift\.(\d+)\.([01])\.conv\.(\w+)$",
         lambda m: f"heads.{m[2]}.adaption.{m[1]}.guiding.{HEAD_CONV[m[3]]}.{m[4]}"),
        (r"^bbox_head\.(tl|br)_centripetal_shift\.(\d+)\.([01])\.conv\.(\w+)$",
         lambda m: f"heads.{m[2]}.matching.{m[1]}_cs.{HEAD_CONV[m[3]]}.{m[4]}"),
    ]  # fmt: skip
    return _apply(key, rules, "mmdetection")


def cnet_to_mmdet_key(key: str) -> str:
    """One cnet key -> the mmdetection key (the inverse of :func:`mmdet_to_cnet_key`)."""
    conv_bn = {"0": "conv", "1": "bn"}
    head_conv = {"0": "0", "2": "1"}
    if key.startswith("backbone."):
        k = re.sub(r"\.conv([12])\.0\.(weight|bias)$", r".conv\1.\2", key)
        k = re.sub(r"\.conv([12])\.1\.(\w+)$", r".bn\1.\2", k).replace(".skip.", ".downsample.")
        k = re.sub(r"^backbone\.stem\.0\.([01])\.", lambda m: f"backbone.stem.0.{conv_bn[m[1]]}.", k)
        k = re.sub(r"^backbone\.stem\.1\.", "backbone.stem.1.0.", k)
        k = re.sub(r"^backbone\.hourglasses\.", "backbone.hourglass_modules.", k)
        k = re.sub(
            r"^backbone\.inter_convs\.(\d+)\.([01])\.", lambda m: f"backbone.conv1x1s.{m[1]}.{conv_bn[m[2]]}.", k
        )
        return re.sub(
            r"^backbone\.(out_convs|remap_convs)\.(\d+)\.([01])\.",
            lambda m: f"backbone.{m[1]}.{m[2]}.{conv_bn[m[3]]}.",
            k,
        )
    rules: list[tuple[str, Callable[[re.Match[str]], str]]] = [
        (r"^heads\.(\d+)\.(tl|br)_pool\.(\w+)\.([01])\.(\w+)$",
         lambda m: f"bbox_head.{m[2]}_pool.{m[1]}.{POOL_BACK[m[3]]}.{conv_bn[m[4]]}.{m[5]}"),
        (r"^heads\.(\d+)\.(tl|br)_(heat|off)\.([02])\.(\w+)$",
         lambda m: f"bbox_head.{m[2]}_{m[3]}.{m[1]}.{head_conv[m[4]]}.conv.{m[5]}"),
        (r"^heads\.(\d+)\.adaption\.(tl|br)\.weight$", lambda m: f"bbox_head.{m[2]}_feat_adaption.{m[1]}.weight"),
        (r"^heads\.(\d+)\.adaption\.(tl|br)\.offset\.weight$",
         lambda m: f"bbox_head.{m[2]}_dcn_offset.{m[1]}.conv.weight"),
        (r"^heads\.(\d+)\.adaption\.(tl|br)\.guiding\.([02])\.(\w+)$",
         lambda m: f"bbox_head.{m[2]}_guiding_shift.{m[1]}.{head_conv[m[3]]}.conv.{m[4]}"),
        (r"^heads\.(\d+)\.matching\.(tl|br)_cs\.([02])\.(\w+)$",
         lambda m: f"bbox_head.{m[2]}_centripetal_shift.{m[1]}.{head_conv[m[3]]}.conv.{m[4]}"),
    ]  # fmt: skip
    return _apply(key, rules, "cnet")


def _apply(key: str, rules: list[tuple[str, Callable[[re.Match[str]], str]]], what: str) -> str:
    for pattern, repl in rules:
        m = re.match(pattern, key)
        if m is not None:
            try:
                return repl(m)
            except KeyError:
                break
    raise ConversionError(f"{what} key {key!r} belongs to no known part of CentripetalNet HG-104")


def rename(state: Mapping[str, Tensor], rule: Callable[[str], str]) -> dict[str, Tensor]:
    """Every tensor under its new name; two keys landing on one name is an error."""
    out: dict[str, Tensor] = {}
    for key, tensor in state.items():
        new = rule(key)
        if new in out:
            raise ConversionError(f"keys map to the same name {new!r} (one of them: {key!r})")
        out[new] = tensor
    return out


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


def _load(path: Path) -> Any:
    if not path.is_file():
        raise ConversionError(f"input file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # any unpickling failure: one line naming the file
        raise ConversionError(f"cannot read {path}: {err}") from err


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the process exit code."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("direction", choices=("mmdet2cnet", "cnet2mmdet"))
    parser.add_argument("input", type=Path)
    parser.add_argument("output", type=Path)
    args = parser.parse_args(argv)
    try:
        raw = _load(args.input)
        if args.direction == "mmdet2cnet":
            state = raw.get("state_dict", raw) if isinstance(raw, dict) else raw
            ckpt = TrainState(epoch=0, step=0, model=mmdet2cnet(state), optimizer={}, scheduler={}, rng={})
            save_checkpoint(args.output, {**ckpt.__dict__, "source": str(args.input)})
        else:
            state = raw["model"] if isinstance(raw, dict) and "model" in raw else raw
            args.output.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"state_dict": cnet2mmdet(state), "meta": {"converted_from": str(args.input)}}, args.output)
    except ConversionError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    print(f"{args.input} -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
