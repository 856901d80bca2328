"""COCO-format detection datasets: ``CocoDetection`` (one split) and the Hydra-facing ``CocoData``.

The annotation JSON is read once, checked and cleaned by :mod:`cnet.data.validate`, then indexed by
pycocotools (``dataset.coco``, also the COCOeval ground truth). Bad data, in short (that module's
docstring has the full list; one log line per dataset gives the counts, ``dataset.counts`` holds them):

* one-line :class:`cnet.errors.DataError` naming the file, the item and the fix: malformed JSON;
  missing ``images`` / ``categories`` (and ``annotations`` for a training split) or a missing
  ``id`` / ``file_name`` / ``width`` / ``height`` / ``image_id`` / ``category_id`` / ``bbox``;
  duplicated image, category or annotation ids; a ``category_id`` not in ``categories``; a
  training split without a usable box; an image file that is not in the image folder;
* clipped (counted): boxes partly outside the image; dropped (counted): boxes wholly outside it,
  boxes with zero or negative width or height, annotations whose ``image_id`` is not in ``images``;
* not targets (counted, kept for COCOeval): crowd regions (``iscrowd=1``) and boxes with
  ``w < 1`` or ``h < 1``; images without objects stay in evaluation splits (their detections are
  false positives); an evaluation file without annotations only warns (its figures are -1).

Category ids (COCO: 1..90 with gaps; 0 is fine) map to contiguous labels ``0..num_classes-1`` in
sorted-id order.
With ``with_masks`` the kept annotations' segmentations (polygons or RLE) are decoded to bitmaps and
carried through the transform like the boxes (only a mask head needs them).
"""

from __future__ import annotations

import contextlib
import copy
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
from cnet.data.validate import check_image_files, load_annotation_file, log_counts, validate_coco
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
    ``class_names`` (the categories' names in label order),
    ``ids`` (image ids in dataset order), ``counts`` (:class:`cnet.data.validate.AnnotationCounts`:
    what was clipped, dropped or not used as a target), ``num_crowd`` / ``num_degenerate`` (its crowd
    and under-1-px counts),
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
        for_training: bool = False,
        check_images: bool = True,
    ) -> None:
        """``for_training``: a file without a usable box is an error (else a warning: evaluation
        splits may be image-info files). ``check_images``: every listed image file must exist (one
        directory listing; off where only the categories are needed)."""
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
        # read once, check, then index the cleaned dict (pycocotools would crash or silently
        # overwrite on bad input: KeyError tracebacks, duplicated ids)
        dataset, self.counts = validate_coco(load_annotation_file(self.ann_file), self.ann_file, for_training)
        log_counts(self.counts, self.ann_file)
        self.coco = COCO()
        self.coco.dataset = dataset
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            self.coco.createIndex()
        self.transform = transform
        self.seed = int(seed)
        self.epoch = 0
        self.cat_ids: list[int] = sorted(self.coco.getCatIds())
        self.label_to_cat_id: list[int] = list(self.cat_ids)
        self.cat_id_to_label: dict[int, int] = {c: i for i, c in enumerate(self.cat_ids)}
        self.num_classes = len(self.cat_ids)
        self.class_names: list[str] = [str(self.coco.cats[c].get("name", c)) for c in self.cat_ids]
        self.num_crowd = self.counts.crowd
        self.num_degenerate = self.counts.degenerate
        self._targets: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._segms: dict[int, list[dict]] = {}  # the kept annotations, aligned with the boxes
        for img_id in sorted(self.coco.getImgIds()):
            self._targets[img_id] = self._load_targets(img_id)
        self.ids: list[int] = [i for i, (b, _) in self._targets.items() if len(b) or not filter_empty]
        if check_images:  # now, not in the first batch: a missing file stops the run before it writes
            check_image_files([self.coco.imgs[i] for i in self.ids], self.img_dir, self.ann_file)

    def first(self, n: int) -> CocoDetection:
        """The split's first ``n`` images (dataset order) as a split of its own, whose COCO ground
        truth holds only them (COCOeval then scores the subset); the whole split when ``n`` is 0 or
        at least its size. Evaluations between epochs use it (``trainer.eval_subset``)."""
        if n <= 0 or n >= len(self.ids):
            return self
        sub = copy.copy(self)  # shares the decoded targets; only ids and the ground truth differ
        sub.ids = self.ids[:n]
        keep = set(sub.ids)
        full = self.coco.dataset
        sub.coco = COCO()
        sub.coco.dataset = {
            **full,
            "images": [im for im in full["images"] if im["id"] in keep],
            "annotations": [a for a in full["annotations"] if a["image_id"] in keep],
        }
        with contextlib.redirect_stdout(io.StringIO()):
            sub.coco.createIndex()
        return sub

    def _load_targets(self, img_id: int) -> tuple[np.ndarray, np.ndarray]:
        """(boxes [N, 4] float32 xyxy, labels [N] int64) of the non-crowd, non-degenerate annotations
        (validated: known category, inside the image, positive size)."""
        boxes, labels = [], []
        kept = self._segms.setdefault(img_id, [])
        for ann in self.coco.imgToAnns.get(img_id, []):
            x, y, w, h = ann["bbox"]
            if ann["iscrowd"] or w < 1 or h < 1:  # counted by validate_coco
                continue
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

    def train_dataset(self, transform: Transform, with_masks: bool = False) -> CocoDetection:
        """Training split; images without any usable box are dropped when ``filter_empty_train``.
        ``with_masks``: decode the instance masks too (the model has a mask head: ``model.uses_masks``)."""
        return CocoDetection(
            self.train_images, self.train_ann, transform, self.filter_empty_train, self.seed,
            with_masks=with_masks, for_training=True,
        )  # fmt: skip

    def val_dataset(self, transform: Transform, check_images: bool = True) -> CocoDetection:
        """Validation split with every image kept (COCOeval needs them all); ``check_images=False``
        when only its categories are needed."""
        return CocoDetection(self.val_images, self.val_ann, transform, False, self.seed, check_images=check_images)


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
