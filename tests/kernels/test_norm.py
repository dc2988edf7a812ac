"""Row norms (kernels/norm.py): the GPU kernel against torch; on the CPU the engine keeps torch's path."""

import pytest
import torch
import torch.nn.functional as F

from flashllm.engine.model import LayerNorm, RMSNorm
from flashllm.kernels.norm import row_norm


def test_cpu_and_unsupported_inputs_fall_back():
    x = torch.randn(4, 64, dtype=torch.float16)
    assert row_norm(x, None, None, 1e-5, rms=False) is None  # CPU: the caller runs torch
    ln = LayerNorm(64).half()
    torch.testing.assert_close(ln(x), F.layer_norm(x, (64,), ln.weight, ln.bias, ln.eps))


def rms_reference(x, w, eps):
    x32 = x.float()
    return w * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("rows,d", [(1, 8), (8, 7168), (33, 4096), (512, 5120), (3, 16384), (2, 2056)])
@pytest.mark.parametrize("affine", [True, False])
def test_gpu_norms_match_torch(dtype, rows, d, affine):
    g = torch.Generator("cuda").manual_seed(rows * d)
    x = (torch.randn(rows, d, device="cuda", generator=g) * 3 + 1).to(dtype)
    w = torch.randn(d, device="cuda", generator=g).to(dtype) if affine else None
    b = torch.randn(d, device="cuda", generator=g).to(dtype) if affine else None
    y = row_norm(x, w, b, 1e-5, rms=False)
    ref = F.layer_norm(x.float(), (d,), w.float() if affine else None, b.float() if affine else None, 1e-5)
    tol = 1e-2 if dtype == torch.bfloat16 else 2e-3
    torch.testing.assert_close(y.float(), ref, rtol=tol, atol=tol)
    if affine:
        y = row_norm(x, w, None, 1e-6, rms=True)
        torch.testing.assert_close(y.float(), rms_reference(x, w, 1e-6).float(), rtol=tol, atol=tol)


@pytest.mark.gpu
def test_gpu_norm_modules_and_fallbacks():
    x = torch.randn(2, 5, 96, device="cuda", dtype=torch.float16)  # leading dims, d % 8 == 0
    ln = LayerNorm(96).cuda().half()
    torch.testing.assert_close(ln(x), F.layer_norm(x, (96,), ln.weight, ln.bias, ln.eps), rtol=2e-3, atol=2e-3)
    rms = RMSNorm(96, 1e-6).cuda().half()
    torch.testing.assert_close(rms(x), rms_reference(x, rms.weight, 1e-6), rtol=2e-3, atol=2e-3)
    odd = torch.randn(3, 100, device="cuda", dtype=torch.float16)  # d % 8 != 0: torch's path
    assert row_norm(odd, None, None, 1e-5, rms=False) is None
    assert row_norm(odd.float(), None, None, 1e-5, rms=False) is None
    strided = torch.randn(4, 192, device="cuda", dtype=torch.float16)[:, :96]  # non-contiguous rows
    torch.testing.assert_close(row_norm(strided, None, None, 1e-5, rms=False),
                               F.layer_norm(strided, (96,), eps=1e-5), rtol=2e-3, atol=2e-3)
