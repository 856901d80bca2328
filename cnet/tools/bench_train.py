"""Training (and flip-test inference) throughput: `python -m cnet.tools.bench_train`.

* ``--device cpu``: training images/s of the tiny model with 1 and 2 processes (DDP over gloo;
  ``--processes``), each process at ``--batch`` images per step, and what DDP's search for unused
  parameters costs per step (2 processes, the model with the mask head on:
  ``find_unused_parameters`` False vs True; cnet turns it on only for a part that declares idle
  steps) -> ``reports/bench_train.{json,md}``.
* ``--device cuda`` (or ``--model`` on the CPU, for tests): HG-104 CentripetalNet (cross-star)
  training images/s at batch 6 in bf16 and fp32, peak memory, model FLOP utilisation (FLOPs of
  one step from ``torch.utils.flop_counter`` over the GPU's dense peak), and inference images/s
  with flip at a COCO size ->
  ``reports/bench_train_cuda.{json,md}`` (beside ``bench``'s ``bench_cuda.{json,md}``).

Inputs are random images with a few ground-truth boxes (no data loading): the figures measure the
model, the criterion and the optimizer step. Each figure is the median over ``--steps`` timed steps
after ``--warmup`` steps.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.flop_counter import FlopCounterMode

from cnet.compose import build_model, compose_config
from cnet.files import write_text_atomic
from cnet.types import GroundTruth

# dense peak TFLOP/s by GPU name fragment and precision (vendor datasheets, SXM parts)
PEAK_TFLOPS = {"H200": {"bf16": 989.0, "fp32": 67.0}, "H100": {"bf16": 989.0, "fp32": 67.0},
               "A100": {"bf16": 312.0, "fp32": 19.5}}  # fmt: skip
GPU_MODEL = ["backbone=hourglass104", "matching=centripetal", "adaption=cross_star"]


def _batch(batch: int, size: int, device: torch.device) -> tuple[torch.Tensor, list[GroundTruth]]:
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=g).to(device)
    box = torch.tensor([[0.1, 0.1, 0.5, 0.6], [0.4, 0.3, 0.9, 0.9]]) * size
    masks = torch.zeros(2, size, size, dtype=torch.bool)  # each object fills its box (for a mask head)
    for m, (x1, y1, x2, y2) in zip(masks, box.long().tolist(), strict=True):
        m[y1:y2, x1:x2] = True
    targets = [GroundTruth(box.clone(), torch.tensor([1, 2]), masks.clone()).to(device) for _ in range(batch)]
    return images, targets


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step_times(overrides: list[str], batch: int, size: int, precision: str, steps: int, warmup: int,
                     device: torch.device, find_unused: bool = False) -> tuple[list[float], Any]:  # fmt: skip
    """Seconds per optimizer step (forward, criterion, backward, Adam) of the composed model."""
    model, criterion, _ = build_model(compose_config(overrides), 80)
    model.to(device).train()
    trained: torch.nn.Module = model
    if dist.is_initialized():
        trained = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=find_unused)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
    images, targets = _batch(batch, size, device)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[precision]

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=precision != "fp32"):
            outputs = trained(images)
        criterion.total(criterion(outputs.float(), targets)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    times = []
    for i in range(warmup + steps):
        _sync(device)
        t0 = time.perf_counter()
        step()
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times, (model, criterion, images, targets, dtype)


def _cpu_worker(rank: int, world: int, init_file: str, args: dict[str, Any], out: str) -> None:
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    times, _ = train_step_times(args["overrides"], args["batch"], args["size"], "fp32", args["steps"],
                                args["warmup"], torch.device("cpu"), args.get("find_unused", False))  # fmt: skip
    if rank == 0:
        Path(out).write_text(json.dumps(times))
    if world > 1:
        dist.destroy_process_group()


def median_step_s(world: int, spec: dict[str, Any]) -> float:
    """Median seconds per step of ``world`` spawned CPU processes training ``spec`` (rank 0's times)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "times.json")
        mp.spawn(_cpu_worker, args=(world, os.path.join(tmp, "init"), spec, out), nprocs=world, join=True)
        return statistics.median(json.loads(Path(out).read_text()))


def bench_cpu_processes(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Training images/s with each of ``--processes`` processes (one thread each; DDP over gloo)."""
    rows = []
    spec = {"overrides": args.overrides, "batch": args.batch, "size": args.size, "steps": args.steps,
            "warmup": args.warmup}  # fmt: skip
    for world in args.processes:
        step_s = median_step_s(world, spec)
        rows.append({"processes": world, "batch_per_process": args.batch, "step_s": step_s,
                     "images_per_s": world * args.batch / step_s})  # fmt: skip
        print(f"train cpu  {world} process(es): {rows[-1]['images_per_s']:.1f} images/s", flush=True)
    return rows


MASK_ON = ["mask_head=centripetal_mask", "mask_head.start_epoch=0"]


def bench_find_unused(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Seconds per 2-process DDP step of the model with the mask head on, without and with DDP's
    search for unused parameters (every parameter gets a gradient here, so both train the same)."""
    rows = []
    for find_unused in (False, True):
        spec = {"overrides": args.overrides + MASK_ON, "batch": args.batch, "size": args.size,
                "steps": args.steps, "warmup": args.warmup, "find_unused": find_unused}  # fmt: skip
        rows.append({"find_unused_parameters": find_unused, "step_s": median_step_s(2, spec)})
        print(f"train cpu  2 processes, find_unused_parameters={find_unused}: {rows[-1]['step_s']:.3f} s/step",
              flush=True)  # fmt: skip
    return rows


def bench_model(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """One process: training at ``--batch`` (bf16, fp32) with peak memory and MFU, and flip-test
    inference (HG-104 at batch 6 and a COCO size on a GPU; any model on the CPU for tests)."""
    result: dict[str, Any] = {"train": [], "inference": {}}
    cuda = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    for precision in ("bf16", "fp32"):
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        times, (model, criterion, images, targets, dtype) = train_step_times(
            args.overrides, args.batch, args.size, precision, args.steps, args.warmup, device
        )
        step_s = statistics.median(times)
        amp = torch.autocast(device.type, dtype=dtype, enabled=precision != "fp32")
        with FlopCounterMode(display=False) as counter, amp:
            criterion.total(criterion(model(images).float(), targets)).backward()
        flops = counter.get_total_flops()
        peak = next((p[precision] for k, p in PEAK_TFLOPS.items() if k in name), float("nan"))
        result["train"].append({
            "precision": precision, "batch": args.batch, "images_per_s": args.batch / step_s,
            "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else float("nan"),
            "tflop_per_step": flops / 1e12, "mfu": flops / step_s / (peak * 1e12),
        })  # fmt: skip
        print(f"train {device.type} {precision}: {result['train'][-1]}", flush=True)
        model.eval()
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            pair = torch.randn(2, 3, args.test_h, args.test_w, device=device)  # image + its mirror
            times = []
            for i in range(args.warmup + args.steps):
                _sync(device)
                t0 = time.perf_counter()
                model(pair)
                _sync(device)
                if i >= args.warmup:
                    times.append(time.perf_counter() - t0)
        result["inference"][precision] = {"images_per_s_flip": 1 / statistics.median(times),
                                          "input": [args.test_h, args.test_w]}  # fmt: skip
        del model
        if cuda:
            torch.cuda.empty_cache()
    return result


def to_markdown(result: dict[str, Any]) -> str:
    env = result["environment"]
    lines = [f"# cnet training throughput ({env['device']}, {env.get('cpus')} CPUs, torch {env['torch']}, "
             f"1-min load average {env.get('load_average_1min', float('nan')):.1f} at start)", "",
             f"Model: `{' '.join(result['overrides'])}`; medians of {result['steps']} steps after "
             f"{result['warmup']} warm-up steps; random {result['size']}x{result['size']} inputs.", ""]  # fmt: skip
    if result.get("cpu"):
        lines += ["| processes | batch / process | images/s | vs 1 process |", "|---|---|---|---|"]
        base = result["cpu"][0]["images_per_s"]
        lines += [f"| {r['processes']} | {r['batch_per_process']} | {r['images_per_s']:.1f} | "
                  f"{r['images_per_s'] / base:.2f}x |" for r in result["cpu"]]  # fmt: skip
    if "find_unused" in result:
        lines += ["", f"DDP, 2 processes, `{' '.join(result['overrides'] + MASK_ON)}`:", "",
                  "| find_unused_parameters | s / step | vs off |", "|---|---|---|"]  # fmt: skip
        off = result["find_unused"][0]["step_s"]
        lines += [f"| {r['find_unused_parameters']} | {r['step_s']:.3f} | {r['step_s'] / off:.2f}x |"
                  for r in result["find_unused"]]  # fmt: skip
    if "model" in result:
        lines += ["| precision | batch | images/s | peak memory GiB | TFLOP/step | MFU |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['precision']} | {r['batch']} | {r['images_per_s']:.1f} | {r['peak_memory_gib']:.1f} | "
                  f"{r['tflop_per_step']:.2f} | {r['mfu']:.1%} |" for r in result["model"]["train"]]  # fmt: skip
        lines += ["", "| inference precision | flip-test images/s | input |", "|---|---|---|"]
        lines += [f"| {p} | {r['images_per_s_flip']:.1f} | {r['input'][0]}x{r['input'][1]} |"
                  for p, r in result["model"]["inference"].items()]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--overrides", nargs="*", default=None, help="model config (default: tiny on CPU, HG-104 on GPU)"
    )
    parser.add_argument("--batch", type=int, default=None, help="images per process (default: 8 CPU, 6 GPU)")
    parser.add_argument("--size", type=int, default=None, help="training crop (default: 127 CPU, 511 GPU)")
    parser.add_argument("--test-h", type=int, default=511, help="flip-test input height (COCO |127 padding)")
    parser.add_argument("--test-w", type=int, default=767)
    parser.add_argument("--model", action="store_true", help="the one-process model section on the CPU too")
    parser.add_argument("--processes", type=int, nargs="*", default=[1, 2],
                        help="CPU process counts to time (none: skip that section)")  # fmt: skip
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("reports"))
    args = parser.parse_args(argv)
    cuda = args.device == "cuda"
    args.overrides = args.overrides if args.overrides is not None else (GPU_MODEL if cuda else ["backbone=tiny"])
    args.batch = args.batch or (6 if cuda else 8)
    args.size = args.size or (511 if cuda else 127)
    device = torch.device(args.device)
    result: dict[str, Any] = {
        "environment": {"device": torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu",
                        "torch": torch.__version__, "cpus": os.cpu_count(), "load_average_1min": os.getloadavg()[0]},
        "overrides": args.overrides, "steps": args.steps, "warmup": args.warmup, "size": args.size,
    }  # fmt: skip
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    elif args.processes:
        result["cpu"] = bench_cpu_processes(args)
        result["find_unused"] = bench_find_unused(args)
    if cuda or args.model:
        result["model"] = bench_model(args, device)
    stem = "bench_train_cuda" if cuda else "bench_train"
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / f"{stem}.json", json.dumps(result, indent=2))
    write_text_atomic(args.out / f"{stem}.md", to_markdown(result))
    return result


if __name__ == "__main__":
    main()
