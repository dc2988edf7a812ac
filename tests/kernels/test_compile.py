"""Every kernel variant compiles through the same NVRTC path the GPU uses (no GPU needed)."""

import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from flashllm.kernels import dispatch, jit


def compile_all(names, arch):
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:  # NVRTC runs outside the GIL
        return list(pool.map(lambda n: jit.compile_kernel(n, arch, dispatch.program_for(n)), names))


@pytest.mark.parametrize("arch", ["sm_90a", "sm_80"])
def test_every_variant_compiles(arch, tmp_path, monkeypatch):
    monkeypatch.setenv("FLASHLLM_CACHE_DIR", str(tmp_path))
    names = dispatch.all_variants()
    if arch == "sm_80":  # Ampere fallback build: every kernel template, fewer configurations
        names = [n for n in names if ("<1," in n and not n.endswith(",true>"))
                 or n.startswith(("splitk", "decompress", "sell_decompress"))]
    for name, (cubin, lowered) in zip(names, compile_all(names, arch)):
        assert cubin[:4] == b"\x7fELF", name
        assert lowered.startswith("_Z"), name
    # second call hits the disk cache and returns the identical binary
    assert jit.compile_kernel(names[0], arch)[0] == jit.compile_kernel(names[0], arch)[0]
    assert any(n.startswith("spmm_sell") for n in names) and "sell_decompress<false>" in names
    assert len(list((tmp_path / arch).glob("*.cubin"))) == len(names)


@pytest.mark.parametrize("arch", ["sm_90a", "sm_80"])
def test_norm_and_attention_kernels_compile(arch, tmp_path, monkeypatch):
    from flashllm.kernels import attention, norm
    monkeypatch.setenv("FLASHLLM_CACHE_DIR", str(tmp_path))
    for name, program in [(n, "norm.cu") for n in norm.variants()] + [(n, "attention.cu") for n in attention.variants()]:
        cubin, lowered = jit.compile_kernel(name, arch, program=program)
        assert cubin[:4] == b"\x7fELF" and lowered.startswith("_Z"), name


def test_compile_error_shows_the_log(monkeypatch, tmp_path):
    monkeypatch.setenv("FLASHLLM_CACHE_DIR", str(tmp_path))
    with pytest.raises(jit.KernelCompileError, match="spmm_bitmap<0,1,2,false,false>|error"):
        jit.compile_kernel("spmm_bitmap<0,1,2,false,false>", "sm_90a")


