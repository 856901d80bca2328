"""Render a built :class:`cnet.tools.report_tables.Table` as Markdown, CSV, LaTeX and a PNG bar chart.

Our cells print their value (``41.2``, ``41.2 ± 0.3`` over seeds, ``n/a`` where COCO had no
object of that size) or, without a value, their state (``not run``, ``failed``, ``running 3/110``);
the state column and a provenance list (run ids, dataset, backbone, schedule) follow every table.
A table with intervals (``--ci``) has two more columns after AP's, the 95 % interval of our AP and
our difference to the base row with its interval, the sentence on the paper's orderings below it,
and the intervals as the error bars of our bars in the PNG.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from cnet.files import write_text_atomic
from cnet.tools.report_tables import METRICS, Cell, RowInterval, Table, progress

DASH = "—"
RULE_NOTE = (
    "ours = metrics.{kind}_* x 100 of the latest FINISHED run per seed among the runs tagged with the "
    "row's configuration; several seeds: mean ± std (n). diff = ours - paper. n/a: COCO gives -1 "
    "(no object of that size in the evaluation set)."
)


def ours_text(cell: Cell, metric: str) -> str:
    """Our value for one metric, or the cell's state when it has no value."""
    if cell.n == 0:
        return cell.label
    if metric in cell.absent:
        return "not logged"
    mean, std = cell.mean.get(metric, math.nan), cell.std.get(metric, math.nan)
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.1f} ± {std:.1f}" if cell.n > 1 and math.isfinite(std) else f"{mean:.1f}"


def diff_text(cell: Cell, metric: str, paper: float) -> str:
    """``ours - paper`` with a sign, or a dash when ours is missing."""
    mean = cell.mean.get(metric, math.nan)
    return f"{mean - paper:+.1f}" if cell.n and math.isfinite(mean) else DASH


def _has_epoch(table: Table) -> bool:
    return any(row.epochs is not None for row in table.spec.rows)


def interval_text(ci: tuple[float, float] | None, signed: bool = False) -> str:
    """``[40.1, 41.9]`` (``[-0.2, +1.4]`` signed), or a dash."""
    if ci is None or not all(math.isfinite(v) for v in ci):
        return DASH
    fmt = "{:+.1f}" if signed else "{:.1f}"
    return f"[{fmt.format(ci[0])}, {fmt.format(ci[1])}]"


def ci_header(table: Table) -> list[str]:
    """The two interval columns (after AP's), or none."""
    return [] if table.intervals is None else ["AP 95% CI", f"AP vs {table.spec.rows[0].name}"]


def ci_cells(table: Table, i: int) -> list[str]:
    """Row ``i``'s interval cells: our AP's interval; the difference to the base row with its own."""
    if table.intervals is None:
        return []
    ri = table.intervals.rows[i]
    if i == 0:
        return [interval_text(ri.ap), "base"]
    diff = DASH if ri.diff is None else f"{ri.diff:+.1f} {interval_text(ri.diff_ci, signed=True)}"
    return [interval_text(ri.ap), diff]


def header(table: Table) -> list[str]:
    """Column names of the printed table."""
    cols = ["row"] + (["epoch"] if _has_epoch(table) else [])
    for m in METRICS:
        cols += [f"{m} ours", f"{m} paper", f"{m} diff"] + (ci_header(table) if m == "AP" else [])
    cols += [f"{x} (ours only)" for x in table.extra_metrics]
    return cols + ["state"]


def body(table: Table) -> list[list[str]]:
    """One list of printed cells per row, aligned with :func:`header`."""
    lines = []
    for i, (row, cell) in enumerate(zip(table.spec.rows, table.cells)):
        line = [row.name] + ([table.spec.epoch_label(row)] if _has_epoch(table) else [])
        for m in METRICS:
            line += [ours_text(cell, m), f"{row.paper[m]:.1f}", diff_text(cell, m, row.paper[m])]
            line += ci_cells(table, i) if m == "AP" else []
        line += [ours_text(cell, x) for x in table.extra_metrics]
        lines.append(line + [cell.label])
    return lines


def ci_note(table: Table) -> str:
    """How the intervals were made, and the sentence on the paper's orderings ("" without intervals)."""
    iv = table.intervals
    if iv is None:
        return ""
    left_out = [f"{row.name}: {r.note}" for row, r in zip(table.spec.rows, iv.rows) if r.note]
    return (
        f"95% CI: percentile interval of the paired image bootstrap, {iv.resamples} resamples of the {iv.images} "
        f"evaluation images (seed {iv.seed}), every run re-scored from its own results file on the same "
        f"resamples; several seeds: their mean on each resample (their spread is the ± of AP ours). "
        f"AP vs {table.spec.rows[0].name}: ours minus the base row's, with its interval. "
        + iv.orderings
        + (f" Left out: {'; '.join(left_out)}." if left_out else "")
    )


