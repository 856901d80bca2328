"""Mutation check: plant each curated mutation (tests/mutation/mutants.py) and run the fast suite.

    python tests/mutation/run.py [--only NAME ...] [--timeout SECONDS] [--list]

The repository's files (``git ls-files``, plus untracked files git does not ignore) are copied once
to a temporary folder; each mutation is applied there alone, its listed tests run first and, only if
they pass, the whole fast suite (``-m "not slow"``), with the copy first on PYTHONPATH and as the
working directory. tests/mutation itself is left out of those runs (its snippet test would catch
every mutant). Prints a caught/survived table with the first failing test and exits 1 if any
mutant survived, 2 if a mutation's ``old`` snippet is not found exactly once.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mutants import MUTANTS, Mutant

ROOT = Path(__file__).resolve().parents[2]
PYTEST = [
    "-m",
    "pytest",
    "-x",
    "-q",
    "-m",
    "not slow",
    "-p",
    "no:cacheprovider",
    "-o",
    "addopts=--strict-markers",
    "-rf",
    "--ignore=tests/mutation",
]


class SnippetError(Exception):
    """A mutation's ``old`` snippet is missing or ambiguous in the current source."""


def repo_files(root: Path) -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [f for f in out.split("\0") if f and ((root / f).is_file() or (root / f).is_symlink())]


def mutated_text(root: Path, m: Mutant) -> tuple[str, str]:
    """(original, mutated) text of ``m.file``; raises SnippetError unless ``old`` occurs exactly once."""
    text = (root / m.file).read_text()
    count = text.count(m.old)
    if count != 1:
        raise SnippetError(f"mutant {m.name}: `old` occurs {count} times in {m.file} (must be exactly once)")
    return text, text.replace(m.old, m.new)


def first_failure(output: str) -> str:
    """The first ``FAILED``/``ERROR`` node id of a pytest run's summary, else its last line."""
    for line in output.splitlines():
        match = re.match(r"^(FAILED|ERROR) (\S+)", line)
        if match:
            return match.group(2)
    lines = [line for line in output.splitlines() if line.strip()]
    return lines[-1][:100] if lines else "?"


def run_pytest(copy: Path, args: list[str], timeout: float) -> tuple[int | None, str]:
    """Exit code (None on timeout) and output of one pytest run in ``copy``."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(copy), os.environ.get("PYTHONPATH", "")]))
    env.pop("MLFLOW_TRACKING_URI", None)
    try:
        proc = subprocess.run(
            [sys.executable, *PYTEST, *args], cwd=copy, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return None, "timeout"
    return proc.returncode, proc.stdout + proc.stderr


def check(copy: Path, m: Mutant, timeout: float) -> tuple[str, str]:
    """('caught' | 'survived' | 'timeout', detail) of one mutant, planted in ``copy`` and undone after."""
    original, mutated = mutated_text(copy, m)
    (copy / m.file).write_text(mutated)
    try:
        stages = [list(m.tests), []] if m.tests else [[]]
        for tests in stages:
            code, output = run_pytest(copy, tests, timeout)
            if code is None:
                return "timeout", "(counted as caught)"
            if code != 0:
                return "caught", first_failure(output)
        return "survived", "fast suite passed"
    finally:
        (copy / m.file).write_text(original)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", default=None, help="names of the mutants to run")
    parser.add_argument("--timeout", type=float, default=300.0, help="per pytest run, seconds")
    parser.add_argument("--list", action="store_true", help="print the curated mutants and exit")
    args = parser.parse_args(argv)
    mutants = [m for m in MUTANTS if args.only is None or m.name in args.only]
    if args.list:
        for m in mutants:
            print(f"{m.name:40s} {m.component:28s} {m.file}")
        return 0
    try:
        for m in mutants:
            mutated_text(ROOT, m)
            missing = [t for t in m.tests if not (ROOT / t).is_file()]
            if missing:
                raise SnippetError(f"mutant {m.name}: targeted tests {missing} do not exist")
    except SnippetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    start, rows = time.monotonic(), []
    with tempfile.TemporaryDirectory(prefix="cnet-mutants-") as tmp:
        copy = Path(tmp)
        for f in repo_files(ROOT):
            (copy / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, copy / f, follow_symlinks=False)  # cnet/conf -> ../conf
        # the unmutated copy must pass every targeted test, or "caught" would mean nothing
        targeted = sorted({t for m in mutants for t in m.tests})
        code, output = run_pytest(copy, targeted, args.timeout)
        if code != 0:
            print(f"error: the unmutated copy fails its targeted tests:\n{output[-3000:]}", file=sys.stderr)
            return 2
        print(f"baseline: {len(targeted)} targeted test files pass unmutated ({time.monotonic() - start:.0f} s)")
        for m in mutants:
            t0 = time.monotonic()
            result, detail = check(copy, m, args.timeout)
            rows.append((m, result, detail, time.monotonic() - t0))
            print(f"{result:8s} {m.name:40s} {time.monotonic() - t0:6.1f}s  {detail}", flush=True)
    survived = [m.name for m, result, _, _ in rows if result == "survived"]
    print("\n| mutant | component | result | caught by | s |\n|---|---|---|---|---|")
    for m, result, detail, secs in rows:
        print(f"| {m.name} | {m.component} | {result} | {detail} | {secs:.1f} |")
    total = time.monotonic() - start
    print(f"\n{len(rows) - len(survived)}/{len(rows)} caught in {total:.0f} s; survived: {survived or 'none'}")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
