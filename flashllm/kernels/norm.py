"""LayerNorm / RMSNorm over the last dim on the GPU, one CTA per row (csrc/norm.cu).

For the decode step, where torch's norm kernels spend ~13 us on 8 rows.  `row_norm` returns None when
the input is not one it handles (the caller then runs torch): CPU, fp32, torch.compile tracing, a row
width that is not a multiple of 8 or above 16384, or parameters of another dtype.
"""

from __future__ import annotations

import ctypes

import torch

from . import jit

PROGRAM = "norm.cu"
NORM_THREADS = 256
MAX_WIDTH = 8 * 8 * NORM_THREADS  # NORM_MAX_CHUNKS 16-byte chunks per thread


def variants() -> list[str]:
    return [f"row_norm<{bf16},{rms}>" for bf16 in ("false", "true") for rms in ("false", "true")]


def _usable(x: torch.Tensor, *params) -> bool:
    d = x.shape[-1]
    return (x.is_cuda and x.dtype in (torch.float16, torch.bfloat16) and not torch.compiler.is_compiling()
            and d % 8 == 0 and 0 < d <= MAX_WIDTH and x.numel() > 0
            and jit.capability(x.device.index) >= (8, 0)
            and all(p is None or (p.dtype == x.dtype and p.is_contiguous() and p.device == x.device
                                  and p.numel() == d and p.data_ptr() % 16 == 0) for p in params))


def row_norm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float,
             rms: bool) -> torch.Tensor | None:
    """LayerNorm (rms=False) or Hugging Face RMSNorm (rms=True, bias ignored) of x's last dim, or None."""
    if not _usable(x, weight, bias):
        return None
    d = x.shape[-1]
    x2 = x.reshape(-1, d)
    if not x2.is_contiguous() or x2.data_ptr() % 16:
        x2 = x2.contiguous()
    y = torch.empty_like(x2)
    bf16 = "true" if x.dtype == torch.bfloat16 else "false"
    dev = x.device.index
    ptr = lambda t: t.data_ptr() if t is not None else 0  # noqa: E731
    with jit.on_device(x.device):
        kernel = jit.get_kernel(f"row_norm<{bf16},{'true' if rms else 'false'}>", dev, jit.capability(dev),
                                program=PROGRAM)
        kernel.launch_args((x2.shape[0], 1, 1), (NORM_THREADS, 1, 1), torch.cuda.current_stream(x.device).cuda_stream,
                           [x2.data_ptr(), ptr(weight), ptr(None if rms else bias), y.data_ptr(), ctypes.c_int(d),
                            ctypes.c_float(eps)])
    return y.view(x.shape)
