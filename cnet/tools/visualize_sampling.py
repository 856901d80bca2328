"""Draw where each run's feature adaption samples at its strongest corners (the paper's Fig. 7).

    python -m cnet.visualize_sampling RUN_DIR [RUN_DIR ...] [--image PATH] [--corners 3] [--out PNG]

Each RUN_DIR is a training output folder (``.hydra/config.yaml`` and ``checkpoints/last.pt``).
The model is rebuilt from the saved config, the image (default: the first image of the run's
validation set) is run through it, and the nine 3x3 sampling points of the run's adaption at its
top ``--corners`` top-left and bottom-right corners are drawn over the image, one panel per run.
The PNG (default ``<first RUN_DIR>/sampling_points.png``) is logged to each run's MLflow run
under ``figures/``. Bad input: one-line error on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from cnet.adaption.sampling import regular_locations, sampling_locations
from cnet.checkpoint import load_checkpoint
from cnet.compose import CONFIG_ERRORS, Config, build_model, instantiate_node, load_config, select
from cnet.errors import ResumeError
from cnet.ops import local_maxima, topk_cells
from cnet.types import Corners, Grid, ImageMeta, unpad_points

PROG = "python -m cnet.tools.visualize_sampling"
_HEAT_SUFFIX = ".tl_heat.2.weight"  # last conv of kp_layer: [num_classes, C, 1, 1]


class InputError(Exception):
    """Bad command-line input; the message is printed as the one-line error."""


@dataclass
class RunSampling:
    """What one panel shows: image [H, W, 3] uint8 and per-corner points in image pixels.

    tl_corner/br_corner: [K, 2] (x, y) decoded corner positions; tl_points/br_points: [K, 9, 2].
    """

    name: str
    image: np.ndarray
    tl_corner: np.ndarray
    br_corner: np.ndarray
    tl_points: np.ndarray
    br_points: np.ndarray
    run_id: str | None
    tracking_uri_cfg: str | None


def run_files(run_dir: Path) -> tuple[Path, Path]:
    """The saved config and checkpoint of ``run_dir``, or an InputError naming what is missing."""
    if not run_dir.is_dir():
        raise InputError(f"run dir not found: {run_dir}")
    config, ckpt = run_dir / ".hydra" / "config.yaml", run_dir / "checkpoints" / "last.pt"
    if not config.is_file():
        raise InputError(f"config not found: {config} (is {run_dir} a training output folder?)")
    if not ckpt.is_file():
        raise InputError(f"checkpoint not found: {ckpt}")
    return config, ckpt


def num_classes_of(state: dict[str, Tensor], ckpt: Path) -> int:
    """Heatmap channels, read from the shape of the first head's ``tl_heat`` output conv."""
    keys = sorted(k for k in state if k.endswith(_HEAT_SUFFIX))
    if not keys:
        raise InputError(f"checkpoint {ckpt} has no '*{_HEAT_SUFFIX}' weight; is it a CornerDetector?")
    return int(state[keys[0]].shape[0])


def load_model(cfg: Config, state: dict[str, Tensor], ckpt: Path) -> torch.nn.Module:
    """CornerDetector from the saved config's backbone/matching/adaption, with the saved weights."""
    model = build_model(cfg, num_classes_of(state, ckpt)).model
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise InputError(f"checkpoint {ckpt} does not fit the model of its config: {first}") from err
    return model.eval()


