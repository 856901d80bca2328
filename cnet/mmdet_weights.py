"""mmdetection's CentripetalNet checkpoint files: read without running code, and their key names.

A downloaded ``.pth`` is a pickle; ``torch.load(..., weights_only=False)`` would run whatever code it
names. :func:`load_weights_file` reads any weights file with ``weights_only=True`` plus an allow-list
of the few plain objects mmdetection's checkpoints hold besides tensors (:data:`ALLOWED_GLOBALS`):
numpy scalars and arrays, and mmengine's ``HistoryBuffer`` (the logged statistics of an mmdetection
3.x ``message_hub``), read into an inert stand-in. A file that names anything else is refused with one
line naming the object; nothing in it runs.

The key rules map mmdetection's CentripetalNet HG-104 state dict (schema:
``tests/data/mmdet_centripetalnet_hg104_state_dict.tsv``, 1152 tensors) to cnet's model
``backbone=hourglass104 matching=centripetal_mmdet adaption=cross_star`` and back; tensors are not
touched. ``cnet.tools.convert`` (the CLI, which also checks the result against the model) and
``init_from`` (:mod:`cnet.init_from`) share them.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from cnet.errors import UnsafeFileError

# COCO 2017's 80 category names in category-id order: the rows of mmdetection's class layers
# (its CocoDataset.CLASSES) when a checkpoint's meta does not list them
COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip


class ConversionError(ValueError):
    """A key or shape that does not fit; the message names it."""


class HistoryBuffer:
    """Inert stand-in for ``mmengine.logging.history_buffer.HistoryBuffer`` (an mmdetection 3.x
    checkpoint's logged loss statistics): unpickling fills its ``__dict__`` and nothing else; cnet
    never reads it."""


def _numpy_globals() -> list[Any]:
    """numpy's array and scalar reconstructors under numpy 1.x and 2.x module names (a pickle names
    the module of the numpy that wrote it), and its dtypes (a dtype's state is set on an instance of
    its class, e.g. ``numpy.dtypes.Float64DType``)."""
    core = np._core if hasattr(np, "_core") else np.core  # numpy 2 moved numpy.core to numpy._core
    entries: list[Any] = [np.ndarray, np.dtype]
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        entries.append((core.multiarray.scalar, f"{module}.scalar"))
        entries.append((core.multiarray._reconstruct, f"{module}._reconstruct"))
    for name in ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                 "float16", "float32", "float64", "str_", "bytes_"):  # fmt: skip
        entries.append(type(np.dtype(name)))
    return entries


# what mmdetection's checkpoints hold besides tensors and plain containers (str, int, float, tuple,
# list, dict, OrderedDict: allowed by torch's weights-only reader anyway)
ALLOWED_GLOBALS: list[Any] = [*_numpy_globals(), (HistoryBuffer, "mmengine.logging.history_buffer.HistoryBuffer")]

# how torch's weights-only reader names what it refused: a global, a class to build, a function to call
_REFUSED = re.compile(r"GLOBAL (\S+)|got <class '([^']+)'>|unrecognized function (\S+)")


def load_weights_file(path: Path) -> Any:
    """The object pickled in ``path`` (a cnet checkpoint, an mmdetection ``.pth``), tensors on the CPU.

    Read with ``weights_only=True`` and :data:`ALLOWED_GLOBALS`: no code in the file runs. Raises
    ``FileNotFoundError`` for a missing file, :class:`~cnet.errors.UnsafeFileError` naming the object
    when the file needs one outside the allow-list, ``ValueError`` (one line) when it is no torch file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        with torch.serialization.safe_globals(ALLOWED_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = _REFUSED.search(str(err))
        if found is None:  # not a refusal: no pickle at all ("invalid load key"), a damaged one
            raise ValueError(f"cannot read {path} as a torch weights file ({_first_line(err)})") from None
        what = next(g for g in found.groups() if g)
        raise UnsafeFileError(
            f"{path} was refused: reading it needs {what}, which could run code (cnet reads tensors and the "
            "plain objects of mmdetection's checkpoints only); if you trust the file, re-save its tensors "
            "alone: torch.save({'state_dict': ckpt['state_dict']}, 'weights.pth')"
        ) from None
    except Exception as err:  # a truncated file, a zip that is no torch file, ...
        raise ValueError(f"cannot read {path} as a torch weights file ({_first_line(err)})") from err


def _first_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0]}"


def mmdet_state_dict(raw: Any) -> dict[str, Tensor] | None:
    """The model tensors of an mmdetection checkpoint (its ``state_dict``, or the file's dict itself when
    it holds mmdetection's keys), or None when ``raw`` is not one."""
    if isinstance(raw, Mapping) and isinstance(raw.get("state_dict"), Mapping):
        return dict(raw["state_dict"])
    if isinstance(raw, Mapping) and any(str(k).startswith(("bbox_head.", "backbone.hourglass_modules.")) for k in raw):
        return dict(raw)
    return None


def mmdet_class_names(raw: Any, num_rows: int | None) -> list[str] | None:
    """The class names of an mmdetection checkpoint, in the order of its class layers' rows:
    ``meta.CLASSES`` (mmdetection 2.x), ``meta.dataset_meta.classes`` (3.x), else COCO's 80 when the
    class layers have 80 rows (``num_rows``), else None."""
    meta = raw.get("meta") if isinstance(raw, Mapping) else None
    if isinstance(meta, Mapping):
        for names in (meta.get("CLASSES"), (meta.get("dataset_meta") or {}).get("classes")):
            if isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names):
                return list(names)
    return list(COCO_CLASSES) if num_rows == len(COCO_CLASSES) else None


POOL = {"direction1_conv": "branch_1", "direction2_conv": "branch_2", "aftpool_conv": "merge",
        "conv1": "skip", "conv2": "out_conv"}  # fmt: skip
POOL_BACK = {v: k for k, v in POOL.items()}
CONV_BN = {"conv": "0", "bn": "1"}  # mmcv ConvModule -> nn.Sequential(conv, bn, ...)
HEAD_CONV = {"0": "0", "1": "2"}  # mmdet head branch (ConvModule, ConvModule) -> Sequential(conv, relu, conv)


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
