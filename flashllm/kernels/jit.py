"""NVRTC JIT with a disk cache: CUDA C++ in `csrc/` becomes cubins at first use, never at install.

Cache: `$FLASHLLM_CACHE_DIR` (default `~/.cache/flashllm/kernels`), one cubin per kernel
instantiation, named by a hash of (sources, options, NVRTC version, arch, name expression).
Compilation needs no GPU, which is how CI builds every kernel variant (and checks the C structs the
launchers fill against their ctypes mirrors: `check_struct`).

Launches go through the CUDA driver: `LoadedKernel.launch*` (cuda-python, for anything), and `Launcher`,
a launch whose grid and arguments were fixed once and whose per-call work is one ctypes call.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import re
import tempfile
from pathlib import Path

from ..formats.base import FORMAT_IDS

CSRC = Path(__file__).parent / "csrc"
# One NVRTC program each (a launcher module of the same stem beside this file); headers are inlined.
PROGRAMS = ("spmm_mma.cu", "spmm_wide.cu", "decompress.cu", "reduce.cu", "sell.cu", "norm.cu", "attention.cu", "decode_bench.cu")


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


def format_ids_header() -> str:
    """format_ids.cuh, which no file holds: the kernels' FMT_<NAME> constants, from FORMAT_IDS."""
    ids = ", ".join(f"FMT_{name.upper()} = {i}" for name, i in FORMAT_IDS.items())
    return f"// flashllm/formats/base.py FORMAT_IDS\nenum {{ {ids} }};\n"


_INCLUDE = re.compile(r'^#include "([^"]+)"[^\n]*$', re.MULTILINE)


@functools.lru_cache(maxsize=None)
def _source(program: str) -> str:
    # Inline the headers (each once, where first included) so the program needs no include path and the
    # hash covers every line.
    seen: set[str] = set()

    def inline(match) -> str:
        header = match.group(1)
        if header in seen:
            return ""
        seen.add(header)
        text = format_ids_header() if header == "format_ids.cuh" else (CSRC / header).read_text()
        return _INCLUDE.sub(inline, text)

    return _INCLUDE.sub(inline, (CSRC / program).read_text())


def _options(arch: str) -> list[bytes]:
    return [f"--gpu-architecture={arch}".encode(), b"--std=c++17", b"-default-device", b"--use_fast_math"]


