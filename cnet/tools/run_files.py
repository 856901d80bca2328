"""A run's own files (results, per-detection records, config) and the ground truth it was scored on,
from its folder on this machine or from its MLflow artifacts: what ``cnet.tools.report``,
``cnet.tools.compare`` and the mispair figure read."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pycocotools.coco import COCO

# where a run keeps a file besides its artifact root: its Hydra folder, and cnet.test's "results/"
_SUBFOLDERS = (".hydra", "results")


def run_file(run: Mapping[str, Any], name: str, tmp: Path) -> Path | None:
    """``name`` of ``run`` (a ``search_runs`` record with ``run_id``, ``tracking_uri`` and, when it
    has one, ``tags.output_dir``): from the run's output folder (same machine), else from its
    artifacts; None when neither has it."""
    out_dir = run.get("tags.output_dir")
    if isinstance(out_dir, str):
        for local in [Path(out_dir) / name, *(Path(out_dir) / sub / name for sub in _SUBFOLDERS)]:
            if local.is_file():
                return local
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(run["tracking_uri"])
    for artifact in (name, f"results/{name}"):
        try:
            return Path(client.download_artifacts(run["run_id"], artifact, str(tmp)))
        except (MlflowException, OSError):
            continue
    return None


def run_record(run_id: str, tracking_uri: str) -> dict[str, Any]:
    """The record :func:`run_file` needs for an MLflow run id (ValueError, one line, if there is none)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        run = MlflowClient(tracking_uri).get_run(run_id)
    except MlflowException as err:
        first = (str(err).strip().splitlines() or [""])[0]
        raise ValueError(f"no MLflow run {run_id!r} in {tracking_uri} ({first})") from err
    record: dict[str, Any] = {"run_id": run.info.run_id, "tracking_uri": tracking_uri}
    if "output_dir" in run.data.tags:
        record["tags.output_dir"] = run.data.tags["output_dir"]
    return record


def split_ground_truth(config_file: Path, split: str) -> COCO:
    """The ground truth a run with config ``config_file`` scored its ``split`` on (``bbox``,
    ``crowd_bbox``; the matching-only ``oracle_*`` variants share their split's), rebuilt from that
    config (images need not exist). ValueError naming the split when the config has no such split."""
    from cnet.compose import build_val_sets, load_config  # Hydra and torch: only here

    val_sets = build_val_sets(load_config(config_file), check_images=False)
    name = split.removeprefix("oracle_")
    if name not in val_sets:
        raise ValueError(f"{config_file}: no evaluation split {name!r} (it has {sorted(val_sets)})")
    return val_sets[name].coco


def ground_truth_key(coco: COCO) -> tuple[tuple[Any, ...], ...]:
    """What makes two ground truths the same for a paired comparison: the images (id, file, size)
    and the objects (id, image, category, box, crowd)."""
    images = sorted((i["id"], i.get("file_name"), i.get("width"), i.get("height")) for i in coco.dataset["images"])
    anns = sorted(
        (x["id"], x["image_id"], x["category_id"], tuple(x["bbox"]), x.get("iscrowd", 0))
        for x in coco.dataset.get("annotations", [])
    )
    return tuple(images), tuple(anns)
