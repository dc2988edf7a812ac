"""The tuning rules: which SpMM kernel runs y = x @ W^T and with what launch config.

Plain integers in (format, M, K, N tokens, largest block in bytes, SM count, whether the GPU is a Hopper), a
config out; no torch, no launching, no per-shape table.  `plan` is the route: the wide kernel, the mma.sync /
wgmma kernels, sliced ELL's kernel, or None (expand to dense and multiply with cuBLAS).  Why each constant is
what it is, and the command that measures it again: docs/tuning.md, by the constant's name.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from ..formats.base import FORMAT_IDS
from ..formats.layout import BLOCK, block_grid
from ..formats.sell import CHUNK, grid as sell_grid

THREADS = 128
SMEM_PER_SM = 227 * 1024  # Hopper/Ampere-class opt-in limit per block; per-SM total is ~228 KB
SPW_CHOICES = (1, 2)      # what choose_config picks (sweeps may force others)
NT_CHOICES = (1, 2, 4, 8)
STAGE_CHOICES = (2, 3, 4)
MAX_CLUSTER = 8  # the portable cluster size (csrc/spmm_mma.cu MAX_CLUSTER)
MAX_KERNEL_N = 128  # above this (WIDE_MAX_N where use_wide) the weight is decompressed in chunks for cuBLAS
# The wide kernel (csrc/spmm_wide.cu): `spw` consumer warpgroups, one 64-row block each, and a producer
# warpgroup.  Two; three at 64 tokens per CTA and three or four at 32 tokens, on weights deep enough in K-block
# iterations per SM (wide_is_deep): more groups spread the decode's latency over more warps per scheduler but
# make fewer, larger tiles, whose stream-K fix-up and pipeline fill pay only on enough iterations a CTA.
WIDE_DEEP_ITERS = 48
WIDE_FORMATS = ("bitmap", "pairmap")
WIDE_NT_CHOICES = (4, 8, 16, 32)  # 32, 64, 128 or 256 tokens per CTA
# Consumer groups per tile width: four get 112 registers each, enough beside 16 accumulators a thread
# (docs/tuning.md, WIDE_GROUPS).
WIDE_GROUPS = {4: (3, 4), 8: (2, 3), 16: (2,), 32: (2,)}
WIDE_STAGES = {4: 8, 8: 8, 16: 6, 32: 4}  # X ring depth: 32-128 KB of X tiles
WIDE_MAX_W_STAGES = 12  # weight ring depth, as far as shared memory allows (>= 3)
WIDE_MIN_N, WIDE_MAX_N = 33, 1024  # token counts the wide kernel takes on sm_90a (see use_wide)
WIDE_DEEP_MIN_N = 17  # from here on weights that wide_is_deep
# Sliced ELL (csrc/sell.cu)
SELL_MAX_PLANES = 4        # tokens per CTA = tokens * planes; more -> more grid.y groups (weights re-read)
SELL_TOKEN_CHOICES = (1, 2, 4, 8)  # tokens per plane: under 8 tokens, a narrower X tile (fewer FMAs and bytes)
SELL_WARP_CHOICES = (4, 8, 16)
SELL_DEPTH_CHOICES = (2, 4)
SELL_MAX_N = 64            # above this the weight is decompressed in chunks and multiplied by cuBLAS
SELL_MAX_SPLIT = 8


@dataclass(frozen=True)
class Config:
    """A launch of the block-format SpMM kernels (csrc/spmm_mma.cu), or of the wide kernel (wide=True)."""
    spw: int      # 64-row format blocks per CTA (warp w decodes strip w of each); the wide kernel's consumer groups
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
        """The kernel instantiation this config launches."""
        flag = lambda b: "true" if b else "false"  # noqa: E731
        if self.wide:
            return f"spmm_wide<{FORMAT_IDS[fmt]},{self.nt},{self.stages},{flag(bf16)},{self.spw}>"
        return f"spmm_{fmt}<{self.spw},{self.nt},{self.stages},{flag(bf16)},{flag(self.wg)}>"

    @property
    def threads(self) -> int:
        return 128 * (self.spw + 1) if self.wide else THREADS

    def grid(self, m: int, n: int) -> tuple[int, int, int]:
        """(row-block tiles, token tiles, K slices); the wide kernel's grid is (ctas, 1, 1) over these tiles."""
        return -(-(-(-m // BLOCK)) // self.spw), -(-n // (8 * self.nt)), self.split


@dataclass(frozen=True)
class SellConfig:
    """A launch of the sliced-ELL kernel (csrc/sell.cu)."""
    planes: int            # token planes of the X tile
    warps: int             # slices (32 rows each) per CTA
    chunks_per_split: int  # K chunks per chunk group
    split: int             # grid.z: chunk groups x parts (partial sums to reduce)
    depth: int = 4         # 4-entry steps each lane loads ahead
    parts: int = 1         # CTAs sharing the steps of one (slice, chunk)
    tokens: int = 8        # tokens per plane (1, 2 or 4 only with one plane)

    @property
    def smem(self) -> int:
        return self.planes * CHUNK * 2 * self.tokens

    def name(self, bf16: bool) -> str:
        return (f"spmm_sell<{self.tokens},{self.planes},{self.warps},{self.depth},"
                f"{'true' if bf16 else 'false'}>")

    def grid(self, m: int, k: int, n: int) -> tuple[int, int, int]:
        return -(-sell_grid((m, k))[0] // self.warps), -(-n // (self.tokens * self.planes)), self.split


def plan(fmt: str, m: int, k: int, n: int, max_block_bytes: int, sms: int, hopper: bool) -> Config | SellConfig | None:
    """The route for n tokens through an m x k weight: a kernel's config, or None for expanding the weight to
    dense and multiplying with cuBLAS (above the kernels' token limits)."""
    if fmt == "sell":
        return choose_sell_config(m, k, n, sms) if n <= SELL_MAX_N else None
    if use_wide(fmt, m, k, n, sms, hopper):
        return choose_wide_config(fmt, m, k, n, max_block_bytes, sms)
    if n > MAX_KERNEL_N:
        return None
    return choose_config(fmt, m, k, n, max_block_bytes, sms, hopper=hopper)


def choose(fmt: str, m: int, k: int, n: int, max_block_bytes: int, sms: int, hopper: bool,
           **overrides) -> Config | SellConfig:
    """The kernel config for n tokens whatever n is, with `overrides` (a sweep's or a test's choices; None values
    are no override): `wide` forces the wide kernel on or off; a forced split or ctas alone keeps the route."""
    if fmt == "sell":
        return choose_sell_config(m, k, n, sms, **overrides)
    overrides = {key: v for key, v in overrides.items() if v is not None}
    wide = overrides.pop("wide", None)
    if wide is None:  # a forced split may go either way; other overrides name an mma.sync / wgmma config
        wide = use_wide(fmt, m, k, n, sms, hopper) and set(overrides) <= {"split", "ctas"}
    if wide:
        if not hopper:
            raise ValueError("the wide kernel needs sm_90a (Hopper)")
        return choose_wide_config(fmt, m, k, n, max_block_bytes, sms, **overrides)
    return choose_config(fmt, m, k, n, max_block_bytes, sms, hopper=hopper, **overrides)


# ------------------------------------------------------------------------------ mma.sync / wgmma kernels

@functools.lru_cache(maxsize=4096)
def choose_config(fmt: str, m: int, k: int, n: int, max_block_bytes: int, sms: int,
                  spw: int | None = None, stages: int | None = None, split: int | None = None,
                  wg: bool | None = None, hopper: bool = False, nt: int | None = None,
                  cluster: bool | None = None) -> Config:
    """Tile config from the problem size alone (docs/tuning.md, "The SpMM kernels").

    - nt: the fewest n8 tiles that cover min(N, 64) tokens (more tokens -> more grid.y chunks).
    - spw (64-row blocks per CTA; warp w decodes strip w of each): bitmap takes two (two independent
      decode chains per warp, X fragments shared); Tiled-CSL takes two only for small blocks (<= 4 KB,
      i.e. high sparsity), where its dense-tile work per block is light.
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
# shared memory (csrc/spmm_mma.cu cluster_reduce): no fp32 partials through global memory, no reduce kernel.
# Only where each slice keeps >= 12 K-blocks, and unless the one-wave split already cuts K into more than
# 8 slices of >= 64 blocks (then its larger grid fills the GPU better).  Clusters lost with the one-wave split
# at 8-16 tokens, and for the bitmap at 32 tokens on fewer than 16384 rows (CLUSTER_MIN_ROW_BLOCKS): a
# cluster's CTAs must be resident at once.  Evidence: docs/tuning.md, CLUSTER_RULE and CLUSTER_MIN_ROW_BLOCKS.
CLUSTER_MIN_ROW_BLOCKS = 256

# WAVE_AT_64: the pair bitmap at 33-64 tokens (128 registers: 4 resident CTAs per SM) whose 8 slices would
# spill into a second, partial wave of CTAs but whose 4-7 would not, takes that many slices, summed by the
# reduce kernel (docs/tuning.md, RESIDENT_AT_64).
RESIDENT_AT_64 = 4


def wave_split(ctas: int, kb: int, nt: int, sms: int) -> int:
    """K slices for the pair-bitmap kernel, and the bitmap's up to 16 tokens (both with two blocks per
    CTA): as many as keep the grid within ~8 CTAs per SM (one wave of resident CTAs; a second, partial
    wave measured up to 1.35x slower), at least 4 K-blocks each, at most 16 (4 at 64 tokens).  The bitmap
    keeps the fixed split at 17-32 tokens, where fewer than 8 of its CTAs fit an SM, and so does Tiled-CSL
    (docs/tuning.md, wave_split).
    """
    most = max(1, min(4 if nt == 8 else 16, kb // 4))
    fits = (8 * sms) // max(1, ctas)
    return max(1, min(most, fits))


# WGMMA_RULE: the n8-tile counts that take wgmma on Hopper: Tiled-CSL at 32 tokens (A and B straight from
# shared memory, no ldmatrix); the pipelined bitmap wgmma kernel loses to mma.sync (its decode, not the MMA,
# sets the pace), and the pair bitmap has none (docs/tuning.md, WGMMA_RULE).  Every path stays compiled and
# GPU-tested (tests/kernels/test_spmm_gpu.py).
WGMMA_RULE: dict[str, tuple[int, ...]] = {"bitmap": (), "tiled_csl": (4,), "pairmap": ()}


def use_wgmma(fmt: str, nt: int) -> bool:
    return nt in WGMMA_RULE[fmt]


# ------------------------------------------------------------------------------------------ the wide kernel

def wide_is_deep(m: int, k: int, sms: int) -> bool:
    """Whether tiles of three 64-row blocks give each SM >= WIDE_DEEP_ITERS K-block iterations."""
    mb, kb = block_grid((m, k))
    return -(-mb // 3) * kb >= WIDE_DEEP_ITERS * sms


def use_wide(fmt: str, m: int, k: int, n: int, sms: int, hopper: bool) -> bool:
    """Whether `n` tokens x an m x k weight go to the wide kernel (sm_90a, bitmap and pair bitmap): WIDE_MIN_N
    to WIDE_MAX_N tokens, from WIDE_DEEP_MIN_N on weights that wide_is_deep.  Below, the mma.sync kernels
    lead; above, expanding to dense for cuBLAS (docs/tuning.md, WIDE_MIN_N and WIDE_DEEP_ITERS)."""
    if not hopper or fmt not in WIDE_FORMATS:
        return False
    low = WIDE_DEEP_MIN_N if wide_is_deep(m, k, sms) else WIDE_MIN_N
    return low <= n <= WIDE_MAX_N


# The wide kernel's stream-K grid: sharing the iterations over every SM pays where one CTA per tile leaves SMs
# idle, but all of X must then stay in L2 (docs/tuning.md, WIDE_STREAM_K_BELOW).
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
    wider than the tokens, WIDE_NT_CHOICES); a stream-K grid (wide_ctas), or `split` CTAs per tile (split-K),
    or `ctas` CTAs.  Consumer groups (WIDE_GROUPS): at 32 tokens three for the bitmap, four for the pair
    bitmap, whose cheaper decode gains from a fourth; three at 64 tokens where wide_is_deep; else two."""
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
        stages = 3  # the compiled fallback (spmm_wide.variants)
    w_stages = min(WIDE_MAX_W_STAGES, (SMEM_PER_SM - fixed - stages * x_bytes) // w_bytes)
    if w_stages < 3:
        raise ValueError(f"blocks of up to {max_block_bytes} bytes leave the wide kernel too little shared memory "
                         f"({ctas} CTAs)")
    smem = fixed + stages * x_bytes + w_stages * w_bytes
    return Config(groups, nt, stages, split or 1, kb, stage_w, smem, wg=True, wide=True, w_stages=w_stages, ctas=ctas)


# ------------------------------------------------------------------------------------------ sliced ELL

@functools.lru_cache(maxsize=4096)
def choose_sell_config(m: int, k: int, n: int, sms: int, warps: int | None = None, split: int | None = None,
                       depth: int | None = None, parts: int | None = None) -> SellConfig:
    """From the problem size alone (docs/tuning.md, "Sliced ELL"):

    - tokens, planes: N < 8 takes one plane of 1, 2 or 4 tokens (the fewest that cover N); from 8 on,
      the fewest 8-token planes that cover min(N, 32).
    - warps, depth: one plane: 8 warps (one X tile serves 256 rows), each loading 4 steps ahead.  Two
      planes and more: 16 warps, 2 steps ahead - the X tile (64-128 KB) leaves room for one or two CTAs
      per SM, so a CTA must bring its own warps.
    - split: each K chunk its own grid.z group, up to 8 groups.
    - parts: doubled while the grid has under 2.5 CTAs per SM (one plane; 0.8 with more): small
      matrices were latency-bound.
    """
    n_slices, n_chunks = sell_grid((m, k))
    tokens = next(t for t in SELL_TOKEN_CHOICES if t >= min(n, 8))
    planes = min(SELL_MAX_PLANES, -(-min(n, 8 * SELL_MAX_PLANES) // 8)) if tokens == 8 else 1
    warps = warps or (8 if planes == 1 else 16)
    depth = depth or (4 if planes == 1 else 2)
    groups = min(n_chunks, SELL_MAX_SPLIT) if split is None else max(1, split)
    cps = -(-n_chunks // groups)
    groups = -(-n_chunks // cps)
    if parts is None:
        ctas = -(-n_slices // warps) * -(-n // (tokens * planes)) * groups
        parts, target = 1, sms * (2.5 if planes == 1 else 0.8)
        while ctas * parts < target and parts < 8:
            parts *= 2
    return SellConfig(planes, warps, cps, groups * parts, depth, parts, tokens)
