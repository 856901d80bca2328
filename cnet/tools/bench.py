"""Benchmarks: `python -m cnet.tools.bench` (what `make bench` runs); results go to reports/bench.{json,md}.

* decode: post-processing time per image of every matching strategy at COCO scale (80 classes,
  128 x 128 maps, top-100 corners per side, 1000 pairs, soft-NMS, 100 detections), batch 1 and 8.
* adaption: forward + backward time of every feature-adaption module at COCO scale (256 channels,
  128 x 128, batch 6), its own loss included.
* deform: forward + backward of the 3x3 deformable convolution (plain conv vs torchvision's
  ``deform_conv2d`` vs the native and, on CPU, the fused implementations of cnet.adaption.deform)
  at a few shapes, the candidates interleaved within each repeat (the machine may be shared);
  ratios to plain conv.
* bootstrap: the image-level bootstrap of COCO AP (cnet.evaluation.bootstrap) at COCO val2017's size,
  1,000 resamples at once against COCOeval per resample (:mod:`cnet.tools.bench_bootstrap`).

Each figure is the median of ``--repeats`` timed runs after one warm-up, measured in one process;
the report also gives each option's ratio to the reference option (centripetal / none). Runs on
CUDA as well (``--device cuda``), synchronising around every timed call.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from cnet.adaption.base import Adaption
from cnet.adaption.deform import deform_conv3x3
from cnet.compose import group_options, option_factory
from cnet.criterion import CornerSum
from cnet.files import write_text_atomic
from cnet.matching.base import Matching
from cnet.parts import CornerFeatures
from cnet.postprocess import PostProcess
from cnet.targets import encode_corners
from cnet.tools import bench_bootstrap
from cnet.types import Grid, GroundTruth, ImageMeta, Outputs

SECTIONS = ("decode", "adaption", "deform", "bootstrap")
REPORTS = Path("reports")  # relative to where it is started (the repository root for `make bench`)


def timed(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Median wall time of ``fn`` over ``repeats`` runs (after one warm-up run), in seconds."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def random_outputs(
    name: str, batch: int, size: int, num_classes: int, device: torch.device
) -> tuple[Outputs, Matching]:
    """Dense maps of strategy ``name`` for a [batch, 3, 4*size-1, ...] input; logits ~ N(-3, 2)."""
    g = torch.Generator().manual_seed(0)
    matching = option_factory("matching", name)(in_channels=8, num_classes=num_classes).to(device).eval()
    feats = CornerFeatures(*[torch.randn(batch, 8, size, size, generator=g).to(device) for _ in range(5)])
    with torch.no_grad():
        level = matching(feats)
    level |= {
        "tl_heat": (torch.randn(batch, num_classes, size, size, generator=g) * 2 - 3).to(device),
        "br_heat": (torch.randn(batch, num_classes, size, size, generator=g) * 2 - 3).to(device),
        "tl_off": torch.rand(batch, 2, size, size, generator=g).to(device),
        "br_off": torch.rand(batch, 2, size, size, generator=g).to(device),
    }
    return Outputs([level], (4 * size - 1, 4 * size - 1)), matching


def bench_decode(batches: list[int], size: int, num_classes: int, repeats: int, device: torch.device) -> list[dict]:
    rows = []
    for name in group_options("matching"):
        for b in batches:
            outputs, matching = random_outputs(name, b, size, num_classes, device)
            metas = [ImageMeta(0, outputs.input_size, outputs.input_size)] * b
            pp = PostProcess(matching, corner_topk=100, num_dets=1000, max_per_image=100)
            sec = timed(functools.partial(pp, outputs, metas), repeats, device)
            rows.append({"matching": name, "batch": b, "ms_per_image": 1000 * sec / b})
            print(f"decode  {name:<22} batch {b}: {1000 * sec / b:8.1f} ms/image", flush=True)
    return rows


def bench_adaption(batch: int, channels: int, size: int, repeats: int, device: torch.device) -> list[dict]:
    rows = []
    g = torch.Generator().manual_seed(0)
    grid = Grid(4 * size - 1, 4 * size - 1, size, size)
    # a few boxes per image so the modules with their own loss (guiding shift, box size) train
    gts = [
        GroundTruth(torch.tensor([[40.0, 60.0, 300.0, 260.0], [200.0, 100.0, 480.0, 500.0]]), torch.tensor([0, 1]))
        for _ in range(batch)
    ]
    corners = encode_corners([t.to(device) for t in gts], grid, num_classes=2)
    tl = torch.randn(batch, channels, size, size, generator=g).to(device).requires_grad_()
    br = torch.randn(batch, channels, size, size, generator=g).to(device).requires_grad_()
    for name in group_options("adaption"):
        module = option_factory("adaption", name)(in_channels=channels).to(device).train()
        targets = module.encode_targets(corners, grid)
        criterion = CornerSum(2, {"adaption": module})  # joins the per-corner halves, weights the terms

        def step(module: Adaption = module, targets: dict = targets, criterion: CornerSum = criterion) -> None:
            tl_out, br_out, maps = module(tl, br)
            losses = criterion.join(module.loss(maps, targets, corners))
            total = tl_out.mean() + br_out.mean() + criterion.total(losses)
            total.backward()

        # the warm-up also takes one-off costs out: the fused kernel's build or load, the allocator's growth
        sec = timed(step, repeats, device)
        rows.append({"adaption": name, "batch": batch, "ms_fwd_bwd": 1000 * sec})
        print(f"adaption {name:<12} batch {batch}: {1000 * sec:10.1f} ms fwd+bwd", flush=True)
    return rows


DEFORM_SHAPES = ((16, 64, 32, 32), (2, 256, 64, 64), (6, 256, 128, 128))  # (B, C, H, W); C_out = C


def bench_deform(shapes: list[tuple[int, int, int, int]], repeats: int, device: torch.device) -> list[dict]:
    """Median forward + backward ms of conv / torchvision / native / fused (CPU) per shape, interleaved per repeat."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rows = []
    for b, c, h, w in shapes:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(b, c, h, w, generator=g).to(device).requires_grad_()
        # offsets ~ N(0, 2) cells: many taps sample near or beyond the border at the small shapes
        offset = (torch.randn(b, 18, h, w, generator=g) * 2).to(device).requires_grad_()
        weight = (torch.randn(c, c, 3, 3, generator=g) * 0.01).to(device).requires_grad_()
        grad = torch.randn(b, c, h, w, generator=g).to(device)
        candidates: dict[str, Callable[[], torch.Tensor]] = {
            "conv": functools.partial(F.conv2d, x, weight, padding=1),
            "torchvision": functools.partial(deform_conv3x3, x, offset, weight, impl="torchvision"),
            "native": functools.partial(deform_conv3x3, x, offset, weight, impl="native"),
        }
        if device.type == "cpu":
            candidates["fused"] = functools.partial(deform_conv3x3, x, offset, weight, impl="fused")
        times: dict[str, list[float]] = {k: [] for k in candidates}
        for i in range(repeats + 1):  # the first round warms up
            for name, fn in candidates.items():
                x.grad = offset.grad = weight.grad = None
                sync()
                t0 = time.perf_counter()
                fn().backward(grad)
                sync()
                if i:
                    times[name].append(time.perf_counter() - t0)
        shape = f"{b}x{c}x{h}x{w}"
        for name, ts in times.items():
            rows.append({"impl": name, "shape": shape, "ms_fwd_bwd": 1000 * statistics.median(ts)})
            print(f"deform  {name:<12} {shape:<16}: {rows[-1]['ms_fwd_bwd']:10.1f} ms fwd+bwd", flush=True)
    return rows


