"""Choose and launch a GPU kernel for y = x @ W^T: tile config, split-K, large-N fallback.

Everything here is a heuristic from (M, K, N, SM count, block sizes); there is no per-shape table.
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass, replace

import torch

from ..formats import SparseWeight, codec_for
from ..formats.layout import BLOCK, block_grid
from . import jit
from .sell_launch import MAX_N as MAX_SELL_N
from .sell_launch import choose_sell_config, decompress_sell, launch_sell
from .sell_launch import variants as sell_variants

THREADS = 128
SMEM_PER_SM = 227 * 1024  # Hopper/Ampere-class opt-in limit per block; per-SM total is ~228 KB
SPW_CHOICES = (1, 2)      # what choose_config picks (sweeps may force others)
NT_CHOICES = (1, 2, 4, 8)
STAGE_CHOICES = (2, 3, 4)
MAX_CLUSTER = 8  # the portable cluster size (csrc/spmm.cu MAX_CLUSTER)
DECOMPRESS_KPER = 8  # K-blocks a decompress CTA expands in turn (csrc/spmm.cu DECOMPRESS_KPER)
DECOMPRESS_STAGES = 3  # its cp.async ring (csrc/spmm.cu DECOMPRESS_STAGES)
MAX_KERNEL_N = 128  # above this (WIDE_MAX_N where use_wide) the weight is decompressed in chunks for cuBLAS
# The wide kernel (csrc/spmm.cu spmm_wide): `spw` consumer warpgroups, one 64-row block each, and a producer
# warpgroup.  Two; three at 64 tokens per CTA (32 accumulators leave the registers for a third) and three or
# four at 32 tokens (16 accumulators), on weights deep enough in K-block iterations per SM (wide_is_deep).
# More groups spread the decode's latency over more warps per scheduler, but make fewer, larger tiles, whose
# stream-K fix-up and pipeline fill only pay on enough iterations a CTA.  H100 (benchmarks/wide_probe.py,
# 14 paper and Llama shapes, 20-64 tokens): with 3-group tiles holding >= WIDE_DEEP_ITERS iterations per SM
# a third group won up to 40 % (27648x9216 pair bitmap 80 % N = 48: 1.39 -> 1.78x cuBLAS; 7168x28672 pair
# bitmap N = 64: 1.39 -> 1.66x); below it, it lost up to 18 % (11008x4096 bitmap 50 % N = 64: 1.00 -> 0.82x; 7168x7168
# 1.03 -> 0.89x), and so did the 32-token tiles against the mma.sync kernels at 17-32 tokens.
WIDE_DEEP_ITERS = 48
WIDE_FORMATS = ("bitmap", "pairmap")
WIDE_NT_CHOICES = (4, 8, 16, 32)  # 32, 64, 128 or 256 tokens per CTA
# Consumer groups per tile width: four get 112 registers each, enough beside 16 accumulators a thread; with
# 32 ptxas spilled (and four lost 5-15 % to three at 64 tokens, H100).
WIDE_GROUPS = {4: (3, 4), 8: (2, 3), 16: (2,), 32: (2,)}
WIDE_STAGES = {4: 8, 8: 8, 16: 6, 32: 4}  # X ring depth: 32-128 KB of X tiles
WIDE_MAX_W_STAGES = 12  # weight ring depth, as far as shared memory allows (>= 3)
WIDE_MIN_N, WIDE_MAX_N = 33, 1024  # token counts the wide kernel takes on sm_90a (see use_wide)
WIDE_DEEP_MIN_N = 17  # from here on weights that wide_is_deep


class Params(ctypes.Structure):
    _fields_ = [("weight", ctypes.c_void_p), ("block_ptr", ctypes.c_void_p), ("x", ctypes.c_void_p),
                ("y", ctypes.c_void_p), ("partial", ctypes.c_void_p),
                ("M", ctypes.c_int), ("N", ctypes.c_int), ("K", ctypes.c_int), ("ldx", ctypes.c_int),
                ("MB", ctypes.c_int), ("KB", ctypes.c_int), ("kb_per_split", ctypes.c_int),
                ("stage_w_bytes", ctypes.c_int), ("bias", ctypes.c_void_p), ("cluster", ctypes.c_int),
                ("w_stages", ctypes.c_int), ("counters", ctypes.c_void_p)]


@dataclass(frozen=True)
class Config:
    spw: int      # 64-row format blocks per CTA (warp w decodes strip w of each)
    nt: int       # n8 tiles per CTA: tokens per CTA = 8 * nt
    stages: int   # cp.async ring depth
    split: int    # grid.z K slices
    kb_per_split: int
    stage_w_bytes: int
    smem: int
    wg: bool = False  # Hopper wgmma (sm_90a) instead of mma.sync
    cluster: bool = False  # split-K summed in a cluster's distributed shared memory (sm_90a), no reduce kernel
    wide: bool = False  # the wide kernel: spw consumer warpgroups (64-row blocks) + a producer, 32-256 tokens
    w_stages: int = 0   # the wide kernel's weight ring (its X ring is `stages` deep)
    ctas: int = 0       # the wide kernel's grid: CTAs sharing its (tile, K block) iterations (stream-K)

    def name(self, fmt: str, bf16: bool) -> str:
        flag = lambda b: "true" if b else "false"  # noqa: E731
        if self.wide:
            return f"spmm_wide<{_BLOCK_FORMATS.index(fmt)},{self.nt},{self.stages},{flag(bf16)},{self.spw}>"
        return f"spmm_{fmt}<{self.spw},{self.nt},{self.stages},{flag(bf16)},{flag(self.wg)}>"

    @property
    def threads(self) -> int:
        return 128 * (self.spw + 1) if self.wide else THREADS


def _device_props(index: int) -> tuple[int, tuple[int, int]]:
    """(SM count, capability), both cached once per device by jit."""
    return jit.sm_count(index), jit.capability(index)


@functools.lru_cache(maxsize=4096)
def choose_config(fmt: str, m: int, k: int, n: int, max_block_bytes: int, sms: int,
                  spw: int | None = None, stages: int | None = None, split: int | None = None,
                  wg: bool | None = None, hopper: bool = False, nt: int | None = None,
                  cluster: bool | None = None) -> Config:
    """Tile config from the problem size alone (rules read off sweeps on an H200: see NOTES.md).

    - nt: the fewest n8 tiles that cover min(N, 64) tokens (more tokens -> more grid.y chunks).
    - spw (64-row blocks per CTA; warp w decodes strip w of each): bitmap takes two (two independent
      decode chains per warp, X fragments shared; since the weights move by bulk copy this pays at
      N = 8 too, 3-4 %); Tiled-CSL takes two only for small blocks (<= 4 KB, i.e. high sparsity),
      where its dense-tile work per block is light.
    - stages: 2 - a shallow ring leaves shared memory for more resident CTAs, which hides latency
      better than depth here.
    - split: K slices, 8 (4 at N = 64), each streaming >= 12 blocks: many small CTAs keep every
      SM's schedulers busy, which matters more than the fp32 partials they write.
    - wg: on Hopper (`hopper`, sm_90a), wgmma instead of mma.sync (see WGMMA_RULE).
    The pair bitmap, and the bitmap up to 16 tokens, take spw 2 and a one-wave split (wave_split); on Hopper
    the pair bitmap from 32 tokens, and the bitmap at 17-32 tokens from 16384 rows, 8 slices summed in a
    cluster (CLUSTER_RULE); at 33-64 tokens see WAVE_AT_64.  Overrides (sweeps, tests) may fix any of spw,
    stages, split, wg, nt (n8 tiles per CTA) and cluster.
    """
    mb, kb = block_grid((m, k))
    if nt is None:
        nt = next(t for t in NT_CHOICES if 8 * t >= min(n, 64))
    elif nt not in NT_CHOICES:
        raise ValueError(f"nt must be one of {NT_CHOICES}, got {nt}")
    n_tiles = -(-n // (8 * nt))
    stage_w = -(-max_block_bytes // 16) * 16 + 16  # +16: the decoder may peek 2 bytes past a stream
    if wg is None:
        wg = hopper and use_wgmma(fmt, nt)
    pipelined = wg and fmt == "bitmap"  # the pipelined wgmma kernel: one block per CTA, loads two stages ahead
    if pipelined:
        spw, stages = spw or 1, stages or 4
        if spw != 1 or stages < 3:
            raise ValueError(f"the bitmap wgmma kernel takes spw=1 and >= 3 stages, not spw={spw}, stages={stages}")
    wave = fmt == "pairmap" or (fmt == "bitmap" and nt <= 2)  # see wave_split
    if spw is None and wave:
        spw = 2
    if spw is None:
        spw = 2 if fmt == "bitmap" or stage_w <= 4096 else 1
        while spw > 1 and -(-mb // spw) * n_tiles < sms:
            spw //= 2
    stage_bytes = spw * stage_w + nt * 8 * 128
    if wg:  # every stage 1024-byte aligned (128-byte swizzle of wgmma operands), +1 KB to align the ring
        stage_bytes = -(-stage_bytes // 1024) * 1024
    # Tiled-CSL: the dense tiles; bitmap: per-warp popcounts of the mask words (128 bytes per warp and block)
    dense = spw * BLOCK * BLOCK * 2 if fmt == "tiled_csl" else spw * (THREADS // 32) * 128
    if stages is None:
        stages = 2
    one_wave = wave_split(-(-mb // spw) * n_tiles, kb, nt, sms) if wave else None
    if fmt == "pairmap" and nt == 8 and split is None and hopper:  # see WAVE_AT_64 (measured on Hopper only)
        fits = RESIDENT_AT_64 * sms // -(-mb // spw)
        if 4 <= fits < MAX_CLUSTER:
            split, cluster = fits, False if cluster is None else cluster
    may_cluster = hopper and not pipelined and cluster is not False and split is None and kb >= 12 * MAX_CLUSTER
    cluster_rule = may_cluster and (  # see CLUSTER_RULE
        (fmt == "pairmap" and nt >= 4 and (one_wave <= MAX_CLUSTER or kb < 64 * one_wave))
        or (fmt == "bitmap" and nt == 4 and mb >= CLUSTER_MIN_ROW_BLOCKS))
    if cluster_rule:
        split = MAX_CLUSTER
    if split is None and wave:
        split = one_wave
    if split is None:
        split = max(1, min(4 if nt == 8 else 8, kb // 12))
    kb_per_split = -(-kb // max(1, split))
    split = -(-kb // kb_per_split)
    can_cluster = hopper and not pipelined and 2 <= split <= MAX_CLUSTER
    if cluster is None:
        cluster = cluster_rule and can_cluster
    elif cluster and not can_cluster:
        raise ValueError(f"a cluster split-K needs sm_90a, no pipelined wgmma kernel and 2..{MAX_CLUSTER} slices "
                         f"(split {split})")
    # a cluster split-K parks the CTA's accumulators (spw * nt * 2 KB) in its ring: at least that long
    ring = max(stages * stage_bytes, spw * nt * 2048) if cluster else stages * stage_bytes
    # + the stage mbarriers and the CTA's block offsets (+1 KB to align a wgmma ring)
    smem = ring + dense + stages * 8 + spw * (kb_per_split + 1) * 8 + (1024 if wg else 0)
    if smem > SMEM_PER_SM:
        raise ValueError(f"blocks of up to {max_block_bytes} bytes need {smem} bytes of shared memory")
    return Config(spw, nt, stages, split, kb_per_split, stage_w, smem, wg, cluster)


# CLUSTER_RULE: the pair bitmap from 32 tokens on (sm_90a) takes 8 K slices summed in a cluster's distributed
# shared memory (csrc/spmm.cu cluster_reduce): no fp32 partials through global memory, no reduce kernel.
# Only where each slice keeps >= 12 K-blocks, and unless the one-wave split already cuts K into more than
# 8 slices of >= 64 blocks (then its larger grid fills the GPU better).  Measured on an H100 (benchmarks/config_probe.py
# pairmap 'cluster=0', 8 paper shapes x 70/80/90 % x N = 32/64): better in 43 of 48 cases, e.g. 9216x9216
# 70 % N = 32 1.47 -> 1.63x, 21504x7168 70 % N = 64 0.91 -> 1.13x; the 5 losses, 12288x49152 (one-wave
# slices of 70 blocks: 1.67 -> 1.56x at 70 %, N = 32), are what the 64-block bound leaves out.  Clusters
# elsewhere lost: with the one-wave split (3-6 slices a tile) at N = 8 up to 24 % (21504x7168 90 %: 2.62 ->
# 2.00x), and for the bitmap at N = 32 7-12 % on small-M shapes - a cluster's CTAs must be resident at once.
# The bitmap at 17-32 tokens takes them from 16384 rows (CLUSTER_MIN_ROW_BLOCKS): on an H100 (config_probe.py
# bitmap 'cluster=1', REPS=3, 12 paper shapes x 50/60 %, benchmarks/results/cluster32_*) every shape from
# 21504 rows gained or held (0 to +16 %: 28672x7168 50 % 1.13 -> 1.31x), and those of 7168-12288 rows lost
# up to 13 % but one (12288x12288 50 %: +15 %, 60 %: -2 %).  On an H200 the rule measured level (-1 to +3 %).
CLUSTER_MIN_ROW_BLOCKS = 256

# WAVE_AT_64: the pair bitmap at 33-64 tokens (128 registers: 4 resident CTAs per SM) whose 8 slices would
# spill into a second, partial wave of CTAs but whose 4-7 would not, takes that many slices, summed by the
# reduce kernel.  Measured on an H100 (config_probe.py pairmap 'split=4;split=4,cluster=1;split=6,...', REPS=3,
# 12 paper shapes x 70/80/90 %, benchmarks/results/n64_probe_H100_2026-11-22.txt): the 8-slice clusters
# took 0.87-0.93x cuBLAS on 9216x9216 (576 CTAs for 528 places) against 1.06-1.08x with 6 slices, and
# 1.10-1.14x on 12288x12288 against 1.21-1.31x with 4 (without a cluster: 1.02-1.06x with one).  The counts
# the rule picks (7 slices for 9216 rows, 5 for 12288), checked on both GPUs: +5-36 % on the H100, +5-30 % on
# the H200 on the four paper shapes it changes (benchmarks/results/n64_rule_H100_H200_2026-11-22.txt).
RESIDENT_AT_64 = 4


def wave_split(ctas: int, kb: int, nt: int, sms: int) -> int:
    """K slices for the pair-bitmap kernel, and the bitmap's up to 16 tokens (both with two blocks per
    CTA): as many as keep the grid within ~8 CTAs per SM (one wave of resident CTAs; a second, partial
    wave measured up to 1.35x slower), at least 4 K-blocks each.

    Read off a sweep on an H200 (12 paper shapes x 70/90 % x N = 8/16/32, splits 2-16,
    benchmarks/results/pairmap_split_sweep_H200_2026-11-22.json): 3 % from the best split on average
    (the old rule, 8 slices and one block per CTA on small matrices, lost 20-40 % there).  The bitmap
    gains 0-17 % with it at N <= 16 (6 shapes, 50/80 %) and loses 5-12 % at N = 32 (74-101 registers:
    fewer than 8 CTAs fit an SM), so it keeps the old rule there; Tiled-CSL lost with it and keeps it too.
    """
    most = max(1, min(4 if nt == 8 else 16, kb // 4))
    fits = (8 * sms) // max(1, ctas)
    return max(1, min(most, fits))


def wide_is_deep(m: int, k: int, sms: int) -> bool:
    """Whether tiles of three 64-row blocks give each SM >= WIDE_DEEP_ITERS K-block iterations."""
    mb, kb = block_grid((m, k))
    return -(-mb // 3) * kb >= WIDE_DEEP_ITERS * sms


def use_wide(fmt: str, m: int, k: int, n: int, sms: int, hopper: bool) -> bool:
    """Whether `n` tokens x an m x k weight go to the wide kernel (sm_90a, bitmap and pair bitmap).

    Measured on an H100 (benchmarks/wide_probe.py; NOTES.md "The wide kernel"), against what ran there
    before: 65-1024 tokens, the SpMM kernel in 64-token chunks or decompression + cuBLAS, both formats, every
    shape (12288x12288 at 50 %: N = 128 0.57 -> 1.00x cuBLAS, 512 0.51 -> 0.69x, 1024 0.67 -> 0.75x; from
    2048 tokens decompression + cuBLAS was as fast or faster).  33-64 tokens (tenth session, after the wide
    kernel's stage loop was rebuilt, with 64-token tiles): against the mma.sync kernels on 6 paper shapes at 48
    and 64 tokens, the bitmap (50 / 70 %) gains 5-50 % on the H100 (9216x36864 50 % N = 64: 0.92 -> 1.41x
    cuBLAS; 7168x7168 0.77 -> 1.00x), the pair bitmap (80 %) -3 to +20 % (28672x7168: 1.19 -> 1.36x).
    17-32 tokens where wide_is_deep (eleventh session: 32-token tiles with three or four consumer groups):
    H100, 14 shapes at 20 and 32 tokens, bitmap 50 / 70 % up to +24 % (9216x36864 50 %: 1.38 -> 1.63x;
    7168x28672 70 %: 1.41 -> 1.73x), pair bitmap 80 % up to +19 % (9216x36864: 1.81 -> 2.15x), a few
    points -5 % (9216x9216 pair bitmap 1.72 -> 1.64x); on shallower weights the mma.sync kernels stay
    ahead (7168x7168 bitmap 50 %: 1.08 against 0.94x; 11008x4096 pair bitmap 1.41 against 1.28x), and at 16
    tokens and below everywhere.
    """
    if not hopper or fmt not in WIDE_FORMATS:
        return False
    low = WIDE_DEEP_MIN_N if wide_is_deep(m, k, sms) else WIDE_MIN_N
    return low <= n <= WIDE_MAX_N


# The wide kernel's stream-K grid, measured on an H100 (benchmarks/wide_probe.py, bitmap 50-70 % and pair
# bitmap 80 %, 64-1024 tokens).  Sharing the iterations over every SM pays where one CTA per tile leaves
# SMs idle: +13-85 % at 42-73 % of the last wave busy (12288x12288 N = 512: 0.62 -> 0.78x cuBLAS;
# 7168x28672 N = 256: 0.45 -> 0.83x), and +6-15 % on 3-7 waves 85 % busy (21504x7168 N = 1024:
# 0.71 -> 0.82x); whole waves keep a tile each.  A single wave 85 % busy loses 5-8 % to the fix-up.
# And the CTAs of a stream-K grid stand at every K at once, so all of X must stay in L2: with 58 MB of
# it (7168x28672 N = 1024) stream-K lost 25 %, where one CTA per tile keeps a wave on the same K blocks.
WIDE_STREAM_K_BELOW = 0.8  # busy fraction of the last wave of one CTA per tile under which the SMs share
WIDE_STREAM_K_X_BYTES = 24 << 20  # X no larger than half the H100's L2 for stream-K on several waves
WIDE_MIN_STAGES = 8  # per CTA: shorter ranges pay their pipeline's fill and drain for little work


def wide_ctas(tiles: int, kb: int, sms: int, x_bytes: int = 0) -> int:
    """CTAs for `tiles` output tiles of `kb` K blocks each: one per tile, or every SM sharing all tiles x kb
    iterations (stream-K) where one per tile would leave SMs idle (see above)."""
    if tiles > sms:
        busy = tiles / (-(-tiles // sms) * sms)
        return sms if busy < WIDE_STREAM_K_BELOW or (busy < 1 and x_bytes <= WIDE_STREAM_K_X_BYTES) else tiles
    if tiles / sms >= WIDE_STREAM_K_BELOW:
        return tiles
    shared = min(sms, tiles * kb // WIDE_MIN_STAGES)
    return shared if shared > tiles else tiles  # else too little work to share


def wide_ptr_bytes(tiles: int, kb: int, ctas: int, groups: int) -> int:
    """Shared memory for the block offsets of a CTA's segments: its range's blocks plus one per segment, for
    each of the `groups` row blocks of a tile (a range of `per` iterations meets at most (per + kb - 2) // kb
    + 1 tiles)."""
    per = -(-tiles * kb // ctas)
    segments = (per + kb - 2) // kb + 1
    return 8 * groups * (per + segments)


@functools.lru_cache(maxsize=1024)
def choose_wide_config(fmt: str, m: int, k: int, n: int, max_block_bytes: int, sms: int, nt: int | None = None,
                       stages: int | None = None, split: int | None = None, ctas: int | None = None,
                       groups: int | None = None) -> Config:
    """The wide kernel's config: 32 tokens per CTA up to 32, 64 up to 64, 128 up to 128, else 256 (a wgmma no
    wider than the tokens: at 64 tokens m64n64 against m64n128 took the kernel 1.17 -> 1.29x cuBLAS on
    12288x12288, H100); a stream-K grid (wide_ctas), or `split` CTAs per tile (split-K), or `ctas` CTAs.
    Consumer groups: see WIDE_DEEP_ITERS; at 32 tokens three for the bitmap, four for the pair bitmap,
    whose cheaper decode gained from a fourth (H100, N = 32, 80 %: 2.04 -> 2.15x on 9216x36864, 1.75 -> 1.84x
    on 28672x7168) where the bitmap's lost 0-10 %."""
    if fmt not in WIDE_FORMATS:
        raise ValueError(f"the wide kernel decodes {WIDE_FORMATS}, not {fmt!r}")
    mb, kb = block_grid((m, k))
    nt = nt or (4 if n <= 32 else 8 if n <= 64 else 16 if n <= 128 else 32)
    if nt not in WIDE_NT_CHOICES:
        raise ValueError(f"the wide kernel takes nt in {WIDE_NT_CHOICES}, got {nt}")
    stage_w = -(-max_block_bytes // 16) * 16 + 16  # +16: the decoder may peek 2 bytes past a stream
    if not groups:
        groups = (4 if fmt == "pairmap" else 3) if nt == 4 else 3 if nt == 8 and wide_is_deep(m, k, sms) else 2
    if groups not in WIDE_GROUPS[nt]:
        raise ValueError(f"the wide kernel takes {WIDE_GROUPS[nt]} consumer groups at nt = {nt}, got {groups}")
    tiles = -(-mb // groups) * -(-n // (8 * nt))
    if split is not None and ctas is not None:
        raise ValueError("give the wide kernel split or ctas, not both")
    if split is not None:
        ctas = tiles * max(1, min(split, kb))
    if ctas is not None and ctas < 1:
        raise ValueError(f"the wide kernel needs ctas >= 1, got {ctas}")
    ctas = min(ctas or wide_ctas(tiles, kb, sms, n * k * 2), tiles * kb)  # at most one CTA per (tile, K block)
    # +1 KB to align the X ring, the consumer warps' scratch, the fix-up's flag, the block offsets; then the
    # two rings (a slot: an X tile or two weight blocks, and its full and empty mbarriers)
    fixed = 1024 + groups * 4 * 128 + 16 + wide_ptr_bytes(tiles, kb, ctas, groups)
    x_bytes, w_bytes = nt * 8 * 128 + 16, groups * stage_w + 16
    stages = stages or WIDE_STAGES[nt]
    if fixed + stages * x_bytes + 3 * w_bytes > SMEM_PER_SM:
        stages = 3  # the compiled fallback (all_variants)
    w_stages = min(WIDE_MAX_W_STAGES, (SMEM_PER_SM - fixed - stages * x_bytes) // w_bytes)
    if w_stages < 3:
        raise ValueError(f"blocks of up to {max_block_bytes} bytes leave the wide kernel too little shared memory "
                         f"({ctas} CTAs)")
    smem = fixed + stages * x_bytes + w_stages * w_bytes
    return Config(groups, nt, stages, split or 1, kb, stage_w, smem, wg=True, wide=True, w_stages=w_stages, ctas=ctas)


# n8-tile counts that take wgmma on Hopper, read off full `flashllm bench kernel` runs on an H200
# (medians over the 12 paper shapes, 50-90 %): Tiled-CSL's wgmma (A and B straight from shared memory,
# no ldmatrix) is 5 % faster at N = 32 and level at N = 64; the pipelined bitmap wgmma kernel is 5 %
# slower at N = 64 and 0-15 % slower below (its decode, not the MMA, sets the pace), so bitmap keeps
# mma.sync.  Both stay compiled and GPU-tested (tests/kernels/test_spmm_gpu.py runs each path).
WGMMA_RULE: dict[str, tuple[int, ...]] = {"bitmap": (), "tiled_csl": (4,), "pairmap": ()}


def use_wgmma(fmt: str, nt: int) -> bool:
    return nt in WGMMA_RULE[fmt]


@functools.lru_cache(maxsize=1024)
def _clusters_fit(name: str, dev: int, grid: tuple[int, int, int], smem: int, split: int) -> bool:
    return jit.get_kernel(name, dev, _device_props(dev)[1]).clusters_fit(grid, smem, (1, 1, split))


def _launch(x: torch.Tensor, w: SparseWeight, cfg: Config, y: torch.Tensor, bias: torch.Tensor | None) -> None:
    m, k = w.shape
    n = x.shape[0]
    dev = x.device.index
    sms, cap = _device_props(dev)
    bf16 = w.dtype == torch.bfloat16
    name = cfg.name(w.format, bf16)
    kernel = jit.get_kernel(name, dev, cap)
    mb, kb = block_grid((m, k))
    grid = (-(-mb // cfg.spw), -(-n // (8 * cfg.nt)), cfg.split)
    partial = counters = None
    if cfg.wide:
        tiles = grid[0] * grid[1]
        grid = (cfg.ctas, 1, 1)
        if tiles % cfg.ctas:  # some ranges split tiles: fp32 partials (two slots a CTA) and arrival counters
            partial = torch.empty((cfg.ctas, 2, cfg.spw * BLOCK * 8 * cfg.nt), dtype=torch.float32, device=x.device)
            counters = torch.zeros(tiles, dtype=torch.int32, device=x.device)
    else:
        if cfg.cluster and not _clusters_fit(name, dev, grid, cfg.smem, cfg.split):
            cfg = replace(cfg, cluster=False)  # this GPU (partition) cannot place one: the reduce kernel
        if cfg.split > 1 and not cfg.cluster:
            partial = torch.empty((cfg.split, n, m), dtype=torch.float32, device=x.device)
    data, ptr = (w.tensors[key] for key in codec_for(w.format).TENSORS)
    params = Params(data.data_ptr(), ptr.data_ptr(), x.data_ptr(), y.data_ptr(),
                    partial.data_ptr() if partial is not None else 0,
                    m, n, k, x.stride(0), mb, kb, cfg.kb_per_split, cfg.stage_w_bytes,
                    bias.data_ptr() if bias is not None else 0, int(cfg.cluster), cfg.w_stages,
                    counters.data_ptr() if counters is not None else 0)
    stream = torch.cuda.current_stream(x.device).cuda_stream
    if cfg.cluster:
        kernel.launch_cluster(grid, cfg.smem, stream, params, (1, 1, cfg.split))
    elif cfg.wide:
        kernel.launch(grid, cfg.smem, stream, params, cfg.threads, x_tensor_map(x, cfg.nt))
    else:
        kernel.launch(grid, cfg.smem, stream, params)
    if partial is not None and not cfg.wide:
        launch_reduce(partial, y, cfg.split, bias, m, dev, cap, stream)


def x_tensor_map(x: torch.Tensor, nt: int) -> ctypes.Array:
    """The wide kernel's TMA descriptor of X [N, K] (prepared: rows 16-byte aligned, K padded to 8 with
    zeros): boxes of 64 K-values x 8 * nt tokens, 128-byte swizzle, zeros past the edges."""
    from cuda.bindings import driver as d
    n, k = x.shape
    dtype = (d.CUtensorMapDataType.CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 if x.dtype == torch.bfloat16
             else d.CUtensorMapDataType.CU_TENSOR_MAP_DATA_TYPE_FLOAT16)
    err, tmap = d.cuTensorMapEncodeTiled(
        dtype, 2, x.data_ptr(), [d.cuuint64_t(k), d.cuuint64_t(n)], [d.cuuint64_t(x.stride(0) * x.element_size())],
        [d.cuuint32_t(BLOCK), d.cuuint32_t(8 * nt)], [d.cuuint32_t(1), d.cuuint32_t(1)],
        d.CUtensorMapInterleave.CU_TENSOR_MAP_INTERLEAVE_NONE, d.CUtensorMapSwizzle.CU_TENSOR_MAP_SWIZZLE_128B,
        d.CUtensorMapL2promotion.CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
        d.CUtensorMapFloatOOBfill.CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE)
    if int(err) != 0:
        raise RuntimeError(f"cuTensorMapEncodeTiled failed: {err!r} (X {tuple(x.shape)}, stride {x.stride(0)})")
    out = (ctypes.c_uint64 * 16)()
    ctypes.memmove(out, tmap.getPtr(), 128)
    return out


def launch_reduce(partial: torch.Tensor, y: torch.Tensor, split: int, bias: torch.Tensor | None, m: int,
                  dev: int, cap: tuple[int, int], stream: int) -> None:
    """y = sum of the split-K slices of `partial` [split, N, M] (+ bias), in slice order."""
    bf16 = y.dtype == torch.bfloat16
    reduce = jit.get_kernel(f"splitk_reduce<{'true' if bf16 else 'false'}>", dev, cap)
    count = y.numel()
    blocks = min(_device_props(dev)[0] * 8, -(-count // 256))
    reduce.launch_args((blocks, 1, 1), (256, 1, 1), stream,
                       [partial.data_ptr(), y.data_ptr(), ctypes.c_int(split), ctypes.c_longlong(count),
                        bias.data_ptr() if bias is not None else 0, ctypes.c_int(m)])


def config_for(w: SparseWeight, n: int, **overrides):
    """The launch config spmm_kernel picks for this weight and N tokens (overrides: a sweep's choices)."""
    sms, cap = _device_props(w.device.index)
    if w.format == "sell":
        return choose_sell_config(*w.shape, n, sms, **overrides)
    hopper = jit.arch_for(cap) == "sm_90a"
    overrides = {key: v for key, v in overrides.items() if v is not None}
    wide = overrides.pop("wide", None)
    if wide is None:  # a forced split may go either way; other overrides name an mma.sync / wgmma config
        wide = use_wide(w.format, *w.shape, n, sms, hopper) and set(overrides) <= {"split", "ctas"}
    if wide:
        if not hopper:
            raise ValueError("the wide kernel needs sm_90a (Hopper)")
        return choose_wide_config(w.format, *w.shape, n, w.max_block_bytes, sms, **overrides)
    return choose_config(w.format, *w.shape, n, w.max_block_bytes, sms, hopper=hopper, **overrides)


def prepare_x(x: torch.Tensor) -> torch.Tensor:
    """The kernels read X in 16-byte chunks: rows contiguous, 16-byte aligned, K padded to 8."""
    n, k = x.shape
    ok = x.stride(1) == 1 and x.stride(0) % 8 == 0 and x.data_ptr() % 16 == 0 and k % 8 == 0
    if ok:
        return x
    padded = torch.zeros((n, -(-k // 8) * 8), dtype=x.dtype, device=x.device)
    padded[:, :k] = x
    return padded


def spmm_kernel(x: torch.Tensor, w: SparseWeight, bias: torch.Tensor | None = None, **overrides) -> torch.Tensor:
    """Run our kernel whatever N is (the custom op's body); bias [M] in x's dtype, added before rounding."""
    n = x.shape[0]
    y = torch.empty((n, w.shape[0]), dtype=x.dtype, device=x.device)
    if n == 0:
        return y
    cfg = config_for(w, n, **overrides)
    with jit.on_device(x.device):
        (launch_sell if w.format == "sell" else _launch)(prepare_x(x), w, cfg, y, bias)
    return y


def spmm_cuda(x: torch.Tensor, w: SparseWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """y = x @ W^T (+ bias) on the GPU (fp16/bf16 x of the weight's dtype, or fp32 x on the dense path)."""
    if x.dtype != w.dtype and x.dtype != torch.float32:
        raise ValueError(f"x is {x.dtype} but the weight holds {w.dtype} values; cast x to {w.dtype}")
    if torch.compiler.is_compiling():  # one opaque graph node for Dynamo/Inductor
        from .op import spmm_op
        return spmm_op(x, w, bias)
    return run(x, w, bias)  # eager and CUDA-graph capture: skip the custom-op dispatcher's overhead


def run(x: torch.Tensor, w: SparseWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The custom op's body: our kernel where it wins, decompress + cuBLAS where it cannot."""
    sms, cap = _device_props(x.device.index)
    limit = MAX_SELL_N if w.format == "sell" else MAX_KERNEL_N
    if use_wide(w.format, *w.shape, x.shape[0], sms, jit.arch_for(cap) == "sm_90a"):
        limit = WIDE_MAX_N
    if x.dtype != w.dtype or x.shape[0] > limit or cap < (8, 0):
        from .decompress import dense_matmul
        return dense_matmul(x, w, bias=bias)
    return spmm_kernel(x, w, bias)


def program_for(name: str) -> str:
    """The csrc/ program a kernel instantiation lives in."""
    return "sell.cu" if name.startswith(("spmm_sell", "sell_")) else "spmm.cu"


def all_variants() -> list[str]:
    """Every kernel instantiation the dispatcher can pick (CI compiles each one through NVRTC; the
    wgmma ones (last template flag true) only for sm_90a)."""
    names = []
    for fmt in ("bitmap", "tiled_csl", "pairmap"):
        for bf16 in (False, True):
            for spw in SPW_CHOICES:
                for nt in NT_CHOICES:
                    for stages in STAGE_CHOICES:
                        for wg in (False, True):
                            if wg and fmt == "pairmap":
                                continue  # mma.sync only
                            if not (wg and fmt == "bitmap" and (spw != 1 or stages < 3)):
                                names.append(Config(spw, nt, stages, 1, 1, 0, 0, wg).name(fmt, bf16))
    for fmt in WIDE_FORMATS:
        for bf16 in (False, True):
            for nt in WIDE_NT_CHOICES:
                for stages in sorted({3, WIDE_STAGES[nt]}):
                    for groups in WIDE_GROUPS[nt]:
                        names.append(Config(groups, nt, stages, 1, 1, 0, 0, True, wide=True).name(fmt, bf16))
    return names + sell_variants() + ["splitk_reduce<false>", "splitk_reduce<true>", "decompress<0>", "decompress<1>", "decompress<2>"]


_BLOCK_FORMATS = ("bitmap", "tiled_csl", "pairmap")  # the kernels' FMT_* codes (csrc/spmm.cu)


def decompress_cuda(w: SparseWeight, mb0: int = 0, mb1: int | None = None) -> torch.Tensor:
    """Rows [64*mb0, 64*mb1) of W as a dense tensor, one kernel launch, no host sync (graph-safe)."""
    m, k = w.shape
    mb, kb = block_grid((m, k))
    mb1 = mb if mb1 is None else mb1
    rows = min(m, mb1 * BLOCK) - mb0 * BLOCK
    if w.format == "sell":
        with jit.on_device(w.device):
            return decompress_sell(w, mb0 * BLOCK, rows)
    out = torch.empty((rows, k), dtype=w.dtype, device=w.device)
    dev = w.device.index
    _, cap = _device_props(dev)
    data, ptr = (w.tensors[key] for key in codec_for(w.format).TENSORS)
    stage = -(-w.max_block_bytes // 16) * 16 + 16  # +16: the decoder may peek 2 bytes past a stream
    smem = DECOMPRESS_STAGES * stage + BLOCK * BLOCK * 2 + (THREADS // 32) * 128  # the ring, dense tile, popcounts
    with torch.cuda.device(w.device):
        kernel = jit.get_kernel(f"decompress<{_BLOCK_FORMATS.index(w.format)}>", dev, cap)
        kernel.allow_smem(smem)
        kernel.launch_args((-(-kb // DECOMPRESS_KPER), mb1 - mb0, 1), (THREADS, 1, 1),
                           torch.cuda.current_stream(w.device).cuda_stream,
                           [data.data_ptr(), ptr.data_ptr(), out.data_ptr(), ctypes.c_int(mb0), ctypes.c_int(rows),
                            ctypes.c_int(k), ctypes.c_int(kb), ctypes.c_int(stage)], smem=smem)
    return out
