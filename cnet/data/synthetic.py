"""Deterministic COCO-format synthetic "shapes" dataset (a fast stand-in for COCO).

Each image is ``image_size x image_size`` RGB: a low-contrast noisy background with coloured convex
shapes whose class is the shape (square, disk, triangle, diamond) and whose hue is class-specific
plus jitter. Two scene types:

* ``normal``: 2-6 objects of random classes, sizes ~14-60 px (at 120 px; scaled with image_size),
  overlapping at most moderately.
* ``lookalike_crowd``: 6-12 objects of ONE class with the SAME colour and nearly the same size,
  packed in a jittered grid so neighbours partly overlap -- the failure case of associative
  embedding in the paper (Fig. 1 / Fig. 6).

Annotations are amodal: ``segmentation`` is the full polygon of each shape, ``bbox`` its tight box
``[x, y, w, h]`` and ``area`` the polygon area, in image pixels where pixel ``(row i, col j)`` covers
``[j, j+1) x [i, i+1)`` (the pycocotools convention); a pixel is painted iff its centre lies inside
the polygon (half-open: sampled at centre + 1e-4). Shapes are painted in random z-order, so a later
shape may hide part of an earlier one.
About 5% of the images also carry one ``iscrowd=1`` region of tiny shapes whose segmentation is an
uncompressed column-major RLE of exactly the visible tiny-shape pixels.
"""

from __future__ import annotations

import colorsys
import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

# Bump when the generated content changes, so stale caches are not reused.
GENERATOR_VERSION = 1
CATEGORIES: tuple[dict, ...] = (
    {"id": 2, "name": "square", "supercategory": "shape"},
    {"id": 5, "name": "disk", "supercategory": "shape"},
    {"id": 9, "name": "triangle", "supercategory": "shape"},
    {"id": 17, "name": "diamond", "supercategory": "shape"},
)
CLASS_HUES: tuple[float, ...] = (0.0, 120.0, 220.0, 50.0)  # degrees, in CATEGORIES order
SPLITS: dict[str, int] = {"train": 0, "val": 1, "val_crowd": 2}  # split name -> rng stream code
LOOKALIKE_FRACTION = 0.2
CROWD_ANN_FRACTION = 0.05
_IMAGE_ID_OFFSET = 1_000_000  # image ids: split_code * offset + k + 1, unique across splits


