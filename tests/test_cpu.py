"""The CPU path of flashllm.spmm (flashllm.cpu): dense math's answers for every format and dtype, through
both kernels (native and MKL), from one cached O(nnz) CSR copy per weight, never a dense one."""

from __future__ import annotations

import copy
import gc
import weakref

import pytest
import torch
from test_ops import assert_matches_fp64, pruned
from torch import nn

import flashllm
from flashllm import cpu
from flashllm.formats import FORMATS
from flashllm.nn import SparseLinear

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Token counts around the padding to a multiple of 4 columns and the 64-token chunks.
TOKENS = (1, 2, 3, 4, 5, 8, 63, 64, 65, 130)


@pytest.fixture(params=["native", "mkl"])
def kernel(request, monkeypatch):
    """Each test once per CPU kernel; the native one is skipped where it cannot be built."""
    monkeypatch.setenv("FLASHLLM_CPU_KERNEL", request.param)
    if request.param == "native" and cpu._load_native() is None:
        pytest.skip(f"no native CPU kernel here: {cpu.native_error()}")
    return request.param


@pytest.fixture
def builds(monkeypatch):
    """How many times a CSR cache has been built."""
    count = [0]
    build = cpu._build

    def counted(w, kind):
        count[0] += 1
        return build(w, kind)

    monkeypatch.setattr(cpu, "_build", counted)
    return count


@pytest.mark.parametrize("x_dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("w_dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("fmt", FORMATS)
def test_matches_fp64_dense_for_every_format_and_dtype(kernel, fmt, w_dtype, x_dtype):
    m, k = 150, 130  # neither a whole number of 64-blocks nor of 32-row slices
    w = pruned(m, k, 0.7, w_dtype, seed=3)
    sw = flashllm.compress(w, fmt)
    g = torch.Generator().manual_seed(4)
    for n in TOKENS:
        x = torch.randn(n, k, generator=g).to(x_dtype)
        y = flashllm.spmm(x, sw)
        assert y.shape == (n, m) and y.dtype == x_dtype and y.is_contiguous()
        assert_matches_fp64(y, x, w)
        # the bias joins the fp32 sum before the one rounding: an extra column of W against ones in x
        bias = torch.randn(m, generator=g).to(x_dtype)
        yb = flashllm.spmm(x, sw, bias)
        assert_matches_fp64(yb, torch.cat([x, x.new_ones(n, 1)], 1), torch.cat([w.double(), bias.double()[:, None]], 1))


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.95, 1.0])
def test_every_sparsity(kernel, sparsity):
    w = pruned(70, 200, sparsity, torch.bfloat16, seed=1)
    x = torch.randn(3, 5, 200, dtype=torch.bfloat16)
    y = flashllm.spmm(x, flashllm.compress(w))
    assert y.shape == (3, 5, 70)
    assert_matches_fp64(y.reshape(-1, 70), x.reshape(-1, 200), w)


@pytest.mark.parametrize("fmt", FORMATS)
def test_nan_and_inf_in_w_or_x_as_in_dense_math(kernel, fmt):
    w = pruned(70, 100, 0.8, seed=2)
    w[3, 5] = float("nan")
    w[10, 7] = float("inf")
    w[12, 9] = float("-inf")
    sw = flashllm.compress(w, fmt)
    x = torch.rand(6, 100, dtype=torch.float16) + 0.1
    x[0, 9] = 0  # -Inf * 0 = NaN in row 12
    x[1, 20] = float("inf")  # times column 20's zeros: NaN in dense math (+-Inf where W[:, 20] is not 0)
    x[2, 30] = float("nan")  # NaN in every row
    y = flashllm.spmm(x, sw)
    ref = x.double() @ w.double().T
    assert torch.equal(y.isnan(), ref.isnan()) and torch.equal(y.isinf(), ref.isinf())
    assert not y[1].isfinite().any() and y[1].isnan().sum() > 50 and y[2].isnan().all()
    finite = ref.isfinite()
    assert bool(((y.double() - ref).abs()[finite] <= 1e-2 * ref.abs()[finite] + 1e-3).all())


