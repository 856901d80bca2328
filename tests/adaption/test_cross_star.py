"""adaption=cross_star: offsets depend on the guiding shift only; no gradient back into it."""

from __future__ import annotations

import torch

from cnet.adaption.cross_star import CrossStar


def test_offsets_depend_on_the_guiding_shift_only():
    torch.manual_seed(0)
    m = CrossStar(in_channels=6).eval()
    fixed = torch.randn(1, 2, 8, 8)
    hook = m.tl.guiding.register_forward_hook(lambda mod, inp, out: fixed)  # guiding output pinned
    pool_a, pool_b, br_pool = torch.randn(1, 6, 8, 8), torch.randn(1, 6, 8, 8), torch.randn(1, 6, 8, 8)
    tl_a, _, maps_a = m(pool_a, br_pool)
    tl_b, _, maps_b = m(pool_b, br_pool)
    assert torch.equal(maps_a["tl_dcn_offset"], maps_b["tl_dcn_offset"])
    assert not torch.allclose(tl_a, tl_b)  # the pool feature did change what was sampled
    fixed.add_(1.0)  # a different guiding shift moves the offsets
    _, _, maps_c = m(pool_a, br_pool)
    assert not torch.allclose(maps_a["tl_dcn_offset"], maps_c["tl_dcn_offset"])
    hook.remove()


def test_deformable_path_sends_no_gradient_into_the_guiding_branch():
    torch.manual_seed(0)
    m = CrossStar(in_channels=6).train()
    tl, br, maps = m(torch.randn(2, 6, 8, 8), torch.randn(2, 6, 8, 8))
    (tl.square().sum() + br.square().sum()).backward()  # adapted features only
    for corner in (m.tl, m.br):
        for p in corner.guiding.parameters():
            assert p.grad is None or not p.grad.any()
        assert corner.weight.grad.abs().sum() > 0 and corner.offset.weight.grad.abs().sum() > 0
    assert "tl_dcn_offset" not in maps  # offsets are an eval-mode output
