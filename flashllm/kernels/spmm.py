"""SpMM on the GPU: y = x @ W^T through the kernel the rules pick (`rules.plan`), or expanded to dense for cuBLAS.

What a call runs is decided once per (weight, tokens, device, dtype) - route, config, grid, kernel, packed
launch arguments - and kept on the weight (`SparseWeight.launches`, a `Route` each); a call then allocates y,
sets the pointers and launches.  Eager calls take `run` straight; under torch.compile the call is one opaque
custom op, `flashllm::spmm`, whose body is `run`.  Launches go on the current stream, allocate only through the
caching allocator and never sync with the host, which is what CUDA-graph capture needs.
"""

from __future__ import annotations

import collections
import threading

import torch

from ..formats import SparseWeight, codec_for
from ..formats.base import FORMAT_IDS, FORMAT_NAMES, LaunchCache
from . import jit
from .common import prepare_x, raw_stream
from .decompress import dense_matmul
from .rules import Config, SellConfig, choose, plan
from .sell import SellLaunch
from .spmm_mma import MmaLaunch
from .spmm_wide import WideLaunch


def device_props(index: int) -> tuple[int, tuple[int, int]]:
    """(SM count, capability), both cached once per device by jit."""
    return jit.sm_count(index), jit.capability(index)


def launcher_for(w: SparseWeight, n: int, cfg: Config | SellConfig, device_index: int):
    """The prepared launch of `cfg` for n tokens through w (call it with x prepared, y, bias, stream)."""
    if isinstance(cfg, SellConfig):
        return SellLaunch(w, n, cfg, device_index)
    return (WideLaunch if cfg.wide else MmaLaunch)(w, n, cfg, device_index)


class Route:
    """What n tokens through one weight run on one device in one dtype, decided once: a prepared kernel launch,
    or decompress + cuBLAS (`dense`: an x of another dtype than the weight's, more tokens than the kernels
    take, a GPU older than sm_80), or nothing (no tokens).  Calls from several threads take turns (a launch's
    arguments are set, then launched)."""

    def __init__(self, w: SparseWeight, n: int, device_index: int, dtype: torch.dtype,
                 cfg: Config | SellConfig | None = None):
        self.m, self.index = w.shape[0], device_index
        self.device = torch.device("cuda", device_index)
        self.lock = threading.Lock()
        sms, cap = device_props(device_index)
        if cfg is None and n > 0 and dtype == w.dtype and cap >= (8, 0):
            cfg = plan(w.format, *w.shape, n, w.max_block_bytes, sms, jit.arch_for(cap) == "sm_90a")
        self.dense = n > 0 and cfg is None
        self.cfg = cfg
        self.launch = None
        if cfg is not None:
            with jit.on_device(self.device):
                self.launch = launcher_for(w, n, cfg, device_index)

    def __call__(self, x: torch.Tensor, w: SparseWeight, bias: torch.Tensor | None) -> torch.Tensor:
        if self.dense:
            return dense_matmul(x, w, bias=bias)
        y = torch.empty((x.shape[0], self.m), dtype=x.dtype, device=self.device)
        if self.launch is None:
            return y
        x = prepare_x(x)
        with self.lock:
            if torch._C._cuda_getDevice() == self.index:
                self.launch(x, y, bias, raw_stream(self.index))
            else:
                with torch.cuda.device(self.index):
                    self.launch(x, y, bias, raw_stream(self.index))
        return y