def generate_synthetic(
    cache_dir: str | Path,
    seed: int = 0,
    num_train: int = 400,
    num_val: int = 100,
    num_val_crowd: int = 50,
    image_size: int = 120,
) -> Path:
    """Generate (once) the synthetic dataset and return its folder.

    The folder ``<cache_dir>/synthetic-<hash of all params>/`` holds ``images/*.png`` and
    ``instances_{train,val,val_crowd}.json``. It is written to a temporary folder and renamed at
    the end, so an interrupted run never leaves a half cache; a later call with the same
    parameters returns the cached folder without regenerating. Same parameters -> byte-identical
    JSON.
    """
    if image_size < 48:
        raise ValueError(f"synthetic image_size={image_size} is too small; use image_size >= 48")
    if min(num_train, num_val, num_val_crowd) < 1:
        raise ValueError("synthetic num_train, num_val and num_val_crowd must all be >= 1")
    params = {
        "version": GENERATOR_VERSION,
        "seed": seed,
        "num_train": num_train,
        "num_val": num_val,
        "num_val_crowd": num_val_crowd,
        "image_size": image_size,
    }
    key = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    cache_dir = Path(cache_dir).expanduser()
    final = cache_dir / f"synthetic-{key}"
    if final.is_dir():
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".synthetic-{key}-", dir=cache_dir))
    try:
        (tmp / "images").mkdir()
        counts = {"train": num_train, "val": num_val, "val_crowd": num_val_crowd}
        for split, num in counts.items():
            dataset = _generate_split(tmp / "images", split, num, seed, image_size)
            (tmp / f"instances_{split}.json").write_text(json.dumps(dataset, separators=(",", ":")))
        (tmp / "params.json").write_text(json.dumps(params, indent=1, sort_keys=True))
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():  # a concurrent generator winning the race is fine
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _generate_split(image_dir: Path, split: str, num: int, seed: int, image_size: int) -> dict:
    """Render ``num`` scenes of one split into ``image_dir``; return the COCO dict."""
    code = SPLITS[split]
    plan = np.random.default_rng([seed, code, 0])
    num_lookalike = num if split == "val_crowd" else math.ceil(LOOKALIKE_FRACTION * num)
    lookalike = set(plan.permutation(num)[:num_lookalike].tolist())
    with_crowd = set(plan.permutation(num)[: math.ceil(CROWD_ANN_FRACTION * num)].tolist())
    images: list[dict] = []
    annotations: list[dict] = []
    for k in range(num):
        rng = np.random.default_rng([seed, code, 1, k])
        kind = "lookalike_crowd" if k in lookalike else "normal"
        pixels, anns = _render_scene(rng, kind, k in with_crowd, image_size)
        image_id = code * _IMAGE_ID_OFFSET + k + 1
        file_name = f"{split}_{k:05d}.png"
        Image.fromarray(pixels).save(image_dir / file_name, compress_level=1)
        images.append(
            {"id": image_id, "file_name": file_name, "height": image_size, "width": image_size, "scene": kind}
        )
        for ann in anns:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **ann})
    return {
        "info": {
            "description": f"cnet synthetic shapes, split {split}, seed {seed}",
            "version": str(GENERATOR_VERSION),
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [dict(c) for c in CATEGORIES],
    }


def _shape_polygon(cls: int, cx: float, cy: float, w: float, h: float) -> np.ndarray:
    """Vertices [V, 2] (x, y) of class ``cls`` centred at (cx, cy) with tight box w x h."""
    unit: list[tuple[float, float]] | np.ndarray
    if cls == 0:  # square
        unit = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
    elif cls == 1:  # disk: 24-gon whose vertices include the 4 extreme points
        angles = np.arange(24) * (2 * np.pi / 24)
        unit = np.stack([np.cos(angles), np.sin(angles)], 1)
    elif cls == 2:  # triangle pointing up
        unit = [(0, -1), (1, 1), (-1, 1)]
    else:  # diamond
        unit = [(0, -1), (1, 0), (0, 1), (-1, 0)]
    poly = np.asarray(unit, dtype=np.float64) * [w / 2, h / 2] + [cx, cy]
    return np.round(poly, 2)


def _rasterize(poly: np.ndarray, size: int) -> np.ndarray:
    """Bool mask [size, size]: pixel centres inside the convex polygon [V, 2].

    Centres are sampled at ``+1e-4`` so an edge through a row/column of centres (coordinates
    ending in .5) claims it on one side only, like the half-open pixel ``[j, j+1)``.
    """
    x0, y0 = np.floor(poly.min(0)).astype(int).clip(0, size)
    x1, y1 = np.ceil(poly.max(0)).astype(int).clip(0, size)
    px, py = np.meshgrid(np.arange(x0, x1) + 0.5001, np.arange(y0, y1) + 0.5001)
    edges = np.concatenate([poly[1:], poly[:1]]) - poly
    # cross(edge, p - v) has the sign of the polygon's orientation for every interior point
    cross = edges[:, 0, None, None] * (py - poly[:, 1, None, None]) - edges[:, 1, None, None] * (
        px - poly[:, 0, None, None]
    )
    orientation = np.sign(edges[0, 0] * edges[1, 1] - edges[0, 1] * edges[1, 0])  # convex: any turn
    mask = np.zeros((size, size), dtype=bool)
    mask[y0:y1, x0:x1] = np.all(cross * orientation > 0, axis=0)
    return mask


def _outline(mask: np.ndarray) -> np.ndarray:
    """Bool mask [H, W] of the pixels of ``mask`` that have a 4-neighbour outside it."""
    inner = mask.copy()
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def _polygon_area(poly: np.ndarray) -> float:
    """Shoelace area of a simple polygon [V, 2]."""
    nxt = np.concatenate([poly[1:], poly[:1]])
    return float(abs(np.dot(poly[:, 0], nxt[:, 1]) - np.dot(poly[:, 1], nxt[:, 0])) / 2)


def _rle_counts(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE counts of a bool mask [H, W]: column-major runs, zeros first."""
    flat = mask.reshape(-1, order="F").astype(np.int8)
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    runs = np.diff(bounds).tolist()
    return [0, *runs] if flat[0] else runs


def _object_colour(rng: np.random.Generator, cls: int, background: np.ndarray) -> np.ndarray:
    """RGB [3] in 0..255: the class hue with jitter, far enough from the background colour."""
    for _ in range(20):
        hue = (CLASS_HUES[cls] + rng.uniform(-10, 10)) % 360
        rgb = 255 * np.array(colorsys.hsv_to_rgb(hue / 360, rng.uniform(0.6, 0.9), rng.uniform(0.6, 0.95)))
        if np.linalg.norm(rgb - background) > 70:
            break
    return rgb


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection of two xyxy boxes divided by the smaller box's area."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return float(iw * ih / smaller)


def _normal_objects(rng: np.random.Generator, size: int, occupied: list[np.ndarray]) -> list[tuple]:
    """2-6 (cls, cx, cy, w, h) of random classes, each overlapping others by <= 30%."""
    scale = size / 120
    target = int(rng.integers(2, 7))
    objects: list[tuple] = []
    boxes = list(occupied)
    for _ in range(200):
        if len(objects) == target:
            break
        cls = int(rng.integers(4))
        side = rng.uniform(14, 60) * scale
        aspect = math.exp(rng.uniform(-0.16, 0.16))
        w, h = side * aspect, side / aspect
        cx, cy = rng.uniform(w / 2 + 1, size - w / 2 - 1), rng.uniform(h / 2 + 1, size - h / 2 - 1)
        box = np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
        if all(_overlap(box, other) <= 0.3 for other in boxes):
            objects.append((cls, cx, cy, w, h))
            boxes.append(box)
    return objects


def _lookalike_objects(rng: np.random.Generator, size: int, avoid: np.ndarray | None) -> list[tuple]:
    """6-12 (cls, cx, cy, w, h) of one class on a jittered grid whose pitch < object size."""
    scale = size / 120
    num = int(rng.integers(6, 13))
    cls = int(rng.integers(4))
    cols = math.ceil(math.sqrt(num))
    rows = math.ceil(num / cols)
    if rng.random() < 0.5:
        rows, cols = cols, rows
    pitch_frac = rng.uniform(0.72, 0.88)  # centre spacing / side: neighbours overlap by 12-28%
    fit = (size - 4) / (1 + (max(rows, cols) - 1) * pitch_frac + 0.2)
    side = rng.uniform(min(14 * scale, fit), min(36 * scale, fit))
    pitch = side * pitch_frac
    extent_w, extent_h = side + (cols - 1) * pitch, side + (rows - 1) * pitch
    jitter = 0.06 * side
    best, best_overlap = None, np.inf
    for _ in range(30):  # grid origin; keep away from the crowd region if there is one
        ox = rng.uniform(jitter + 1, size - extent_w - jitter - 1)
        oy = rng.uniform(jitter + 1, size - extent_h - jitter - 1)
        grid_box = np.array([ox, oy, ox + extent_w, oy + extent_h])
        overlap = 0.0 if avoid is None else _overlap(grid_box, avoid)
        if overlap < best_overlap:
            best, best_overlap = (ox, oy), overlap
        if overlap == 0.0:
            break
    assert best is not None  # the search above always keeps a placement
    cells = np.sort(rng.permutation(rows * cols)[:num])
    objects = []
    for cell in cells:
        r, c = divmod(int(cell), cols)
        w, h = side + rng.uniform(-0.5, 0.5), side + rng.uniform(-0.5, 0.5)  # nearly same size
        cx = best[0] + side / 2 + c * pitch + rng.uniform(-jitter, jitter)
        cy = best[1] + side / 2 + r * pitch + rng.uniform(-jitter, jitter)
        objects.append((cls, cx, cy, w, h))
    return objects


def _render_scene(rng: np.random.Generator, kind: str, with_crowd: bool, size: int) -> tuple[np.ndarray, list[dict]]:
    """Paint one scene; return (pixels uint8 [size, size, 3], annotations without ids)."""
    base = rng.uniform(95, 150) + rng.normal(0, 6, 3)  # grey with a slight tint
    ramp = np.linspace(-1, 1, size)
    gx, gy = rng.uniform(-8, 8, 2)
    canvas = 5 * rng.standard_normal((size, size, 3), dtype=np.float32)
    canvas += (base + gx * ramp[None, :, None] + gy * ramp[:, None, None]).astype(np.float32)

    crowd = None
    if with_crowd:  # a region of tiny unannotated shapes, painted first (under the objects)
        region = rng.uniform(18, 30) * size / 120
        rx, ry = rng.uniform(1, size - region - 1, 2)
        crowd_cls = int(rng.integers(4))
        colour = _object_colour(rng, crowd_cls, base)
        tiny = np.zeros((size, size), dtype=bool)
        for _ in range(int(rng.integers(4, 9))):
            t = rng.uniform(3, 5)
            tx, ty = rng.uniform(rx + t / 2, rx + region - t / 2), rng.uniform(ry + t / 2, ry + region - t / 2)
            tiny |= _rasterize(_shape_polygon(int(rng.integers(2)), tx, ty, t, t), size)
        canvas[tiny] = colour + rng.normal(0, 4, (int(tiny.sum()), 3))
        crowd = (crowd_cls, tiny, np.array([rx, ry, rx + region, ry + region]))

    if kind == "lookalike_crowd":
        objects = _lookalike_objects(rng, size, None if crowd is None else crowd[2])
        shared = _object_colour(rng, objects[0][0], base)
        colours = [shared] * len(objects)
        order = rng.permutation(len(objects))
    else:
        objects = _normal_objects(rng, size, [] if crowd is None else [crowd[2]])
        colours = [_object_colour(rng, o[0], base) for o in objects]
        order = np.arange(len(objects))  # already in random placement order

    anns, covered = [], np.zeros((size, size), dtype=bool)
    for i in order:
        cls, cx, cy, w, h = objects[i]
        poly = _shape_polygon(cls, cx, cy, w, h)
        mask = _rasterize(poly, size)
        canvas[mask] = colours[i] + rng.normal(0, 4, (int(mask.sum()), 3))
        canvas[_outline(mask)] = 0.7 * colours[i]  # a darker rim keeps same-colour neighbours separable
        covered |= mask
        (x0, y0), (x1, y1) = poly.min(0), poly.max(0)
        anns.append(
            {
                "category_id": CATEGORIES[cls]["id"],
                "bbox": [round(float(v), 2) for v in (x0, y0, x1 - x0, y1 - y0)],
                "area": round(_polygon_area(poly), 2),
                "segmentation": [[float(v) for v in poly.reshape(-1)]],
                "iscrowd": 0,
            }
        )
    if crowd is not None:
        visible = crowd[1] & ~covered
        if visible.sum() >= 4:
            ys, xs = np.nonzero(visible)
            bbox = [float(xs.min()), float(ys.min()), float(xs.max() + 1 - xs.min()), float(ys.max() + 1 - ys.min())]
            anns.append(
                {
                    "category_id": CATEGORIES[crowd[0]]["id"],
                    "bbox": bbox,
                    "area": float(visible.sum()),
                    "segmentation": {"counts": _rle_counts(visible), "size": [size, size]},
                    "iscrowd": 1,
                }
            )
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8), anns
