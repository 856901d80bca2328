"""The one module below ``train.py`` that composes and instantiates Hydra configs.

Tools and tests build what they need from here, so the set of components is spelled out once:
``PART_GROUPS`` lists the detector's pluggable parts (a new Hydra group of parts adds one name).
The configs are found through :mod:`cnet.resources`.
"""

from __future__ import annotations

import json
import os
import resource
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn
from hydra.errors import HydraException, InstantiationException
from hydra.experimental.callback import Callback
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from cnet.data.coco import CocoData, CocoDetection
from cnet.data.transforms import TestTransform
from cnet.detector import CornerDetector
from cnet.files import write_text_atomic
from cnet.init_from import InitFrom
from cnet.job import JobSpec
from cnet.model import Model, TestConfig, build_predictor, seed_everything
from cnet.resources import CONFIG_DIR
from cnet.run import Evaluation, Run
from cnet.schedule import ScheduleConfig
from cnet.tracking import flatten_params, resolve_tracking_uri, yaml_value
from cnet.trainer import TrainerConfig

Config = DictConfig  # the composed configuration, for type hints outside this module

# the detector's pluggable parts: one Hydra group, one cnet/<group> package each
PART_GROUPS = ("matching", "adaption", "mask_head")


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """``conf/config.yaml`` with command-line style ``overrides`` (as ``train.py`` would see it);
    inside a running Hydra app (``train.py``'s job) through that app's own config search path."""
    if GlobalHydra.instance().is_initialized():
        return compose("config", overrides=list(overrides))
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def group_options(group: str) -> list[str]:
    """The option names of a config group (its YAML files)."""
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def option_factory(group: str, name: str) -> Callable[..., Any]:
    """One option of a group on its own: its YAML instantiated, a factory (Hydra partial), e.g.
    ``option_factory("matching", "ae1d")(in_channels=256, num_classes=80)``."""
    return instantiate(OmegaConf.load(CONFIG_DIR / group / f"{name}.yaml"))


def build_parts(cfg: DictConfig) -> dict[str, Callable[..., Any]]:
    """Factories of the detector's parts, by group name (Hydra partials).

    A saved config from before a group existed (a run's ``.hydra/config.yaml``) lacks that group:
    it gets the group's default option, which is what such a run was trained without.
    """
    defaults: DictConfig | None = None
    parts = {}
    for group in PART_GROUPS:
        if group not in cfg:
            defaults = defaults if defaults is not None else compose_config()
            parts[group] = instantiate(defaults[group])
        else:
            parts[group] = instantiate(cfg[group])
    return parts


def build_model(cfg: DictConfig, num_classes: int, backbone: nn.Module | None = None) -> Model:
    """DETR's triple of ``cfg`` for ``num_classes`` classes: the detector (``cfg.backbone`` and the
    parts of ``PART_GROUPS``; ``backbone`` overrides ``cfg.backbone``), its criterion (``cfg.criterion``,
    called with the classes and ``model.parts``) and its predictor (``cfg.test``, and the test
    transform's ``pad_logical_or`` for scaled views). Training, ``cnet.test``/``cnet.predict`` and the tools
    all build their model here.

    Seeding (the one place that seeds the global RNGs): ``seed_everything(cfg.seed)`` right before the
    backbone is built and again right before the detector's heads (and mask head), so each
    component's initial weights depend on the seed only, not on what was built (or drew random
    numbers) before it: swapping the backbone leaves the heads' initial weights as they were, and the
    global RNG state after the call depends on the seed and the heads only. (Those are the weights
    train.py's seed-then-build and Run's second seed before the heads gave; nothing else in
    assembly draws from the global RNGs: data augmentation and sampling use their own generators.)
    """
    seed = int(cfg.seed)
    seed_everything(seed)
    net = backbone if backbone is not None else instantiate(cfg.backbone)
    seed_everything(seed)
    detector = CornerDetector(net, num_classes, **cast(dict[str, Any], build_parts(cfg)))
    criterion = instantiate(cfg.criterion)(num_classes, detector.parts)
    transform = cast(TestTransform, instantiate(cfg.data.test_transform))
    predictor = build_predictor(detector, num_classes, to_dataclass(TestConfig, cfg.test), transform.pad_logical_or)
    return Model(detector, criterion, predictor)


def build_detector(cfg: DictConfig, num_classes: int, backbone: nn.Module | None = None) -> CornerDetector:
    """The detector of :func:`build_model` alone (tools and tests that need no loss or inference)."""
    return build_model(cfg, num_classes, backbone).model


