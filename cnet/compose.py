"""The one module below ``train.py`` that composes and instantiates Hydra configs.

Tools and tests build what they need from here, so the set of components is spelled out once:
``PART_GROUPS`` lists the detector's pluggable parts (a new Hydra group of parts adds one name).
The configs are found through :mod:`cnet.resources`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cnet.detector import CornerDetector
from cnet.resources import CONFIG_DIR
from cnet.run import Run, ScheduleConfig, TestConfig
from cnet.trainer import TrainerConfig

Config = DictConfig  # the composed configuration, for type hints outside this module

# the detector's pluggable parts: one Hydra group, one cnet/<group> package each
PART_GROUPS = ("matching", "adaption", "mask_head")


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """``conf/config.yaml`` with command-line style ``overrides`` (as ``train.py`` would see it)."""
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
    """Factories of the detector's parts, by group name (Hydra partials)."""
    return {group: instantiate(cfg[group]) for group in PART_GROUPS}


def build_detector(cfg: DictConfig, num_classes: int, backbone: Any = None) -> CornerDetector:
    """The detector of ``cfg`` for ``num_classes`` classes (``backbone`` overrides ``cfg.backbone``)."""
    return CornerDetector(
        backbone if backbone is not None else instantiate(cfg.backbone),
        num_classes,
        **cast(dict[str, Any], build_parts(cfg)),
    )


def to_dataclass(cls: type, node: DictConfig) -> Any:
    """A typed settings object from a config node (unknown keys fail loudly)."""
    return cls(**OmegaConf.to_container(node, resolve=True))  # type: ignore[arg-type]


def build_run(cfg: DictConfig, out_dir: Path) -> Run:
    """Every object of one training job, from the composed config."""
    return Run(
        data=instantiate(cfg.data.source),
        train_transform=instantiate(cfg.data.train_transform),
        test_transform=instantiate(cfg.data.test_transform),
        backbone=instantiate(cfg.backbone),
        parts=build_parts(cfg),
        optimizer=instantiate(cfg.optim),
        schedule=to_dataclass(ScheduleConfig, cfg.schedule),
        trainer=to_dataclass(TrainerConfig, cfg.trainer),
        test=to_dataclass(TestConfig, cfg.test),
        out_dir=out_dir,
        seed=cfg.seed,
        device=cfg.device,
        extra_val={name: instantiate(source) for name, source in cfg.data.extra_val.items()},
    )


# what a bad config file or node raises (tools turn these into one-line errors)
CONFIG_ERRORS: tuple[type[Exception], ...] = (InstantiationException, OmegaConfBaseException)


def load_config(path: Path) -> DictConfig:
    """A saved config (e.g. a run's ``.hydra/config.yaml``)."""
    cfg = OmegaConf.load(path)
    if not isinstance(cfg, DictConfig):
        raise ValueError(f"{path} holds a list, not a config mapping")
    return cfg


def instantiate_node(node: Any, **kwargs: Any) -> Any:
    """The object a config node's ``_target_`` describes."""
    return instantiate(node, **kwargs)


def select(cfg: DictConfig, key: str, default: Any = None) -> Any:
    """``cfg``'s value at the dotted ``key``, or ``default`` when absent."""
    return OmegaConf.select(cfg, key, default=default)
