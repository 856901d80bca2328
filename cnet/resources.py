"""Where the package's data lives: the one place that locates ``conf/`` and ``experiments/``.

In the repository ``cnet/conf`` and ``cnet/experiments`` are links to the top-level folders;
building a wheel copies their files into the package, so an installed cnet (editable or not)
finds them without a checkout.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
CONFIG_DIR = PACKAGE_DIR / "conf"  # Hydra configs (conf/config.yaml and one folder per group)
EXPERIMENTS_DIR = PACKAGE_DIR / "experiments"  # paper-table definitions (experiments/table*.yaml)
