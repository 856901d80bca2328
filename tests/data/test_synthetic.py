"""The synthetic COCO-format generator: determinism, caching, scene content, pycocotools compatibility."""

from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path

import numpy as np
import pytest
from matplotlib.path import Path as MplPath
from PIL import Image
from pycocotools.coco import COCO

from cnet.data import synthetic
from cnet.data.synthetic import generate_synthetic

SMALL = dict(num_train=24, num_val=8, num_val_crowd=6, image_size=120)


@pytest.fixture(scope="module")
def small_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_synthetic(tmp_path_factory.mktemp("syn"), seed=3, **SMALL)


def _coco(path: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def _image(root: Path, coco: COCO, img_id: int) -> np.ndarray:
    return np.asarray(Image.open(root / "images" / coco.imgs[img_id]["file_name"])).astype(np.float32)


def _centres_inside(polygon: list[float], size: int) -> np.ndarray:
    """[size, size] bool: pixel centres (+1e-4, half-open pixels) inside the polygon, by matplotlib."""
    ys, xs = np.mgrid[:size, :size] + 0.5001
    path = MplPath(np.asarray(polygon).reshape(-1, 2))
    return path.contains_points(np.stack([xs.ravel(), ys.ravel()], 1)).reshape(size, size)


def _boxes_intersect(a: list[float], b: list[float]) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def test_same_seed_same_bytes_different_seed_differs(tmp_path: Path) -> None:
    tiny = dict(num_train=6, num_val=3, num_val_crowd=2, image_size=96)
    first = generate_synthetic(tmp_path / "a", seed=3, **tiny)
    again = generate_synthetic(tmp_path / "b", seed=3, **tiny)
    other = generate_synthetic(tmp_path / "c", seed=4, **tiny)
    assert again.name == first.name and other.name != first.name
    for split in ("train", "val", "val_crowd"):
        name = f"instances_{split}.json"
        assert (again / name).read_bytes() == (first / name).read_bytes()
        assert (other / name).read_bytes() != (first / name).read_bytes()
    assert (again / "images/train_00005.png").read_bytes() == (first / "images/train_00005.png").read_bytes()


def test_cache_is_reused_and_failures_leave_no_partial_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args, **kwargs):
        raise RuntimeError("interrupted")

    first = generate_synthetic(tmp_path, seed=1, num_train=3, num_val=2, num_val_crowd=2, image_size=64)
    monkeypatch.setattr(synthetic, "_generate_split", boom)
    assert generate_synthetic(tmp_path, seed=1, num_train=3, num_val=2, num_val_crowd=2, image_size=64) == first
    with pytest.raises(RuntimeError, match="interrupted"):
        generate_synthetic(tmp_path, seed=2, num_train=3, num_val=2, num_val_crowd=2, image_size=64)
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temp folder, no half cache


def test_coco_structure_and_noncontiguous_categories(small_root: Path) -> None:
    for split, num in (("train", 24), ("val", 8), ("val_crowd", 6)):
        coco = _coco(small_root / f"instances_{split}.json")
        assert sorted(coco.getCatIds()) == [2, 5, 9, 17]
        assert {c["name"] for c in coco.loadCats(coco.getCatIds())} == {"square", "disk", "triangle", "diamond"}
        assert len(coco.getImgIds()) == num
        num_lookalike = sum(im["scene"] == "lookalike_crowd" for im in coco.imgs.values())
        assert num_lookalike == (num if split == "val_crowd" else math.ceil(0.2 * num))
        assert len({a["id"] for a in coco.anns.values()}) == len(coco.anns) and min(coco.anns) >= 1
        for im in coco.imgs.values():
            assert Image.open(small_root / "images" / im["file_name"]).size == (120, 120)
            assert Image.open(small_root / "images" / im["file_name"]).mode == "RGB"
        for ann in coco.anns.values():
            if ann["iscrowd"]:
                continue
            poly = np.asarray(ann["segmentation"][0]).reshape(-1, 2)
            x0, y0 = poly.min(0)
            assert ann["bbox"] == pytest.approx([x0, y0, *(poly.max(0) - poly.min(0))], abs=0.011)
            assert x0 >= 0 and poly[:, 0].max() <= 120 and y0 >= 0 and poly[:, 1].max() <= 120
            rasterized = coco.annToMask(ann).sum()  # pycocotools' own rasterization of the polygon
            assert abs(rasterized - ann["area"]) <= 0.12 * ann["area"] + 8


def test_normal_scene_object_counts_and_sizes(small_root: Path) -> None:
    coco = _coco(small_root / "instances_train.json")
    normal = [i for i, im in coco.imgs.items() if im["scene"] == "normal"]
    assert normal
    for img_id in normal:
        anns = [a for a in coco.imgToAnns[img_id] if not a["iscrowd"]]
        assert 2 <= len(anns) <= 6
        for a in anns:
            assert 14 * 0.85 - 0.1 <= max(a["bbox"][2:]) <= 60 * 1.18 + 0.1