def with_ratios(rows: list[dict], key: str, value: str, reference: str, group_by: str | None = None) -> list[dict]:
    """Add ``ratio``: each value divided by the reference option's (same ``group_by`` value)."""
    ref = {r.get(group_by): r[value] for r in rows if r[key] == reference}
    return [r | {"ratio": r[value] / ref[r.get(group_by)]} if r.get(group_by) in ref else r for r in rows]


def to_markdown(result: dict) -> str:
    env, st = result["environment"], result["setting"]
    lines = [f"# cnet benchmarks ({env['device']}, torch {env['torch']}, {env['threads']} threads)", ""]
    n_ad = result.get("adaption_repeats", result["repeats"])
    ad_runs = "one run after a warm-up" if n_ad == 1 else f"median of {n_ad} after a warm-up"
    lines += [
        f"Decode: medians of {result['repeats']} runs after a warm-up; adaption: {ad_runs}. "
        "One process, `python -m cnet.tools.bench`.",
        "",
    ]
    if result.get("rerun"):
        old = result["rerun"]["others_from"] or {}
        lines += [
            f"Only the {result['rerun']['section']} section was re-run here; the others are kept from an "
            f"earlier run (torch {old.get('torch', '?')}, {old.get('threads', '?')} threads).",
            "",
        ]
    if result.get("decode"):
        lines += [
            f"## Decode time per image ({st['num_classes']} classes, {st['map_size']}x{st['map_size']} maps, "
            "top-100 corners, 1000 pairs, soft-NMS)",
            "",
            "| matching | batch | ms / image | vs centripetal |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {r['matching']} | {r['batch']} | {r['ms_per_image']:.1f} | {r.get('ratio', float('nan')):.2f}x |"
            for r in result["decode"]
        ]
        lines.append("")
    if result.get("adaption"):
        lines += [
            f"## Adaption forward + backward ({st['channels']} channels, {st['map_size']}x{st['map_size']})",
            "",
            "| adaption | batch | ms fwd+bwd | vs none |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {r['adaption']} | {r['batch']} | {r['ms_fwd_bwd']:.1f} | {r.get('ratio', float('nan')):.1f}x |"
            for r in result["adaption"]
        ]
    if result.get("deform"):
        n_df = result.get("deform_repeats", result["repeats"])
        lines += [
            "",
            f"## Deformable 3x3 conv forward + backward (C_out = C; median of {n_df}, candidates interleaved)",
            "",
            "| impl | B x C x H x W | ms fwd+bwd | vs conv |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {r['impl']} | {r['shape']} | {r['ms_fwd_bwd']:.1f} | {r.get('ratio', float('nan')):.2f}x |"
            for r in result["deform"]
        ]
    if result.get("bootstrap"):
        lines += bench_bootstrap.to_markdown(result["bootstrap"])
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", choices=list(SECTIONS), default=None)
    parser.add_argument("--size", type=int, default=128, help="output-map side (COCO 511 input: 128)")
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--adaption-batch", type=int, default=6)
    parser.add_argument(
        "--adaption-repeats",
        type=int,
        default=None,
        help="repeats for the adaption bench (default --repeats; deformable backward is slow on CPU)",
    )
    parser.add_argument(
        "--deform-shapes",
        default=",".join("x".join(map(str, s)) for s in DEFORM_SHAPES),
        help="comma-separated BxCxHxW shapes of the deform section",
    )
    parser.add_argument("--deform-repeats", type=int, default=None, help="repeats of the deform section")
    parser.add_argument("--bootstrap-images", type=int, default=5000, help="images of the bootstrap section")
    parser.add_argument("--bootstrap-resamples", type=int, default=1000)
    parser.add_argument("--bootstrap-naive", type=int, default=2, help="naive resamples timed (then extrapolated)")
    parser.add_argument("--out", type=Path, default=REPORTS / "bench")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    result: dict = {
        "environment": {
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "python": platform.python_version(),
        },
        "repeats": args.repeats,
        "adaption_repeats": args.adaption_repeats or args.repeats,
        "deform_repeats": args.deform_repeats or args.repeats,
        "setting": {
            "map_size": args.size,
            "num_classes": 80,
            "channels": args.channels,
            "adaption_batch": args.adaption_batch,
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    suffix = "" if device.type == "cpu" else f"_{device.type}"
    json_path = args.out.with_name(args.out.name + suffix + ".json")
    md_path = args.out.with_name(args.out.name + suffix + ".md")

    if args.only and json_path.exists():  # one section re-run: keep the others of the report
        previous = json.loads(json_path.read_text())
        result |= {k: v for k, v in previous.items() if k in SECTIONS and k != args.only}
        result |= {k: v for k, v in previous.items() if k.endswith("_repeats") and not k.startswith(args.only)}
        if args.only != "decode" and "repeats" in previous:  # the decode header's repeats
            result["repeats"] = previous["repeats"]
        result["rerun"] = {"section": args.only, "others_from": previous.get("environment")}

    def write() -> None:  # after each section: a slow adaption section never loses the decode figures
        write_text_atomic(json_path, json.dumps(result, indent=2))
        write_text_atomic(md_path, to_markdown(result))

    if args.only in (None, "decode"):
        rows = bench_decode([1, 8], args.size, 80, args.repeats, device)
        result["decode"] = with_ratios(rows, "matching", "ms_per_image", "centripetal", "batch")
        write()
    if args.only in (None, "adaption"):
        rows = bench_adaption(
            args.adaption_batch, args.channels, args.size, args.adaption_repeats or args.repeats, device
        )
        result["adaption"] = with_ratios(rows, "adaption", "ms_fwd_bwd", "none")
        write()
    if args.only in (None, "deform"):
        shapes = [tuple(int(v) for v in s.split("x")) for s in args.deform_shapes.split(",")]
        rows = bench_deform(shapes, args.deform_repeats or args.repeats, device)  # type: ignore[arg-type]
        result["deform"] = with_ratios(rows, "impl", "ms_fwd_bwd", "conv", "shape")
        write()
    if args.only in (None, "bootstrap"):
        result["bootstrap"] = bench_bootstrap.bench_bootstrap(
            args.bootstrap_images, resamples=args.bootstrap_resamples, naive_resamples=args.bootstrap_naive
        )
        write()
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
