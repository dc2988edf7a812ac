"""GPU kernels against an fp32 reference (marker `gpu`: skipped in CI, run on the device)."""

import pytest
import torch

import flashllm
from flashllm.kernels import jit, rules, spmm_mma
from flashllm.kernels.common import prepare_x
from flashllm.kernels.spmm import config_for, launch, spmm_kernel

pytestmark = pytest.mark.gpu

SPARSITIES = [0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0]
NS = [1, 3, 8, 16, 17, 32, 64, 128, 1024]
FORMATS = ["bitmap", "tiled_csl", "sell", "pairmap"]
DTYPES = [torch.float16, torch.bfloat16]


def pruned(m, k, sparsity, dtype, gen):
    w = torch.randn(m, k, generator=gen, device="cuda").to(dtype)
    w[torch.rand(m, k, generator=gen, device="cuda") < sparsity] = 0
    return w


def rel_err(y, ref):
    return ((y.float() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


# Both MMA paths: mma.sync (any sm_80+ GPU) and wgmma (Hopper sm_90a; the default there).
HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)
MMA = [pytest.param(False, id="mma.sync"),
       pytest.param(True, id="wgmma", marks=pytest.mark.skipif(not HOPPER, reason="wgmma needs sm_90a"))]


def skip_without_mma_choice(fmt, wg):
    if fmt == "sell" and wg:
        pytest.skip("sell has one kernel (CUDA cores), no MMA path to choose")
    if fmt == "pairmap" and wg:
        pytest.skip("pairmap has an mma.sync kernel only")


def check(x, w_dense, sw, tol, wg=None):
    ref = x.float() @ w_dense.float().T
    skip_without_mma_choice(sw.format, wg)
    kw = {} if wg is None or sw.format == "sell" else {"wg": wg}
    y = spmm_kernel(x, sw, **kw)
    assert y.dtype == x.dtype and y.shape == ref.shape
    assert torch.isfinite(y).all(), "non-finite output (unwritten or corrupted elements)"
    if ref.norm() == 0:
        assert (y == 0).all()
    else:
        assert rel_err(y, ref) <= tol, f"rel err {rel_err(y, ref):.2e}"
    y2 = spmm_kernel(x, sw, **kw)
    assert torch.equal(y.view(torch.int16), y2.view(torch.int16)), "two runs differ bitwise"


@pytest.mark.parametrize("wg", MMA)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_sparsity_sweep(fmt, dtype, sparsity, wg):
    gen = torch.Generator("cuda").manual_seed(torch.initial_seed())  # fresh data every run
    m, k = 333, 517  # odd: not tile multiples
    w = pruned(m, k, sparsity, dtype, gen)
    sw = flashllm.compress(w, fmt)
    tol = 2e-3 if dtype == torch.float16 else 1e-2
    for n in NS:
        x = torch.randn(n, k, generator=gen, device="cuda").to(dtype)
        check(x, w, sw, tol, wg)


@pytest.mark.parametrize("wg", MMA)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("m,k", [(1, 1), (7, 9), (64, 64), (130, 4096), (4096, 200), (2048, 2048)])
def test_shapes(fmt, m, k, wg):
    gen = torch.Generator("cuda").manual_seed(torch.initial_seed())
    w = pruned(m, k, 0.6, torch.float16, gen)
    sw = flashllm.compress(w, fmt)
    for n in (1, 8, 40, 64, 200):
        check(torch.randn(n, k, generator=gen, device="cuda").half(), w, sw, 2e-3, wg)


def patterns(m, k):
    g = torch.Generator("cuda").manual_seed(1)
    base = torch.randn(m, k, generator=g, device="cuda").half()
    out = {}
    z = torch.zeros(m, k, device="cuda", dtype=torch.half)
    e = base.clone(); e[:64, :] = 0; e[:, 128:192] = 0; out["empty_tiles"] = e * (torch.rand(m, k, device="cuda") < 0.3)
    d = base * (torch.rand(m, k, device="cuda") < 0.1); d[64:128, 64:128] = base[64:128, 64:128]; out["dense_tile"] = d
    r = z.clone(); r[77] = base[77]; out["dense_row"] = r
    c = z.clone(); c[:, 33] = base[:, 33]; out["dense_col"] = c
    o = z.clone(); o[128:192, 0:64] = base[128:192, 0:64]; out["one_tile"] = o
    ii, jj = torch.meshgrid(torch.arange(m, device="cuda"), torch.arange(k, device="cuda"), indexing="ij")
    out["checkerboard"] = base * ((ii + jj) % 2 == 0)
    out["full"] = base
    return out


@pytest.mark.parametrize("wg", MMA)
@pytest.mark.parametrize("fmt", FORMATS)
def test_adversarial_patterns(fmt, wg):
    for name, w in patterns(257, 300).items():
        sw = flashllm.compress(w, fmt)
        for n in (1, 16, 64):
            x = torch.randn(n, 300, device="cuda").half()
            check(x, w, sw, 2e-3, wg)


@pytest.mark.parametrize("wg", MMA)
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_output_written(fmt, wg):
    w = pruned(1000, 512, 0.7, torch.float16, torch.Generator("cuda").manual_seed(3))
    sw = flashllm.compress(w, fmt)
    x = torch.randn(24, 512, device="cuda").half()
    skip_without_mma_choice(fmt, wg)
    for split in (1, 3):
        y = torch.full((24, 1000), float("nan"), device="cuda", dtype=torch.half)
        if fmt == "sell":
            launch(x, sw, rules.choose_sell_config(1000, 512, 24, 132, parts=split), y)
        else:
            cfg = rules.choose_config(fmt, 1000, 512, 24, sw.max_block_bytes, 132, split=split, wg=wg)
            launch(x, sw, cfg, y, None)
        assert not torch.isnan(y).any(), f"unwritten outputs with split={split}"
        assert rel_err(y, x.float() @ w.float().T) < 2e-3


@pytest.mark.parametrize("wg", MMA)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_added_before_rounding(fmt, dtype, wg):
    """bias in the epilogue (split 1) and in the split-K reduce; the large-N path adds it through cuBLAS."""
    skip_without_mma_choice(fmt, wg)
    gen = torch.Generator("cuda").manual_seed(torch.initial_seed())
    m, k = 333, 517
    w = pruned(m, k, 0.8, dtype, gen)
    sw = flashllm.compress(w, fmt)
    bias = (torch.randn(m, generator=gen, device="cuda") * 4).to(dtype)
    tol = 2e-3 if dtype == torch.float16 else 1e-2
    for n, split in ((1, 1), (8, 1), (8, 3), (17, None), (300, None)):
        x = torch.randn(n, k, generator=gen, device="cuda").to(dtype)
        ref = x.float() @ w.float().T + bias.float()
        kw = {} if split is None else {"split": split} if fmt == "sell" else {"split": split, "wg": wg}
        y = spmm_kernel(x, sw, bias, **kw) if n <= 128 else flashllm.spmm(x, sw, bias)
        assert rel_err(y, ref) <= tol, (n, split, rel_err(y, ref))
        # elementwise against the CPU reference, to a tolerance on the output's scale (near-cancelling
        # entries may differ by an ulp of the larger terms; cuBLAS rounds before its bias epilogue)
        cpu = flashllm.spmm(x.cpu(), sw.to("cpu"), bias.cpu()).cuda()
        assert (y.float() - cpu.float()).abs().max() <= tol * ref.abs().max(), (n, split)


def test_noncontiguous_and_batched():
    w = pruned(300, 200, 0.5, torch.float16, torch.Generator("cuda").manual_seed(4))
    sw = flashllm.compress(w, "bitmap")
    x = torch.randn(3, 5, 400, device="cuda").half()[..., ::2]
    y = flashllm.spmm(x, sw)
    assert y.shape == (3, 5, 300)
    assert rel_err(y, x.float() @ w.float().T) < 2e-3


def test_nan_propagates():
    w = pruned(128, 128, 0.5, torch.float16, torch.Generator("cuda").manual_seed(5))
    w[3, 7] = float("nan")
    sw = flashllm.compress(w, "bitmap")
    y = flashllm.spmm(torch.randn(4, 128, device="cuda").half(), sw)
    assert torch.isnan(y[:, 3]).all() and not torch.isnan(y[:, :3]).any()


def test_large_n_uses_dense_path_correctly():
    w = pruned(512, 256, 0.7, torch.float16, torch.Generator("cuda").manual_seed(6))
    sw = flashllm.compress(w, "bitmap")
    x = torch.randn(2048, 256, device="cuda").half()
    assert rel_err(flashllm.spmm(x, sw), x.float() @ w.float().T) < 2e-3


def replayed(fn):
    """fn's output from a CUDA graph that captured it, after one replay."""
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = fn()
    g.replay()
    torch.cuda.synchronize()
    return out


def test_cuda_graph_and_compile():
    w = pruned(512, 256, 0.7, torch.float16, torch.Generator("cuda").manual_seed(7))
    sw = flashllm.compress(w, "bitmap")
    x = torch.randn(8, 256, device="cuda").half()
    ref = flashllm.spmm(x, sw)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        flashllm.spmm(x, sw)
    torch.cuda.current_stream().wait_stream(s)
    assert torch.equal(replayed(lambda: flashllm.spmm(x, sw)), ref)
    f = torch.compile(lambda a: flashllm.spmm(a, sw) * 2, fullgraph=True)
    assert torch.equal(f(x), ref * 2)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_decompress_kernel_is_exact(fmt, dtype):
    from flashllm.kernels.decompress import dense_matmul
    from flashllm.kernels.decompress import decompress_cuda
    gen = torch.Generator("cuda").manual_seed(torch.initial_seed())
    for (m, k, s) in [(333, 517, 0.5), (64, 64, 0.0), (130, 70, 0.9), (1, 1, 0.0), (200, 300, 1.0)]:
        w = pruned(m, k, s, dtype, gen)
        sw = flashllm.compress(w, fmt)
        assert torch.equal(decompress_cuda(sw).view(torch.int16), w.view(torch.int16))
        if m > 64:
            assert torch.equal(decompress_cuda(sw, 1, 2).view(torch.int16), w[64:128].view(torch.int16))
        x = torch.randn(300, k, generator=gen, device="cuda").to(dtype)
        y = dense_matmul(x, sw, chunk_bytes=64 * k * 2)  # one row block per chunk
        assert rel_err(y, x.float() @ w.float().T) < 1e-2


def test_large_n_path_captures_in_a_cuda_graph():
    w = pruned(700, 300, 0.8, torch.float16, torch.Generator("cuda").manual_seed(8))
    sw = flashllm.compress(w, "tiled_csl")
    x = torch.randn(600, 300, device="cuda").half()
    ref = flashllm.spmm(x, sw)
    assert torch.equal(replayed(lambda: flashllm.spmm(x, sw)), ref)


@pytest.mark.parametrize("dtype", DTYPES)
def test_pairmap_every_config(dtype):
    """Every tile config of the pair-bitmap kernel (blocks per CTA, ring depth, K split, token tiles),
    on a matrix with a partial last row block and K block; each result poisoned first, checked complete,
    accurate and reproducible."""
    gen = torch.Generator("cuda").manual_seed(torch.initial_seed())
    m, k = 333, 1111
    w = pruned(m, k, 0.75, dtype, gen)
    w[5, :] = torch.randn(k, generator=gen, device="cuda").to(dtype)  # one fully dense row
    sw = flashllm.compress(w, "pairmap")
    tol = 2e-3 if dtype == torch.float16 else 1e-2
    for n in (1, 8, 13, 32, 64):
        x = torch.randn(n, k, generator=gen, device="cuda").to(dtype)
        ref = x.float() @ w.float().T
        for spw in rules.SPW_CHOICES:
            for stages in rules.STAGE_CHOICES:
                for split in (1, 3, 18):
                    cfg = rules.choose_config("pairmap", m, k, n, sw.max_block_bytes, 132, spw=spw,
                                                 stages=stages, split=split, wg=False)
                    ys = []
                    for _ in range(2):
                        y = torch.full((n, m), float("nan"), device="cuda", dtype=dtype)
                        launch(prepare_x(x), sw, cfg, y, None)  # K odd: rows padded to 8
                        ys.append(y)
                    assert not torch.isnan(ys[0]).any(), (n, cfg)
                    assert rel_err(ys[0], ref) <= tol, (n, cfg, rel_err(ys[0], ref))
                    assert torch.equal(ys[0].view(torch.int16), ys[1].view(torch.int16)), (n, cfg)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sell_every_config(dtype):
    """Every launch shape of the sliced-ELL kernel: CTA sizes, load depths, K splits across and within
    chunks, token planes; each result poisoned first, checked complete, accurate and reproducible."""
    gen = torch.Generator("cuda").manual_seed(torch.initial_seed())
    m, k = 1000, 5000  # 32 slices (the last partial), 3 chunks (the last partial)
    w = pruned(m, k, 0.9, dtype, gen)
    sw = flashllm.compress(w, "sell")
    tol = 2e-3 if dtype == torch.float16 else 1e-2
    for n in (1, 2, 3, 5, 8, 13, 24, 32, 40):  # 1-, 2-, 4- and 8-token X tiles, 1-4 planes
        x = torch.randn(n, k, generator=gen, device="cuda").to(dtype)
        ref = x.float() @ w.float().T
        for warps in rules.SELL_WARP_CHOICES:
            for depth in rules.SELL_DEPTH_CHOICES:
                for split, parts in ((None, 1), (1, 1), (2, 1), (None, 3), (1, 8), (None, 8)):
                    ys = []
                    for _ in range(2):
                        cfg = rules.choose_sell_config(m, k, n, 132, warps=warps, split=split, depth=depth,
                                                             parts=parts)
                        y = torch.full((n, m), float("nan"), device="cuda", dtype=dtype)
                        launch(x, sw, cfg, y)
                        ys.append(y)
                    assert not torch.isnan(ys[0]).any(), cfg
                    assert rel_err(ys[0], ref) <= tol, (cfg, rel_err(ys[0], ref))
                    assert torch.equal(ys[0].view(torch.int16), ys[1].view(torch.int16)), cfg


def test_sell_under_cuda_graph_and_compile():
    w = pruned(700, 3000, 0.9, torch.float16, torch.Generator("cuda").manual_seed(9))
    sw = flashllm.compress(w, "sell")
    for n in (8, 300):  # the kernel, then the decompress + cuBLAS path
        x = torch.randn(n, 3000, device="cuda").half()
        ref = flashllm.spmm(x, sw)
        assert rel_err(ref, x.float() @ w.float().T) < 2e-3
        assert torch.equal(replayed(lambda: flashllm.spmm(x, sw)), ref)
    f = torch.compile(lambda a: flashllm.spmm(a, sw) * 2, fullgraph=True)
    x = torch.randn(8, 3000, device="cuda").half()
    assert torch.equal(f(x), flashllm.spmm(x, sw) * 2)


@pytest.mark.skipif(not HOPPER, reason="thread-block clusters need sm_90")
@pytest.mark.parametrize("fmt", ["pairmap", "bitmap", "tiled_csl"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_cluster_split_k_matches_reduce_kernel(fmt, dtype):
    """The split-K sum in a cluster's distributed shared memory gives bitwise the reduce kernel's output
    (same fp32 sums in slice order), with a bias, a partial last row block and odd K, for every cluster
    size and token tile; every element is written (output poisoned first) and a CUDA graph replays it."""
    gen = torch.Generator("cuda").manual_seed(torch.initial_seed())
    m, k = 333, 3001
    w = pruned(m, k, 0.8, dtype, gen)
    sw = flashllm.compress(w, fmt)
    bias = torch.randn(m, generator=gen, device="cuda").to(dtype)
    tol = 2e-3 if dtype == torch.float16 else 1e-2
    for n in (3, 8, 32, 64):
        x = torch.randn(n, k, generator=gen, device="cuda").to(dtype)
        ref = x.float() @ w.float().T + bias.float()
        for split in (2, 5, 8):
            ys = {}
            for cluster in (False, True):
                cfg = rules.choose_config(fmt, m, k, n, sw.max_block_bytes, 132, split=split, wg=False,
                                             hopper=True, cluster=cluster)
                assert cfg.cluster == cluster and cfg.split == split
                y = torch.full((n, m), float("nan"), device="cuda", dtype=dtype)
                launch(prepare_x(x), sw, cfg, y, bias)
                ys[cluster] = y
            assert not torch.isnan(ys[True]).any(), (n, split)
            assert rel_err(ys[True], ref) <= tol, (n, split, rel_err(ys[True], ref))
            assert torch.equal(ys[True].view(torch.int16), ys[False].view(torch.int16)), (n, split)
    cfg = rules.choose_config(fmt, m, k, 32, sw.max_block_bytes, 132, split=8, wg=False, hopper=True, cluster=True)

    def run():
        y = torch.empty((32, m), device="cuda", dtype=dtype)
        launch(prepare_x(x[:32]), sw, cfg, y, bias)
        return y
    assert torch.equal(replayed(run), run())



@pytest.mark.skipif(not HOPPER, reason="thread-block clusters need sm_90")
def test_cluster_config_falls_back_where_no_cluster_fits(monkeypatch):
    """A GPU (partition) that cannot place a cluster gets the reduce kernel instead of a launch error."""
    gen = torch.Generator("cuda").manual_seed(torch.initial_seed())
    m, k, n = 1000, 2000, 32
    w = pruned(m, k, 0.8, torch.float16, gen)
    sw = flashllm.compress(w, "pairmap")
    x = torch.randn(n, k, generator=gen, device="cuda").half()
    cfg = rules.choose_config("pairmap", m, k, n, sw.max_block_bytes, 132, split=4, hopper=True, cluster=True)
    kernel = jit.get_kernel(cfg.name("pairmap", False), x.device.index, (9, 0), spmm_mma.PROGRAM)
    grid = (-(-16 // cfg.spw), 1, 4)
    assert kernel.clusters_fit(grid, cfg.smem, (1, 1, 4))
    monkeypatch.setattr(spmm_mma, "clusters_fit", lambda *args: False)
    y = torch.full((n, m), float("nan"), device="cuda", dtype=torch.float16)
    launch(x, sw, cfg, y, None)
    assert rel_err(y, x.float() @ w.float().T) < 2e-3


# The wide (prefill) kernel: sm_90a, bitmap and pair bitmap, 17-1024 tokens.
WIDE = pytest.mark.skipif(not HOPPER, reason="the wide kernel needs sm_90a")
WIDE_CONFIGS = [{}, {"nt": 16}, {"nt": 32, "split": 3}, {"nt": 16, "stages": 3}, {"ctas": 7}, {"nt": 16, "ctas": 5},
                {"nt": 8, "groups": 3}, {"nt": 8, "groups": 3, "ctas": 3}, {"nt": 4, "groups": 3},
                {"nt": 4, "groups": 4}, {"nt": 4, "groups": 4, "ctas": 5}]


@WIDE
@pytest.mark.parametrize("fmt", ["bitmap", "pairmap"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.8, 0.95, 1.0])
def test_wide_kernel(fmt, dtype, sparsity):
    gen = torch.Generator("cuda").manual_seed(torch.initial_seed())  # fresh data every run
    tol = 2e-3 if dtype == torch.float16 else 1e-2
    for m, k in [(333, 517), (130, 4096), (64, 64)]:
        w = pruned(m, k, sparsity, dtype, gen)
        sw = flashllm.compress(w, fmt)
        ref_w = w.float()
        for n in (17, 32, 33, 64, 65, 128, 129, 300, 1024):
            x = torch.randn(n, k, generator=gen, device="cuda").to(dtype)
            ref = x.float() @ ref_w.T
            for cfg in WIDE_CONFIGS:
                y = spmm_kernel(x, sw, wide=1, **cfg)
                assert torch.isfinite(y).all(), (n, cfg)
                if ref.norm() == 0:
                    assert (y == 0).all()
                else:
                    assert rel_err(y, ref) <= tol, (n, cfg, rel_err(y, ref))
                assert torch.equal(y.view(torch.int16), spmm_kernel(x, sw, wide=1, **cfg).view(torch.int16))


@WIDE
@pytest.mark.parametrize("fmt", ["bitmap", "pairmap"])
def test_wide_kernel_patterns_and_every_output(fmt):
    for name, w in patterns(257, 300).items():
        sw = flashllm.compress(w, fmt)
        x = torch.randn(200, 300, device="cuda").half()
        # one CTA per tile, split-K by 2 and 5, and stream-K ranges that cut tiles anywhere (3 x 5 iterations)
        for grid in ({"split": 1}, {"split": 2}, {"split": 5}, {"ctas": 2}, {"ctas": 4}, {"ctas": 11}):
            cfg = rules.choose_wide_config(fmt, 257, 300, 200, sw.max_block_bytes, 132, **grid)
            y = torch.full((200, 257), float("nan"), device="cuda", dtype=torch.half)
            launch(prepare_x(x), sw, cfg, y, None)  # K = 300: rows padded to 8
            assert not torch.isnan(y).any(), (name, grid)
            assert rel_err(y, x.float() @ w.float().T) < 2e-3, (name, grid)


@WIDE
def test_wide_kernel_is_dispatched_with_bias_and_in_a_graph():
    w = pruned(700, 520, 0.6, torch.float16, torch.Generator("cuda").manual_seed(9))
    sw = flashllm.compress(w, "bitmap")
    bias = torch.randn(700, device="cuda").half()
    x = torch.randn(3, 170, 520, device="cuda").half()  # leading batch dims: 510 tokens
    assert config_for(sw, 510).wide
    y = flashllm.spmm(x, sw, bias=bias)
    ref = x.float() @ w.float().T + bias.float()
    assert rel_err(y, ref) < 2e-3
    assert torch.equal(replayed(lambda: flashllm.spmm(x, sw, bias=bias)), y)


@WIDE
@pytest.mark.parametrize("fmt", ["bitmap", "pairmap"])
def test_wide_kernel_stream_k_by_default(fmt):
    """A 4096-row weight at 256 tokens has 32 tiles: dispatch shares their iterations over every SM, and the
    tiles cut between CTAs sum to the reference, bitwise the same on every run, with the bias."""
    gen = torch.Generator("cuda").manual_seed(torch.initial_seed())
    w = pruned(4096, 4096, 0.7, torch.float16, gen)
    sw = flashllm.compress(w, fmt)
    x = torch.randn(256, 4096, generator=gen, device="cuda").half()
    bias = torch.randn(4096, generator=gen, device="cuda").half()
    cfg = config_for(sw, 256)
    assert cfg.wide and cfg.ctas == torch.cuda.get_device_properties(0).multi_processor_count > 32
    y = flashllm.spmm(x, sw, bias=bias)
    assert rel_err(y, x.float() @ w.float().T + bias.float()) < 2e-3
    assert torch.equal(y.view(torch.int16), flashllm.spmm(x, sw, bias=bias).view(torch.int16))