def test_the_cache_is_built_once_per_weight(kernel, builds):
    sw = flashllm.compress(pruned(64, 96, 0.8))
    for n in (1, 7, 100):
        flashllm.spmm(torch.randn(n, 96, dtype=torch.float16), sw)
    assert builds[0] == 1
    assert cpu._cached(sw, kernel) is cpu._cached(sw, kernel)
    flashllm.spmm(torch.randn(2, 96, dtype=torch.float16), flashllm.compress(pruned(64, 96, 0.8)))
    assert builds[0] == 2  # another weight, its own cache


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("sparsity", [0.5, 0.8, 0.9])
def test_the_cache_holds_the_non_zeros_only(kernel, fmt, sparsity):
    m, k = 256, 512
    w = pruned(m, k, sparsity)
    sw = flashllm.compress(w, fmt)
    assert cpu.cache_nbytes(sw) == 0  # nothing before the first CPU call
    flashllm.spmm(torch.randn(1, k, dtype=torch.float16), sw)
    nnz = int((w != 0).sum())
    entry = cpu._cached(sw, kernel)
    if kernel == "native":  # 16-bit value and column per non-zero, int64 row offsets
        ptr, col, val = entry.tensors
        assert col.shape == val.shape == (nnz,) and ptr.shape == (m + 1,)
        assert cpu.cache_nbytes(sw) == 4 * nnz + 8 * (m + 1)
        assert sparsity < 0.8 or cpu.cache_nbytes(sw) < 0.5 * 2 * m * k  # half the dense fp16 weight
        assert torch.equal(val.view(torch.float16), w[w != 0])
        assert torch.equal(col.view(torch.uint16).long(), (w != 0).nonzero()[:, 1])
    else:  # MKL takes fp32 values and int32 indices
        csr, = entry.tensors
        assert csr.layout == torch.sparse_csr and csr.shape == (m, k)
        assert csr.values().shape == (nnz,) and csr.values().dtype == torch.float32
        assert csr.col_indices().dtype == torch.int32 and csr.crow_indices().dtype == torch.int32
        assert cpu.cache_nbytes(sw) == 8 * nnz + 4 * (m + 1)
        assert torch.equal(csr.to_dense(), w.float())


def test_no_dense_copy_is_kept(kernel, builds):
    """After a call, the only tensors alive beside the weight's own are the cache's three, O(nnz) each."""
    m, k = 512, 1024
    sw = flashllm.compress(pruned(m, k, 0.9))

    def tensors():  # type(), not isinstance: the latter wakes deprecated module attributes
        gc.collect()
        return [t for t in gc.get_objects() if type(t) in (torch.Tensor, nn.Parameter)]

    before = {id(t) for t in tensors()}
    flashllm.spmm(torch.randn(4, k, dtype=torch.float16), sw)
    new = [t for t in tensors() if id(t) not in before]
    assert builds[0] == 1 and new
    assert all(t.layout == torch.sparse_csr or t.numel() <= 0.11 * m * k for t in new), \
        [(t.layout, tuple(t.shape)) for t in new]


def test_the_cache_goes_with_the_weight(kernel):
    sw = flashllm.compress(pruned(64, 96, 0.8))
    flashllm.spmm(torch.randn(2, 96, dtype=torch.float16), sw)
    entries = len(cpu._CACHE)
    alive = weakref.ref(sw)
    del sw
    gc.collect()
    assert alive() is None and len(cpu._CACHE) == entries - 1  # nor does it keep its weight alive


def test_every_weight_object_around_the_same_tensors_shares_one_cache(kernel, builds):
    """As torch.compile's custom op does: a new SparseWeight around the weight's tensors at every call."""
    w = pruned(64, 96, 0.8)
    sw = flashllm.compress(w, "pairmap")
    x = torch.randn(2, 96, dtype=torch.float16)
    for _ in range(3):
        again = flashllm.SparseWeight(sw.format, sw.shape, sw.dtype, 0, sw.max_block_bytes, dict(sw.tensors))
        assert_matches_fp64(flashllm.spmm(x, again), x, w)
    assert builds[0] == 1


def test_drop_cache(kernel, builds):
    sw = flashllm.compress(pruned(64, 96, 0.8))
    x = torch.randn(2, 96, dtype=torch.float16)
    y = flashllm.spmm(x, sw)
    cpu.drop_cache(sw)
    assert cpu.cache_nbytes(sw) == 0
    assert torch.equal(flashllm.spmm(x, sw), y) and builds[0] == 2


def test_a_weight_changed_in_place_is_converted_again(kernel, builds):
    w = pruned(100, 96, 0.7, seed=5)
    sw = flashllm.compress(w, "bitmap")
    x = torch.randn(3, 96, dtype=torch.float16)
    flashllm.spmm(x, sw)
    sw.tensors["data"].copy_(flashllm.compress(2 * w, "bitmap").tensors["data"])  # same mask, same layout
    assert_matches_fp64(flashllm.spmm(x, sw), x, 2 * w)
    assert builds[0] == 2


def test_gradient_reaches_x_even_with_a_cache_built_in_inference_mode(kernel):
    w = pruned(40, 64, 0.6, torch.float16)
    sw = flashllm.compress(w)
    with torch.inference_mode():
        flashllm.spmm(torch.randn(2, 64, dtype=torch.float16), sw)  # builds the cache
    x = torch.randn(3, 64, requires_grad=True)
    flashllm.spmm(x, sw).sum().backward()
    torch.testing.assert_close(x.grad, w.float().sum(0).expand(3, -1))