def to_dataclass(cls: type, node: DictConfig) -> Any:
    """A typed settings object from a config node (unknown keys fail loudly)."""
    return cls(**OmegaConf.to_container(node, resolve=True))  # type: ignore[arg-type]


def build_run(cfg: DictConfig, out_dir: Path) -> Run:
    """Every object of one training job, from the composed config: the evaluation splits first (the
    model's classes are theirs), the model, then the run around it (which builds the training split)."""
    data = instantiate(cfg.data.source)
    val_sets = build_val_sets(cfg, source=data)
    num_classes = val_sets["bbox"].num_classes
    init = build_init(cfg, num_classes)  # before the model: its probes re-seed the global RNGs
    return Run(
        data=data,
        train_transform=instantiate(cfg.data.train_transform),
        val_sets=val_sets,
        model=build_model(cfg, num_classes),
        optimizer=instantiate(cfg.optim),
        schedule=to_dataclass(ScheduleConfig, cfg.schedule),
        trainer=to_dataclass(TrainerConfig, cfg.trainer),
        out_dir=out_dir,
        seed=cfg.seed,
        device=cfg.device,
        init=init,
    )


def build_job(
    cfg: DictConfig, out_dir: Path, choices: dict[str, Any], overrides: Sequence[str], project_root: Path
) -> JobSpec:
    """The job around :func:`build_run` (tracking, naming, params) as plain values: ``choices`` are
    Hydra's group options (its own ``hydra/*`` left out), ``overrides`` the command line's."""
    choices = {k: str(v) for k, v in choices.items() if not k.startswith("hydra") and v}
    root = select(cfg, "data.root")  # the dataset's name: data.name, else its folder's, else the option
    data = str(select(cfg, "data.name") or (Path(str(root)).name if root else choices.get("data", "data")))
    resolved = cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True))
    # Hydra's own keys (``_target_``, ``_partial_``) say how a node is built, not what was trained
    # (the group's tag names the option): out of params, or they lead MLflow's compare view
    params = {k: v for k, v in flatten_params(resolved).items() if k.rsplit(".", 1)[-1] not in HYDRA_KEYS}
    params.pop("tracking.sweep_id")  # a time stamp of the launch: a tag, and may differ on resume
    params.pop("tracking.flush_timeout_min")  # how to wait for the store, not what was trained
    return JobSpec(
        out_dir=out_dir,
        device=str(cfg.device),
        tracking_uri=resolve_tracking_uri(cfg.tracking.uri, project_root),
        experiment=str(cfg.tracking.experiment),
        flush_s=60.0 * float(cfg.tracking.flush_timeout_min),
        sweep_id=str(cfg.tracking.sweep_id),
        epochs=int(cfg.schedule.epochs),
        seed=int(cfg.seed),
        data=data,
        choices=choices,
        overrides=list(overrides),
        name_overrides=name_overrides(cfg, overrides),
        params=params,
        config_yaml=OmegaConf.to_yaml(resolved),
    )


# Hydra's instantiation keys, left out of the tracked params
HYDRA_KEYS = ("_target_", "_partial_")
# overrides that change how a job is shown, stored or tracked, not what it trains: out of run names
DISPLAY_ONLY = ("hydra", "tracking", "trainer.progress", "trainer.checkpoint_every_min", "data.root")
# groups already in a run name's head (``centripetal-none-tiny-synthetic``)
NAMED_GROUPS = ("matching", "adaption", "backbone", "data")


def name_overrides(cfg: DictConfig, overrides: Sequence[str]) -> list[str]:
    """The command line's overrides that change the defaults, as ``leaf=value`` with the value as
    YAML writes it (``progress=false``, ``milestones=[1]``): what tells a job's run apart.

    A ``group=option`` counts when the option is not the group's default (``schedule=demo`` does not);
    a ``key=value`` when ``cfg``'s value differs from the one the same group options give without it
    (``trainer=gpu trainer.batch_size=6`` shows neither the batch size nor, if default, the trainer).
    Display-only keys (:data:`DISPLAY_ONLY`) and the groups of the name's head are left out.
    """
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    default_choices = _default_choices()
    groups = [o for o in parsed if "." not in o.key_or_group and (CONFIG_DIR / o.key_or_group).is_dir()]
    base = compose_config([str(o.input_line) for o in groups])
    shown: list[str] = []
    for ov in parsed:
        key = ov.key_or_group
        if key.startswith(DISPLAY_ONLY) or key in NAMED_GROUPS or ov.is_delete():
            continue
        if ov in groups:
            if default_choices.get(key) != str(ov.value()):
                shown.append(f"{key}={ov.value()}")
            continue
        value = OmegaConf.select(cfg, key, default=_MISSING)
        if value is _MISSING or value == OmegaConf.select(base, key, default=_MISSING):
            continue
        plain = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        shown.append(f"{key.rsplit('.', 1)[-1]}={yaml_value(plain)}")
    return shown


