"""The 3x3 deformable convolution of the adaption modules, with fast CPU implementations.

Every deformable module here (dcn, roi_conv, cross_star) runs the same operation: a 3x3
convolution, stride 1, padding 1, one offset group, no mask, no bias, with torchvision's offset
layout ((dy, dx) per tap, row-major taps; see :mod:`cnet.adaption.sampling`).
``torchvision.ops.deform_conv2d`` computes it with an im2col per image whose CPU backward is
10-20x a plain convolution. Two CPU implementations here compute the same numbers (bilinear
sampling with the 4 neighbours, each neighbour outside the map counting as 0, so a sample one cell
or more outside gives 0):

* ``fused`` (:mod:`cnet.adaption.deform_fused`): one C++ kernel, built on first use, that samples
  channels-last and multiplies tile by tile (1.4-2x a plain convolution's forward + backward);
* ``native``: PyTorch ops only, for machines without a C++ compiler (3.3-5.5x):

  * ``grid_sample`` (bilinear, zero padding) samples the nine taps of every cell for all channels
    in one call: the grid [B, 9H, W, 2] stacks the taps along H, so the samples [B, C, 9H, W]
    already are the im2col columns [B, C*9, H*W] in the (channel, tap) order of
    ``weight.view(Cout, C*9)``;
  * one batched matrix multiply with the weight gives the output;
  * the backward (a custom autograd.Function, no graph over the big columns) reuses the saved
    grid and columns: the weight gradient from the columns, the column gradient by one batched
    multiply, then grid_sample's own backward gives the input and grid (= offset) gradients in
    one pass, skipping the offset gradient when the offsets need none (RoI conv detaches them).
    The columns (B*C*9*H*W floats) are kept for the backward: 0.9 GB at 6 x 256 x 128 x 128.

``impl="auto"`` picks ``fused`` on CPU (``native``, with a warning, where the kernel cannot be
built) and torchvision's kernel elsewhere (CUDA has a fused one); that choice is made in
:func:`resolve_impl` only.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable
from torchvision.ops import deform_conv2d

from cnet.adaption.deform_fused import SOURCE, fused_deform_conv3x3, kernel_error

DeformImpl = Literal["auto", "torchvision", "native", "fused"]
IMPLS: tuple[str, ...] = ("auto", "torchvision", "native", "fused")


def resolve_impl(impl: str, device: torch.device) -> str:
    """The implementation ``impl`` runs as on ``device``: ``auto`` = fused on CPU (native where the
    kernel cannot be built), torchvision elsewhere. Builds the fused kernel on its first use."""
    if impl not in IMPLS:
        raise ValueError(f"adaption.impl must be one of {IMPLS}, got {impl!r}")
    if device.type != "cpu":
        if impl == "fused":
            raise ValueError(f"adaption.impl=fused is a CPU kernel; on {device.type} use impl=auto or torchvision")
        return "torchvision" if impl == "auto" else impl
    if impl not in ("auto", "fused"):
        return impl
    error = kernel_error()
    if error is None:
        return "fused"
    if impl == "fused":
        raise RuntimeError(
            f"adaption.impl=fused: building {SOURCE} failed ({error}); install a C++ compiler and ninja, "
            "or set adaption.impl=native"
        )
    warnings.warn(
        f"adaption.impl=auto: the fused CPU kernel cannot be built ({error}); using impl=native, 2-3x slower "
        "(install a C++ compiler and ninja to get the fused one)",
        stacklevel=2,
    )
    return "native"


def deform_conv3x3(x: Tensor, offset: Tensor, weight: Tensor, impl: str = "auto") -> Tensor:
    """3x3 deformable convolution, stride 1, padding 1, no bias, no mask.

    x: [B, C, H, W]; offset: [B, 18, H, W] ((dy, dx) per tap, taps row-major); weight
    [Cout, C, 3, 3]. Returns [B, Cout, H, W], equal to
    ``torchvision.ops.deform_conv2d(x, offset, weight, padding=1)``.
    """
    b, c, h, w = x.shape
    if offset.shape != (b, 18, h, w) or weight.shape[1:] != (c, 3, 3):
        raise ValueError(
            f"deform_conv3x3: x {tuple(x.shape)}, offset {tuple(offset.shape)}, weight {tuple(weight.shape)}"
        )
    impl = resolve_impl(impl, x.device)
    if impl == "torchvision":
        return deform_conv2d(x, offset, weight, padding=1)
    # fp32 inside under autocast (torchvision's autocast rule) and for the fused kernel's missing
    # dtypes (it has float and double only)
    if torch.is_autocast_enabled(x.device.type) or (impl == "fused" and x.dtype not in (torch.float32, torch.float64)):
        with torch.autocast(x.device.type, enabled=False):
            return deform_conv3x3(x.float(), offset.float(), weight.float(), impl).to(x.dtype)
    if impl == "fused":
        return fused_deform_conv3x3(x, offset, weight)
    out = _DeformConv3x3.apply(x, offset, weight)
    assert isinstance(out, Tensor)
    return out


def _sampling_grid(offset: Tensor) -> Tensor:
    """grid_sample's grid [B, 9*H, W, 2] for the nine taps of every cell (taps stacked along H).

    offset: [B, 18, H, W]. The grid holds (x, y) normalised for ``align_corners=False``
    (pixel p -> (2p + 1) / size - 1), which is defined for maps one cell wide as well.
    """
    b, _, h, w = offset.shape
    dev, dt = offset.device, offset.dtype
    off = offset.reshape(b, 9, 2, h, w)
    taps = torch.arange(3, device=dev, dtype=dt) - 1
    tap_y = taps.repeat_interleave(3)[:, None, None]  # row-major taps: row i slowest
    tap_x = taps.repeat(3)[:, None, None]
    py = off[:, :, 0] + (torch.arange(h, device=dev, dtype=dt)[:, None] + tap_y)  # [B, 9, H, W]
    px = off[:, :, 1] + (torch.arange(w, device=dev, dtype=dt) + tap_x)
    return torch.stack([(2 * px + 1) / w - 1, (2 * py + 1) / h - 1], -1).view(b, 9 * h, w, 2)


_BILINEAR, _ZEROS = 0, 0  # grid_sampler's interpolation / padding mode codes


class _DeformConv3x3(torch.autograd.Function):
    """Native deformable 3x3 convolution; see the module docstring for the layout."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, offset: Tensor, weight: Tensor) -> Tensor:
        b, c, h, w = x.shape
        cout = weight.shape[0]
        grid = _sampling_grid(offset.detach())
        # [B, C, 9H, W] = [B, C*9, H*W]: channel-major, tap-minor columns, as weight.view(Cout, C*9)
        cols = torch.grid_sampler_2d(x, grid, _BILINEAR, _ZEROS, False)
        out = torch.bmm(weight.reshape(1, cout, c * 9).expand(b, -1, -1), cols.view(b, c * 9, h * w))
        ctx.save_for_backward(x, weight, grid, cols)
        return out.view(b, cout, h, w)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        x, weight, grid, cols = ctx.saved_tensors
        b, c, h, w = x.shape
        cout = weight.shape[0]
        need_x, need_off, need_w = ctx.needs_input_grad
        g = grad_out.reshape(b, cout, h * w)
        cols = cols.view(b, c * 9, h * w)
        grad_x = grad_off = grad_w = None
        if need_w:
            # one batched multiply then a sum over the small [B, Cout, C*9] (faster than addmm_ per image)
            grad_w = torch.bmm(g, cols.transpose(1, 2)).sum(0).view_as(weight)
        if need_x or need_off:
            gcols = torch.bmm(weight.reshape(1, cout, c * 9).transpose(1, 2).expand(b, -1, -1), g)
            gx, ggrid = torch.ops.aten.grid_sampler_2d_backward(
                gcols.view(b, c, 9 * h, w), x, grid, _BILINEAR, _ZEROS, False, [need_x, need_off]
            )
            grad_x = gx if need_x else None
            if need_off:  # normalised (x, y) -> pixels, then torchvision's (dy, dx) per tap
                scale = torch.tensor([2.0 / w, 2.0 / h], device=g.device, dtype=g.dtype)
                grad_off = (ggrid * scale).view(b, 9, h, w, 2).flip(-1).permute(0, 1, 4, 2, 3).reshape(b, 18, h, w)
        return grad_x, grad_off, grad_w
