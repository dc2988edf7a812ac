"""NVRTC JIT with a disk cache: CUDA C++ in `csrc/` becomes cubins at first use, never at install.

Cache: `$FLASHLLM_CACHE_DIR` (default `~/.cache/flashllm/kernels`), one cubin per kernel
instantiation, named by a hash of (sources, options, NVRTC version, arch, name expression).
Compilation needs no GPU, which is how CI builds every kernel variant.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import tempfile
from pathlib import Path

CSRC = Path(__file__).parent / "csrc"
PROGRAMS = ("spmm.cu", "norm.cu", "attention.cu", "sell.cu")  # one NVRTC program each; headers are inlined


class KernelCompileError(RuntimeError):
    pass


def cache_dir() -> Path:
    root = os.environ.get("FLASHLLM_CACHE_DIR") or os.path.join(Path.home(), ".cache", "flashllm", "kernels")
    return Path(root)


def _check(result, what: str):
    err, *rest = result
    if int(err) != 0:
        raise RuntimeError(f"{what} failed: {err!r}")
    return rest[0] if len(rest) == 1 else rest


@functools.lru_cache(maxsize=None)
def _nvrtc():
    try:
        from cuda.bindings import nvrtc
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("flashllm's GPU kernels need NVRTC: pip install 'flashllm[gpu]' "
                          "(cuda-python and nvidia-cuda-nvrtc)") from e
    return nvrtc


def nvrtc_version() -> str:
    major, minor = _check(_nvrtc().nvrtcVersion(), "nvrtcVersion")
    return f"{major}.{minor}"


@functools.lru_cache(maxsize=None)
def _source(program: str = "spmm.cu") -> str:
    # Inline the header so the program needs no include path and the hash covers every line.
    body = (CSRC / program).read_text()
    for header in ("common.cuh", "wgmma.cuh"):
        body = body.replace(f'#include "{header}"', (CSRC / header).read_text())
    return body


def _options(arch: str) -> list[bytes]:
    return [f"--gpu-architecture={arch}".encode(), b"--std=c++17", b"-default-device", b"--use_fast_math"]


def compile_kernel(name_expr: str, arch: str, program: str = "spmm.cu") -> tuple[bytes, str]:
    """Compile one instantiation (e.g. 'spmm_bitmap<1,1,2,false,false>') of a program in csrc/ to a
    cubin; cached on disk.  Returns (cubin, lowered_name).
    """
    src = _source(program)
    opts = _options(arch)
    key = hashlib.sha256("\0".join([src, *map(bytes.decode, opts), nvrtc_version(), arch, name_expr])
                         .encode()).hexdigest()[:24]
    folder = cache_dir() / arch
    cubin_path, name_path = folder / f"{key}.cubin", folder / f"{key}.name"
    if cubin_path.exists() and name_path.exists():
        return cubin_path.read_bytes(), name_path.read_text()

    nvrtc = _nvrtc()
    prog = _check(nvrtc.nvrtcCreateProgram(src.encode(), f"flashllm_{program}".encode(), 0, [], []),
                  "nvrtcCreateProgram")
    try:
        _check(nvrtc.nvrtcAddNameExpression(prog, name_expr.encode()), "nvrtcAddNameExpression")
        (err,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        log_size = _check(nvrtc.nvrtcGetProgramLogSize(prog), "nvrtcGetProgramLogSize")
        log = b" " * log_size
        _check(nvrtc.nvrtcGetProgramLog(prog, log), "nvrtcGetProgramLog")
        if int(err) != 0:
            raise KernelCompileError(f"NVRTC failed to compile {name_expr} for {arch}:\n"
                                     f"{log.decode(errors='replace')}")
        lowered = _check(nvrtc.nvrtcGetLoweredName(prog, name_expr.encode()), "nvrtcGetLoweredName").decode()
        size = _check(nvrtc.nvrtcGetCUBINSize(prog), "nvrtcGetCUBINSize")
        cubin = b" " * size
        _check(nvrtc.nvrtcGetCUBIN(prog, cubin), "nvrtcGetCUBIN")
    finally:
        nvrtc.nvrtcDestroyProgram(prog)

    folder.mkdir(parents=True, exist_ok=True)
    for path, payload in ((cubin_path, cubin), (name_path, lowered.encode())):
        # write-then-rename: concurrent processes (one per GPU rank) never see half a file
        fd, tmp = tempfile.mkstemp(dir=folder)
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        os.replace(tmp, path)
    return cubin, lowered


@functools.lru_cache(maxsize=None)
def capability(device_index: int) -> tuple[int, int]:
    import torch
    return torch.cuda.get_device_capability(device_index)


@functools.lru_cache(maxsize=None)
def sm_count(device_index: int) -> int:
    import torch
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def on_device(device):
    """The device's CUDA context, where its kernels must be loaded and launched; a no-op when it is
    already current (the usual case: skip the switch)."""
    import torch
    return contextlib.nullcontext() if device.index == torch.cuda.current_device() else torch.cuda.device(device)


def arch_for(capability: tuple[int, int]) -> str:
    major, minor = capability
    # sm_90a unlocks Hopper-only instructions; the 'a' target runs only on exactly 9.0.
    return "sm_90a" if (major, minor) == (9, 0) else f"sm_{major}{minor}"


class LoadedKernel:
    """A cubin function loaded into the current CUDA context, launched through the driver API."""

    def __init__(self, cubin: bytes, lowered: str):
        from cuda.bindings import driver
        self._driver = driver
        self.module = _check(driver.cuModuleLoadData(cubin), "cuModuleLoadData")
        self.function = _check(driver.cuModuleGetFunction(self.module, lowered.encode()), "cuModuleGetFunction")
        self.max_smem = 0

    def allow_smem(self, nbytes: int) -> None:
        if nbytes > 48 * 1024 and nbytes > self.max_smem:
            attr = self._driver.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
            _check(self._driver.cuFuncSetAttribute(self.function, attr, nbytes), "cuFuncSetAttribute")
            self.max_smem = nbytes

    def launch(self, grid, smem: int, stream: int, params: ctypes.Structure, threads: int = 128,
               *more: ctypes.Structure | ctypes.Array) -> None:
        """Launch with `params` (and `more` by-value arguments after it, e.g. a TMA tensor map)."""
        self.allow_smem(smem)
        ptrs = (ctypes.c_void_p * (1 + len(more)))(*[ctypes.addressof(a) for a in (params, *more)])
        (err,) = self._driver.cuLaunchKernel(self.function, *grid, threads, 1, 1, smem,
                                             self._driver.CUstream(stream), ctypes.addressof(ptrs), 0)
        if int(err) != 0:
            raise RuntimeError(f"cuLaunchKernel failed: {err!r} (grid {grid}, smem {smem})")

    def _cluster_config(self, grid, smem: int, stream: int, cluster: tuple[int, int, int], threads: int):
        d = self._driver
        config = d.CUlaunchConfig()
        config.gridDimX, config.gridDimY, config.gridDimZ = grid
        config.blockDimX, config.blockDimY, config.blockDimZ = threads, 1, 1
        config.sharedMemBytes = smem
        config.hStream = d.CUstream(stream)
        attr = d.CUlaunchAttribute()
        attr.id = d.CUlaunchAttributeID.CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION
        attr.value.clusterDim.x, attr.value.clusterDim.y, attr.value.clusterDim.z = cluster
        config.attrs = [attr]
        config.numAttrs = 1
        return config

    def clusters_fit(self, grid, smem: int, cluster: tuple[int, int, int], threads: int = 128) -> bool:
        """Whether at least one cluster of this shape can be resident (a GPU partition with few SMs per
        GPC, or a CTA too large to share an SM, may have room for none)."""
        self.allow_smem(smem)
        err, n = self._driver.cuOccupancyMaxActiveClusters(self.function, self._cluster_config(grid, smem, 0, cluster,
                                                                                                threads))
        return int(err) == 0 and n > 0

    def launch_cluster(self, grid, smem: int, stream: int, params: ctypes.Structure, cluster: tuple[int, int, int],
                       threads: int = 128) -> None:
        """`launch` with the grid cut into thread-block clusters of shape `cluster` (sm_90+)."""
        self.allow_smem(smem)
        ptrs = (ctypes.c_void_p * 1)(ctypes.addressof(params))
        config = self._cluster_config(grid, smem, stream, cluster, threads)
        (err,) = self._driver.cuLaunchKernelEx(config, self.function, ctypes.addressof(ptrs), 0)
        if int(err) != 0:
            raise RuntimeError(f"cuLaunchKernelEx failed: {err!r} (grid {grid}, cluster {cluster}, smem {smem})")

    def launch_args(self, grid, block, stream: int, args: list, smem: int = 0) -> None:
        holders = [a if isinstance(a, ctypes._SimpleCData) else ctypes.c_void_p(a) for a in args]
        ptrs = (ctypes.c_void_p * len(holders))(*[ctypes.addressof(h) for h in holders])
        (err,) = self._driver.cuLaunchKernel(self.function, *grid, *block, smem, self._driver.CUstream(stream),
                                             ctypes.addressof(ptrs), 0)
        if int(err) != 0:
            raise RuntimeError(f"cuLaunchKernel failed: {err!r}")


_loaded: dict[tuple, LoadedKernel] = {}


def get_kernel(name_expr: str, device_index: int, capability: tuple[int, int], program: str = "spmm.cu") -> LoadedKernel:
    key = (name_expr, device_index)
    k = _loaded.get(key)
    if k is None:
        cubin, lowered = compile_kernel(name_expr, arch_for(capability), program)
        k = _loaded[key] = LoadedKernel(cubin, lowered)
    return k
