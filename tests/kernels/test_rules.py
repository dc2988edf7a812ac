"""The tuning rules (flashllm/kernels/rules.py), checked for what must hold whatever the tuned constants are:
every K block and token covered, grids within the waves they promise, splits within bounds, shared memory within
the GPU's, and the kernel a config names compiled (programs.all_variants).  Retuning a constant changes no test."""

import itertools

import pytest

from flashllm.kernels import programs, rules
from flashllm.kernels.rules import SMEM_PER_SM

SMS = (16, 66, 132)
SHAPES = [(1, 1), (64, 64), (130, 517), (7168, 7168), (12288, 49152), (49152, 12288), (100, 30000), (28672, 7168)]
BLOCKS = {"bitmap": 528 + 8192, "pairmap": 272 + 8192, "tiled_csl": 16384}  # a fully dense block of each
VARIANTS = {name for name, _ in programs.all_variants()}


def kblocks(k):
    return -(-k // 64)


def covers_k(cfg, kb):
    """The K slices cover every K block once: split slices of kb_per_split, the last one non-empty."""
    return cfg.split * cfg.kb_per_split >= kb > (cfg.split - 1) * cfg.kb_per_split


@pytest.mark.parametrize("hopper", [False, True])
@pytest.mark.parametrize("fmt", ["bitmap", "tiled_csl", "pairmap"])
def test_mma_config_covers_every_block_and_token(fmt, hopper):
    for (m, k), n, sms in itertools.product(SHAPES, (1, 3, 8, 16, 17, 32, 33, 64, 100, 128), SMS):
        for block in (BLOCKS[fmt] // 7, BLOCKS[fmt]):
            cfg = rules.choose_config(fmt, m, k, n, block, sms, hopper=hopper)
            assert covers_k(cfg, kblocks(k)), (fmt, m, k, n, cfg)
            assert 8 * cfg.nt >= min(n, 64) and cfg.nt in rules.NT_CHOICES
            assert cfg.smem <= SMEM_PER_SM and cfg.stage_w_bytes >= block + 2
            assert cfg.spw in rules.SPW_CHOICES and cfg.stages in rules.STAGE_CHOICES
            assert cfg.wg <= hopper and cfg.name(fmt, False) in VARIANTS
            if cfg.cluster:  # sm_90a only, 2..8 slices, each still streaming a dozen K blocks
                assert hopper and 2 <= cfg.split <= rules.MAX_CLUSTER and cfg.kb_per_split >= 12
                assert cfg.smem >= cfg.spw * cfg.nt * 2048  # the accumulators parked in the ring fit
            tiles_m, tiles_n, split = cfg.grid(m, n)
            assert tiles_m * cfg.spw * 64 >= m > (tiles_m - 1) * cfg.spw * 64 and tiles_n * 8 * cfg.nt >= n


def test_forced_configs_are_checked():
    with pytest.raises(ValueError, match="cluster"):
        rules.choose_config("pairmap", 9216, 9216, 32, 2000, 132, hopper=True, split=12, cluster=True)
    with pytest.raises(ValueError, match="cluster"):
        rules.choose_config("pairmap", 9216, 9216, 32, 2000, 132, hopper=False, split=4, cluster=True)
    with pytest.raises(ValueError, match="nt must be"):
        rules.choose_config("bitmap", 512, 512, 8, 2000, 132, nt=3)
    with pytest.raises(ValueError, match="spw=1"):
        rules.choose_config("bitmap", 512, 512, 8, 2000, 132, wg=True, spw=2)
    assert rules.choose_config("pairmap", 9216, 9216, 64, 2000, 132, hopper=True, split=8).split == 8


@pytest.mark.parametrize("sms", SMS)
def test_wave_split_keeps_one_wave(sms):
    """At most ~8 CTAs per SM (one wave of resident CTAs), at least 4 K blocks a slice, at most 16 slices."""
    for ctas, kb, nt in itertools.product((1, 5, 60, 130, 500, 1000, 5000), (1, 3, 8, 64, 144, 768), (1, 2, 4, 8)):
        split = rules.wave_split(ctas, kb, nt, sms)
        assert 1 <= split <= 16 and (split == 1 or kb // split >= 4)
        assert split == 1 or ctas * split <= 8 * sms


@pytest.mark.parametrize("sms", SMS)
def test_pairmap_at_64_tokens_keeps_one_wave_of_resident_ctas(sms):
    """WAVE_AT_64: a reduced (not clustered) split the rule picked keeps the grid within one wave of
    RESIDENT_AT_64 CTAs per SM, where the 8-slice cluster would not."""
    for m, k in SHAPES:
        cfg = rules.choose_config("pairmap", m, k, 64, 2000, sms, hopper=True)
        ctas = -(-kblocks(m) // cfg.spw)
        if 4 <= rules.RESIDENT_AT_64 * sms // ctas < rules.MAX_CLUSTER:  # 8 slices would not fit, 4 would
            assert not cfg.cluster and ctas * cfg.split <= rules.RESIDENT_AT_64 * sms < ctas * rules.MAX_CLUSTER


@pytest.mark.parametrize("fmt", ["bitmap", "pairmap"])
def test_wide_config_covers_every_iteration_within_shared_memory(fmt):
    for (m, k), n, sms in itertools.product(SHAPES, (17, 32, 33, 64, 65, 128, 129, 512, 1024), SMS):
        for block in (BLOCKS[fmt] // 5, BLOCKS[fmt]):
            cfg = rules.choose_wide_config(fmt, m, k, n, block, sms)
            tiles_m, tiles_n, _ = cfg.grid(m, n)
            tiles = tiles_m * tiles_n
            assert cfg.wide and cfg.spw in rules.WIDE_GROUPS[cfg.nt] and cfg.threads == 128 * (cfg.spw + 1)
            assert 8 * cfg.nt >= min(n, 256) and (cfg.nt == rules.WIDE_NT_CHOICES[0] or 4 * cfg.nt < n)  # no wider
            assert 1 <= cfg.ctas <= tiles * kblocks(k)  # at most one CTA per (tile, K block)
            assert cfg.smem <= SMEM_PER_SM and 3 <= cfg.w_stages <= rules.WIDE_MAX_W_STAGES
            assert cfg.smem >= 8 * cfg.spw * -(-tiles * kblocks(k) // cfg.ctas)  # every CTA's block offsets fit
            assert cfg.name(fmt, fmt == "bitmap") in VARIANTS
    with pytest.raises(ValueError, match="decodes"):
        rules.choose_wide_config("tiled_csl", 512, 512, 256, 4000, 132)
    with pytest.raises(ValueError, match="consumer groups"):
        rules.choose_wide_config("bitmap", 512, 512, 256, 4000, 132, groups=4)
    with pytest.raises(ValueError, match="split or ctas"):
        rules.choose_wide_config("bitmap", 512, 512, 256, 4000, 132, split=2, ctas=4)


def stream_k_segments(tiles, kb, ctas):
    """The wide kernel's split of tiles x kb iterations over ctas CTAs (csrc/spmm_wide.cu WideWork), in Python."""
    iters = tiles * kb
    for c in range(ctas):
        it, end = c * iters // ctas, (c + 1) * iters // ctas
        while it < end:
            tile, k0 = divmod(it, kb)
            nk = min(kb - k0, end - it)
            yield c, tile, k0, nk
            it += nk


@pytest.mark.parametrize("sms", SMS)
def test_wide_grid_is_a_tile_each_or_one_wave_of_shared_iterations(sms):
    """wide_ctas: one CTA per tile, or a stream-K grid of at most one CTA per SM that has more CTAs than tiles
    (it fills SMs that one per tile leaves idle) and gives each CTA WIDE_MIN_STAGES iterations or more."""
    for tiles, kb, x_bytes in itertools.product((1, 3, 20, 96, 112, 132, 200, 264, 448), (1, 2, 9, 112, 448),
                                                (0, 1 << 30)):
        ctas = rules.wide_ctas(tiles, kb, sms, x_bytes)
        if ctas != tiles:
            assert ctas <= sms and (ctas > tiles or tiles > sms)
            assert tiles > sms or tiles * kb // ctas >= rules.WIDE_MIN_STAGES


def test_stream_k_runs_every_iteration_once_and_its_offsets_fit():
    for tiles, kb, ctas in [(96, 192, 132), (3, 7, 5), (5, 3, 14), (7, 1, 3), (1, 9, 9), (4, 4, 16), (10, 6, 4)]:
        seen, offsets = [], {}  # a CTA's block offsets per row block of its tiles
        for c, tile, k0, nk in stream_k_segments(tiles, kb, ctas):
            seen += [(tile, k) for k in range(k0, k0 + nk)]
            offsets[c] = offsets.get(c, 0) + nk + 1
        assert sorted(seen) == [(t, k) for t in range(tiles) for k in range(kb)]
        for groups in (2, 3, 4):
            assert 8 * groups * max(offsets.values()) <= rules.wide_ptr_bytes(tiles, kb, ctas, groups)


def test_wide_route_is_its_token_range():
    """use_wide: sm_90a, the bitmap formats, WIDE_MIN_N..WIDE_MAX_N tokens, and from WIDE_DEEP_MIN_N exactly on
    weights that wide_is_deep; depth grows with the weight and with fewer SMs."""
    for (m, k), sms in itertools.product(SHAPES, SMS):
        deep = rules.wide_is_deep(m, k, sms)
        assert rules.wide_is_deep(2 * m, k, sms) >= deep and rules.wide_is_deep(m, 2 * k, sms) >= deep
        assert rules.wide_is_deep(m, k, sms // 2) >= deep
        for n in (1, rules.WIDE_DEEP_MIN_N - 1, rules.WIDE_DEEP_MIN_N, rules.WIDE_MIN_N - 1, rules.WIDE_MIN_N,
                  rules.WIDE_MAX_N, rules.WIDE_MAX_N + 1):
            for fmt in ("bitmap", "pairmap"):
                expected = (rules.WIDE_DEEP_MIN_N if deep else rules.WIDE_MIN_N) <= n <= rules.WIDE_MAX_N
                assert rules.use_wide(fmt, m, k, n, sms, True) == expected
                assert not rules.use_wide(fmt, m, k, n, sms, False)
            assert not rules.use_wide("tiled_csl", m, k, n, sms, True) and not rules.use_wide("sell", m, k, n, sms, True)


@pytest.mark.parametrize("hopper", [False, True])
@pytest.mark.parametrize("fmt", ["bitmap", "tiled_csl", "pairmap", "sell"])
def test_plan_routes_every_token_count(fmt, hopper):
    """plan: the wide kernel where use_wide says, another kernel up to its token limit, else None (dense)."""
    for (m, k), n, sms in itertools.product(SHAPES, (1, 8, 17, 32, 33, 64, 65, 128, 129, 1024, 1025, 4096), SMS):
        cfg = rules.plan(fmt, m, k, n, 2000, sms, hopper)
        if fmt == "sell":
            assert (cfg is None) == (n > rules.SELL_MAX_N)
            continue
        if rules.use_wide(fmt, m, k, n, sms, hopper):
            assert cfg.wide
        else:
            assert (cfg is None) == (n > rules.MAX_KERNEL_N) and (cfg is None or not cfg.wide)
        if cfg is not None:
            assert cfg == rules.choose(fmt, m, k, n, 2000, sms, hopper)  # the overridable path agrees


def test_overrides_pick_the_route():
    """choose: a forced split or ctas keeps the route; other mma overrides leave the wide kernel; wide=1 forces
    it (sm_90a only); None is no override."""
    big, sms = (21504, 7168), 132
    assert rules.choose("bitmap", *big, 300, 2000, sms, True).wide
    assert rules.choose("bitmap", *big, 300, 2000, sms, True, split=3).split == 3
    assert rules.choose("bitmap", *big, 300, 2000, sms, True, split=3, stages=None).wide
    assert not rules.choose("bitmap", *big, 300, 2000, sms, True, spw=1).wide
    assert not rules.choose("bitmap", *big, 64, 2000, sms, True, wg=False).wide
    assert rules.choose("bitmap", *big, 8, 2000, sms, True, wide=1).wide
    with pytest.raises(ValueError, match="sm_90a"):
        rules.choose("bitmap", *big, 300, 2000, sms, False, wide=1)


def test_sell_config_covers_every_chunk_and_token():
    from flashllm.formats.sell import grid
    for (m, k), n, sms in itertools.product(SHAPES, (1, 2, 3, 5, 8, 17, 32, 64), SMS):
        n_slices, n_chunks = grid((m, k))
        cfg = rules.choose_sell_config(m, k, n, sms)
        groups = cfg.split // cfg.parts
        assert cfg.split % cfg.parts == 0
        assert groups * cfg.chunks_per_split >= n_chunks > (groups - 1) * cfg.chunks_per_split
        assert cfg.tokens * cfg.planes >= min(n, 8 * rules.SELL_MAX_PLANES) and cfg.smem <= SMEM_PER_SM
        assert cfg.tokens == 8 or (cfg.planes == 1 and cfg.tokens >= n)
        assert cfg.name(False) in VARIANTS and groups <= rules.SELL_MAX_SPLIT
        # parts: doubled only while the grid was short of its CTAs-per-SM target, never past 8
        ctas = -(-n_slices // cfg.warps) * -(-n // (cfg.tokens * cfg.planes)) * groups
        target = sms * (2.5 if cfg.planes == 1 else 0.8)
        assert cfg.parts in (1, 2, 4, 8) and (cfg.parts == 1 or ctas * cfg.parts // 2 < target)
        assert cfg.parts == 8 or ctas * cfg.parts >= target
