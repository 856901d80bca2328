"""Detect objects in image files: ``python -m cnet.predict CHECKPOINT IMAGES... --out DIR [overrides]``.

IMAGES are files or folders (a folder: its ``.jpg/.jpeg/.png/.bmp`` files in name order). The model
and test settings come from the checkpoint's run folder (``.hydra/config.yaml``; default config
otherwise) with the overrides, e.g. ``test.flip=false``; class names from that run's validation
annotations, or ``--ann FILE``. Writes to DIR one ``<stem>.png`` per image (boxes with class name and
score, those scoring at least ``--threshold``), ``results.json`` (COCO results, every detection) and
``images.json`` (``[{"id", "file_name"}]``). **Image ids are 1, 2, ... in the order the images are
listed** (folders expanded in name order), so a COCO annotation file with the same ids scores
``results.json`` with ``cnet.evaluate``. Bad input: one line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm import tqdm

from cnet.checkpoint import TrainState
from cnet.compose import build_evaluation, instantiate_node
from cnet.evaluation.coco_eval import detections_to_coco, write_results
from cnet.tools.test import ERRORS, InputError, resolve_source, source_config, write_json
from cnet.types import Detections

PROG = "python -m cnet.predict"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240)]


def list_images(paths: Sequence[Path]) -> list[Path]:
    """Files as given, folders expanded to their image files in name order."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            out.append(p)
        else:
            raise InputError(f"image file or folder not found: {p}")
    if not out:
        raise InputError(f"no images in {', '.join(map(str, paths))}")
    return out


def read_image(path: Path) -> np.ndarray:
    """[H, W, 3] uint8 RGB; an unreadable file is one line naming it."""
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))
    except (OSError, ValueError, SyntaxError) as err:
        raise InputError(f"cannot read image {path}: {err}") from err


def draw(image: np.ndarray, det: Detections, names: Sequence[str], threshold: float) -> Image.Image:
    """The image with its detections scoring >= ``threshold``: box, ``name score`` label."""
    im = Image.fromarray(image)
    pen = ImageDraw.Draw(im)
    for box, score, label in zip(det.boxes.tolist(), det.scores.tolist(), det.labels.tolist()):
        if score < threshold:
            continue
        colour = PALETTE[label % len(PALETTE)]
        pen.rectangle(box, outline=colour, width=2)
        text = f"{names[label]} {score:.2f}"
        x, y = box[0], max(box[1] - 11, 0)
        left, top, right, bottom = pen.textbbox((x, y), text)
        pen.rectangle((left - 1, top - 1, right + 1, bottom + 1), fill=colour)
        pen.text((x, y), text, fill=(255, 255, 255))
    return im


def run(args: argparse.Namespace) -> int:
    ckpt, run_dir = resolve_source(args.checkpoint)
    files = list_images(args.images)
    cfg = source_config(run_dir, [*args.overrides, "test.matching_only=false"])
    evaluation = build_evaluation(cfg, args.ann, check_images=False)  # only the class names are used
    evaluation.load(TrainState.load(ckpt), ckpt)
    dataset = next(iter(evaluation.val_sets.values()))
    names = dataset.class_names
    transform = instantiate_node(cfg.data.test_transform)
    predictor, device = evaluation.predictor, evaluation.device
    predictor.model.eval()
    dets: list[Detections] = []
    args.out.mkdir(parents=True, exist_ok=True)
    for path in tqdm(files, desc="predict", file=sys.stderr):
        image = read_image(path)
        tensor, _, meta = transform(image, np.zeros((0, 4), np.float32), np.zeros(0, np.int64), None)
        det = predictor(tensor[None].to(device), [meta])[""][0]
        det = Detections(det.boxes.cpu(), det.scores.cpu(), det.labels.cpu())
        dets.append(det)
        draw(image, det, names, args.threshold).save(args.out / f"{path.stem}.png")
    ids = list(range(1, len(files) + 1))
    write_results(args.out / "results.json", detections_to_coco(ids, dets, dataset.label_to_cat_id))
    write_json(args.out / "images.json", [{"id": i, "file_name": str(p)} for i, p in zip(ids, files)])
    print(f"{len(files)} images -> {args.out} (results.json: image ids 1..{len(files)} in listed order)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the process exit code."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="checkpoint file or run folder")
    parser.add_argument("images", type=Path, nargs="+", help="image files or folders")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--ann", type=Path, help="COCO file whose categories name the classes")
    parser.add_argument("--threshold", type=float, default=0.3, help="lowest score drawn (results keep all)")
    parser.add_argument("-o", "--override", dest="overrides", action="append", default=[], help="config override")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    try:
        return run(args)
    except ERRORS as e:
        print(f"{PROG}: error: {e}".splitlines()[0], file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
