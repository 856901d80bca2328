"""One command for the first GPU machine: `python -m cnet.tools.gpu_check` (`make gpu-check`).

On every GPU it finds (``torch.cuda.device_count()``), in one go:

* a. the CUDA benchmarks of ``make bench``: ``cnet.tools.bench`` and ``cnet.tools.bench_train``
  with ``--device cuda`` (decode / adaption / deformable-conv medians and ratios; HG-104 training
  images/s, peak memory and MFU in bf16 and fp32, flip-test inference);
* b. a ``--steps`` (50) optimizer-step HG-104 ``trainer=gpu`` training in bf16 through DDP on all
  local GPUs (torchrun), on the project's synthetic set at 511 crops, without gradient accumulation
  and with a minimal evaluation: step time median, images/s, peak GPU memory per rank, final losses;
* c. the mask head under DDP (``mask_head=centripetal_mask``), switched on inside the run
  (``start_epoch=1`` of 2 epochs of ``--mask-steps`` steps), in bf16 on all local GPUs.

Every step runs in its own processes; one that fails is marked failed with its error and the
others still run. The report, ``<out>/report.md``, is rendered from ``<out>/report.json`` beside it;
both are written atomically after every section (an interrupted check keeps what it measured).
Logs: ``<out>/logs/<section>.log``. Exit status 1 when a section failed.

``--tiny``: the same steps on the CPU with the tiny backbone, gloo, 2 processes, a few steps and
tiny images (what ``tests/test_gpu_check.py`` runs).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from cnet.files import write_text_atomic
from cnet.tools.gpu_check_render import SECTIONS, render

ROOT = Path(__file__).resolve().parents[2]  # the repository: train.py beside the package
TRAIN_PY = ROOT / "train.py"
PEAK_MEMORY_CALLBACK = "+hydra.callbacks.peak_memory._target_=cnet.compose.PeakMemory"
# per-epoch figures the trainer logs beside the losses (train_<key> in MLflow)
NOT_LOSSES = {"train_lr", "train_images_per_s", "train_step_time_s", "train_epoch_time_s"}


class CheckFailed(RuntimeError):
    """A section's command ran but its result is wrong (the message says what)."""


@dataclass
class Plan:
    """What one check runs: the device, the processes and the sizes of every section."""

    tiny: bool
    nproc: int
    steps: int  # optimizer steps of section b
    mask_steps: int  # optimizer steps per epoch of section c (2 epochs)
    batch: int  # images per process and step
    bench_args: list[str] = field(default_factory=list)
    bench_train_args: list[str] = field(default_factory=list)
    model: list[str] = field(default_factory=list)  # train.py overrides: backbone, device, sizes

    @property
    def device(self) -> str:
        return "cpu" if self.tiny else "cuda"


def make_plan(tiny: bool, nproc: int | None, steps: int | None, mask_steps: int | None) -> Plan:
    if tiny:
        return Plan(
            tiny=True, nproc=nproc or 2, steps=steps or 3, mask_steps=mask_steps or 2, batch=2,
            bench_args=["--repeats", "1", "--size", "12", "--channels", "8", "--adaption-batch", "1",
                        "--deform-shapes", "1x4x6x5", "--bootstrap-images", "40", "--bootstrap-resamples", "20",
                        "--bootstrap-naive", "1"],
            bench_train_args=["--model", "--processes", "--overrides", "backbone=tiny", "adaption=none", "--size",
                              "63", "--batch", "2", "--steps", "2", "--warmup", "1", "--test-h", "63", "--test-w",
                              "127"],
            model=["backbone=tiny", "device=cpu", "trainer.batch_size=2", "trainer.num_workers=0",
                   "data.source.image_size=60", "data.train_transform.crop_size=63",
                   "data.test_transform.pad_logical_or=63", "test.corner_topk=20"],
        )  # fmt: skip
    # the images are generated at 256 px (cheap), the training crop is COCO's 511 (what the GPU computes)
    return Plan(
        tiny=False, nproc=nproc or torch.cuda.device_count(), steps=steps or 50, mask_steps=mask_steps or 5, batch=6,
        bench_args=["--repeats", "5"],
        model=["backbone=hourglass104", "data.source.image_size=256", "data.train_transform.crop_size=511"],
    )  # fmt: skip