def _default_choices() -> dict[str, str]:
    """``conf/config.yaml``'s defaults list: group -> option."""
    defaults = cast(DictConfig, OmegaConf.load(CONFIG_DIR / "config.yaml")).defaults
    return {str(k): str(v) for entry in defaults if isinstance(entry, DictConfig) for k, v in entry.items()}


def build_init(cfg: DictConfig, num_classes: int) -> InitFrom | None:
    """``init_from`` / ``init_classes`` / ``init_strict`` as an :class:`~cnet.init_from.InitFrom`
    (None without ``init_from``; a saved config from before these keys has none)."""
    path = select(cfg, "init_from")
    if path is None or str(path) == "":
        return None
    classes, strict = str(select(cfg, "init_classes", "reset")), select(cfg, "init_strict", True)
    if not isinstance(strict, bool):
        raise ValueError(f"init_strict={strict}: use true or false")
    return InitFrom(Path(str(path)).expanduser(), classes, strict, class_layer_keys(cfg, num_classes))


def class_layer_keys(cfg: DictConfig, num_classes: int) -> frozenset[str]:
    """The state-dict keys of ``cfg``'s model whose first dimension is the class count: the tensors whose
    shape changes with one class more (two models built on the meta device: no memory, no weights)."""
    with torch.device("meta"):
        models = [build_model(cfg, n).model for n in (num_classes, num_classes + 1)]
    shapes = [{k: v.shape for k, v in m.state_dict().items()} for m in models]
    return frozenset(k for k, shape in shapes[0].items() if shapes[1].get(k, shape) != shape)


def build_evaluation(
    cfg: DictConfig, ann_file: Path | None = None, img_dir: Path | None = None, check_images: bool = True
) -> Evaluation:
    """The model and validation sets of ``cfg`` without its training data: the run's val split and
    extra splits, or one COCO annotation file ``ann_file`` with images in ``img_dir``.
    ``check_images=False``: the images need not exist (only the categories are used)."""
    if ann_file is not None:
        folder = img_dir if img_dir is not None else ann_file.parent
        transform = instantiate(cfg.data.test_transform)
        val_sets = {"bbox": CocoDetection(folder, ann_file, transform, check_images=check_images)}
    else:
        val_sets = build_val_sets(cfg, check_images)
    model = build_model(cfg, next(iter(val_sets.values())).num_classes)
    return Evaluation(val_sets, model, device=cfg.device, num_workers=int(cfg.trainer.num_workers))


def build_val_sets(
    cfg: DictConfig, check_images: bool = True, source: CocoData | None = None
) -> dict[str, CocoDetection]:
    """The run's evaluation splits by figure prefix: ``bbox`` (the val split of ``source``, default
    ``cfg.data.source``) and ``<name>_bbox`` per ``data.extra_val`` entry (e.g. ``crowd_bbox``), with
    the run's test transform."""
    transform = instantiate(cfg.data.test_transform)
    source = source if source is not None else instantiate(cfg.data.source)
    val_sets = {"bbox": source.val_dataset(transform, check_images)}
    for name, extra in cfg.data.extra_val.items():
        val_sets[f"{name}_bbox"] = instantiate(extra).val_dataset(transform, check_images)
    return val_sets


# what a bad config file or node raises (tools turn these into one-line errors)
CONFIG_ERRORS: tuple[type[Exception], ...] = (InstantiationException, OmegaConfBaseException, HydraException)


# old dotted key -> new dotted key (same parent): runs saved before a rename still load
RENAMED_KEYS = {"data.test_transform.pad_or": "data.test_transform.pad_logical_or"}


def load_config(path: Path) -> DictConfig:
    """A saved config (e.g. a run's ``.hydra/config.yaml``); keys renamed since it was saved read
    under their new names (:data:`RENAMED_KEYS`)."""
    cfg = OmegaConf.load(path)
    if not isinstance(cfg, DictConfig):
        raise ValueError(f"{path} holds a list, not a config mapping")
    for old, new in RENAMED_KEYS.items():
        parent, _, leaf = old.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if isinstance(node, DictConfig) and leaf in node:
            with open_dict(node):
                node[new.rpartition(".")[2]] = node.pop(leaf)
    return cfg


def instantiate_node(node: Any, **kwargs: Any) -> Any:
    """The object a config node's ``_target_`` describes."""
    return instantiate(node, **kwargs)


def select(cfg: DictConfig, key: str, default: Any = None) -> Any:
    """``cfg``'s value at the dotted ``key``, or ``default`` when absent."""
    return OmegaConf.select(cfg, key, default=default)


