"""Data-pipeline throughput at crop 511, one process, one thread: `python -m cnet.tools.bench_data`.

Over a COCO-format folder (default: coco_tiny, the real COCO subset beside the project, as in
``conf/data/coco_tiny.yaml``) it times two passes over the same images, alternated so both see the
same machine state:

* ``decode``: ``CocoDetection.load_image`` -- JPEG file -> [H, W, 3] uint8 RGB;
* ``pipeline``: ``CocoDetection.__getitem__`` with ``TrainTransform(crop_size)`` -- decode, CornerNet
  augmentation (photometric distortion, random centre crop, resize, flip), normalisation and
  targets: the [3, S, S] float32 tensor and GroundTruth the trainer consumes.

images/s = images / seconds of a pass; each figure is the median over ``--passes`` passes after
``--warmup`` warm-up passes (pass k uses augmentation epoch k). Both wall-clock and CPU-time
(``time.process_time``) rates are reported: other processes sharing the CPU slow the first, less so
the second. ``torch.set_num_threads(1)`` and ``cv2.setNumThreads(0)`` hold during the run.
Results: ``reports/bench_data.json`` and ``reports/bench_data.md`` (written atomically).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import PIL
import torch

from cnet.data import CocoDetection, TrainTransform
from cnet.files import write_text_atomic

DEFAULT_ROOT = os.environ.get("CNET_COCO_TINY", "../shared/data/coco_tiny")  # conf/data/coco_tiny.yaml


def open_dataset(root: Path, images: str, ann: str, crop: int) -> CocoDetection:
    """The training split under ``root``; a one-line SystemExit when the folder is missing."""
    img_dir, ann_file = root / images, root / ann
    for path, ok in ((root, root.is_dir()), (img_dir, img_dir.is_dir()), (ann_file, ann_file.is_file())):
        if not ok:
            raise SystemExit(
                f"bench_data: {path} not found; pass --root (data.root) pointing to a COCO-format folder "
                f"with {images}/ and {ann} under it"
            )
    return CocoDetection(img_dir, ann_file, TrainTransform(crop_size=crop))


def _timed(fn: Callable[[], None]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(ds: CocoDetection, limit: int, passes: int, warmup: int) -> dict[str, Any]:
    """Per stage: pass times and median images/s (wall, CPU) over the first ``limit`` items."""
    n = min(limit, len(ds)) if limit > 0 else len(ds)
    if n == 0:
        raise SystemExit(f"bench_data: no images in {ds.ann_file}")

    def decode() -> None:
        for i in range(n):
            ds.load_image(i)

    def pipeline() -> None:
        for i in range(n):
            ds[i]

    stages: dict[str, Callable[[], None]] = {"decode": decode, "pipeline": pipeline}
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in stages}
    for k in range(warmup + passes):
        ds.set_epoch(k)
        for name, fn in stages.items():  # alternated: both stages see the same machine state
            t = _timed(fn)
            if k >= warmup:
                times[name].append(t)
    out: dict[str, Any] = {"images": n}
    for name, ts in times.items():
        wall, cpu = statistics.median(t[0] for t in ts), statistics.median(t[1] for t in ts)
        out[name] = {
            "images_per_s": n / wall,
            "images_per_s_cpu": n / max(cpu, 1e-9),
            "ms_per_image": 1000 * wall / n,
            "pass_wall_s": [round(t[0], 4) for t in ts],
            "pass_cpu_s": [round(t[1], 4) for t in ts],
        }
    out["pipeline_over_decode"] = out["decode"]["images_per_s"] / out["pipeline"]["images_per_s"]
    out["pipeline_over_decode_cpu"] = out["decode"]["images_per_s_cpu"] / out["pipeline"]["images_per_s_cpu"]
    return out


def to_markdown(result: dict[str, Any]) -> str:
    env, m = result["environment"], result["measure"]
    dec, pipe = m["decode"], m["pipeline"]
    aug = m["pipeline_over_decode"] - 1
    lines = [
        f"# cnet data pipeline throughput (crop {result['crop']}, one process, one thread)",
        "",
        f"{env['cpu']}, {env['cpus']} CPUs; 1-min load average {env['load_average_start']:.2f} at start, "
        f"{env['load_average_end']:.2f} at end (other processes share the CPU). torch {env['torch']}, "
        f"OpenCV {env['opencv']}, Pillow {env['pillow']}, numpy {env['numpy']}.",
        "",
        f"{m['images']} images of `{result['root']}/{result['images_dir']}`; medians of {result['passes']} "
        f"passes after {result['warmup']} warm-up pass(es).",
        "",
        "| stage | images/s | images/s (CPU time) | ms/image |",
        "|---|---|---|---|",
        f"| JPEG decode only | {dec['images_per_s']:.1f} | {dec['images_per_s_cpu']:.1f} | {dec['ms_per_image']:.2f} |",
        f"| full `__getitem__` (decode + TrainTransform) | {pipe['images_per_s']:.1f} | "
        f"{pipe['images_per_s_cpu']:.1f} | {pipe['ms_per_image']:.2f} |",
        "",
        f"Full pipeline / decode-only time: {m['pipeline_over_decode']:.2f}x (CPU time: "
        f"{m['pipeline_over_decode_cpu']:.2f}x); augmentation, normalisation and targets cost {aug:.2f}x decoding.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(DEFAULT_ROOT), help="COCO-format folder (data.root)")
    parser.add_argument("--images", default="train2017/images", help="image folder under --root")
    parser.add_argument("--ann", default="train2017/annotations.json", help="annotation JSON under --root")
    parser.add_argument("--crop", type=int, default=511)
    parser.add_argument("--limit", type=int, default=0, help="first N images only (0: all)")
    parser.add_argument("--passes", type=int, default=5, help="timed passes (median; >= 3 recommended)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("reports"))
    args = parser.parse_args(argv)
    if args.passes < 1 or args.warmup < 0:
        parser.error("--passes must be >= 1 and --warmup >= 0")
    ds = open_dataset(args.root.expanduser(), args.images, args.ann, args.crop)
    torch_threads, cv2_threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(0)
    load_start = os.getloadavg()[0]
    try:
        measured = measure(ds, args.limit, args.passes, args.warmup)
    finally:  # a library caller (the tests) keeps its own settings
        torch.set_num_threads(torch_threads)
        cv2.setNumThreads(cv2_threads)
    result: dict[str, Any] = {
        "environment": {
            "cpu": platform.processor() or platform.machine() or "cpu",
            "cpus": os.cpu_count(),
            "load_average_start": load_start,
            "load_average_end": os.getloadavg()[0],
            "torch": torch.__version__,
            "opencv": cv2.__version__,
            "pillow": PIL.__version__,
            "numpy": np.__version__,
            "threads": {"torch": 1, "opencv": 0},
        },
        "root": str(args.root),
        "images_dir": args.images,
        "crop": args.crop,
        "passes": args.passes,
        "warmup": args.warmup,
        "measure": measured,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / "bench_data.json", json.dumps(result, indent=2) + "\n")
    write_text_atomic(args.out / "bench_data.md", to_markdown(result))
    print(to_markdown(result), end="")
    return result


if __name__ == "__main__":
    main()