def load_input(cfg: Config, image_path: Path | None) -> tuple[Tensor, np.ndarray, ImageMeta]:
    """(network input [3, H', W'], display image [H, W, 3] uint8, meta) of the chosen image."""
    transform = instantiate_node(cfg.data.test_transform)
    if image_path is not None:
        if not image_path.is_file():
            raise InputError(f"image not found: {image_path}")
        try:
            with Image.open(image_path) as im:
                raw = np.array(im.convert("RGB"))
        except OSError as err:
            raise InputError(f"cannot read image {image_path}: {err}") from err
        image, _, meta = transform(raw, np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
        return image, raw, meta
    dataset = instantiate_node(cfg.data.source).val_dataset(transform)
    if len(dataset) == 0:
        raise InputError("the run's validation set is empty; pass --image")
    image, _, meta = dataset[0]
    return image, dataset.load_image(0), meta


def adaption_name(cfg: Config) -> str:
    """The option name: module of the adaption's ``_target_`` (one module per option)."""
    target = str(select(cfg, "adaption._target_", default="?"))
    parts = target.split(".")
    return parts[-2] if len(parts) >= 2 else target


def to_image_pixels(xy: Tensor, grid: Grid, meta: ImageMeta) -> np.ndarray:
    """Output-map (x, y) [..., 2] -> original-image pixels (grid ratio, minus the padding border)."""
    return unpad_points(xy * xy.new_tensor([grid.ratio_x, grid.ratio_y]), meta).cpu().numpy()


@torch.no_grad()
def corner_sampling(level: dict[str, Tensor], side: str, k: int) -> tuple[Tensor, Tensor]:
    """Top-k corners of one side of image 0: positions [K, 2] and sampling points [K, 9, 2]."""
    heat = level[f"{side}_heat"]
    corners = Corners(*topk_cells(local_maxima(heat.sigmoid()), level[f"{side}_off"], k))
    width = heat.shape[-1]
    key = f"{side}_dcn_offset"
    if key in level:
        points = sampling_locations(level[key], corners.inds, width)
    else:  # no deformable sampling: the plain 3x3 taps
        points = regular_locations(corners.inds, width)
    return torch.stack([corners.xs, corners.ys], dim=-1)[0], points[0]


def collect(run_dir: Path, image_path: Path | None, k: int) -> RunSampling:
    """Rebuild one run's model, run the image, and gather its corners' sampling points."""
    config, ckpt_path = run_files(run_dir)
    errors: tuple[type[Exception], ...] = (ResumeError, OSError, ValueError, *CONFIG_ERRORS)
    try:
        cfg = load_config(config)
        ckpt = load_checkpoint(ckpt_path)
        if "model" not in ckpt:
            raise InputError(f"checkpoint {ckpt_path} has no 'model' state")
        model = load_model(cfg, ckpt["model"], ckpt_path)
        image, raw, meta = load_input(cfg, image_path)
    except errors as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"{run_dir}: {first}") from err
    with torch.no_grad():
        out = model(image[None])
    level, grid = out.levels[-1], out.grid
    tl_xy, tl_pts = corner_sampling(level, "tl", k)
    br_xy, br_pts = corner_sampling(level, "br", k)
    return RunSampling(
        f"{adaption_name(cfg)} ({run_dir.name})",
        raw,
        to_image_pixels(tl_xy, grid, meta),
        to_image_pixels(br_xy, grid, meta),
        to_image_pixels(tl_pts, grid, meta),
        to_image_pixels(br_pts, grid, meta),
        ckpt.get("mlflow_run_id"),
        select(cfg, "tracking.uri"),
    )


def draw(panels: list[RunSampling], out: Path) -> None:
    """One panel per run: the image, each corner (cross) and its nine sampling points (dots)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.4), squeeze=False)
    for ax, p in zip(axes[0], panels):
        h, w = p.image.shape[:2]
        ax.imshow(p.image)
        for corner, points, color, label in (
            (p.tl_corner, p.tl_points, "tab:red", "top-left"),
            (p.br_corner, p.br_points, "tab:cyan", "bottom-right"),
        ):
            for i, (c, pts) in enumerate(zip(corner, points)):
                ax.scatter(
                    pts[:, 0],
                    pts[:, 1],
                    s=10,
                    c=color,
                    edgecolors="black",
                    linewidths=0.3,
                    label=f"{label} samples" if i == 0 else None,
                )
                ax.scatter([c[0]], [c[1]], s=60, c=color, marker="x", linewidths=1.5)
        ax.set_xlim(-0.5, w - 0.5)
        ax.set_ylim(h - 0.5, -0.5)
        ax.set_title(p.name, fontsize=9)
        ax.axis("off")
    axes[0][0].legend(loc="lower left", fontsize=7, framealpha=0.7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def log_figure(png: Path, panel: RunSampling, run_dir: Path) -> str | None:
    """Log ``png`` to the run's MLflow run under ``figures/``; returns an error message or None."""
    if panel.run_id is None:
        print(f"{run_dir}: checkpoint has no MLflow run id; figure not logged")
        return None
    from mlflow.tracking import MlflowClient

    from cnet.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(panel.tracking_uri_cfg)
    try:
        MlflowClient(tracking_uri=uri).log_artifact(panel.run_id, str(png), "figures")
    except Exception as err:  # MlflowException, a missing store, a read-only artifact folder...
        return f"cannot log {png} to MLflow run {panel.run_id} at {uri}: {str(err).splitlines()[0]}"
    print(f"{run_dir}: logged {png.name} to MLflow run {panel.run_id}")
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the process exit code."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR", help="training output folder(s)")
    parser.add_argument("--image", type=Path, default=None, help="image to run (default: first val image)")
    parser.add_argument("--corners", type=int, default=3, help="top corners drawn per side (default 3)")
    parser.add_argument("--out", type=Path, default=None, help="PNG path (default <first RUN_DIR>/sampling_points.png)")
    args = parser.parse_args(argv)
    try:
        if args.corners < 1:
            raise InputError(f"--corners must be >= 1, got {args.corners}")
        for run_dir in args.run_dirs:
            run_files(run_dir)  # fail on a bad folder before any model is built
        panels = [collect(d, args.image, args.corners) for d in args.run_dirs]
        out = args.out or args.run_dirs[0] / "sampling_points.png"
        draw(panels, out)
        print(f"wrote {out}")
        errors = [e for d, p in zip(args.run_dirs, panels) if (e := log_figure(out, p, d))]
        if errors:
            raise InputError("; ".join(errors))
    except InputError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