def train_overrides(plan: Plan, steps_per_epoch: int, epochs: int) -> list[str]:
    """``trainer=gpu`` (bf16, 6 images per GPU) bounded to ``epochs`` x ``steps_per_epoch`` optimizer
    steps: no accumulation, an epoch of exactly that many global batches, one val image per process."""
    return [
        "trainer=gpu", "trainer.global_batch=null", "trainer.progress=false", "trainer.checkpoint_every_min=0",
        "schedule=paper", f"schedule.epochs={epochs}", "schedule.milestones=[]",
        "data=synthetic", f"data.source.num_train={steps_per_epoch * plan.batch * plan.nproc}",
        f"data.source.num_val={max(plan.nproc, 2)}", "data.source.num_val_crowd=1", "~data.extra_val.crowd",
        "test.matching_only=false", "tracking.experiment=gpu_check", *plan.model,
    ]  # fmt: skip


class Check:
    """Runs the sections of ``plan`` into ``out`` and keeps the report up to date."""

    def __init__(self, plan: Plan, out: Path, timeout_min: float, argv: list[str]) -> None:
        self.plan, self.out, self.timeout_s = plan, out.resolve(), 60.0 * timeout_min
        self.env = dict(
            os.environ,
            CNET_CACHE_DIR=str(self.out / "cache"),  # the synthetic set, generated once
            MLFLOW_TRACKING_URI=self.mlflow_uri,
            HYDRA_FULL_ERROR="1",  # a failing job's whole traceback goes to its log
            PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
        )
        if plan.tiny:
            self.env["OMP_NUM_THREADS"] = "1"  # 2 processes on a few cores
        self.report: dict[str, Any] = {
            "version": 1,
            "mode": "tiny" if plan.tiny else "gpu",
            "command": "python -m cnet.tools.gpu_check " + " ".join(argv),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "environment": environment(plan),
            "plan": asdict(plan) | {"device": plan.device},
            "sections": {},
        }

    @property
    def mlflow_uri(self) -> str:
        return f"sqlite:///{self.out / 'mlflow.db'}"

    def write(self) -> None:
        write_text_atomic(self.out / "report.json", json.dumps(self.report, indent=2, default=str))
        write_text_atomic(self.out / "report.md", render(self.report))

    def run_all(self, names: list[str]) -> bool:
        steps: dict[str, Callable[[], dict[str, Any]]] = {
            "bench": self.bench, "bench_train": self.bench_train, "train": self.train, "mask": self.mask,
        }  # fmt: skip
        for name in SECTIONS:
            self.report["sections"][name] = {"status": "pending" if name in names else "skipped"}
        self.write()
        for name in names:
            t0 = time.perf_counter()
            print(f"gpu_check: {name} ...", flush=True)
            try:
                section = {"status": "ok", **steps[name]()}
            except Exception as err:  # one failing step must not hide the others
                section = {"status": "failed", "error": f"{type(err).__name__}: {err}"}
                section |= getattr(err, "details", {})
                if "log_tail" not in section and self.log_path(name).is_file():
                    section["log_tail"] = log_tail(self.log_path(name))
            section["seconds"] = time.perf_counter() - t0
            section["log"] = str(self.log_path(name))
            self.report["sections"][name] = section
            self.write()
            print(f"gpu_check: {name} {section['status']} ({section['seconds']:.0f} s)", flush=True)
        self.report["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        ok = all(self.report["sections"][n]["status"] == "ok" for n in names)
        self.report["status"] = "ok" if ok else "failed"
        self.write()
        return ok

    def log_path(self, name: str) -> Path:
        return self.out / "logs" / f"{name}.log"

    def run(self, name: str, cmd: list[str]) -> None:
        """Run ``cmd`` (its own process group) with output to the section's log; raise on failure."""
        log = self.log_path(name)
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as f:
            f.write("$ " + " ".join(cmd) + "\n")
            f.flush()
            proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=f, stderr=subprocess.STDOUT,
                                    start_new_session=True)  # fmt: skip
            try:
                rc = proc.wait(timeout=self.timeout_s)
            except BaseException as err:  # a time-out, or Ctrl-C (its own session does not see the signal)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and every rank
                proc.wait()
                if isinstance(err, subprocess.TimeoutExpired):
                    raise failure(f"timed out after {self.timeout_s / 60:g} min", log) from None
                raise
        if rc != 0:
            raise failure(f"exit status {rc}", log)

    def bench(self) -> dict[str, Any]:
        out = self.out / "bench"
        shutil.rmtree(out, ignore_errors=True)
        cmd = [sys.executable, "-m", "cnet.tools.bench", "--device", self.plan.device, *self.plan.bench_args]
        self.run("bench", [*cmd, "--out", str(out / "bench")])
        suffix = "" if self.plan.device == "cpu" else f"_{self.plan.device}"
        result = json.loads((out / f"bench{suffix}.json").read_text())
        for key in ("decode", "adaption", "deform"):
            if not result.get(key) or not all(finite(r.get("ratio")) for r in result[key]):
                raise CheckFailed(f"the {key} section has no rows or a ratio that is not finite")
        return {"result": result}

    def bench_train(self) -> dict[str, Any]:
        out = self.out / "bench_train"
        shutil.rmtree(out, ignore_errors=True)
        cmd = [sys.executable, "-m", "cnet.tools.bench_train", "--device", self.plan.device]
        self.run("bench_train", [*cmd, *self.plan.bench_train_args, "--out", str(out)])
        stem = "bench_train" if self.plan.device == "cpu" else f"bench_train_{self.plan.device}"
        result = json.loads((out / f"{stem}.json").read_text())
        rows = result.get("model", {}).get("train", [])
        if not rows or not all(finite(r["images_per_s"]) and r["images_per_s"] > 0 for r in rows):
            raise CheckFailed("no training rows, or images/s not positive")
        return {"result": result}

    def train(self) -> dict[str, Any]:
        return self.ddp_training("train", self.plan.steps, epochs=1, extra=[])

    def mask(self) -> dict[str, Any]:
        # IoU 0.1 (not 0.5): an untrained detector's proposals then match objects, so the head gets a loss
        extra = ["mask_head=centripetal_mask", "mask_head.start_epoch=1", "mask_head.iou_threshold=0.1"]
        figures = self.ddp_training("mask", self.plan.mask_steps, epochs=2, extra=extra)
        history = figures.get("mask_loss_by_epoch", [])
        if len(history) != 2 or not all(finite(v) for v in history):
            raise CheckFailed(f"train_mask should be logged and finite for both epochs, got {history}")
        figures["mask_trained"] = history[1] > 0  # a proposal matched an object in the second epoch
        return figures

    def ddp_training(self, name: str, steps_per_epoch: int, epochs: int, extra: list[str]) -> dict[str, Any]:
        """``train.py`` through torchrun on ``nproc`` processes; the figures from MLflow and the ranks' files."""
        if not TRAIN_PY.is_file():
            raise CheckFailed(f"{TRAIN_PY} not found: run the check from a checkout of the repository")
        run_dir = self.out / name
        shutil.rmtree(run_dir, ignore_errors=True)
        overrides = [*train_overrides(self.plan, steps_per_epoch, epochs), *extra]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={self.plan.nproc}",
               str(TRAIN_PY), *overrides, f"hydra.run.dir={run_dir}", PEAK_MEMORY_CALLBACK]  # fmt: skip
        self.run(name, cmd)
        job = json.loads((run_dir / "job_status.json").read_text())
        if job["status"] != "FINISHED":
            raise CheckFailed(f"the job ended {job['status']}: {job.get('error')}")
        figures = training_figures(self.mlflow_uri, job["run_id"])
        if not figures["mask_loss_by_epoch"]:
            del figures["mask_loss_by_epoch"]
        figures |= {"overrides": overrides, "run_dir": str(run_dir)}
        figures["optimizer_steps"] = checkpoint_step(run_dir / "checkpoints" / "last.pt")
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # HG-104 + Adam: 2 GB each
        figures["peak_memory"] = peak_memory(run_dir, self.plan.nproc)
        problems = []
        if figures["world_size"] != self.plan.nproc:
            problems.append(f"world size {figures['world_size']}, expected {self.plan.nproc}")
        if figures["optimizer_steps"] != steps_per_epoch * epochs:
            problems.append(f"{figures['optimizer_steps']} optimizer steps, expected {steps_per_epoch * epochs}")
        if figures["mlflow_status"] != "FINISHED":
            problems.append(f"MLflow run {figures['mlflow_status']}")
        if not figures["losses"] or not all(finite(v) for v in figures["losses"].values()):
            problems.append(f"final losses missing or not finite: {figures['losses']}")
        if not (finite(figures["step_time_s"]) and finite(figures["images_per_s"])):
            problems.append("no step time")
        if problems:
            err = CheckFailed("; ".join(problems))
            err.details = figures  # type: ignore[attr-defined]
            raise err
        return figures


