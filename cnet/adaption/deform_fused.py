"""The ``fused`` deformable 3x3 convolution: one C++ CPU kernel (``csrc/deform_cpu.cpp``).

The kernel builds the channels-last im2col rows a tile at a time and multiplies each tile with
the weight at once, in forward and backward alike (the backward recomputes the tiles instead of
keeping B*H*W*9*C columns). It is compiled with the machine's C++ compiler on first use, by
``torch.utils.cpp_extension`` into its cache (``$TORCH_EXTENSIONS_DIR``, default
``~/.cache/torch_extensions``), once per checkout, source version and instruction set (~10 s);
later processes load the built library. Concurrent first uses (DDP ranks, SLURM array jobs) wait
on the cache's lock.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

SOURCE = Path(__file__).parent / "csrc" / "deform_cpu.cpp"
log = logging.getLogger(__name__)


@functools.cache
def kernel_error() -> str | None:
    """Build (first call) and load the kernel; None when ``torch.ops.cnet_deform`` is ready, else why not."""
    # AVX2 + FMA where torch itself runs them; the level is in the name, so machines of another
    # level sharing the cache (a cluster's home directory) build their own copy
    vector = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
    flags = ["-O3", "-fopenmp", *(["-mavx2", "-mfma"] if vector else [])]
    if shutil.which("ninja") is None:  # the `ninja` wheel's binary sits beside this interpreter
        os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    cpp_log = logging.getLogger("torch.utils.cpp_extension")
    level = cpp_log.level
    cpp_log.setLevel(logging.ERROR)  # its import warns that CUDA is missing, which is no concern here
    try:
        from torch.utils.cpp_extension import load

        log.info("loading the fused deformable-conv CPU kernel (built once, ~10 s, from %s)", SOURCE)
        load(
            # the source's folder in the name: two checkouts do not rebuild over each other's copy
            name=f"cnet_deform_{'avx2' if vector else 'base'}_{hashlib.sha1(str(SOURCE).encode()).hexdigest()[:8]}",
            sources=[str(SOURCE)],
            extra_cflags=flags,
            extra_ldflags=["-fopenmp"],
            is_python_module=False,
        )
    except Exception as e:  # no compiler, no ninja, a read-only cache: the caller decides
        # the build log's telling line ("c++: not found", "x.cpp:12: error: ..."), else its last
        lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [repr(e)]
        telling = [line for line in lines if re.search(r"error:|not found|no such file|fatal", line, re.I)]
        return telling[0] if telling else lines[-1]
    finally:
        cpp_log.setLevel(level)
    return None


def fused_deform_conv3x3(x: Tensor, offset: Tensor, weight: Tensor) -> Tensor:
    """3x3 deformable convolution with the fused kernel: x [B, C, H, W], offset [B, 18, H, W],
    weight [Cout, C, 3, 3] -> [B, Cout, H, W]. CPU, float32 or float64; the kernel must be loaded."""
    out = _FusedDeformConv3x3.apply(x, offset, weight)
    assert isinstance(out, Tensor)
    return out


class _FusedDeformConv3x3(torch.autograd.Function):
    """Channels-last around the kernel: x_cl [B, H*W, C]; the weight as w2t [9*C, Cout], row
    k*C + c = weight[:, c, i, j] for tap k = 3i + j, matching the kernel's tap-major rows."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, offset: Tensor, weight: Tensor) -> Tensor:
        b, c, h, w = x.shape
        cout = weight.shape[0]
        x_cl = x.detach().permute(0, 2, 3, 1).contiguous().view(b, h * w, c)
        offset = offset.detach().contiguous()
        w2t = weight.detach().permute(2, 3, 1, 0).contiguous().view(9 * c, cout)
        out = torch.ops.cnet_deform.forward(x_cl, offset, w2t)  # [B*H*W, Cout]
        ctx.save_for_backward(x_cl, offset, w2t)
        return out.view(b, h, w, cout).permute(0, 3, 1, 2).contiguous()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        x_cl, offset, w2t = ctx.saved_tensors
        b, hw, c = x_cl.shape
        h, w = offset.shape[-2:]
        cout = w2t.shape[1]
        need_x, need_off, need_w = ctx.needs_input_grad
        g_cl = grad_out.permute(0, 2, 3, 1).contiguous().view(b * hw, cout)
        gx, goff, gw = torch.ops.cnet_deform.backward(g_cl, x_cl, offset, w2t, need_x, need_off, need_w)
        grad_x = gx.view(b, h, w, c).permute(0, 3, 1, 2).contiguous() if need_x else None
        grad_w = gw.view(3, 3, c, cout).permute(3, 2, 0, 1).contiguous() if need_w else None
        return grad_x, goff if need_off else None, grad_w