def _compile(src: str, program: str, arch: str, name_expr: str | None) -> tuple[bytes, str]:
    """NVRTC: `src` to a cubin, with `name_expr` instantiated (None: none); raises KernelCompileError."""
    nvrtc = _nvrtc()
    opts = _options(arch)
    prog = _check(nvrtc.nvrtcCreateProgram(src.encode(), f"flashllm_{program}".encode(), 0, [], []),
                  "nvrtcCreateProgram")
    try:
        if name_expr is not None:
            _check(nvrtc.nvrtcAddNameExpression(prog, name_expr.encode()), "nvrtcAddNameExpression")
        (err,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        log_size = _check(nvrtc.nvrtcGetProgramLogSize(prog), "nvrtcGetProgramLogSize")
        log = b" " * log_size
        _check(nvrtc.nvrtcGetProgramLog(prog, log), "nvrtcGetProgramLog")
        if int(err) != 0:
            raise KernelCompileError(f"NVRTC failed to compile {name_expr or program} for {arch}:\n"
                                     f"{log.decode(errors='replace')}")
        lowered = "" if name_expr is None else \
            _check(nvrtc.nvrtcGetLoweredName(prog, name_expr.encode()), "nvrtcGetLoweredName").decode()
        size = _check(nvrtc.nvrtcGetCUBINSize(prog), "nvrtcGetCUBINSize")
        cubin = b" " * size
        _check(nvrtc.nvrtcGetCUBIN(prog, cubin), "nvrtcGetCUBIN")
    finally:
        nvrtc.nvrtcDestroyProgram(prog)
    return cubin, lowered


def compile_kernel(name_expr: str, arch: str, program: str) -> tuple[bytes, str]:
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
    cubin, lowered = _compile(src, program, arch, name_expr)

    folder.mkdir(parents=True, exist_ok=True)
    for path, payload in ((cubin_path, cubin), (name_path, lowered.encode())):
        # write-then-rename: concurrent processes (one per GPU rank) never see half a file
        fd, tmp = tempfile.mkstemp(dir=folder)
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        os.replace(tmp, path)
    return cubin, lowered


def check_struct(program: str, c_name: str, struct: type[ctypes.Structure], arch: str = "sm_80") -> None:
    """Compile `program` with static_asserts that its C struct `c_name` has the size and field offsets of its
    ctypes mirror `struct` (the fields by the same names): a mirror that drifted fails here, in CI, not as a
    kernel reading garbage.  NVRTC only, no GPU; raises KernelCompileError naming the field."""
    checks = [f'static_assert(sizeof({c_name}) == {ctypes.sizeof(struct)}, '
              f'"sizeof({c_name}) differs from ctypes {struct.__name__} ({ctypes.sizeof(struct)} bytes)");']
    for field, *_ in struct._fields_:
        offset = getattr(struct, field).offset
        checks.append(f'static_assert(__builtin_offsetof({c_name}, {field}) == {offset}, '
                      f'"{c_name}.{field} is not at byte {offset}, where ctypes {struct.__name__} has it");')
    _compile(_source(program) + "\n" + "\n".join(checks) + "\n", program, arch, None)


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
        self.handle = int(self.function)  # the CUfunction, for Launcher's ctypes calls
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


# ------------------------------------------------------------------------------------------ prepared launches

class LaunchAttribute(ctypes.Structure):
    """CUlaunchAttribute (cuda.h): an id, padding to 8 bytes, a 64-byte value union."""
    _fields_ = [("id", ctypes.c_int), ("pad", ctypes.c_char * 4), ("value", ctypes.c_uint * 16)]


class LaunchConfig(ctypes.Structure):
    """CUlaunchConfig (cuda.h), for cuLaunchKernelEx."""
    _fields_ = [("grid", ctypes.c_uint * 3), ("block", ctypes.c_uint * 3), ("smem", ctypes.c_uint),
                ("stream", ctypes.c_void_p), ("attrs", ctypes.POINTER(LaunchAttribute)), ("num_attrs", ctypes.c_uint)]


CLUSTER_DIMENSION = 4  # CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION


@functools.lru_cache(maxsize=None)
def _libcuda():
    """The driver library (loaded already by torch), its launch entry points typed for ctypes."""
    lib = ctypes.CDLL("nvcuda.dll" if os.name == "nt" else "libcuda.so.1")
    lib.cuLaunchKernel.argtypes = [ctypes.c_void_p] + [ctypes.c_uint] * 7 + [ctypes.c_void_p] * 3
    lib.cuLaunchKernel.restype = ctypes.c_int
    lib.cuLaunchKernelEx.argtypes = [ctypes.POINTER(LaunchConfig), ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    lib.cuLaunchKernelEx.restype = ctypes.c_int
    lib.cuMemsetD32Async.argtypes = [ctypes.c_void_p, ctypes.c_uint, ctypes.c_size_t, ctypes.c_void_p]
    lib.cuMemsetD32Async.restype = ctypes.c_int
    lib.cuTensorMapReplaceAddress.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    lib.cuTensorMapReplaceAddress.restype = ctypes.c_int
    return lib


def aligned(struct: type[ctypes.Structure], alignment: int) -> ctypes.Structure:
    """A zeroed `struct` at an address that is a multiple of `alignment` (ctypes aligns to 8 at most)."""
    buffer = (ctypes.c_uint8 * (ctypes.sizeof(struct) + alignment))()
    return struct.from_buffer(buffer, -ctypes.addressof(buffer) % alignment)  # keeps `buffer` alive


def memset32(ptr: int, value: int, count: int, stream: int) -> None:
    """`count` 32-bit words at device address `ptr` set to `value`, in stream order."""
    err = _libcuda().cuMemsetD32Async(ptr, value, count, stream)
    if err:
        raise RuntimeError(f"cuMemsetD32Async failed: CUresult {err}")


def replace_tensor_map_address(tensor_map: ctypes.Structure, ptr: int) -> None:
    """Point an encoded CUtensorMap (128-byte aligned) at another tensor of the same shape and strides."""
    err = _libcuda().cuTensorMapReplaceAddress(ctypes.addressof(tensor_map), ptr)
    if err:
        raise RuntimeError(f"cuTensorMapReplaceAddress failed: CUresult {err}")


class Launcher:
    """A kernel launch decided once: grid, block, shared memory (and cluster shape), and the argument objects
    (ctypes structs or scalars) whose addresses it passes.  The caller sets the arguments' per-call fields
    (pointers), then calls it with a stream: one ctypes call into the driver (cuda-python's launch
    marshals every argument again, several microseconds a launch)."""

    def __init__(self, kernel: LoadedKernel, grid, threads: int, smem: int, args: list,
                 cluster: tuple[int, int, int] | None = None):
        kernel.allow_smem(smem)
        self.kernel, self.grid, self.smem, self.args = kernel, tuple(grid), smem, args
        self._ptrs = (ctypes.c_void_p * len(args))(*[ctypes.addressof(a) for a in args])
        lib = _libcuda()
        if cluster is None:
            self._config = None
            self._launch = functools.partial(lib.cuLaunchKernel, kernel.handle, *grid, threads, 1, 1, smem)
        else:
            self._attr = LaunchAttribute(CLUSTER_DIMENSION, b"", (ctypes.c_uint * 16)(*cluster))
            self._config = LaunchConfig((ctypes.c_uint * 3)(*grid), (ctypes.c_uint * 3)(threads, 1, 1), smem, None,
                                        ctypes.pointer(self._attr), 1)
            self._launch = functools.partial(lib.cuLaunchKernelEx, ctypes.byref(self._config), kernel.handle)

    def __call__(self, stream: int) -> None:
        if self._config is None:
            err = self._launch(stream, self._ptrs, None)
        else:
            self._config.stream = stream
            err = self._launch(self._ptrs, None)
        if err:
            raise RuntimeError(f"cuLaunchKernel failed: CUresult {err} (grid {self.grid}, smem {self.smem})")


_loaded: dict[tuple, LoadedKernel] = {}


def get_kernel(name_expr: str, device_index: int, capability: tuple[int, int], program: str) -> LoadedKernel:
    key = (name_expr, device_index)
    k = _loaded.get(key)
    if k is None:
        cubin, lowered = compile_kernel(name_expr, arch_for(capability), program)
        k = _loaded[key] = LoadedKernel(cubin, lowered)
    return k