def training_figures(uri: str, run_id: str) -> dict[str, Any]:
    """Step time, images/s, batch and last-epoch losses of MLflow run ``run_id``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    run = client.get_run(run_id)
    metrics, params = run.data.metrics, run.data.params
    mask_history = client.get_metric_history(run_id, "train_mask")
    global_batch = int(params["batch.global_batch"])
    step_s = float(metrics.get("train_step_time_s", float("nan")))
    return {
        "mlflow_run_id": run_id,
        "mlflow_status": run.info.status,
        "world_size": int(params["batch.world_size"]),
        "global_batch": global_batch,
        "batch_per_process": int(params["batch.batch_per_process"]),
        "accum_steps": int(params["batch.accum_steps"]),
        "precision": params.get("trainer.precision"),
        "backbone": run.data.tags.get("backbone"),
        "num_parameters": int(params.get("model.num_parameters", 0)),
        "step_time_s": step_s,
        "images_per_s": global_batch / step_s if step_s > 0 else float("nan"),
        "epoch_images_per_s": float(metrics.get("train_images_per_s", float("nan"))),
        "epoch_time_s": float(metrics.get("train_epoch_time_s", float("nan"))),
        "losses": {k: v for k, v in sorted(metrics.items()) if k.startswith("train_") and k not in NOT_LOSSES},
        "mask_loss_by_epoch": [m.value for m in sorted(mask_history, key=lambda m: m.step)],
        "segm_AP": metrics.get("segm_AP"),
        "bbox_AP": metrics.get("bbox_AP"),
    }


def checkpoint_step(path: Path) -> int:
    """Optimizer steps of a checkpoint (memory-mapped: the weights are not read)."""
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return int(state["step"])


def peak_memory(run_dir: Path, nproc: int) -> list[dict[str, Any]]:
    """Every rank's ``peak_memory/rank<R>.json`` (cnet.compose.PeakMemory), in rank order."""
    rows = [json.loads(p.read_text()) for p in (run_dir / "peak_memory").glob("rank*.json")]
    rows.sort(key=lambda r: r["rank"])
    if [r["rank"] for r in rows] != list(range(nproc)):
        raise CheckFailed(f"peak memory written by ranks {[r['rank'] for r in rows]}, expected 0..{nproc - 1}")
    return rows


