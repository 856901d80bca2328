"""`make gpu-check`: the report rendered from a fixed JSON (every section, ok and failed), one failing
section not hiding the others, the per-rank peak-memory callback, and the tiny form end to end."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from cnet.compose import PeakMemory
from cnet.tools import gpu_check
from cnet.tools.gpu_check_render import SECTIONS, TITLES, render

BENCH = {
    "environment": {"device": "NVIDIA H200", "torch": "2.x", "threads": 16, "python": "3.11"},
    "repeats": 5, "adaption_repeats": 5, "deform_repeats": 5,
    "setting": {"map_size": 128, "num_classes": 80, "channels": 256, "adaption_batch": 6},
    "decode": [{"matching": "centripetal", "batch": 1, "ms_per_image": 4.0, "ratio": 1.0},
               {"matching": "ae1d", "batch": 1, "ms_per_image": 2.0, "ratio": 0.5}],
    "adaption": [{"adaption": "none", "batch": 6, "ms_fwd_bwd": 1.0, "ratio": 1.0},
                 {"adaption": "cross_star", "batch": 6, "ms_fwd_bwd": 3.0, "ratio": 3.0}],
    "deform": [{"impl": "conv", "shape": "6x256x128x128", "ms_fwd_bwd": 2.0, "ratio": 1.0},
               {"impl": "torchvision", "shape": "6x256x128x128", "ms_fwd_bwd": 5.0, "ratio": 2.5}],
}  # fmt: skip
TRAINING = {
    "world_size": 8, "global_batch": 48, "batch_per_process": 6, "accum_steps": 1, "precision": "bf16",
    "backbone": "hourglass104", "num_parameters": 187700352, "optimizer_steps": 50, "step_time_s": 0.3125,
    "images_per_s": 153.6, "epoch_images_per_s": 120.0, "mlflow_run_id": "abc123", "mlflow_status": "FINISHED",
    "peak_memory": [{"rank": r, "device": f"cuda:{r}", "source": "torch.cuda.max_memory_allocated",
                     "peak_memory_gib": 20.5 + r, "peak_reserved_gib": 24.0} for r in range(8)],
    "losses": {"train_det": 2.5, "train_total": 3.21},
}  # fmt: skip
REPORT = {
    "version": 1, "mode": "gpu", "status": "failed", "command": "python -m cnet.tools.gpu_check",
    "started": "2026-01-01T00:00:00+00:00", "finished": "2026-01-01T00:10:00+00:00",
    "environment": {"host": "gpu1", "python": "3.11", "torch": "2.x", "cuda": "13.0", "cpus": 64,
                    "git_commit": "abc", "gpus": ["NVIDIA H200"] * 8, "nccl": "2.27.3", "driver": "580.1"},
    "plan": {"tiny": False, "nproc": 8, "steps": 50, "mask_steps": 5, "batch": 6, "device": "cuda"},
    "sections": {
        "bench": {"status": "ok", "seconds": 61.0, "result": BENCH, "log": "logs/bench.log"},
        "bench_train": {"status": "failed", "seconds": 12.0, "log": "logs/bench_train.log",
                        "error": "CheckFailed: exit status 1: torch.OutOfMemoryError: CUDA out of memory.",
                        "log_tail": ["Traceback (most recent call last):",
                                     "torch.OutOfMemoryError: CUDA out of memory."]},
        "train": {"status": "ok", "seconds": 95.0, "log": "logs/train.log", **TRAINING},
        "mask": {"status": "failed", "seconds": 40.0, "log": "logs/mask.log", **TRAINING,
                 "error": "CheckFailed: final losses missing or not finite",
                 "losses": {"train_mask": float("nan"), "train_total": 3.0},
                 "mask_loss_by_epoch": [0.0, float("nan")], "mask_trained": False, "segm_AP": None},
    },
}  # fmt: skip


def test_the_report_shows_every_section_and_marks_the_failed_ones():
    md = render(json.loads(json.dumps(REPORT)))  # as read back from report.json
    assert md.startswith("# cnet GPU check: FAILED: bench_train, mask\n")
    assert "8 x NVIDIA H200 (driver 580.1, CUDA 13.0, NCCL 2.27.3); 8 training processes." in md
    for name in SECTIONS:
        assert md.count(TITLES[name]) == 2, name  # the status table and its own heading
    assert "`cnet.tools.bench`) | ok | 61 |" in md
    assert "`cnet.tools.bench_train`) | **FAILED** | 12 |" in md
    # a: the bench tool's own tables, headings below the section's
    assert "### cnet benchmarks (NVIDIA H200" in md and "#### Decode time per image" in md
    assert "| ae1d | 1 | 2.0 | 0.50x |" in md and "| cross_star | 6 | 3.0 | 3.0x |" in md
    assert "| torchvision | 6x256x128x128 | 5.0 | 2.50x |" in md
    # a failed section: its error and its log's last lines
    assert "**FAILED**: `CheckFailed: exit status 1: torch.OutOfMemoryError: CUDA out of memory.`" in md
    assert "```\nTraceback (most recent call last):\ntorch.OutOfMemoryError: CUDA out of memory.\n```" in md
    # b: the training figures, memory per rank, losses
    assert "| step time, median | 0.312 s |" in md and "| images/s (global batch / median step) | 153.6 |" in md
    assert "| batch | 6 per process x 8 processes = 48 per step (no accumulation) |" in md
    assert "| model | hourglass104, 187,700,352 parameters, bf16 |" in md
    assert "| 7 | cuda:7 | 27.50 | 24.00 |" in md and "`torch.cuda.max_memory_allocated`" in md
    assert "| train_total | 3.2100 |" in md
    # c: failed, yet its figures shown, a non-finite loss as nan, the idle mask head said
    assert "**FAILED**: `CheckFailed: final losses missing or not finite`" in md
    assert "| train_mask | nan |" in md and "epoch 1: 0.0000, epoch 2: nan" in md
    assert "no proposal matched an object" in md and "| segm_AP (a few val images) | - |" in md


def test_pending_skipped_and_unreadable_sections_still_render():
    report = json.loads(json.dumps(REPORT)) | {"status": None}
    del report["finished"]
    report["sections"] = {"bench": {"status": "ok", "result": {}}, "train": {"status": "pending"}}
    md = render(report)
    assert md.startswith("# cnet GPU check: running\n")
    assert "could not be rendered: KeyError" in md  # a bench result without its keys
    assert "Not run yet" in md and md.count("Skipped (not among `--sections`)") == 2


def test_a_failing_section_does_not_hide_the_others(tmp_path, monkeypatch):
    plan = gpu_check.make_plan(tiny=True, nproc=None, steps=None, mask_steps=None)
    check = gpu_check.Check(plan, tmp_path, timeout_min=1, argv=["--tiny"])
    seen = []

    def step(name: str, fails: bool = False):
        def run(self):
            seen.append(name)
            if fails:
                self.run(name, [sys.executable, "-c", "raise ValueError('broken on purpose')"])
            return {"figure": 1.0}

        return run

    monkeypatch.setattr(gpu_check.Check, "bench", step("bench"))
    monkeypatch.setattr(gpu_check.Check, "bench_train", step("bench_train", fails=True))
    monkeypatch.setattr(gpu_check.Check, "train", step("train"))
    monkeypatch.setattr(gpu_check.Check, "mask", step("mask"))
    assert check.run_all(list(SECTIONS)) is False
    assert seen == list(SECTIONS)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["status"] == "failed"
    assert {n: s["status"] for n, s in report["sections"].items()} == {
        "bench": "ok", "bench_train": "failed", "train": "ok", "mask": "ok"
    }  # fmt: skip
    failed = report["sections"]["bench_train"]
    assert failed["error"] == "CheckFailed: exit status 1: ValueError: broken on purpose"
    assert failed["log_tail"][-1] == "ValueError: broken on purpose"
    assert Path(failed["log"]).read_text().startswith(f"$ {sys.executable} -c")
    assert (tmp_path / "report.md").read_text().startswith("# cnet GPU check: FAILED: bench_train\n")
    assert not list(tmp_path.glob(".report*"))  # no temporary file left by the atomic writes


def test_a_command_past_its_time_is_killed_with_its_children(tmp_path):
    plan = gpu_check.make_plan(tiny=True, nproc=None, steps=None, mask_steps=None)
    check = gpu_check.Check(plan, tmp_path, timeout_min=0.03, argv=["--tiny"])
    child = "import subprocess, sys; p = subprocess.Popen(['sleep', '60']); print(p.pid, flush=True); p.wait()"
    with pytest.raises(gpu_check.CheckFailed, match=r"^timed out after 0.03 min: \d+$"):
        check.run("train", [sys.executable, "-c", child])
    pid = int(check.log_path("train").read_text().split()[-1])
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid), "the grandchild outlived the time-out"


def alive(pid: int) -> bool:
    """Running (a zombie waiting for init to reap it counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_the_error_line_of_a_torchrun_log_is_the_root_cause(tmp_path):
    log = tmp_path / "train.log"
    log.write_text(
        "[rank1]: Traceback (most recent call last):\n"
        "[rank1]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n"
        "E1203 torch/distributed/elastic/multiprocessing/api.py] failed (exitcode: 1)\n"
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n"
        "============================================================\n"
    )
    err = gpu_check.failure("exit status 1", log)
    assert str(err) == "exit status 1: [rank1]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"


def test_peak_memory_callback_writes_this_rank_s_file(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    PeakMemory().on_job_end(OmegaConf.create({"hydra": {"runtime": {"output_dir": str(tmp_path)}}}))
    row = json.loads((tmp_path / "peak_memory" / "rank3.json").read_text())
    assert row["rank"] == 3 and row["local_rank"] == 1
    assert row["device"] == "cpu" and 0 < row["peak_memory_gib"] < 1024


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_tiny_form_runs_every_section_on_two_cpu_processes(tmp_path):
    assert gpu_check.main(["--tiny", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    sections = report["sections"]
    assert {n: s["status"] for n, s in sections.items()} == dict.fromkeys(SECTIONS, "ok"), {
        n: s.get("error") for n, s in sections.items()
    }
    assert report["status"] == "ok" and report["mode"] == "tiny"
    bench = sections["bench"]["result"]
    assert all(r["ms_per_image"] > 0 and math.isfinite(r["ratio"]) for r in bench["decode"])
    assert {r["adaption"] for r in bench["adaption"]} >= {"none", "cross_star"}
    assert (bench["bootstrap"]["images"], bench["bootstrap"]["resamples"]) == (40, 20)  # CPU-sized in --tiny
    assert "cpu" not in sections["bench_train"]["result"]  # --processes without counts: no scaling section
    train_rows = sections["bench_train"]["result"]["model"]["train"]
    assert {r["precision"] for r in train_rows} == {"bf16", "fp32"} and all(r["images_per_s"] > 0 for r in train_rows)
    for name, steps in (("train", 3), ("mask", 2 * 2)):
        sec = sections[name]
        assert sec["world_size"] == 2 and sec["global_batch"] == 4 and sec["precision"] == "bf16", name
        assert sec["optimizer_steps"] == steps and sec["mlflow_status"] == "FINISHED", name
        assert 0 < sec["step_time_s"] < 60 and sec["images_per_s"] == pytest.approx(4 / sec["step_time_s"])
        assert [r["rank"] for r in sec["peak_memory"]] == [0, 1]
        assert all(0 < r["peak_memory_gib"] < 64 for r in sec["peak_memory"])
        assert "train_total" in sec["losses"] and all(math.isfinite(v) for v in sec["losses"].values())
        assert not (tmp_path / name / "checkpoints").exists()  # removed once read
    # the mask head idles in the first epoch (no loss), then trains on matched proposals
    first, second = sections["mask"]["mask_loss_by_epoch"]
    assert first == 0.0 and second > 0 and sections["mask"]["mask_trained"] is True
    md = (tmp_path / "report.md").read_text()
    assert md.startswith("# cnet GPU check: ok\n") and "Tiny form (`--tiny`)" in md
    assert "| optimizer steps | 3 |" in md and "| 1 | cpu |" in md
    assert os.path.getsize(tmp_path / "logs" / "train.log") > 0
