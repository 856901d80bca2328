"""The package reads bottom-up: no import cycles, no import from a higher layer, Hydra in one module.

helpers (views among them) <- backbone/matching/adaption/mask_head <- decode/detector <- criterion/postprocess
<- predictor/evaluator/trainer/model <- run <- compose <- tools <- train.py. Imports are read from the source
(``ast``), so the test sees imports inside functions too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cnet"

# first matching prefix wins; a module's layer is the highest it may import from
LAYERS: list[tuple[str, int]] = [
    ("cnet.ops", 0),
    ("cnet.types", 0),
    ("cnet.errors", 0),
    ("cnet.resources", 0),
    ("cnet.files", 0),
    ("cnet.targets", 1),
    ("cnet.losses", 1),
    ("cnet.nms", 1),
    ("cnet.checkpoint", 1),
    ("cnet.mmdet_weights", 1),  # mmdetection's weights files: read without code, key names
    ("cnet.init_from", 1),  # init_from: load what fits of other weights, and say what
    ("cnet.schedule", 1),
    ("cnet.evaluation", 1),
    ("cnet.data", 1),
    ("cnet.corner_pool", 1),
    ("cnet.center_pool", 1),
    ("cnet.parts", 1),
    ("cnet.masks", 1),
    ("cnet.views", 1),  # test-time views: the predictor and the mask head map boxes and masks through them
    ("cnet.backbone", 2),
    ("cnet.matching", 2),
    ("cnet.adaption", 2),
    ("cnet.mask_head", 2),
    ("cnet.decode", 3),
    ("cnet.detector", 3),
    ("cnet.criterion", 4),
    ("cnet.postprocess", 4),
    ("cnet.oracle", 4),
    ("cnet.predictor", 5),
    ("cnet.evaluator", 5),  # the COCO evaluation loop over a predictor (cnet.evaluate: the CLI alias)
    ("cnet.model", 5),
    ("cnet.trainer", 5),
    ("cnet.tracking", 5),
    ("cnet.run", 6),
    ("cnet.eval_artifacts", 6),  # per-evaluation picture and error summary (a trainer callback)
    ("cnet.runs_view", 6),  # the MLflow runs table's ablation view and its link
    ("cnet.job", 6),  # one job around its Run: DDP set-up, tracking, job status
    ("cnet.compose", 7),
    ("cnet.tools", 8),
    ("cnet.test", 8),  # `python -m cnet.<tool>` aliases of cnet.tools.<tool>
    ("cnet.predict", 8),
    ("cnet.convert", 8),
    ("cnet.evaluate", 8),
    ("cnet", 0),  # the package __init__
]


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def layer(module: str) -> int:
    for prefix, rank in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return rank
    raise AssertionError(f"{module} has no layer in tests/test_layers.py: add it")


def imports(path: Path) -> set[str]:
    """Every cnet module imported anywhere in ``path`` (``from cnet.x import y`` -> cnet.x or cnet.x.y)."""
    found: set[str] = set()
    tree = ast.parse(path.read_text())
    known = {module_name(p) for p in PACKAGE.rglob("*.py")}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("cnet")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cnet"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
    return found


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
GRAPH = {m: imports(p) - {m} for m, p in MODULES.items()}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_upward_import(module):
    upward = sorted(dep for dep in GRAPH[module] if layer(dep) > layer(module))
    assert not upward, f"{module} (layer {layer(module)}) imports higher layers: {upward}"


def test_no_import_cycle():
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for dep in sorted(GRAPH.get(m, ())):
            if dep not in GRAPH:
                continue  # a package's re-exported name
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep) :] + [dep] if dep in stack else [m, dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, [*stack, dep])
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m, [m])


def test_ops_is_a_leaf():
    assert GRAPH["cnet.ops"] == set()


@pytest.mark.parametrize("module", sorted(MODULES))
def test_hydra_only_in_compose(module):
    tree = ast.parse(MODULES[module].read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    config_libs = sorted(n for n in names if n.split(".")[0] in ("hydra", "omegaconf"))
    assert module == "cnet.compose" or not config_libs, f"{module} imports {config_libs}: go through cnet.compose"