def test_sparse_linear_on_the_cpu_keeps_its_checkpoint_clean(kernel):
    torch.manual_seed(0)
    lin = nn.Linear(96, 40).half()
    lin.weight.data[torch.rand(40, 96) < 0.7] = 0
    sparse = SparseLinear.from_linear(lin)
    keys = set(sparse.state_dict())
    x = torch.randn(5, 96, dtype=torch.float16)
    y = sparse(x)
    assert set(sparse.state_dict()) == keys  # the cache is no part of the module's state
    torch.testing.assert_close(y, lin(x.float().half()), rtol=2e-3, atol=2e-3)
    clone = copy.deepcopy(sparse)
    assert cpu.cache_nbytes(clone.weight) == 0 and torch.equal(clone(x), y)


def test_native_and_mkl_agree_and_the_kernel_can_change(monkeypatch, builds):
    if cpu._load_native() is None:
        pytest.skip(f"no native CPU kernel here: {cpu.native_error()}")
    sw = flashllm.compress(pruned(200, 300, 0.75, torch.bfloat16))
    x = torch.randn(5, 300, dtype=torch.bfloat16)
    monkeypatch.setenv("FLASHLLM_CPU_KERNEL", "native")
    y = flashllm.spmm(x, sw)
    monkeypatch.setenv("FLASHLLM_CPU_KERNEL", "mkl")
    torch.testing.assert_close(flashllm.spmm(x, sw), y)  # bf16 outputs: equal up to one rounding
    assert builds[0] == 2 and cpu._CACHE[cpu._key(sw)].kind == "mkl"  # one cache a weight, of the kernel in use


def test_without_a_compiler_the_mkl_kernel_runs(monkeypatch, tmp_path):
    monkeypatch.setattr(cpu, "_native_fn", None)
    monkeypatch.setattr(cpu, "_native_error", None)
    monkeypatch.setattr(cpu, "_warned", False)
    monkeypatch.setenv("FLASHLLM_CACHE_DIR", str(tmp_path))  # nothing built already
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("FLASHLLM_CPU_KERNEL", "auto")
    w = pruned(64, 96, 0.8)
    x = torch.randn(3, 96, dtype=torch.float16)
    with pytest.warns(RuntimeWarning, match="native CPU kernel is unavailable .*no-such-cc"):
        y = flashllm.spmm(x, flashllm.compress(w))
    assert_matches_fp64(y, x, w)
    monkeypatch.setenv("FLASHLLM_CPU_KERNEL", "native")
    with pytest.raises(RuntimeError, match="FLASHLLM_CPU_KERNEL=native, but"):
        flashllm.spmm(x, flashllm.compress(w))
    monkeypatch.setenv("FLASHLLM_CPU_KERNEL", "fast")
    with pytest.raises(ValueError, match="FLASHLLM_CPU_KERNEL must be one of"):
        flashllm.spmm(x, flashllm.compress(w))


def test_wide_weights_take_the_mkl_kernel(monkeypatch):
    monkeypatch.setattr(cpu, "NATIVE_MAX_K", 64)  # as if K = 96 did not fit 16-bit columns
    w = pruned(40, 96, 0.5)
    sw = flashllm.compress(w)
    x = torch.randn(2, 96, dtype=torch.float16)
    assert_matches_fp64(flashllm.spmm(x, sw), x, w)
    assert cpu._CACHE[cpu._key(sw)].kind == "mkl"


@pytest.mark.parametrize("n", [1, 8, 20])
def test_threads_split_rows_and_change_nothing(kernel, n):
    w = pruned(1000, 300, 0.7, torch.bfloat16)
    sw = flashllm.compress(w)
    x = torch.randn(n, 300, dtype=torch.float32)
    one = flashllm.spmm(x, sw)
    torch.set_num_threads(2)  # the fixture puts one back
    if kernel == "native":  # each row is summed by one thread, in the same order
        assert torch.equal(flashllm.spmm(x, sw), one)
    else:
        torch.testing.assert_close(flashllm.spmm(x, sw), one)


def test_the_avx2_kernel_where_the_machine_has_avx512(monkeypatch):
    """The kernel built without AVX-512 (8-wide gathers and 8-token tiles only) gives the same answers."""
    if cpu._load_native() is None:
        pytest.skip(f"no native CPU kernel here: {cpu.native_error()}")
    monkeypatch.setattr(cpu, "_native_fn", cpu._bind(cpu._compile(("-march=native", "-mno-avx512f"))))
    monkeypatch.setenv("FLASHLLM_CPU_KERNEL", "native")
    for dtype in (torch.float16, torch.bfloat16):
        w = pruned(150, 130, 0.7, dtype, seed=7)
        sw = flashllm.compress(w)
        for n in (1, 3, 8, 9, 17):
            x = torch.randn(n, 130)
            assert_matches_fp64(flashllm.spmm(x, sw), x, w)
