"""Corner pooling: mmcv's exact integer vectors, a naive loop reference, gradcheck, CornerPool."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from cnet.corner_pool import CornerPool, bottom_pool, left_pool, right_pool, top_pool

# docs/implementation_facts.md §2 (mmcv tests/test_ops/test_corner_pool.py)
LR = [[0, 0, 0, 0, 0], [2, 1, 3, 0, 2], [5, 4, 1, 1, 6], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]]
TB = [[0, 3, 1, 0, 0], [0, 1, 1, 0, 0], [0, 3, 4, 0, 0], [0, 2, 2, 0, 0], [0, 0, 2, 0, 0]]
ZERO_ROW = [0, 0, 0, 0, 0]
CASES = [
    (left_pool, LR, [ZERO_ROW, [3, 3, 3, 2, 2], [6, 6, 6, 6, 6], ZERO_ROW, ZERO_ROW]),
    (right_pool, LR, [ZERO_ROW, [2, 2, 3, 3, 3], [5, 5, 5, 5, 6], ZERO_ROW, ZERO_ROW]),
    (top_pool, TB, [[0, 3, 4, 0, 0], [0, 3, 4, 0, 0], [0, 3, 4, 0, 0], [0, 2, 2, 0, 0], [0, 0, 2, 0, 0]]),
    (bottom_pool, TB, [[0, 3, 1, 0, 0], [0, 3, 1, 0, 0], [0, 3, 4, 0, 0], [0, 3, 4, 0, 0], [0, 3, 4, 0, 0]]),
]
POOLS = [top_pool, bottom_pool, left_pool, right_pool]


@pytest.mark.parametrize("pool, inp, expected", CASES, ids=lambda c: getattr(c, "__name__", ""))
def test_exact_integer_vectors(pool: Callable[[Tensor], Tensor], inp: list, expected: list) -> None:
    out = pool(torch.tensor(inp, dtype=torch.float32)[None, None])  # [1, 1, 5, 5]
    assert torch.equal(out[0, 0], torch.tensor(expected, dtype=torch.float32))


def _naive(x: Tensor, name: str) -> Tensor:
    """Double loop straight from the definitions (rows = i = y, columns = j = x)."""
    _, _, h, w = x.shape
    out = torch.empty_like(x)
    for i in range(h):
        for j in range(w):
            if name == "top_pool":
                region = x[:, :, i:, j]
            elif name == "bottom_pool":
                region = x[:, :, : i + 1, j]
            elif name == "left_pool":
                region = x[:, :, i, j:]
            else:
                region = x[:, :, i, : j + 1]
            out[:, :, i, j] = region.amax(dim=-1)
    return out


@pytest.mark.parametrize("pool", POOLS, ids=lambda p: p.__name__)
def test_matches_naive_loop(pool: Callable[[Tensor], Tensor]) -> None:
    x = torch.randn(2, 3, 6, 7, generator=torch.Generator().manual_seed(0))
    out = pool(x)
    assert out.shape == x.shape
    assert torch.equal(out, _naive(x, pool.__name__))


@pytest.mark.parametrize("pool", POOLS, ids=lambda p: p.__name__)
def test_gradcheck(pool: Callable[[Tensor], Tensor]) -> None:
    # random doubles have no ties, so the running max is differentiable almost everywhere
    x = torch.randn(1, 2, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert torch.autograd.gradcheck(pool, (x.requires_grad_(),))


def test_corner_pool_param_count_matches_bicornerpool() -> None:
    c, p = 256, 128
    convs = c * p * 9 * 2 + p * c * 9 + c * c + c * c * 9  # two branches, merge, skip, out conv
    bns = 2 * p * 2 + 2 * c * 3
    with torch.device("meta"):
        module = CornerPool(c, p, ("top", "left"))
    assert sum(t.numel() for t in module.parameters()) == convs + bns


@pytest.mark.parametrize("directions", [("top", "left"), ("bottom", "right")])
def test_corner_pool_output_shape_and_grad(directions: tuple[str, str]) -> None:
    torch.manual_seed(0)
    module = CornerPool(8, 4, directions)
    x = torch.randn(2, 8, 9, 11, requires_grad=True)
    out = module(x)
    assert out.shape == (2, 8, 9, 11)
    assert (out >= 0).all()  # ends with ReLU
    out.sum().backward()
    assert all(p.grad is not None for p in module.parameters())


@pytest.mark.parametrize("far_pixel", [(0, 11), (11, 0)])
def test_corner_pool_looks_along_its_edges(far_pixel: tuple[int, int]) -> None:
    """Output (0, 0) of a top-left module sees a far pixel in its row or column (left/top pool
    scan right/down); a bottom-right module's (0, 0) only sees its 3x3-conv neighbourhood."""
    torch.manual_seed(0)
    x = torch.randn(1, 4, 12, 12)
    x_far = x.clone()
    x_far[..., far_pixel[0], far_pixel[1]] += 100.0
    for directions, reaches in [(("top", "left"), True), (("bottom", "right"), False)]:
        module = CornerPool(4, 4, directions).eval()
        with torch.no_grad():
            changed = not torch.allclose(module(x)[..., 0, 0], module(x_far)[..., 0, 0])
        assert changed == reaches, directions


@pytest.mark.parametrize("directions", [("top", "up"), ("top",), ("top", "left", "right")])
def test_corner_pool_bad_direction_raises(directions: tuple) -> None:
    with pytest.raises(ValueError, match="directions"):
        CornerPool(8, 4, directions)