def test_config_heuristic_is_valid():
    for fmt in ("bitmap", "tiled_csl"):
        for (m, k) in [(1, 1), (7168, 7168), (12288, 49152), (49152, 12288), (100, 30000)]:
            for n in (1, 8, 17, 64, 256):
                cfg = dispatch.choose_config(fmt, m, k, n, 8720 if fmt == "bitmap" else 16384, 132, hopper=True)
                kb = -(-k // 64)
                assert cfg.split * cfg.kb_per_split >= kb > (cfg.split - 1) * cfg.kb_per_split
                assert cfg.smem <= dispatch.SMEM_PER_SM
                assert 8 * cfg.nt >= min(n, 64)
                assert cfg.name(fmt, False) in dispatch.all_variants()


def test_cluster_rule_only_where_measured_to_pay():
    """The default config takes a cluster only where it was measured to pay (dispatch.CLUSTER_RULE): the pair
    bitmap from 32 tokens, the bitmap at 17-32 tokens from 16384 rows; never off Hopper."""
    on = dispatch.choose_config("pairmap", 9216, 9216, 32, 2000, 132, hopper=True)
    assert on.cluster and on.split == dispatch.MAX_CLUSTER
    big = dispatch.choose_config("bitmap", 21504, 7168, 32, 5000, 132, hopper=True)
    assert big.cluster and big.split == dispatch.MAX_CLUSTER
    for fmt, m, n, hopper in (("pairmap", 9216, 16, True), ("pairmap", 9216, 32, False), ("bitmap", 12288, 32, True),
                              ("bitmap", 21504, 16, True), ("bitmap", 21504, 64, True), ("bitmap", 21504, 32, False)):
        cfg = dispatch.choose_config(fmt, m, 9216, n, 2000, 132, hopper=hopper)
        assert not cfg.cluster, (fmt, m, n, hopper)
    with pytest.raises(ValueError, match="cluster"):
        dispatch.choose_config("pairmap", 9216, 9216, 32, 2000, 132, hopper=True, split=12, cluster=True)


def test_pairmap_at_64_tokens_keeps_one_wave():
    """dispatch.WAVE_AT_64: where 8 slices of 4-resident CTAs would spill into a second wave but 4-7 would not,
    the pair bitmap at 33-64 tokens takes that many slices (no cluster); elsewhere 8 slices in a cluster."""
    places = dispatch.RESIDENT_AT_64 * 132
    for m, split in ((9216, 7), (12288, 5)):
        cfg = dispatch.choose_config("pairmap", m, 9216, 64, 2000, 132, hopper=True)
        assert (cfg.split, cfg.cluster) == (split, False), m
        ctas = -(-m // 64 // cfg.spw)
        assert ctas * cfg.split <= places < ctas * dispatch.MAX_CLUSTER
    for m in (7168, 27648):  # 8 slices fit one wave / even 4 would not
        cfg = dispatch.choose_config("pairmap", m, 9216, 64, 2000, 132, hopper=True)
        assert (cfg.split, cfg.cluster) == (dispatch.MAX_CLUSTER, True), m
    assert dispatch.choose_config("pairmap", 9216, 9216, 64, 2000, 132, hopper=True, split=8).split == 8
    assert dispatch.choose_config("pairmap", 9216, 9216, 64, 2000, 132).split == 4  # off Hopper: wave_split's


def test_wide_config_is_valid_and_compiled():
    """The wide kernel's config: every K slice keeps a block, the rings fit shared memory for blocks up to fully
    dense, the consumer groups follow the token count and the weight's depth, and the kernel it names is one CI
    compiles."""
    deep = {(12288, 49152), (49152, 12288)}  # wide_is_deep at 132 SMs; the other shapes are not
    for fmt, dense_block in (("bitmap", 528 + 8192), ("pairmap", 272 + 8192)):
        for (m, k) in [(1, 1), (130, 517), (7168, 7168), (12288, 49152), (49152, 12288), (100, 30000)]:
            for n in (17, 32, 33, 65, 128, 129, 512, 1024):
                for block in (dense_block // 5, dense_block):
                    cfg = dispatch.choose_wide_config(fmt, m, k, n, block, 132)
                    tiles = -(-m // (64 * cfg.spw)) * -(-n // (8 * cfg.nt))
                    assert min(tiles, 132) <= cfg.ctas <= max(tiles, 132) and cfg.ctas <= tiles * -(-k // 64)
                    assert cfg.smem <= dispatch.SMEM_PER_SM and cfg.w_stages >= 3
                    assert cfg.wide and cfg.threads == 128 * (cfg.spw + 1) and 8 * cfg.nt >= min(n, 128)
                    if n <= 32:  # 32-token tiles: three groups for the bitmap, four for the pair bitmap
                        assert (cfg.nt, cfg.spw) == (4, 3 if fmt == "bitmap" else 4)
                    else:  # a third group at 64 tokens on deep weights
                        assert cfg.spw == (3 if n <= 64 and (m, k) in deep else 2)
                    assert cfg.name(fmt, fmt == "bitmap") in dispatch.all_variants()
    with pytest.raises(ValueError, match="decodes"):
        dispatch.choose_wide_config("tiled_csl", 512, 512, 256, 4000, 132)


def stream_k_segments(tiles, kb, ctas):
    """The wide kernel's split of tiles x kb iterations over ctas CTAs (csrc/spmm.cu WideWork), in Python."""
    iters = tiles * kb
    for c in range(ctas):
        it, end = c * iters // ctas, (c + 1) * iters // ctas
        while it < end:
            tile, k0 = divmod(it, kb)
            nk = min(kb - k0, end - it)
            yield c, tile, k0, nk
            it += nk


def test_wide_stream_k_grid():
    """wide_ctas fills the SMs where one CTA per tile would leave them idle and keeps a tile per CTA on whole
    waves; every iteration is run once, and wide_ptr_bytes holds every CTA's block offsets."""
    assert dispatch.wide_ctas(96, 192, 132) == 132 and dispatch.wide_ctas(192, 192, 132) == 132
    assert dispatch.wide_ctas(132, 192, 132) == 132 and dispatch.wide_ctas(264, 192, 132) == 264
    assert dispatch.wide_ctas(112, 112, 132) == 112  # one wave 85 % busy: a tile each
    assert dispatch.wide_ctas(448, 112, 132, 512 * 7168 * 2) == 132  # four waves 85 % busy, X in L2: shared
    assert dispatch.wide_ctas(224, 448, 132, 1024 * 28672 * 2) == 224  # X past L2: a tile each
    assert dispatch.wide_ctas(3, 2, 132) == 3  # too little work to share
    for tiles, kb, ctas in [(96, 192, 132), (3, 7, 5), (5, 3, 14), (7, 1, 3), (1, 9, 9), (4, 4, 16), (10, 6, 4)]:
        seen, offsets = set(), {}  # a CTA's block offsets per row block of its tiles
        for c, tile, k0, nk in stream_k_segments(tiles, kb, ctas):
            seen.update((tile, k) for k in range(k0, k0 + nk))
            offsets[c] = offsets.get(c, 0) + nk + 1
        assert len(seen) == tiles * kb
        for groups in (2, 3, 4):
            assert 8 * groups * max(offsets.values()) <= dispatch.wide_ptr_bytes(tiles, kb, ctas, groups)


def test_wide_rule():
    """dispatch.use_wide: sm_90a only; 33-1024 tokens for both bitmap formats on any weight, from 17 on weights
    deep in K-block iterations per SM (3-row-block tiles x K blocks >= 48 per SM); never sliced ELL or
    Tiled-CSL."""
    deep = [(12288, 12288), (7168, 28672), (9216, 9216), (21504, 7168)]
    shallow = [(7168, 7168), (8192, 8192), (11008, 4096), (4096, 11008), (4096, 4096)]
    assert all(dispatch.wide_is_deep(m, k, 132) for m, k in deep)
    assert not any(dispatch.wide_is_deep(m, k, 132) for m, k in shallow)
    assert dispatch.wide_is_deep(7168, 7168, 66)  # half the SMs: twice the iterations each
    for m, k in deep + shallow:
        wide = lambda fmt, n, hopper=True: dispatch.use_wide(fmt, m, k, n, 132, hopper)  # noqa: E731
        assert wide("bitmap", 65) and wide("pairmap", 1024) and wide("bitmap", 33) and wide("pairmap", 64)
        assert not wide("bitmap", 512, False) and not wide("tiled_csl", 512) and not wide("sell", 64)
        assert not wide("pairmap", 2048) and not wide("bitmap", 16)
        for fmt in ("bitmap", "pairmap"):
            assert wide(fmt, 17) == wide(fmt, 32) == ((m, k) in deep)


@pytest.mark.parametrize("capability", [(9, 0), (8, 0)])
def test_config_for_routes_to_the_wide_kernel(monkeypatch, capability):
    """config_for: the wide kernel where use_wide says so and no override names another kernel's config (a
    forced split alone keeps it); never off sm_90a, where asking for it is an error."""
    import torch

    import flashllm
    monkeypatch.setattr(dispatch, "_device_props", lambda index: (132, capability))
    hopper = capability == (9, 0)
    gen = torch.Generator().manual_seed(0)
    small, big = (flashllm.compress(torch.randn(m, 576, generator=gen).half(), "bitmap") for m in (7168, 21504))
    pairs = flashllm.compress(torch.randn(7168, 576, generator=gen).half(), "pairmap")
    assert dispatch.config_for(small, 64).wide == hopper and dispatch.config_for(big, 300).wide == hopper
    assert dispatch.config_for(big, 64).wide == hopper and not dispatch.config_for(small, 32).wide
    assert not dispatch.config_for(pairs, 32).wide and dispatch.config_for(pairs, 33).wide == hopper
    assert not dispatch.config_for(big, 17).wide  # 112 tiles x 9 K blocks: too shallow for 132 SMs
    if hopper:  # a wgmma no wider than the tokens
        assert [dispatch.config_for(small, n).nt for n in (33, 64, 65, 128, 129)] == [8, 8, 16, 16, 32]
        assert [dispatch.config_for(small, n).spw for n in (64, 128)] == [2, 2]
        with pytest.raises(ValueError, match="consumer groups"):
            dispatch.config_for(big, 64, wide=1, groups=4)
    # on 16 SMs the same weights are deep: 17-32 tokens go wide, in 32-token tiles of 3 or 4 groups
    monkeypatch.setattr(dispatch, "_device_props", lambda index: (16, capability))
    assert dispatch.config_for(big, 17).wide == hopper and not dispatch.config_for(big, 16).wide
    if hopper:
        assert [dispatch.config_for(big, n).nt for n in (17, 32, 33, 64)] == [4, 4, 8, 8]
        assert [dispatch.config_for(big, n).spw for n in (32, 64, 128)] == [3, 3, 2]
        big_pairs = flashllm.compress(torch.randn(21504, 576, generator=gen).half(), "pairmap")
        assert [dispatch.config_for(big_pairs, n).spw for n in (32, 64)] == [4, 3]
    assert dispatch.config_for(small, 300, split=3, stages=None).wide == hopper  # None: not an override
    assert not dispatch.config_for(small, 300, spw=1).wide and not dispatch.config_for(small, 64, wg=False).wide
    if hopper:
        assert dispatch.config_for(small, 300, split=3).split == 3
        assert dispatch.config_for(big, 32, wide=1).wide
    else:
        with pytest.raises(ValueError, match="sm_90a"):
            dispatch.config_for(small, 300, wide=1)


def test_sell_config_heuristic_is_valid():
    from flashllm.formats.sell import grid
    from flashllm.kernels import sell_launch
    for (m, k) in [(1, 1), (7168, 7168), (12288, 49152), (49152, 12288), (100, 30000)]:
        n_slices, n_chunks = grid((m, k))
        for n in (1, 2, 3, 5, 8, 17, 32, 64):
            cfg = sell_launch.choose_sell_config(m, k, n, 132)
            groups = cfg.split // cfg.parts
            assert cfg.split % cfg.parts == 0
            assert groups * cfg.chunks_per_split >= n_chunks > (groups - 1) * cfg.chunks_per_split
            assert cfg.tokens * cfg.planes >= min(n, 32) and cfg.smem <= dispatch.SMEM_PER_SM
            assert cfg.tokens == 8 or (cfg.planes == 1 and cfg.tokens >= n)
            assert cfg.name(False) in dispatch.all_variants()
    # a small matrix gets its (slice, chunk) steps dealt to more CTAs; a big one does not
    assert sell_launch.choose_sell_config(7168, 7168, 8, 132).parts > 1
    assert sell_launch.choose_sell_config(27648, 9216, 8, 132).parts == 1


def test_wgmma_header_is_what_its_generator_writes(tmp_path, monkeypatch):
    """wgmma.cuh is generated (long operand lists); the committed file must match gen_wgmma.py."""
    import importlib.util
    from pathlib import Path
    csrc = Path(jit.__file__).parent / "csrc"
    spec = importlib.util.spec_from_file_location("gen_wgmma", csrc / "gen_wgmma.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    monkeypatch.setattr(gen, "__file__", str(tmp_path / "gen_wgmma.py"))
    gen.main()
    assert (tmp_path / "wgmma.cuh").read_text() == (csrc / "wgmma.cuh").read_text()
