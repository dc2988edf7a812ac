"""The decode microbenchmark's layouts (flashllm/kernels/decode_bench.py) and, on a GPU, its kernels' fragments.

On the CPU, `lanewise_decode` repeats csrc/decode_bench.cu's lanewise decode step by step in Python (the SWAR
popcount, the warp scan, the spread multiplies, the funnel-shifted window, PRMT's sign-replicate mode), so a
wrong constant or bit order fails here before any device run."""

import numpy as np
import pytest
import torch

from flashllm.bench.decode import cycles_per_1024, pruned_weight
from flashllm.kernels import decode_bench as db

M32 = 0xFFFFFFFF
SPARSITIES = (0.0, 0.5, 0.8, 0.95, 0.999, 1.0)


def prmt(a: int, b: int, sel: int) -> int:
    """PTX prmt.b32 (default mode): result byte n = byte sel[n] & 7 of {b, a}, its sign replicated if sel[n] & 8."""
    src, r = a | (b << 32), 0
    for n in range(4):
        nib = (sel >> (4 * n)) & 15
        byte = (src >> (8 * (nib & 7))) & 0xFF
        if nib & 8:
            byte = 0xFF if byte & 0x80 else 0
        r |= byte << (8 * n)
    return r


def lanewise_decode(block: np.ndarray) -> np.ndarray:
    """[strip, f, q, lane] registers of one lanewise block, as the kernel computes them."""
    mem = np.concatenate([block, np.zeros(16, np.uint8)])
    lds32 = lambda addr: int(mem[addr:addr + 4].view(np.uint32)[0])  # noqa: E731
    out = np.zeros((4, 4, 4, 32), np.int64)
    for s in range(4):
        masks = [lds32(16 + (s * 32 + lane) * 4) for lane in range(32)]
        start = int(mem[2 * (s - 1):2 * s].view(np.uint16)[0]) if s else 0
        counts = []
        for m in masks:
            c = (m - ((m >> 1) & 0x55555555)) & M32
            c = (c & 0x33333333) + ((c >> 2) & 0x33333333)
            counts.append((c + (c >> 4)) & 0x0F0F0F0F)
        c02 = [c & 0x00FF00FF for c in counts]
        c13 = [(c >> 8) & 0x00FF00FF for c in counts]
        i02, i13 = np.cumsum(c02).tolist(), np.cumsum(c13).tolist()
        t0, t1, t2 = i02[31] & 0xFFFF, i13[31] & 0xFFFF, i02[31] >> 16
        for lane, m in enumerate(masks):
            e02, e13 = i02[lane] - c02[lane], i13[lane] - c13[lane]
            run = db.LANEWISE_VALUES_AT - 2 + 2 * start
            base = [run + 2 * (e02 & 0xFFFF), run + 2 * (t0 + (e13 & 0xFFFF)),
                    run + 2 * (t0 + t1 + (e02 >> 16)), run + 2 * (t0 + t1 + t2 + (e13 >> 16))]
            for f in range(4):
                lo4, hi4 = (m >> (8 * f)) & 0x55, (m >> (8 * f + 1)) & 0x55
                x, y = (lo4 * 0x02082080) & M32, (hi4 * 0x02082080) & M32
                lo, hi = (lo4 * 0x41041) & 0x01010101, (hi4 * 0x41041) & 0x01010101
                off = ((lo + hi) * 0x02020200 + 2 * lo) & M32
                for q in range(4):
                    addr = base[f] + ((off >> (8 * q)) & 0xFF)
                    a0 = addr & ~3
                    window = (((lds32(a0 + 4) << 32) | lds32(a0)) >> ((addr << 3) & 31)) & M32
                    keep = prmt(x, y, (0x8 | q) | (0x8 | q) << 4 | (0xC | q) << 8 | (0xC | q) << 12)
                    out[s, f, q, lane] = window & keep
    return out


@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_lanewise_decode_matches_the_weight(sparsity):
    weight = pruned_weight(2, sparsity, seed=int(sparsity * 1000))
    data, offsets = db.encode("lanewise", weight)
    want = db.expected_fragments(weight)
    for b in range(2):
        got = lanewise_decode(data[offsets[b]:offsets[b + 1]].numpy())
        assert (torch.from_numpy(got) == want[b]).all()


@pytest.mark.parametrize("sparsity", (0.0, 0.5, 0.9))
def test_lanewise_takes_the_bitmaps_bytes(sparsity):
    weight = pruned_weight(3, sparsity, seed=1)
    assert db.encode("lanewise", weight)[1].tolist() == db.encode("bitmap", weight)[1].tolist()


def test_dense_layout_is_the_fragments():
    weight = pruned_weight(2, 0.3, seed=2)
    data, offsets = db.encode("dense", weight)
    assert offsets.tolist() == [0, 8192, 16384]
    words = data.view(torch.int32).to(torch.int64) & M32
    assert (words.view(2, 4, 4, 4, 32) == db.expected_fragments(weight)).all()


def test_fragment_coords_cover_the_block_once():
    rows, cols = db.fragment_coords()
    seen = torch.zeros(64, 64, dtype=torch.int64)
    seen.index_put_((rows.reshape(-1), cols.reshape(-1)), torch.ones(rows.numel(), dtype=torch.int64), accumulate=True)
    assert (seen == 1).all()


def test_pruned_weight_has_the_sparsity():
    w = pruned_weight(4, 0.8, seed=3)
    assert (w == 0).sum().item() == round(0.8 * w.numel())


def test_cycles_per_1024_divides_each_sms_span_by_its_strips():
    # SM 0: two CTAs spanning 0..1000; SM 1: one CTA 10..510
    clocks = torch.tensor([[0, 800, 0], [100, 1000, 0], [10, 510, 1]])
    # strips per CTA = iters * blocks * 4 = 2 * 5 * 4 = 40: SM 0 1000 / 80, SM 1 500 / 40 -> median of (12.5, 12.5)
    assert cycles_per_1024(clocks, iters=2, blocks=5) == pytest.approx(12.5)


@pytest.mark.gpu
@pytest.mark.parametrize("design", db.DESIGNS)
def test_kernel_fragments_match_the_weight(design):
    from flashllm.bench.decode import check
    for sparsity in SPARSITIES:
        weight = pruned_weight(5, sparsity, seed=torch.randint(1 << 30, ()).item())
        check(design, weight, *db.encode(design, weight))  # raises on any wrong register


def test_parse_ncu_pairs_launches_with_their_rows():
    from flashllm.bench.decode import NCU_METRICS, parse_ncu
    header = '"ID","Kernel Name","Metric Name","Metric Unit","Metric Value"'
    lines = ["PROFILED bitmap 0.5 2048", "==PROF== Disconnected", header]
    lines += [f'"0","decode_bench","{m}","inst","{"1,000" if k == "inst" else "10"}"' for k, m in NCU_METRICS.items()]
    lines += ["PROFILED lanewise 0.9 4096"] + [f'"1","decode_bench","{m}","","8"' for m in NCU_METRICS.values()]
    got = parse_ncu("\n".join(lines))
    assert got[("bitmap", "0.5")]["inst"] == pytest.approx(1000 / 2)  # per 1024 weights: 2048 weights = 2 units
    assert got[("bitmap", "0.5")]["alu"] == pytest.approx(5)
    assert got[("lanewise", "0.9")]["lsu"] == pytest.approx(2)
