"""Launch the split-K reduce (csrc/reduce.cu): y = the sum of the fp32 slices [split, N, M] (+ bias)."""

from __future__ import annotations

import ctypes

import torch

from . import jit
from .common import pointer

PROGRAM = "reduce.cu"


def variants() -> list[str]:
    return ["splitk_reduce<false>", "splitk_reduce<true>"]


class Reduce:
    """splitk_reduce for one (split, N, M, dtype), prepared: a call sets the three pointers and launches."""

    def __init__(self, split: int, n: int, m: int, bf16: bool, device_index: int):
        kernel = jit.get_kernel(f"splitk_reduce<{'true' if bf16 else 'false'}>", device_index,
                                jit.capability(device_index), PROGRAM)
        count = n * m
        blocks = min(jit.sm_count(device_index) * 8, -(-count // 256))
        self.partial, self.y, self.bias = ctypes.c_void_p(), ctypes.c_void_p(), ctypes.c_void_p()
        args = [self.partial, self.y, ctypes.c_int(split), ctypes.c_longlong(count), self.bias, ctypes.c_int(m)]
        self.launcher = jit.Launcher(kernel, (blocks, 1, 1), 256, 0, args)

    def __call__(self, partial: int, y: int, bias: int, stream: int) -> None:
        self.partial.value, self.y.value, self.bias.value = partial, y, bias
        self.launcher(stream)


class ReducedLaunch:
    """The per-call half of a kernel launch whose K slices may sum through fp32 partials and the reduce:
    set x, y, bias (and a fresh partials buffer) in `params`, launch, reduce.  Subclasses decide the rest once:
    params, launcher, reduce (None: no split, or summed in the kernel), partial_shape, device."""

    params: ctypes.Structure
    launcher: jit.Launcher
    reduce: Reduce | None
    partial_shape: tuple | None
    device: torch.device

    def __call__(self, x: torch.Tensor, y: torch.Tensor, bias: torch.Tensor | None, stream: int) -> None:
        """x [N, ldx] prepared (common.prepare_x), y [N, M]; the caller holds the route's lock."""
        p = self.params
        p.x, p.ldx, p.y, p.bias = x.data_ptr(), x.stride(0), y.data_ptr(), pointer(bias)
        if self.reduce is None:
            self.launcher(stream)
            return
        partial = torch.empty(self.partial_shape, dtype=torch.float32, device=self.device)
        p.partial = partial.data_ptr()
        self.launcher(stream)
        self.reduce(p.partial, p.y, p.bias, stream)
