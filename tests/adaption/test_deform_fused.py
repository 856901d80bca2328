"""The fused C++ kernel beyond the equality tests of test_deform.py: how it splits the work across
threads, dtypes it has no kernel for, empty batches, and what a machine that cannot build it gets."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torchvision.ops import deform_conv2d

from cnet.adaption.deform import deform_conv3x3
from cnet.adaption.deform_fused import SOURCE, kernel_error
from tests.adaption.test_deform import assert_equals_torchvision, inputs, rel_err


def test_kernel_builds_here():
    assert kernel_error() is None
    assert SOURCE.is_file()


@pytest.mark.parametrize("n_threads", [1, 3, 4])
@pytest.mark.parametrize("b", [1, 2, 5])
def test_any_thread_count_and_batch_splits_the_backward_correctly(n_threads, b):
    """Fewer images than threads: an image's cells are split into parts with their own input
    gradient; more images than threads: each thread takes several whole images."""
    torch.set_num_threads(n_threads)  # conftest sets it back before the next test
    x, offset, weight = inputs(b, 6, 5, 17, 19, spread=3.0)  # 323 cells: 3 tiles per image
    assert_equals_torchvision("fused", x, offset, weight)


def test_bfloat16_tensors_are_computed_in_float32():
    x, offset, weight = inputs(2, 4, 3, 5, 6, spread=1.0)
    out = deform_conv3x3(x.bfloat16(), offset.bfloat16(), weight.bfloat16(), impl="fused")
    ref = deform_conv2d(x.bfloat16().float(), offset.bfloat16().float(), weight.bfloat16().float(), padding=1)
    assert out.dtype == torch.bfloat16
    assert rel_err(out.float(), ref) < 1e-2  # bfloat16's rounding of the result


def test_empty_batch():
    x, offset, weight = inputs(1, 4, 3, 5, 5, spread=1.0)
    x, offset = x[:0], offset[:0]
    out = deform_conv3x3(x, offset, weight, impl="fused")
    assert out.shape == (0, 3, 5, 5)
    gx, gw = torch.autograd.grad(out.sum(), (x, weight))
    assert gx.shape == x.shape and gw.shape == weight.shape and not gw.any()


def test_without_a_compiler_fused_fails_in_one_line_and_auto_falls_back_to_native(tmp_path):
    """A fresh extension cache and a compiler that does not exist: the build fails."""
    script = textwrap.dedent(
        """
        import warnings
        import torch
        from torchvision.ops import deform_conv2d
        from cnet.adaption.deform import deform_conv3x3, resolve_impl
        x, offset, weight = torch.randn(1, 3, 4, 4), torch.randn(1, 18, 4, 4), torch.randn(2, 3, 3, 3)
        try:
            deform_conv3x3(x, offset, weight, impl="fused")
        except RuntimeError as e:
            print("ERROR", e)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            impl = resolve_impl("auto", x.device)
            out = deform_conv3x3(x, offset, weight, impl="auto")
        print("AUTO", impl, torch.allclose(out, deform_conv2d(x, offset, weight, padding=1), atol=1e-5))
        print("WARNING", caught[0].message)
        """
    )
    env = os.environ | {"CXX": str(tmp_path / "no-such-c++"), "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext")}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines())
    assert lines["ERROR"].startswith(f"adaption.impl=fused: building {SOURCE} failed (")
    assert lines["ERROR"].endswith("install a C++ compiler and ninja, or set adaption.impl=native")
    assert lines["AUTO"] == "native True"
    assert "using impl=native" in lines["WARNING"]