def apply_overrides(cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """A saved config with command-line style ``overrides`` applied (a copy; ``cfg`` is unchanged).

    ``group=option`` (e.g. ``test=multiscale``) replaces the node by ``conf/<group>/<option>.yaml``;
    ``key=value`` / ``+key=value`` set a value (lists as ``test.scales=[0.5,1]``). Errors name the override.
    """
    out = cast(DictConfig, OmegaConf.create(OmegaConf.to_container(cfg, resolve=False)))
    for ov in OverridesParser.create().parse_overrides(list(overrides)):
        key, value = ov.key_or_group, ov.value()
        option = CONFIG_DIR / key / f"{value}.yaml"
        if "." not in key and (CONFIG_DIR / key).is_dir():
            if not option.is_file():
                raise ValueError(f"override {ov.input_line}: no option {value!r} in group {key} ({group_options(key)})")
            out[key] = OmegaConf.load(option)
            continue
        if not ov.is_add() and OmegaConf.select(out, key, default=_MISSING) is _MISSING:
            raise ValueError(f"override {ov.input_line}: key {key} is not in the config (use +{key}=... to add it)")
        OmegaConf.update(out, key, value, merge=False, force_add=True)
    return out


_MISSING = object()


def to_plain(cfg: DictConfig, drop: Sequence[str] = ("tracking",)) -> dict[str, Any]:
    """The config as resolved plain dicts/lists, without the top-level nodes in ``drop`` (e.g. the
    ``tracking`` node, whose ``${now:}`` only resolves inside a Hydra job)."""
    kept = OmegaConf.masked_copy(cfg, [str(k) for k in cfg if k not in drop])
    return cast(dict[str, Any], OmegaConf.to_container(kept, resolve=True))


class SweepSummary(Callback):
    """At the end of a sweep: finished / failed / skipped jobs with their MLflow run ids and the
    failing jobs' error lines, read from each job folder's ``job_status.json`` (written by train.py).
    The sweep command exits with status 1 when a job failed."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        text = sweep_summary(Path(str(config.hydra.sweep.dir)))
        print(text, flush=True)
        if " failed" in text.splitlines()[0]:
            raise SystemExit(1)  # a failed job fails the sweep command, after every job ran


def sweep_summary(sweep_dir: Path) -> str:
    """The summary text of the jobs under ``sweep_dir`` (one line each, then the counts), and the link
    to the runs table of their experiment(s)."""
    rows: list[str] = []
    counts: dict[str, int] = {}
    links: dict[str, None] = {}
    for status_file in sorted(sweep_dir.glob("*/job_status.json"), key=lambda p: p.parent.name.zfill(8)):
        st = json.loads(status_file.read_text())
        counts[st["status"]] = counts.get(st["status"], 0) + 1
        line = f"  job {status_file.parent.name}: {st['status']:<8} run {st.get('run_id') or '-'}"
        rows.append(line + (f"  {st['error']}" if st.get("error") else ""))
        if st.get("runs_table"):
            links[st["runs_table"]] = None
    total = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items())) or "no job reported"
    return "\n".join([f"sweep {sweep_dir}: {total}", *rows, *(f"runs table: {url}" for url in links)])


class PeakMemory(Callback):
    """At the end of a job, in every process: its peak memory to ``<job dir>/peak_memory/rank<R>.json``.

    On a GPU ``torch.cuda.max_memory_allocated`` of the process's device (and the allocator's
    reserved peak), else the process's peak resident set size. Opt-in, e.g. for ``cnet.tools.gpu_check``:
    ``+hydra.callbacks.peak_memory._target_=cnet.compose.PeakMemory``.
    """

    def on_job_end(self, config: DictConfig, job_return: JobReturn | None = None, **kwargs: Any) -> None:
        rank = int(os.environ.get("RANK", "0"))
        body: dict[str, Any] = {"rank": rank, "local_rank": int(os.environ.get("LOCAL_RANK", "0"))}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            device = torch.cuda.current_device()
            body |= {
                "device": f"cuda:{device}",
                "source": "torch.cuda.max_memory_allocated",
                "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30,
                "peak_reserved_gib": torch.cuda.max_memory_reserved(device) / 2**30,
            }
        else:  # ru_maxrss: KiB on Linux
            peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
            body |= {"device": "cpu", "source": "resource.getrusage ru_maxrss", "peak_memory_gib": peak_rss}
        out_dir = Path(str(config.hydra.runtime.output_dir))
        write_text_atomic(out_dir / "peak_memory" / f"rank{rank}.json", json.dumps(body))