# an exception line, also behind log prefixes: "[rank1]: ValueError: ...", "[time][cnet][ERROR] - ValueError: ..."
ERROR_LINE = re.compile(r"^\s*(\[[^]]*\]:?\s*)*(-\s*)?[\w.]*(Error|Exception|Interrupt)(:|$)")


def failure(what: str, log: Path) -> CheckFailed:
    """The error of a failed command: ``what``, the last error line of its log; the log's tail as details."""
    lines = log_tail(log, None)
    errors = [ln for ln in lines if ERROR_LINE.match(ln) and "ChildFailedError" not in ln]
    err = CheckFailed(f"{what}: {(errors or lines or ['(no output)'])[-1].strip()}")
    err.details = {"log_tail": lines[-40:]}  # type: ignore[attr-defined]
    return err


def log_tail(log: Path, n: int | None = 40) -> list[str]:
    """The last ``n`` non-empty lines of ``log`` (all for None)."""
    lines = [ln.rstrip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    return lines if n is None else lines[-n:]


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def environment(plan: Plan) -> dict[str, Any]:
    env: dict[str, Any] = {
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cpus": os.cpu_count(),
        "git_commit": git_commit(),
    }
    if not plan.tiny:
        try:  # what the machine is must not stop the check
            env["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            version = torch.cuda.nccl.version() if torch.distributed.is_nccl_available() else None
            env["nccl"] = ".".join(map(str, version)) if isinstance(version, tuple) else version
        except Exception as err:  # a broken driver shows up in the sections' errors too
            env["gpu_error"] = f"{type(err).__name__}: {err}"
        env["driver"] = nvidia_driver()
    return env


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty", "--abbrev=12"],
                             capture_output=True, text=True, timeout=10, check=True)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def nvidia_driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the CPU form: tiny backbone, gloo, 2 processes")
    parser.add_argument("--out", type=Path, default=Path("outputs/gpu_check"))
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--nproc", type=int, default=None, help="training processes (default: every GPU; tiny: 2)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps of the training (50; tiny: 3)")
    parser.add_argument("--mask-steps", type=int, default=None, help="mask run: steps per epoch (5; tiny: 2)")
    parser.add_argument("--timeout-min", type=float, default=30.0, help="per section")
    args = parser.parse_args(argv)
    if not args.tiny and torch.cuda.device_count() == 0:
        print("gpu_check: no CUDA device (torch.cuda.device_count() == 0); --tiny runs the CPU form", file=sys.stderr)
        return 2
    check = Check(make_plan(args.tiny, args.nproc, args.steps, args.mask_steps), args.out, args.timeout_min, argv)
    ok = check.run_all([s for s in SECTIONS if s in args.sections])
    print(f"gpu_check: {'ok' if ok else 'FAILED'}; report {check.out / 'report.md'} (send it)", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