def test_painted_pixels_agree_with_polygon_and_bbox(small_root: Path) -> None:
    coco = _coco(small_root / "instances_train.json")
    checked = 0
    for img_id in coco.getImgIds():
        anns = coco.imgToAnns[img_id]
        pixels = _image(small_root, coco, img_id)
        references = {
            a["id"]: coco.annToMask(a).astype(bool)
            if a["iscrowd"]
            else _centres_inside(a["segmentation"][0], pixels.shape[0])
            for a in anns
        }
        everything = np.any(list(references.values()), axis=0)
        background = np.median(pixels[~everything], axis=0)
        foreground = np.linalg.norm(pixels - background, axis=-1) > 40
        for a in anns:
            if a["iscrowd"] or any(_boxes_intersect(a["bbox"], b["bbox"]) for b in anns if b is not a):
                continue  # isolated objects only: occluders would hide pixels
            x, y, w, h = a["bbox"]
            window = np.zeros_like(foreground)
            window[max(int(y) - 3, 0) : int(y + h) + 4, max(int(x) - 3, 0) : int(x + w) + 4] = True
            inside = references[a["id"]]
            painted = foreground & window & (inside | ~everything)  # a near neighbour is not ours
            assert (painted & inside).sum() / (painted | inside).sum() > 0.98
            mask = coco.annToMask(a).astype(bool)  # pycocotools rasterizes edges ~half a pixel differently
            assert (painted & mask).sum() / (painted | mask).sum() > 0.85
            ys, xs = np.nonzero(painted)
            painted_box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            ys, xs = np.nonzero(inside)
            assert np.array_equal(painted_box, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            # pixels are painted where their centre is inside the shape: a sharp vertex may
            # end up to ~2 px inside the bbox, never outside it
            bbox = np.array([x, y, x + w, y + h])
            assert np.all(np.abs(painted_box - bbox) <= 2.5)
            assert np.all(painted_box[:2] >= bbox[:2] - 1) and np.all(painted_box[2:] <= bbox[2:] + 1)
            checked += 1
    assert checked >= 20


def test_lookalike_crowd_scenes_are_one_class_same_colour_overlapping(small_root: Path) -> None:
    coco = _coco(small_root / "instances_val_crowd.json")
    for img_id, im in coco.imgs.items():
        assert im["scene"] == "lookalike_crowd"
        anns = [a for a in coco.imgToAnns[img_id] if not a["iscrowd"]]
        assert 6 <= len(anns) <= 12
        assert len({a["category_id"] for a in anns}) == 1
        sizes = np.array([a["bbox"][2:] for a in anns])
        assert np.ptp(sizes[:, 0]) <= 1.5 and np.ptp(sizes[:, 1]) <= 1.5
        for a in anns:  # packed: every object's box overlaps a neighbour's
            assert any(_boxes_intersect(a["bbox"], b["bbox"]) for b in anns if b is not a)
        pixels = _image(small_root, coco, img_id)
        masks = [coco.annToMask(a).astype(bool) for a in anns]
        colours = []
        for k, mask in enumerate(masks):
            own = mask.copy()
            own[1:-1, 1:-1] &= mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]  # drop the rim
            for j, other in enumerate(masks):
                if j != k:
                    own &= ~other
            if own.sum() >= 10:
                colours.append(np.median(pixels[own], axis=0))
        assert len(colours) >= len(anns) // 2
        assert np.ptp(np.array(colours), axis=0).max() <= 8  # one colour + pixel noise


def test_crowd_annotations_are_rle_readable_by_pycocotools(small_root: Path) -> None:
    coco = _coco(small_root / "instances_train.json")
    crowd = [a for a in coco.anns.values() if a["iscrowd"]]
    assert len(crowd) == math.ceil(0.05 * 24)
    for ann in crowd:
        seg = ann["segmentation"]
        assert isinstance(seg["counts"], list) and seg["size"] == [120, 120]
        assert sum(seg["counts"]) == 120 * 120
        mask = coco.annToMask(ann).astype(bool)
        assert mask.sum() == ann["area"] > 0
        ys, xs = np.nonzero(mask)
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
        pixels = _image(small_root, coco, ann["image_id"])
        x, y, w, h = (int(v) for v in ann["bbox"])
        ring = np.zeros_like(mask)
        ring[max(y - 6, 0) : y + h + 6, max(x - 6, 0) : x + w + 6] = True
        ring &= ~mask
        for other in coco.imgToAnns[ann["image_id"]]:
            ring &= ~coco.annToMask(other).astype(bool)
        # tiny shapes stand out from the background right around them
        assert np.linalg.norm(pixels[mask].mean(0) - np.median(pixels[ring], axis=0)) > 40


def test_params_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="image_size"):
        generate_synthetic(tmp_path, image_size=16)
    with pytest.raises(ValueError, match="num_train"):
        generate_synthetic(tmp_path, num_train=0)
    assert not list(tmp_path.iterdir())
