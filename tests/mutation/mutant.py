"""One curated mutation: ``old`` (exactly once in ``file``) becomes ``new``; ``tests`` run first."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutant:
    name: str
    component: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...] = ()