def provenance_lines(table: Table) -> list[str]:
    """One line per row: the runs behind our cell (or why there is none), and notes."""
    lines = []
    for row, cell in zip(table.spec.rows, table.cells):
        name = row.name + (f" ({table.spec.epoch_label(row)} ep)" if _has_epoch(table) else "")
        parts = []
        for r in cell.used:
            parts.append(
                f"run {r.run_id} (seed {r.seed}, {r.status}, trained {progress(r)} epochs): "
                f"data {r.data}, backbone {r.backbone}, schedule {r.schedule}"
            )
        for r in cell.running:
            parts.append(
                f"run {r.run_id} (seed {r.seed}, RUNNING, at epoch {progress(r)}): "
                f"data {r.data}, backbone {r.backbone}, schedule {r.schedule}"
            )
        if not parts:
            parts.append(cell.label)
        notes = [row.note] if row.note else []
        notes += cell.notes
        lines.append(f"{name}: " + "; ".join(parts) + (f" [{'; '.join(notes)}]" if notes else ""))
    return lines


def to_markdown(table: Table) -> str:
    """The table as GitHub Markdown, with the rule and provenance below it."""
    cols = header(table)
    align = ["---"] + ["---:"] * (len(cols) - 2) + ["---"]
    out = [f"## {table.title}", "", "| " + " | ".join(cols) + " |", "|" + "|".join(align) + "|"]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in line) + " |" for line in body(table)]
    out += ["", RULE_NOTE.format(kind=table.spec.metric)] + (["", ci_note(table)] if table.intervals else [])
    out += ["", "Provenance:", ""]
    out += [f"- {line}" for line in provenance_lines(table)]
    return "\n".join(out) + "\n"


def table_frame(table: Table) -> pd.DataFrame:
    """The table as a DataFrame (what the CSV holds): per metric ours / ours_std / paper / diff,
    then state, n and the provenance of every used run."""
    has_epoch = any(row.epochs is not None for row in table.spec.rows)
    records = []
    for i, (row, cell) in enumerate(zip(table.spec.rows, table.cells)):
        rec: dict[str, Any] = {"row": row.name}
        if has_epoch:
            rec["epoch"] = table.spec.paper_epochs(row)
        for m in table.metrics:
            rec[f"{m}_ours"] = cell.mean.get(m, math.nan)
            rec[f"{m}_ours_std"] = cell.std.get(m, math.nan)
            if m in METRICS:
                rec[f"{m}_paper"] = row.paper[m]
                rec[f"{m}_diff"] = rec[f"{m}_ours"] - row.paper[m]
            if m == "AP" and table.intervals is not None:
                rec |= _ci_record(table.intervals.rows[i])
        rec |= {
            "state": cell.label,
            "n": cell.n,
            "run_ids": " ".join(r.run_id for r in cell.used),
            "seeds": " ".join(r.seed for r in cell.used),
            "dataset": " ".join(sorted({r.data for r in cell.used})),
            "backbone": " ".join(sorted({r.backbone for r in cell.used})),
            "schedule": " ".join(sorted({f"{r.schedule}:{r.epochs}" for r in cell.used})),
            "epochs_trained": " ".join(progress(r) for r in cell.used),
            "running_run_ids": " ".join(r.run_id for r in cell.running),
            "note": "; ".join([*([row.note] if row.note else []), *cell.notes]),
        }
        records.append(rec)
    return pd.DataFrame.from_records(records)


def _ci_record(ri: RowInterval) -> dict[str, float]:
    """The CSV's interval columns of one row (NaN where there is none)."""
    ap, diff = ri.ap or (math.nan, math.nan), ri.diff_ci or (math.nan, math.nan)
    return {
        "AP_ci_low": ap[0],
        "AP_ci_high": ap[1],
        "AP_vs_base": math.nan if ri.diff is None else ri.diff,
        "AP_vs_base_ci_low": diff[0],
        "AP_vs_base_ci_high": diff[1],
    }


def to_csv(table: Table) -> str:
    """The table as CSV: numeric ours/paper/diff columns, state, n and provenance columns."""
    return table_frame(table).to_csv(index=False)


_TEX = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\^{}",
    "±": r"$\pm$",
    DASH: "--",
}


def _tex(text: str) -> str:
    """Escape LaTeX specials character by character; ± and the dash become $\\pm$ and --."""
    return "".join(_TEX.get(ch, ch) for ch in text)


