"""COCO-format detection datasets: ``CocoDetection`` (one split) and the Hydra-facing ``CocoData``.

Annotations are read with pycocotools. Crowd annotations (``iscrowd=1``) never become targets (the
COCOeval scorer reads them from ``dataset.coco``); boxes with ``w < 1`` or ``h < 1`` are dropped.
Category ids (COCO: 1..90 with gaps) map to contiguous labels ``0..num_classes-1`` in sorted-id order.
With ``with_masks`` the kept annotations' segmentations (polygons or RLE) are decoded to bitmaps and
carried through the transform like the boxes (only a mask head needs them).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from pycocotools.coco import COCO
from torch import Tensor

from cnet.data.image_io import read_rgb
from cnet.data.synthetic import generate_synthetic
from cnet.masks import decode_segmentation
from cnet.types import GroundTruth, ImageMeta

# transform(image [H, W, 3] uint8 RGB, boxes [N, 4] float32 xyxy, labels [N] int64, rng[, masks=[N, H, W] bool])
Transform = Callable[..., tuple[Tensor, GroundTruth, ImageMeta]]


class CocoDetection(torch.utils.data.Dataset):
    """One COCO-format split.

    ``__getitem__(i)`` returns ``self.transform(image, boxes, labels, rng)`` with ``image_id`` filled
    in: (image [3, H, W] float32 normalized, GroundTruth in network-input pixels, ImageMeta). The
    transform sees boxes as ``[N, 4] float32 xyxy = [x, y, x + w, y + h]`` in image pixels and labels
    ``[N] int64`` contiguous. ``rng = np.random.default_rng([seed, epoch, index])`` makes the
    augmentation reproducible per (epoch, index) regardless of worker scheduling; call
    :meth:`set_epoch` before each epoch (before the DataLoader iterator is created).

    Attributes: ``coco`` (pycocotools COCO), ``ann_file``, ``img_dir``, ``cat_ids`` (sorted),
    ``label_to_cat_id`` (list: label -> COCO id), ``cat_id_to_label`` (dict), ``num_classes``,
    ``ids`` (image ids in dataset order), ``num_crowd`` / ``num_degenerate`` (dropped annotations),
    ``with_masks`` (settable: decode the kept annotations' masks and pass them to the transform as
    ``masks=[N, H, W] bool``; the GroundTruth then carries them).
    """

    def __init__(
        self,
        img_dir: str | Path,
        ann_file: str | Path,
        transform: Transform,
        filter_empty: bool = False,
        seed: int = 0,
        with_masks: bool = False,
    ) -> None:
        self.with_masks = bool(with_masks)
        self.img_dir = Path(img_dir).expanduser()
        self.ann_file = Path(ann_file).expanduser()
        if not self.ann_file.is_file():
            raise FileNotFoundError(
                f"annotation file {self.ann_file} not found; set data.root=/path/to/coco "
                f"(expects the annotation JSON {self.ann_file.name} under the configured layout)"
            )
        if not self.img_dir.is_dir():
            raise FileNotFoundError(
                f"image folder {self.img_dir} not found; set data.root=/path/to/coco "
                f"(expects the images in {self.img_dir.name}/ under the configured layout)"
            )
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            try:
                self.coco = COCO(str(self.ann_file))
            except (ValueError, KeyError, TypeError) as err:
                raise ValueError(f"cannot parse COCO annotation file {self.ann_file}: {err!r}") from err
        self.transform = transform
        self.seed = int(seed)
        self.epoch = 0
        self.cat_ids: list[int] = sorted(self.coco.getCatIds())
        self.label_to_cat_id: list[int] = list(self.cat_ids)
        self.cat_id_to_label: dict[int, int] = {c: i for i, c in enumerate(self.cat_ids)}
        self.num_classes = len(self.cat_ids)
        self.num_crowd = 0
        self.num_degenerate = 0
        self._targets: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._segms: dict[int, list[dict]] = {}  # the kept annotations, aligned with the boxes
        for img_id in sorted(self.coco.getImgIds()):
            self._targets[img_id] = self._load_targets(img_id)
        self.ids: list[int] = [i for i, (b, _) in self._targets.items() if len(b) or not filter_empty]

    def _load_targets(self, img_id: int) -> tuple[np.ndarray, np.ndarray]:
        """(boxes [N, 4] float32 xyxy, labels [N] int64) of the non-crowd, non-degenerate annotations."""
        boxes, labels = [], []
        kept = self._segms.setdefault(img_id, [])
        for ann in self.coco.imgToAnns.get(img_id, []):
            if ann.get("iscrowd", 0):
                self.num_crowd += 1
                continue
            x, y, w, h = ann["bbox"]
            if w < 1 or h < 1:
                self.num_degenerate += 1
                continue
            if ann["category_id"] not in self.cat_id_to_label:
                raise ValueError(
                    f"{self.ann_file}: annotation {ann.get('id')} has category_id "
                    f"{ann['category_id']} missing from 'categories'; fix the annotation file"
                )
            boxes.append([x, y, x + w, y + h])
            kept.append(ann)
            labels.append(self.cat_id_to_label[ann["category_id"]])
        return np.asarray(boxes, dtype=np.float32).reshape(-1, 4), np.asarray(labels, dtype=np.int64)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of ``epoch`` (rng seeded with [seed, epoch, index])."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.ids)

    def load_image(self, index: int) -> np.ndarray:
        """The image of dataset item ``index`` as [H, W, 3] uint8 RGB (see :func:`read_rgb`: stored pixel
        grid, EXIF orientation ignored); errors name the file."""
        info = self.coco.imgs[self.ids[index]]
        path = self.img_dir / info["file_name"]
        if not path.is_file():
            raise FileNotFoundError(f"image {path} (id {info['id']}) listed in {self.ann_file} is missing")
        return read_rgb(path)  # one-line OSError naming the file when unreadable

    def __getitem__(self, index: int) -> tuple[Tensor, GroundTruth, ImageMeta]:
        img_id = self.ids[index]
        boxes, labels = self._targets[img_id]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        image = self.load_image(index)
        if self.with_masks:
            masks = self.load_masks(img_id, image.shape[:2])
            image_t, target, meta = self.transform(image, boxes.copy(), labels.copy(), rng, masks=masks)
        else:
            image_t, target, meta = self.transform(image, boxes.copy(), labels.copy(), rng)
        return image_t, target, dataclasses.replace(meta, image_id=img_id)

    def load_masks(self, img_id: int, size: tuple[int, int]) -> np.ndarray:
        """bool [N, H, W]: the decoded segmentation of each kept annotation of ``img_id``."""
        h, w = size
        masks = []
        for ann in self._segms[img_id]:
            if "segmentation" not in ann:
                raise ValueError(
                    f"{self.ann_file}: annotation {ann.get('id')} has no 'segmentation'; a mask head needs one"
                )
            masks.append(decode_segmentation(ann["segmentation"], h, w))
        return np.stack(masks) if masks else np.zeros((0, h, w), dtype=bool)


class CocoData:
    """Train/val datasets of a COCO-format folder (Hydra-instantiated as ``data``).

    Paths are relative to ``root`` unless absolute, e.g. ``train_images=train2017``,
    ``train_ann=annotations/instances_train2017.json``.
    """

    def __init__(
        self,
        root: str,
        train_images: str,
        train_ann: str,
        val_images: str,
        val_ann: str,
        filter_empty_train: bool = True,
        seed: int = 0,
    ) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(f"data.root={root} does not exist; pass data.root=/path/to/coco")
        self.train_images, self.train_ann = self.root / train_images, self.root / train_ann
        self.val_images, self.val_ann = self.root / val_images, self.root / val_ann
        self.filter_empty_train = bool(filter_empty_train)
        self.seed = int(seed)
        layout = f"{train_images}/, {train_ann}, {val_images}/, {val_ann}"
        for path, is_dir in (
            (self.train_images, True),
            (self.train_ann, False),
            (self.val_images, True),
            (self.val_ann, False),
        ):
            if not (path.is_dir() if is_dir else path.is_file()):
                raise FileNotFoundError(f"{path} not found; set data.root=/path/to/coco (expects {layout} under it)")

    def train_dataset(self, transform: Transform) -> CocoDetection:
        """Training split; images without any usable box are dropped when ``filter_empty_train``."""
        return CocoDetection(self.train_images, self.train_ann, transform, self.filter_empty_train, self.seed)

    def val_dataset(self, transform: Transform) -> CocoDetection:
        """Validation split with every image kept (COCOeval needs them all)."""
        return CocoDetection(self.val_images, self.val_ann, transform, False, self.seed)


class SyntheticData(CocoData):
    """The synthetic shapes dataset (see :mod:`cnet.data.synthetic`), generated once into ``cache_dir``.

    ``val_split``: ``"val"`` (normal + ~20% look-alike crowd scenes) or ``"val_crowd"`` (look-alike
    crowd scenes only).
    """

    VAL_SPLITS = ("val", "val_crowd")

    def __init__(
        self,
        cache_dir: str,
        seed: int = 0,
        num_train: int = 400,
        num_val: int = 100,
        num_val_crowd: int = 50,
        image_size: int = 120,
        val_split: str = "val",
    ) -> None:
        if val_split not in self.VAL_SPLITS:
            raise ValueError(f"data.source.val_split={val_split!r} is not one of {list(self.VAL_SPLITS)}")
        self.val_split = val_split
        root = generate_synthetic(cache_dir, seed, num_train, num_val, num_val_crowd, image_size)
        super().__init__(
            str(root),
            "images",
            "instances_train.json",
            "images",
            f"instances_{val_split}.json",
            filter_empty_train=True,
            seed=seed,
        )
