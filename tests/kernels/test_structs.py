"""The structs the launchers fill with ctypes match the C side byte for byte: each kernel argument struct
against its csrc/ definition (compiled by NVRTC with static_asserts of its size and every field's offset, no
GPU), and the driver's launch structs against cuda-python's own."""

import ctypes

import pytest

from flashllm.kernels import jit
from flashllm.kernels.attention import AttnParams
from flashllm.kernels.common import Params
from flashllm.kernels.sell import SellParams
from flashllm.kernels.spmm_wide import TmaMap


@pytest.mark.parametrize("program,c_name,struct,arch", [
    ("reduce.cu", "Params", Params, "sm_80"),  # common.cuh's, in its smallest program
    ("spmm_mma.cu", "Params", Params, "sm_90a"),
    ("sell.cu", "SellParams", SellParams, "sm_80"),
    ("attention.cu", "AttnParams", AttnParams, "sm_80"),
    ("spmm_wide.cu", "TmaMap", TmaMap, "sm_90a"),
])
def test_kernel_argument_struct_matches_c(program, c_name, struct, arch):
    jit.check_struct(program, c_name, struct, arch)


def test_a_drifted_mirror_fails_naming_the_field():
    class Shifted(ctypes.Structure):  # Params with `x` and `y` swapped in order: y's offset is x's
        _fields_ = [(n, t) for n, t in Params._fields_ if n not in ("x", "y")]
        _fields_ = _fields_[:2] + [("y", ctypes.c_void_p), ("x", ctypes.c_void_p)] + _fields_[2:]
    with pytest.raises(jit.KernelCompileError, match=r"Params\.x is not at byte 24"):
        jit.check_struct("reduce.cu", "Params", Shifted)


def test_launch_structs_match_the_driver():
    """jit.LaunchConfig / LaunchAttribute against cuda-python's CUlaunchConfig / CUlaunchAttribute (cuda.h)."""
    d = pytest.importorskip("cuda.bindings.driver")
    theirs = d.CUlaunchConfig()
    theirs.gridDimX, theirs.gridDimY, theirs.gridDimZ = 3, 5, 7
    theirs.blockDimX, theirs.blockDimY, theirs.blockDimZ = 11, 13, 17
    theirs.sharedMemBytes, theirs.hStream, theirs.numAttrs = 19, d.CUstream(0x2345), 0
    ours = jit.LaunchConfig((ctypes.c_uint * 3)(3, 5, 7), (ctypes.c_uint * 3)(11, 13, 17), 19, 0x2345, None, 0)
    size = ctypes.sizeof(jit.LaunchConfig)
    assert ctypes.string_at(theirs.getPtr(), size) == ctypes.string_at(ctypes.addressof(ours), size)
    attr = d.CUlaunchAttribute()
    attr.id = d.CUlaunchAttributeID.CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION
    attr.value.clusterDim.x, attr.value.clusterDim.y, attr.value.clusterDim.z = 1, 2, 3
    mine = jit.LaunchAttribute(jit.CLUSTER_DIMENSION, b"", (ctypes.c_uint * 16)(1, 2, 3))
    size = ctypes.sizeof(jit.LaunchAttribute)
    assert int(d.CUlaunchAttributeID.CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION) == jit.CLUSTER_DIMENSION
    assert ctypes.string_at(attr.getPtr(), size) == ctypes.string_at(ctypes.addressof(mine), size)
    assert ctypes.sizeof(TmaMap) == 128 and ctypes.addressof(jit.aligned(TmaMap, 128)) % 128 == 0
