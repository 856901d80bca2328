"""Centre pooling: row max + column max on exact integers, a naive reference, CenterPool."""

from __future__ import annotations

import torch

from cnet.center_pool import CenterPool, column_max_pool, row_max_pool

# hand-built 4 x 5 map (rows = y, columns = x)
X = [[1, 0, 7, 2, 0], [3, 9, 1, 0, 4], [0, 2, 5, 8, 1], [6, 1, 0, 3, 2]]
ROW_MAX = [7, 9, 8, 6]
COL_MAX = [6, 9, 7, 8, 4]


def test_row_and_column_max_exact_values() -> None:
    x = torch.tensor(X, dtype=torch.float32)[None, None]  # [1, 1, 4, 5]
    rows = torch.tensor(ROW_MAX, dtype=torch.float32)[:, None].expand(4, 5)
    cols = torch.tensor(COL_MAX, dtype=torch.float32)[None, :].expand(4, 5)
    assert torch.equal(row_max_pool(x)[0, 0], rows)
    assert torch.equal(column_max_pool(x)[0, 0], cols)
    # the cross sum a centre cell sees, e.g. (y=2, x=0): row max 8 + column max 6
    cross = row_max_pool(x) + column_max_pool(x)
    assert cross[0, 0, 2, 0].item() == 14.0
    assert torch.equal(cross[0, 0], rows + cols)


def test_matches_naive_row_plus_column_max() -> None:
    x = torch.randn(2, 3, 6, 7, generator=torch.Generator().manual_seed(0))
    naive = torch.empty_like(x)
    for i in range(6):
        for j in range(7):
            naive[:, :, i, j] = x[:, :, i, :].amax(-1) + x[:, :, :, j].amax(-1)
    assert torch.equal(row_max_pool(x) + column_max_pool(x), naive)


def test_center_pool_shape_and_gradients_reach_all_parameters() -> None:
    torch.manual_seed(0)
    module = CenterPool(8, 4)
    x = torch.randn(2, 8, 9, 11, requires_grad=True)
    out = module(x)
    assert out.shape == (2, 8, 9, 11)
    assert (out >= 0).all()  # ends with ReLU
    out.sum().backward()
    assert x.grad is not None
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_center_pool_param_count() -> None:
    c, p = 256, 128
    convs = c * p * 9 * 2 + p * c * 9 + c * c + c * c * 9  # two branches, merge, skip, out conv
    bns = 2 * p * 2 + 2 * c * 3
    with torch.device("meta"):
        module = CenterPool(c, p)
    assert sum(t.numel() for t in module.parameters()) == convs + bns


def test_center_pool_sees_its_whole_row_and_column_only() -> None:
    """Output (5, 5) changes when a far pixel in its row or column changes, not elsewhere."""
    torch.manual_seed(0)
    module = CenterPool(4, 4).eval()
    x = torch.randn(1, 4, 12, 12)

    def changed(y: int, x_: int) -> bool:
        x_far = x.clone()
        x_far[..., y, x_] += 100.0
        with torch.no_grad():
            return not torch.allclose(module(x)[..., 5, 5], module(x_far)[..., 5, 5])

    assert changed(5, 11) and changed(5, 0)  # same row, both ends
    assert changed(0, 5) and changed(11, 5)  # same column, both ends
    assert not changed(0, 0) and not changed(11, 11)  # off the cross (beyond the 3x3 convs)
