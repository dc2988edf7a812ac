"""The GPU path's host side without a GPU: a call's route is planned once per (weight, tokens, device, dtype) and
kept on the weight, and a prepared launch hands the driver what was fixed once plus the pointers set per call."""

import copy
import ctypes
import pickle

import torch

import flashllm
from flashllm.kernels import jit, spmm
from flashllm.kernels.common import Params


class CountingRoute:
    made = []

    def __init__(self, w, n, device_index, dtype, cfg=None):
        CountingRoute.made.append((n, device_index, dtype))

    def __call__(self, x, w, bias):
        return x.new_zeros((x.shape[0], w.shape[0]))


def test_route_is_planned_once_per_tokens_device_and_dtype(monkeypatch):
    monkeypatch.setattr(spmm, "Route", CountingRoute)
    CountingRoute.made.clear()
    w = flashllm.compress(torch.randn(70, 64).half(), "bitmap")
    for n in (1, 1, 8, 1, 8):
        spmm.run(torch.randn(n, 64).half(), w)
    spmm.run(torch.randn(1, 64), w)  # fp32 x: another route (decompress + cuBLAS on a GPU)
    assert CountingRoute.made == [(1, -1, torch.float16), (8, -1, torch.float16), (1, -1, torch.float32)]
    assert len(w.launches) == 3
    # a weight with tensors of its own plans afresh; a shallow copy shares the tensors and the routes
    for other in (copy.deepcopy(w), pickle.loads(pickle.dumps(w)), w.to("cpu")):
        assert len(other.launches) == 0
    assert copy.copy(w).launches is w.launches and len(w.launches) == 3


def test_custom_op_keeps_routes_by_weight_addresses():
    first = spmm._op_launches((1, 2, 2, 64, 64, False, 528))
    assert spmm._op_launches((1, 2, 2, 64, 64, False, 528)) is first
    assert spmm._op_launches((1, 3, 2, 64, 64, False, 528)) is not first


class FakeDriver:
    def __init__(self):
        self.calls = []

    def cuLaunchKernel(self, *args):
        self.calls.append(("plain", args))
        return 0

    def cuLaunchKernelEx(self, config, handle, ptrs, extra):
        c = config._obj  # the byref'd LaunchConfig
        self.calls.append(("cluster", (list(c.grid), list(c.block), c.smem, c.stream, list(c.attrs[0].value)[:3],
                                       handle, ptrs)))
        return 0


class FakeKernel:
    handle, max_smem = 0xABC, 0

    def allow_smem(self, nbytes):
        self.max_smem = max(self.max_smem, nbytes)


def test_launcher_passes_the_fixed_launch_and_the_current_pointers(monkeypatch):
    driver = FakeDriver()
    monkeypatch.setattr(jit, "_libcuda", lambda: driver)
    params = Params()
    launch = jit.Launcher(FakeKernel(), (3, 2, 4), 128, 50000, [params])
    params.x = 0x1000
    launch(7)
    kind, (handle, gx, gy, gz, bx, by, bz, smem, stream, ptrs, extra) = driver.calls[-1]
    assert (kind, handle, (gx, gy, gz), (bx, by, bz), smem, stream, extra) == \
        ("plain", 0xABC, (3, 2, 4), (128, 1, 1), 50000, 7, None)
    assert ptrs[0] == ctypes.addressof(params) and Params.from_address(ptrs[0]).x == 0x1000
    clustered = jit.Launcher(FakeKernel(), (3, 1, 8), 128, 1000, [params], cluster=(1, 1, 8))
    clustered(9)
    kind, (grid, block, smem, stream, dims, handle, ptrs) = driver.calls[-1]
    assert (kind, grid, block, smem, stream, dims, handle) == ("cluster", [3, 1, 8], [128, 1, 1], 1000, 9,
                                                                [1, 1, 8], 0xABC)
