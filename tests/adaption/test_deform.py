"""The native and fused deformable 3x3 convolutions equal torchvision's, output and all three gradients.

Offsets are random and large enough that many taps sample partly or wholly outside the map
(torchvision: bilinear with the 4 neighbours, a neighbour outside counts 0). Every deformable
adaption option gives the same outputs and gradients with ``impl=torchvision``, ``native`` and
``fused``. The fused kernel is built here on first use (the test machine has a C++ compiler).
"""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import deform_conv2d

from cnet.adaption.deform import deform_conv3x3, resolve_impl
from cnet.compose import option_factory

DEFORMABLE = ("dcn", "roi_conv", "cross_star")
OURS = ("native", "fused")  # the implementations checked against torchvision


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference relative to the reference's largest magnitude."""
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-30)).item()


def inputs(b: int, c: int, cout: int, h: int, w: int, spread: float, dtype=torch.float32):
    g = torch.Generator().manual_seed(b * 1000 + c * 100 + h * 10 + w)
    x = torch.randn(b, c, h, w, generator=g, dtype=dtype).requires_grad_()
    offset = (torch.randn(b, 18, h, w, generator=g, dtype=dtype) * spread).requires_grad_()
    weight = torch.randn(cout, c, 3, 3, generator=g, dtype=dtype).requires_grad_()
    return x, offset, weight


def assert_equals_torchvision(impl: str, x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor) -> None:
    """``impl``'s output and its input, offset and weight gradients equal torchvision's to 1e-5 relative."""
    b, cout, (h, w) = x.shape[0], weight.shape[0], x.shape[-2:]
    grad = torch.randn(b, cout, h, w, generator=torch.Generator().manual_seed(1))
    results = {}
    for name in ("torchvision", impl):
        out = deform_conv3x3(x, offset, weight, impl=name)
        results[name] = (out, *torch.autograd.grad(out, (x, offset, weight), grad))
    for name, ours, ref in zip(("output", "input", "offset", "weight"), results[impl], results["torchvision"]):
        assert ours.shape == ref.shape
        assert rel_err(ours, ref) < 1e-5, name
    ref = deform_conv2d(x, offset, weight, padding=1)  # the switch really compares with torchvision
    assert torch.equal(results["torchvision"][0], ref)


@pytest.mark.parametrize("impl", OURS)
@pytest.mark.parametrize(
    ("b", "c", "cout", "h", "w"),
    # non-square, C != Cout, batch 1, one row; the last two span several of the fused kernel's 128-cell tiles
    [(2, 5, 7, 6, 9), (1, 8, 3, 11, 4), (3, 16, 16, 8, 8), (1, 4, 6, 1, 5), (1, 24, 8, 20, 23), (3, 3, 5, 13, 29)],
)
def test_equals_torchvision_output_and_gradients(impl, b, c, cout, h, w):
    x, offset, weight = inputs(b, c, cout, h, w, spread=0.4 * max(h, w))
    # many samples land far outside the map, some partly outside
    pos_y = offset.detach()[:, 0::2] + torch.arange(h)[:, None]
    assert (pos_y <= -1).any() and (pos_y >= h).any() and ((pos_y > -1) & (pos_y < 0)).any()
    assert_equals_torchvision(impl, x, offset, weight)


@pytest.mark.parametrize("impl", OURS)
def test_gradcheck_float64(impl):
    x, offset, weight = inputs(1, 2, 3, 4, 5, spread=2.0, dtype=torch.float64)
    # keep samples off integer coordinates, where bilinear interpolation has a kink
    with torch.no_grad():
        offset += 0.25 - (offset - offset.floor() - 0.5).sign() * 0.1
    assert torch.autograd.gradcheck(lambda *a: deform_conv3x3(*a, impl=impl), (x, offset, weight))


@pytest.mark.parametrize("impl", OURS)
def test_offsets_without_gradient_are_fine(impl):
    """RoI conv detaches its offsets: the backward then skips the offset gradient."""
    x, offset, weight = inputs(2, 3, 4, 5, 5, spread=1.0)
    out = deform_conv3x3(x, offset.detach(), weight, impl=impl)
    gx, gw = torch.autograd.grad(out.sum(), (x, weight))
    ref = deform_conv2d(x, offset.detach(), weight, padding=1)
    rx, rw = torch.autograd.grad(ref.sum(), (x, weight))
    assert rel_err(gx, rx) < 1e-5 and rel_err(gw, rw) < 1e-5


def test_auto_is_fused_on_cpu_torchvision_on_cuda():
    assert resolve_impl("auto", torch.device("cpu")) == "fused"
    assert resolve_impl("auto", torch.device("cuda")) == "torchvision"
    assert resolve_impl("torchvision", torch.device("cpu")) == "torchvision"
    assert resolve_impl("native", torch.device("cpu")) == "native"
    with pytest.raises(ValueError, match=r"adaption\.impl must be one of"):
        resolve_impl("fast", torch.device("cpu"))
    with pytest.raises(ValueError, match="CPU kernel"):
        resolve_impl("fused", torch.device("cuda"))


@pytest.mark.parametrize("impl", OURS)
@pytest.mark.parametrize("name", DEFORMABLE)
def test_adaption_modules_agree_across_impls(name, impl):
    torch.manual_seed(0)
    ref = option_factory("adaption", name)(in_channels=6, impl="torchvision").train()
    nat = option_factory("adaption", name)(in_channels=6, impl=impl).train()
    with torch.no_grad():  # offsets away from zero (dcn's offset conv starts at 0): sampling deforms
        for p in ref.parameters():
            p.normal_(std=0.3)
    nat.load_state_dict(ref.state_dict())
    tl, br = torch.randn(2, 6, 9, 7), torch.randn(2, 6, 9, 7)
    outs, grads = [], []
    for module in (ref, nat):
        tl_in, br_in = tl.clone().requires_grad_(), br.clone().requires_grad_()
        tl_out, br_out, _ = module(tl_in, br_in)
        (tl_out.square().sum() + br_out.square().sum()).backward()
        outs.append((tl_out, br_out))
        grads.append([tl_in.grad, br_in.grad] + [p.grad for p in module.parameters()])
    for a, b in zip(outs[0], outs[1]):
        assert rel_err(b, a) < 1e-5
    for a, b in zip(grads[0], grads[1]):
        assert (a is None) == (b is None)
        if a is not None and a.abs().max() > 0:
            assert rel_err(b, a) < 1e-5


@pytest.mark.parametrize("impl", OURS)
def test_under_cpu_autocast_computes_in_float32(impl):
    x, offset, weight = inputs(1, 3, 2, 4, 4, spread=1.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = deform_conv3x3(x, offset, weight, impl=impl)
        ref = deform_conv3x3(x, offset, weight, impl="torchvision")
    assert out.dtype == ref.dtype and rel_err(out.float(), ref.float()) < 1e-5