def run(x: torch.Tensor, w: SparseWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """y = x @ W^T (+ bias) for x [N, K] on the GPU: the custom op's body, and the eager path."""
    key = (x.shape[0], x.get_device(), x.dtype)
    route = w.launches.get(key)
    if route is None:
        route = w.launches[key] = Route(w, *key)
    return route(x, w, bias)


def spmm_cuda(x: torch.Tensor, w: SparseWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """y = x @ W^T (+ bias) on the GPU (fp16/bf16 x of the weight's dtype, or fp32 x on the dense path)."""
    if x.dtype != w.dtype and x.dtype != torch.float32:
        raise ValueError(f"x is {x.dtype} but the weight holds {w.dtype} values; cast x to {w.dtype}")
    if torch.compiler.is_compiling():  # one opaque graph node for Dynamo/Inductor
        return spmm_op(x, w, bias)
    return run(x, w, bias)  # eager and CUDA-graph capture: skip the custom-op dispatcher's overhead


# --------------------------------------------------------------------------------------- the custom op

def op_weight(data: torch.Tensor, ptr: torch.Tensor, fmt: int, m: int, k: int, bf16: bool,
              max_block_bytes: int) -> SparseWeight:
    """The SparseWeight around the custom op's arguments (the op sees tensors, not the weight)."""
    name = FORMAT_NAMES[fmt]
    return SparseWeight(name, (m, k), torch.bfloat16 if bf16 else torch.float16, 0, max_block_bytes,
                        dict(zip(codec_for(name).TENSORS, (data, ptr))))


@torch.library.custom_op("flashllm::spmm", mutates_args=())
def spmm_custom_op(x: torch.Tensor, data: torch.Tensor, ptr: torch.Tensor, fmt: int, m: int, k: int,
                   bf16: bool, max_block_bytes: int, bias: torch.Tensor | None) -> torch.Tensor:
    w = op_weight(data, ptr, fmt, m, k, bf16, max_block_bytes)
    w.launches = _op_launches((data.data_ptr(), ptr.data_ptr(), fmt, m, k, bf16, max_block_bytes))
    return run(x, w, bias)


@spmm_custom_op.register_fake
def _(x, data, ptr, fmt, m, k, bf16, max_block_bytes, bias):
    return x.new_empty((x.shape[0], m))


def spmm_op(x: torch.Tensor, w: SparseWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    data, ptr = (w.tensors[name] for name in codec_for(w.format).TENSORS)
    return spmm_custom_op(x, data, ptr, FORMAT_IDS[w.format], w.shape[0], w.shape[1],
                 w.dtype == torch.bfloat16, w.max_block_bytes, bias)


_OP_LAUNCHES: collections.OrderedDict = collections.OrderedDict()


def _op_launches(key: tuple) -> LaunchCache:
    """The custom op sees tensors, not the SparseWeight: its routes are kept by everything a route depends on,
    the weight's addresses included (the last 4096 weights; routes hold no tensors)."""
    found = _OP_LAUNCHES.get(key)
    if found is None:
        found = _OP_LAUNCHES[key] = LaunchCache()
        if len(_OP_LAUNCHES) > 4096:
            _OP_LAUNCHES.popitem(last=False)
    else:
        _OP_LAUNCHES.move_to_end(key)
    return found


# ---------------------------------------------------------------------------- forced configs (sweeps, tests)

def config_for(w: SparseWeight, n: int, **overrides) -> Config | SellConfig:
    """The launch config spmm_kernel picks for this weight and N tokens (overrides: a sweep's choices)."""
    sms, cap = device_props(w.device.index)
    return choose(w.format, *w.shape, n, w.max_block_bytes, sms, jit.arch_for(cap) == "sm_90a", **overrides)


def spmm_kernel(x: torch.Tensor, w: SparseWeight, bias: torch.Tensor | None = None, **overrides) -> torch.Tensor:
    """Run our kernel whatever N is (no decompress + cuBLAS), under `overrides`; bias [M] in x's dtype."""
    n = x.shape[0]
    if n == 0:
        return torch.empty((0, w.shape[0]), dtype=x.dtype, device=x.device)
    return Route(w, n, x.device.index, x.dtype, config_for(w, n, **overrides))(x, w, bias)


def launch(x: torch.Tensor, w: SparseWeight, cfg: Config | SellConfig, y: torch.Tensor,
           bias: torch.Tensor | None = None) -> None:
    """y = x @ W^T (+ bias) through `cfg`'s kernel(s), once; x prepared (common.prepare_x)."""
    with jit.on_device(x.device):
        launcher_for(w, x.shape[0], cfg, x.device.index)(x, y, bias, raw_stream(x.device.index))
