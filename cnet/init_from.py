"""``init_from=PATH``: start a training run from other weights (fine-tuning), with a load report.

It is not a resume: only the model's tensors come from the source; the optimizer, the schedule, the
epoch and the RNG states start fresh (and a job that finds its own checkpoint resumes that instead:
:class:`cnet.run.Run`). ``PATH`` is a cnet checkpoint (a run's ``checkpoints/last.pt``, ``cnet.convert``'s
output), a run folder (its ``checkpoints/last.pt``) or an mmdetection CentripetalNet ``.pth``, renamed
in memory by :mod:`cnet.mmdet_weights`'s rules. Every file is read with ``weights_only=True``
(:func:`cnet.mmdet_weights.load_weights_file`): nothing in it runs.

A model tensor is *loaded* when the source has its key with its shape; otherwise it keeps the
composed model's own initialisation (seeded by ``seed``, as a run from scratch) and is *missing*
(no such key) or *shape-mismatched*; source tensors the model has no key for are *unexpected*.
*Class layers* (``InitFrom.class_keys``: the tensors whose first dimension is the class count, e.g.
the heatmap convolutions ``heads.N.{tl,br}_heat.2.*`` ``[C, 256, 1, 1]`` / ``[C]``) are loaded as they
are when the source has the same classes (same count; same names when both sides name them).
Otherwise ``init_classes=reset`` leaves them as the model initialised them (the heatmap bias at the
focal-loss prior, -log((1 - 0.1) / 0.1) = -2.197: CornerNet's), and ``init_classes=by_name`` also
copies the rows of the classes whose names the source lists (its checkpoint's ``class_names``; for an
mmdetection file its meta's ``CLASSES``, else COCO's 80). The *share that fits* is (loaded + class
layers) / the model's tensors; below :data:`MIN_FIT_SHARE` (another backbone, other parts) the run
stops with one line saying so, unless ``init_strict=false``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cnet.checkpoint import previous_path
from cnet.errors import InitError
from cnet.mmdet_weights import (
    ConversionError,
    load_weights_file,
    mmdet_class_names,
    mmdet_state_dict,
    mmdet_to_cnet_key,
)

log = logging.getLogger(__name__)

CLASS_MODES = ("reset", "by_name")
MIN_FIT_SHARE = 0.5  # below: "mostly does not fit" (init_strict=true stops)
_MMDET_HEAT_BIAS = re.compile(r"^bbox_head\.tl_heat\.\d+\.1\.conv\.bias$")  # [C]: the class count


@dataclass(frozen=True)
class InitFrom:
    """What to start from (config keys ``init_from``, ``init_classes``, ``init_strict``).

    class_keys: the model's state-dict keys whose first dimension is the class count (found by
    :func:`cnet.compose.class_layer_keys`).
    """

    path: Path
    classes: str = "reset"
    strict: bool = True
    class_keys: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.classes not in CLASS_MODES:
            raise InitError(f"init_classes={self.classes}: use one of {', '.join(CLASS_MODES)}")


@dataclass
class Source:
    """Weights read from ``path``: ``state`` under cnet's key names; ``unmapped``: source keys with no
    cnet name (an mmdetection part cnet does not have); ``class_names``: the rows of its class layers."""

    path: Path
    kind: str  # "cnet checkpoint" | "cnet state dict" | "mmdetection checkpoint"
    state: dict[str, Tensor]
    class_names: list[str] | None
    unmapped: list[str] = field(default_factory=list)


@dataclass
class InitReport:
    """The outcome of loading a :class:`Source` into a model (keys are the model's, except ``unexpected``).

    mismatched: key -> (source shape, model shape). class_layers: the class layers the source has (with
    the model's trailing shape); class_mode: ``loaded`` (same classes), ``reset`` or ``by_name``;
    classes_copied: model class -> source class whose rows were copied (``by_name``).
    """

    source: str
    kind: str
    total: int
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: dict[str, tuple[list[int], list[int]]] = field(default_factory=dict)
    class_layers: list[str] = field(default_factory=list)
    class_mode: str = "loaded"
    classes_copied: dict[str, str] = field(default_factory=dict)
    num_classes: int = 0

    @property
    def share(self) -> float:
        """The share of the model's tensors that fit: loaded ones and class layers."""
        return (len(self.loaded) + len(self.class_layers)) / max(self.total, 1)

    def by_module(self) -> dict[str, dict[str, int]]:
        """Counts per module (``backbone.hourglasses``, ``heads.tl_heat``, ...: stack indices merged)."""
        rows: dict[str, dict[str, int]] = {}
        columns = {
            "loaded": self.loaded,
            "class": self.class_layers,
            "missing": self.missing,
            "mismatched": list(self.mismatched),
            "unexpected": self.unexpected,
        }
        for column, keys in columns.items():
            for key in keys:
                row = rows.setdefault(module_of(key), dict.fromkeys(columns, 0))
                row[column] += 1
        return dict(sorted(rows.items()))

    def summary(self) -> str:
        """One line: the source, the share that fits and the counts."""
        classes = {
            "loaded": "as in the source",
            "reset": "re-initialised",
            "by_name": f"{len(self.classes_copied)} of {self.num_classes} classes copied by name",
        }[self.class_mode]
        return (
            f"init_from {self.source} ({self.kind}): {self.share:.1%} of the model's {self.total} tensors fit: "
            f"{len(self.loaded)} loaded, {len(self.class_layers)} class layers ({classes}), "
            f"{len(self.missing)} missing, {len(self.mismatched)} shape-mismatched; "
            f"{len(self.unexpected)} unexpected in the source"
        )

    def table(self) -> str:
        """The summary line and one row per module."""
        head = f"  {'module':<28} {'loaded':>7} {'class':>6} {'missing':>8} {'mismatched':>11} {'unexpected':>11}"
        lines = [self.summary(), head]
        for module, c in self.by_module().items():
            lines.append(
                f"  {module:<28} {c['loaded']:>7} {c['class']:>6} {c['missing']:>8} "
                f"{c['mismatched']:>11} {c['unexpected']:>11}"
            )
        if self.classes_copied:
            lines.append("  classes copied: " + ", ".join(f"{k} <- {v}" for k, v in self.classes_copied.items()))
        return "\n".join(lines)

    def params(self) -> dict[str, str]:
        """MLflow params ``init_from.*`` (the config's ``init_from`` itself is the path)."""
        return {
            "init_from.kind": self.kind,
            "init_from.tensors": str(self.total),
            "init_from.loaded": str(len(self.loaded)),
            "init_from.class_layers": str(len(self.class_layers)),
            "init_from.missing": str(len(self.missing)),
            "init_from.shape_mismatched": str(len(self.mismatched)),
            "init_from.unexpected": str(len(self.unexpected)),
            "init_from.loaded_share": f"{self.share:.4f}",
            "init_from.class_mode": self.class_mode,
            "init_from.classes_copied": str(len(self.classes_copied)),
        }

    def to_json(self) -> str:
        """The whole report (``init_report.json`` artifact): counts per module and every key."""
        body: dict[str, Any] = {"summary": self.summary(), "share": self.share, "by_module": self.by_module()}
        return json.dumps(body | asdict(self), indent=1)


def module_of(key: str) -> str:
    """The report's module of a state-dict key: its first two named levels, indices dropped
    (``heads.1.tl_heat.2.bias`` -> ``heads.tl_heat``)."""
    names = [p for p in key.split(".")[:-1] if not p.isdigit()]
    return ".".join(names[:2]) or key


def checkpoint_file(path: Path) -> Path:
    """The file behind ``init_from=path``: the file itself, or a run folder's ``checkpoints/last.pt``
    (its ``last.prev.pt`` when only that one is there)."""
    if path.is_file():
        return path
    if path.is_dir():
        last = path / "checkpoints" / "last.pt"
        for candidate in (last, previous_path(last)):
            if candidate.is_file():
                return candidate
        raise InitError(f"init_from={path}: the run folder has no checkpoint checkpoints/last.pt")
    raise InitError(f"init_from={path}: no such checkpoint file or run folder")


def read_source(path: Path) -> Source:
    """The weights of a cnet checkpoint or run folder, a cnet state dict or an mmdetection ``.pth``."""
    file = checkpoint_file(Path(path))
    raw = load_weights_file(file)  # UnsafeFileError (one line) for a file that names code
    if isinstance(raw, Mapping) and isinstance(raw.get("model"), Mapping):  # a cnet TrainState
        names = raw.get("class_names")
        return Source(file, "cnet checkpoint", _tensors(raw["model"]), list(names) if names else None)
    mmdet = mmdet_state_dict(raw)
    if mmdet is not None:
        state: dict[str, Tensor] = {}
        unmapped: list[str] = []
        for key, tensor in _tensors(mmdet).items():
            try:
                state[mmdet_to_cnet_key(key)] = tensor
            except ConversionError:  # a part cnet does not have: reported as unexpected
                unmapped.append(key)
        rows = next((t.shape[0] for k, t in mmdet.items() if _MMDET_HEAT_BIAS.match(k)), None)
        return Source(file, "mmdetection checkpoint", state, mmdet_class_names(raw, rows), unmapped)
    if isinstance(raw, Mapping) and raw and all(isinstance(v, Tensor) for v in raw.values()):
        return Source(file, "cnet state dict", _tensors(raw), None)
    raise InitError(f"init_from={path}: {file} holds a {type(raw).__name__}, not model weights")


def _tensors(state: Mapping[str, Any]) -> dict[str, Tensor]:
    return {str(k): v for k, v in state.items() if isinstance(v, Tensor)}


def load_source(model: nn.Module, source: Source, init: InitFrom, class_names: Sequence[str]) -> InitReport:
    """Load what fits of ``source`` into ``model`` (in place) and report it; raises InitError before
    touching the model when too little fits (``init.strict``) or ``by_name`` cannot be honoured.

    ``class_names``: the model's classes in label order (the rows of its class layers).
    """
    target = model.state_dict()
    merged = dict(target)  # the model's own initialisation wherever the source does not fit
    report = InitReport(str(source.path), source.kind, len(target), num_classes=len(class_names))
    pairs = _class_rows(source, init, list(class_names), report)
    for key, tensor in target.items():
        src = source.state.get(key)
        if src is None:
            report.missing.append(key)
        elif key in init.class_keys and src.dim() == tensor.dim() and src.shape[1:] == tensor.shape[1:]:
            if report.class_mode == "loaded" and src.shape == tensor.shape:
                merged[key] = src
            elif report.class_mode == "by_name":
                rows = tensor.detach().clone()  # [C_model, ...]: unmatched classes keep their initialisation
                for i, j in pairs:
                    rows[i] = src[j]
                merged[key] = rows
            report.class_layers.append(key)
        elif src.shape == tensor.shape:
            merged[key] = src
            report.loaded.append(key)
        else:
            report.mismatched[key] = (list(src.shape), list(tensor.shape))
    report.unexpected = sorted([k for k in source.state if k not in target] + source.unmapped)
    if init.strict and report.share < MIN_FIT_SHARE:
        raise InitError(
            f"init_from={init.path}: only {report.share:.0%} of the model's {report.total} tensors fit "
            f"({len(report.loaded)} loaded; {len(report.missing)} missing, {len(report.mismatched)} of another "
            f"shape, {len(report.unexpected)} unexpected in the source): another backbone or other parts? "
            "Use the source's backbone/matching/adaption, or init_strict=false to load what fits"
        )
    with torch.no_grad():
        model.load_state_dict(merged)  # copies into the model's own tensors (its device, dtype, layout)
    return report


def _class_rows(source: Source, init: InitFrom, names: list[str], report: InitReport) -> list[tuple[int, int]]:
    """Set ``report.class_mode``; for ``by_name`` the (model row, source row) pairs of same-named classes."""
    rows = {src.shape[0] for k, src in source.state.items() if k in init.class_keys and src.dim() > 0}
    src_names = source.class_names if source.class_names and {len(source.class_names)} == rows else None
    same = rows <= {len(names)} and (src_names is None or src_names == names)
    if same:
        report.class_mode = "loaded"
        return []
    report.class_mode = init.classes
    if init.classes == "reset":
        return []
    if src_names is None:
        raise InitError(
            f"init_classes=by_name: {source.path} does not name its {sorted(rows)} classes "
            "(a checkpoint saved before cnet recorded class names?); use init_classes=reset"
        )
    index = {n: j for j, n in enumerate(src_names)}
    pairs = [(i, index[n]) for i, n in enumerate(names) if n in index]
    report.classes_copied = {names[i]: src_names[j] for i, j in pairs}
    return pairs


def init_weights(model: nn.Module, init: InitFrom, class_names: Sequence[str]) -> InitReport:
    """Read ``init.path``, load what fits into ``model`` and log the report (one row per module)."""
    report = load_source(model, read_source(init.path), init, class_names)
    log.info("%s", report.table())
    if report.share < MIN_FIT_SHARE:
        log.warning("init_from: only %.0f%% of the model's tensors fit (init_strict=false)", 100 * report.share)
    return report
