"""The markdown report of ``cnet.tools.gpu_check``, rendered from its JSON (``report.json``) alone."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

# the sections in the order they run: a (two tools), b, c
SECTIONS = ("bench", "bench_train", "train", "mask")
TITLES = {
    "bench": "a. Decode, adaption and deformable-conv benchmarks (`cnet.tools.bench`)",
    "bench_train": "a. Training and inference benchmark (`cnet.tools.bench_train`)",
    "train": "b. Training through DDP (`torchrun ... train.py trainer=gpu`)",
    "mask": "c. Mask head through DDP (`mask_head=centripetal_mask`, on from the second epoch)",
}


def render(report: dict[str, Any]) -> str:
    """The whole report: a headline, the environment, a status table, then one part per section."""
    sections = report.get("sections", {})
    failed = [n for n in SECTIONS if sections.get(n, {}).get("status") == "failed"]
    status = report.get("status") or ("running" if "finished" not in report else "?")
    headline = "FAILED: " + ", ".join(failed) if failed else status
    lines = [f"# cnet GPU check: {headline}", "", *environment_lines(report), ""]
    lines += ["| section | status | seconds |", "|---|---|---|"]
    for name in SECTIONS:
        sec = sections.get(name, {"status": "skipped"})
        mark = "**FAILED**" if sec["status"] == "failed" else sec["status"]
        lines.append(f"| {TITLES[name]} | {mark} | {fmt(sec.get('seconds'), '.0f')} |")
    for name in SECTIONS:
        sec = sections.get(name, {"status": "skipped"})
        lines += ["", f"## {TITLES[name]}: {sec['status'].upper() if sec['status'] == 'failed' else sec['status']}", ""]
        try:
            lines += section_lines(name, sec)
        except Exception as err:  # a report with one unreadable section still goes out
            lines += [f"(this section could not be rendered: {type(err).__name__}: {err}; see report.json)"]
    return "\n".join(lines).rstrip() + "\n"


def environment_lines(report: dict[str, Any]) -> list[str]:
    env, plan = report.get("environment", {}), report.get("plan", {})
    if report.get("mode") == "tiny":
        where = (f"Tiny form (`--tiny`): CPU, tiny backbone, gloo, {plan.get('nproc')} processes; it checks "
                 "the check, not a GPU.")  # fmt: skip
    else:
        gpus = env.get("gpus") or []
        names = sorted(set(gpus))
        where = f"{len(gpus)} x {', '.join(names) or 'no GPU'} (driver {env.get('driver')}, CUDA {env.get('cuda')}, "
        where += f"NCCL {env.get('nccl')}); {plan.get('nproc')} training processes."
    return [
        where,
        f"Host {env.get('host')}, {env.get('cpus')} CPUs, Python {env.get('python')}, torch {env.get('torch')}, "
        f"commit {env.get('git_commit')}; started {report.get('started')}, finished {report.get('finished', '-')}.",
        "",
        f"Command: `{report.get('command')}`. Raw figures: `report.json` beside this file; logs: `logs/`.",
    ]


def section_lines(name: str, sec: dict[str, Any]) -> list[str]:
    status = sec["status"]
    if status == "pending":
        return ["Not run yet: the check is still running, or was stopped before this section."]
    if status == "skipped":
        return ["Skipped (not among `--sections`)."]
    lines: list[str] = []
    if status == "failed":
        lines += [f"**FAILED**: `{sec.get('error')}`", ""]
        if sec.get("log_tail"):
            lines += [f"Last lines of `{sec.get('log')}`:", "", "```", *sec["log_tail"], "```", ""]
    if name in ("bench", "bench_train") and status == "ok":
        lines += demoted(BENCH_RENDERERS[name](), sec["result"])
    if name in ("train", "mask") and "step_time_s" in sec:
        lines += training_lines(sec)
    return lines


def _bench_markdown() -> Callable[[dict[str, Any]], str]:
    from cnet.tools.bench import to_markdown

    return to_markdown


def _bench_train_markdown() -> Callable[[dict[str, Any]], str]:
    from cnet.tools.bench_train import to_markdown

    return to_markdown


BENCH_RENDERERS: dict[str, Callable[[], Callable[[dict[str, Any]], str]]] = {
    "bench": _bench_markdown,
    "bench_train": _bench_train_markdown,
}


def demoted(to_markdown: Callable[[dict[str, Any]], str], result: dict[str, Any]) -> list[str]:
    """A tool's own markdown with its headings two levels down (they sit under a section heading)."""
    return [f"##{ln}" if ln.startswith("#") else ln for ln in to_markdown(result).rstrip().splitlines()]


def training_lines(sec: dict[str, Any]) -> list[str]:
    accum = sec.get("accum_steps")
    batch = f"{sec.get('batch_per_process')} per process x {sec.get('world_size')} processes = "
    batch += f"{sec.get('global_batch')} per step" + (" (no accumulation)" if accum == 1 else f", {accum} accumulated")
    rows = [
        ("processes (world size)", sec.get("world_size")),
        ("model", f"{sec.get('backbone')}, {fmt(sec.get('num_parameters'), ',')} parameters, {sec.get('precision')}"),
        ("batch", batch),
        ("optimizer steps", sec.get("optimizer_steps")),
        ("step time, median", f"{fmt(sec.get('step_time_s'), '.3f')} s"),
        ("images/s (global batch / median step)", fmt(sec.get("images_per_s"), ".1f")),
        ("images/s over the whole epoch (first steps included)", fmt(sec.get("epoch_images_per_s"), ".1f")),
        ("MLflow run", f"{sec.get('mlflow_run_id')} ({sec.get('mlflow_status')})"),
    ]
    if "mask_loss_by_epoch" in sec:
        history = ", ".join(f"epoch {i + 1}: {fmt(v, '.4f')}" for i, v in enumerate(sec["mask_loss_by_epoch"]))
        rows.append(("train_mask by epoch (0 while the head waits)", history))
        trained = sec.get("mask_trained")
        rows.append(("head trained in epoch 2", "yes" if trained else "no: no proposal matched an object (loss 0)"))
        rows.append(("segm_AP (a few val images)", fmt(sec.get("segm_AP"), ".3f")))
    lines = ["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), ""]
    memory = sec.get("peak_memory") or []
    if memory:
        lines += [f"Peak memory per rank (`{memory[0].get('source')}`):", "",
                  "| rank | device | peak GiB | reserved GiB |", "|---|---|---|---|"]  # fmt: skip
        lines += [f"| {r['rank']} | {r.get('device')} | {fmt(r.get('peak_memory_gib'), '.2f')} | "
                  f"{fmt(r.get('peak_reserved_gib'), '.2f')} |" for r in memory]  # fmt: skip
        lines.append("")
    losses = sec.get("losses") or {}
    if losses:
        lines += ["Final losses (means over the last epoch):", "", "| loss | value |", "|---|---|"]
        lines += [f"| {k} | {fmt(v, '.4f')} |" for k, v in losses.items()]
    return lines


def fmt(value: Any, spec: str) -> str:
    """``value`` formatted, or ``-`` when it is missing or not a finite number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "-" if value is None else str(value)
    return format(value, spec)
