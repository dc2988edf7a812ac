"""Every kernel variant compiles through the same NVRTC path the GPU uses (no GPU needed), and every csrc/
program has its launcher of the same stem."""

import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from flashllm.formats import FORMAT_IDS
from flashllm.kernels import jit, programs


def compile_all(variants, arch):
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:  # NVRTC runs outside the GIL
        return list(pool.map(lambda v: jit.compile_kernel(v[0], arch, v[1]), variants))


@pytest.mark.parametrize("arch", ["sm_90a", "sm_80"])
def test_every_variant_compiles(arch, tmp_path, monkeypatch):
    monkeypatch.setenv("FLASHLLM_CACHE_DIR", str(tmp_path))
    variants = programs.all_variants()
    if arch == "sm_80":  # Ampere fallback build: every kernel template, fewer configurations (no wide kernel)
        variants = [(n, p) for n, p in variants if ("<1," in n and not n.endswith(",true>") and p != "spmm_wide.cu")
                    or n.startswith(("splitk", "decompress", "sell_decompress", "row_norm", "decode_attention"))]
    for (name, _), (cubin, lowered) in zip(variants, compile_all(variants, arch)):
        assert cubin[:4] == b"\x7fELF", name
        assert lowered.startswith("_Z"), name
    # second call hits the disk cache and returns the identical binary
    name, program = variants[0]
    assert jit.compile_kernel(name, arch, program)[0] == jit.compile_kernel(name, arch, program)[0]
    assert {p for _, p in variants} >= {"spmm_mma.cu", "sell.cu", "decompress.cu", "reduce.cu"}
    assert len(list((tmp_path / arch).glob("*.cubin"))) == len(variants)


def test_every_program_has_its_launcher():
    """csrc/<stem>.cu <-> flashllm/kernels/<stem>.py (PROGRAM, variants), and jit knows them all."""
    stems = {p.stem for p in jit.CSRC.glob("*.cu")}
    assert {launcher.__name__.rsplit(".", 1)[-1] for launcher in programs.LAUNCHERS} == stems
    assert {launcher.PROGRAM for launcher in programs.LAUNCHERS} == {f"{s}.cu" for s in stems} == set(jit.PROGRAMS)
    assert programs.program_for("spmm_wide<2,8,8,false,3>") == "spmm_wide.cu"
    assert programs.program_for("spmm_sell<8,1,8,4,true>") == "sell.cu"
    with pytest.raises(ValueError, match="nosuch"):
        programs.program_for("nosuch<1>")


def test_format_ids_are_the_ones_on_disk():
    """The kernels' FMT_<NAME> constants are written from FORMAT_IDS (no header holds them)."""
    header = jit.format_ids_header()
    for name, i in FORMAT_IDS.items():
        assert f"FMT_{name.upper()} = {i}" in header
    assert not (jit.CSRC / "format_ids.cuh").exists()
    source = jit._source("decompress.cu")
    assert header in source and source.count("typedef unsigned char u8;") == 1  # each header inlined once


def test_compile_error_shows_the_log(monkeypatch, tmp_path):
    monkeypatch.setenv("FLASHLLM_CACHE_DIR", str(tmp_path))
    with pytest.raises(jit.KernelCompileError, match="spmm_bitmap<0,1,2,false,false>|error"):
        jit.compile_kernel("spmm_bitmap<0,1,2,false,false>", "sm_90a", "spmm_mma.cu")


def test_wgmma_header_is_what_its_generator_writes(tmp_path, monkeypatch):
    """wgmma.cuh is generated (long operand lists); the committed file must match gen_wgmma.py."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("gen_wgmma", jit.CSRC / "gen_wgmma.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    monkeypatch.setattr(gen, "__file__", str(tmp_path / "gen_wgmma.py"))
    gen.main()
    assert (tmp_path / "wgmma.cuh").read_text() == (jit.CSRC / "wgmma.cuh").read_text()