def to_latex(table: Table) -> str:
    """The table as a LaTeX ``table`` (``tabular`` scaled by ``\\resizebox``: needs graphicx) plus
    the provenance as an ``itemize``."""
    lead = 2 if _has_epoch(table) else 1
    extras = len(table.extra_metrics)
    n_ci = len(ci_header(table))  # the interval columns sit under AP's heading
    spec = "l" * lead + "r" * (3 + n_ci) + "rrr" * (len(METRICS) - 1) + "r" * extras + "l"
    top = ["", ""][:lead] + [rf"\multicolumn{{{3 + n_ci if m == 'AP' else 3}}}{{c}}{{{m}}}" for m in METRICS]
    top += [_tex(x) for x in table.extra_metrics] + [""]
    ap_second = ["ours", "paper", r"$\Delta$"] + (["95\\% CI", "vs base"] if n_ci else [])
    second = (
        ["row", "epoch"][:lead] + ap_second + ["ours", "paper", r"$\Delta$"] * (len(METRICS) - 1)
        + ["ours only"] * extras + ["state"]
    )  # fmt: skip
    out = [
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{_tex(table.title)}}}",
        rf"\label{{tab:cnet-{table.spec.key}}}",
        r"\resizebox{\linewidth}{!}{%",
        rf"\begin{{tabular}}{{{spec}}}",
        r"\hline",
        " & ".join(top) + r" \\",
        " & ".join(second) + r" \\",
        r"\hline",
    ]
    out += [" & ".join(_tex(c) for c in line) + r" \\" for line in body(table)]
    out += [
        r"\hline",
        r"\end{tabular}}",
        r"\end{table}",
        "",
        f"% {_tex(RULE_NOTE.format(kind=table.spec.metric))}",
    ]
    out += [_tex(ci_note(table)), ""] if table.intervals else []
    out += [
        r"\begin{itemize}",
    ]
    out += [rf"\item {_tex(line)}" for line in provenance_lines(table)]
    out += [r"\end{itemize}"]
    return "\n".join(out) + "\n"


def _error_bar(table: Table, i: int, mean: float) -> tuple[Any, dict[str, Any]]:
    """Our bar's error bar: the 95 % interval with ``--ci`` (asymmetric, black), else the seeds' std."""
    ci = table.intervals.rows[i].ap if table.intervals is not None else None
    if ci is not None:
        return [[max(0.0, mean - ci[0])], [max(0.0, ci[1] - mean)]], {"ecolor": "black", "capsize": 4}
    std = table.cells[i].std.get("AP", math.nan)
    return (std if math.isfinite(std) else None), {"capsize": 3}


def to_png(table: Table, path: Path) -> None:
    """Grouped bars of AP per row, ours vs paper; a row without our AP gets its state as label. Our
    bars' error bars: the 95 % bootstrap interval with ``--ci``, else the seeds' std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [row.name + (f"\n{table.spec.epoch_label(row)} ep" if _has_epoch(table) else "") for row in table.spec.rows]
    paper = [row.paper["AP"] for row in table.spec.rows]
    x = range(len(names))
    width = 0.38
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(names)), 4.2))
    ax.bar([i + width / 2 for i in x], paper, width, color="#9aa5b1")
    top = max(paper)
    for i, cell in enumerate(table.cells):
        mean = cell.mean.get("AP", math.nan)
        if cell.n and math.isfinite(mean):
            yerr, style = _error_bar(table, i, mean)
            ax.bar(i - width / 2, mean, width, color="#1f77b4", yerr=yerr, **style)
            ax.text(i - width / 2 - 0.03, mean, f"{mean:.1f}", ha="right", va="bottom", fontsize=8)
            top = max(top, mean, mean + (yerr[1][0] if isinstance(yerr, list) else 0.0))
            if cell.state != "ok":
                ax.text(i - width / 2, mean / 2, cell.label, ha="center", va="center", rotation=90, fontsize=7)
        else:
            ax.text(
                i - width / 2,
                1.0,
                cell.label if cell.n == 0 else "n/a",
                ha="center",
                va="bottom",
                rotation=90,
                fontsize=8,
                color="#b00020",
            )
    handles = [plt.Rectangle((0, 0), 1, 1, color="#1f77b4"), plt.Rectangle((0, 0), 1, 1, color="#9aa5b1")]
    iv = table.intervals
    ours = "ours" if iv is None else f"ours, 95% interval ({iv.resamples} paired image resamples of {iv.images})"
    ax.legend(handles, [ours, "paper"], loc="upper left", fontsize=8, framealpha=0.9)
    ax.set_xticks(list(x), names, fontsize=8)
    ax.set_ylabel("box AP (%)")
    ax.set_ylim(0, top * 1.3 + 1)  # room for the legend above the bars
    ax.set_title("\n".join(_wrap(table.title, 95)), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + ([line] if line else [])


def write_all(table: Table, out_dir: Path) -> dict[str, str]:
    """Write ``<out_dir>/<table>.{md,csv,tex,png}``; returns the text of each text format."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    texts = {"md": to_markdown(table), "csv": to_csv(table), "tex": to_latex(table)}
    for ext, text in texts.items():
        write_text_atomic(out_dir / f"{table.spec.key}.{ext}", text)
    to_png(table, out_dir / f"{table.spec.key}.png")
    return texts
