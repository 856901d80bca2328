"""adaption=dcn: starts as a plain 3x3 conv; its offsets come from the pool feature itself."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cnet.adaption.dcn import DCN


def test_fresh_module_is_a_plain_conv_without_bias():
    torch.manual_seed(0)
    m = DCN(in_channels=6).eval()
    tl_pool, br_pool = torch.randn(2, 6, 9, 11), torch.randn(2, 6, 9, 11)
    tl, br, maps = m(tl_pool, br_pool)
    assert torch.allclose(tl, F.conv2d(tl_pool, m.tl.weight, padding=1), atol=1e-6)
    assert torch.allclose(br, F.conv2d(br_pool, m.br.weight, padding=1), atol=1e-6)
    assert maps["tl_dcn_offset"].shape == (2, 18, 9, 11) and not maps["br_dcn_offset"].any()
    assert 0.005 < float(m.tl.weight.detach().std()) < 0.015  # normal std 0.01 as cross_star


def test_offsets_are_learned_from_the_pool_feature():
    torch.manual_seed(0)
    m = DCN(in_channels=6).eval()
    torch.nn.init.normal_(m.tl.offset.weight, std=0.1)
    pool = torch.randn(1, 6, 9, 11)
    tl, _, maps = m(pool, pool)
    assert maps["tl_dcn_offset"].abs().sum() > 0
    assert not torch.allclose(tl, F.conv2d(pool, m.tl.weight, padding=1), atol=1e-6)  # deformed
    _, _, maps2 = m(pool * 2, pool)
    assert not torch.allclose(maps["tl_dcn_offset"], maps2["tl_dcn_offset"])  # depend on the feature
    assert m.loss_weights == {} and set(m.train()(pool, pool)[2]) == set()  # no extra loss or maps
