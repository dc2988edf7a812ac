"""`flashllm bench kernel --large-n`, the CPU side: medians and minima over shapes, the issue's targets, the table
and the plots (synthetic results; no GPU)."""

import pytest

from flashllm.bench import kernel

SHAPES = [(7168, 7168), (9216, 36864), (12288, 12288)]


def rows_for(speedups: dict) -> list:
    """Prefill rows from {(sparsity, N): [speedup on each of SHAPES]}, with cuBLAS at 100 us."""
    rows = []
    for (s, n), per_shape in speedups.items():
        for (m, k), v in zip(SHAPES, per_shape):
            rows.append(dict(M=m, K=k, N=n, sparsity=s, format="pairmap" if s >= 0.65 else "bitmap",
                             dense_us=100.0, dispatch_us=100.0 / v, dispatch_vs_dense=v, rel_err=1e-3))
    return rows


def test_cells_take_median_min_and_max_over_shapes():
    cells = kernel.prefill_cells(rows_for({(0.5, 256): [1.2, 0.9, 1.0], (0.5, 512): [1.1, 1.3, 0.97],
                                           (0.9, 256): [2.0, 1.4, 1.6]}))
    assert set(cells) == {(0.5, 256), (0.5, 512), (0.9, 256)}
    assert cells[0.5, 256] == dict(median=1.0, min=0.9, max=1.2, shapes=3)
    assert cells[0.5, 512] == dict(median=1.1, min=0.97, max=1.3, shapes=3)
    assert cells[0.9, 256] == dict(median=1.6, min=1.4, max=2.0, shapes=3)


@pytest.mark.parametrize("s, want", [(0.3, None), (0.5, (1.0, 0.95)), (0.6, (1.0, 0.95)), (0.7, (1.0, 0.95)),
                                     (0.8, (1.3, None)), (0.9, (1.5, None)), (0.95, (1.5, None))])
def test_targets_by_sparsity(s, want):
    assert kernel.prefill_target(s) == want


def test_verdicts_judge_every_n_from_256_and_only_those():
    speedups = {
        # 50%: medians >= 1.0 and minima >= 0.95 from N=256 on; N=128 is far short but shown only
        (0.5, 128): [0.5, 0.5, 0.5], (0.5, 256): [1.0, 0.95, 1.1], (0.5, 4096): [1.0, 1.0, 1.0],
        # 70%: the median holds, but one shape at N=512 falls under 0.95x
        (0.7, 256): [1.2, 1.1, 1.0], (0.7, 512): [1.2, 0.94, 1.0],
        # 80%: 1.3x median at 256, 1.29x at 1024
        (0.8, 256): [1.3, 1.0, 2.0], (0.8, 1024): [1.29, 1.2, 1.4],
        # 90%: exactly 1.5x median (a floor is met at equality); a low minimum does not count at 90%
        (0.9, 256): [1.5, 0.5, 3.0], (0.9, 2048): [1.6, 1.5, 1.4],
        # no target below 50%; only N below 256 at 60%: nothing to judge
        (0.3, 256): [0.1, 0.1, 0.1], (0.6, 64): [0.1, 0.1, 0.1],
    }
    cells = kernel.prefill_cells(rows_for(speedups))
    assert kernel.prefill_verdict(0.5, cells) == "PASS"
    assert kernel.prefill_verdict(0.7, cells) == "short: N=512 min 0.940x"
    assert kernel.prefill_verdict(0.8, cells) == "short: N=1024 median 1.290x"
    assert kernel.prefill_verdict(0.9, cells) == "PASS"
    assert kernel.prefill_verdict(0.3, cells) == "-"
    assert kernel.prefill_verdict(0.6, cells) == "-"
    both = kernel.prefill_cells(rows_for({(0.5, 256): [0.9, 0.8, 1.2]}))
    assert kernel.prefill_verdict(0.5, both) == "short: N=256 median 0.900x, N=256 min 0.800x"


def test_table_has_a_row_per_sparsity_a_column_per_n_and_the_targets():
    rows = rows_for({(s, n): [v, v + 0.1, v - 0.1] for s, v in ((0.5, 1.0), (0.8, 1.2))
                     for n in (64, 128, 256, 512, 1024, 2048, 4096)})
    table = kernel.prefill_table(rows, "test GPU")
    lines = table.splitlines()
    header = next(ln for ln in lines if ln.startswith("| sparsity"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    assert cols == ["sparsity", "N=64*", "N=128*", "N=256", "N=512", "N=1024", "N=2048", "N=4096", "target", "verdict"]
    body = {ln.split("|")[1].strip(): [c.strip() for c in ln.strip("|").split("|")]
            for ln in lines if ln.startswith("| ") and not ln.startswith(("| sparsity", "| ---"))}
    assert set(body) == {"50% (bitmap)", "80% (pairmap)"}
    assert body["50% (bitmap)"][1:3] == ["1.00x (0.90)", "1.00x (0.90)"]
    assert body["50% (bitmap)"][-2:] == [">= 1.00x median, >= 0.95x min", "short: " + ", ".join(
        f"N={n} min 0.900x" for n in (256, 512, 1024, 2048, 4096))]
    assert body["80% (pairmap)"][-2:] == [">= 1.30x median", "short: " + ", ".join(
        f"N={n} median 1.200x" for n in (256, 512, 1024, 2048, 4096))]
    assert "median over 3 shapes" in lines[0]
    assert lines[-1].startswith("targets (issue #24): 50-70%: >= 0.95x at every N (min) and >= 1.0x median; "
                                "80%: >= 1.3x median; 90%: >= 1.5x median")


def is_png(path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_prefill_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    rows = rows_for({(s, n): [1.0 + s, 0.8 + s, 1.2 + s] for s in (0.5, 0.7, 0.8, 0.9)
                     for n in (64, 128, 256, 512, 1024, 2048, 4096)})
    kernel.plot_prefill({"device": "test GPU", "prefill": rows}, tmp_path / "prefill.png")
    assert is_png(tmp_path / "prefill.png")


def test_plot_reads_old_and_new_results(tmp_path):
    """Results before the sweep (benchmarks/results/kernel_*_2026-11-22.json) hold one shape under "large_n"."""
    pytest.importorskip("matplotlib")
    decode = [dict(M=64, K=64, N=n, sparsity=s, format=f, speedup=1.1) for n in (8, 16) for s in (0.5, 0.9)
              for f in ("bitmap", "pairmap")]
    old = [dict(M=12288, K=12288, N=n, sparsity=0.7, format=f, dense_us=100.0, dispatch_us=90.0,
                dispatch_vs_dense=100 / 90) for n in (64, 4096) for f in ("bitmap", "tiled_csl")]
    kernel.plot({"device": "test GPU", "rows": decode, "large_n": old}, tmp_path / "old.png")
    kernel.plot({"device": "test GPU", "rows": decode, "prefill": rows_for({(0.5, 256): [1, 1, 1]})},
                tmp_path / "new.png")
    assert is_png(tmp_path / "old.png") and is_png(tmp_path / "new.png")


def test_shape_and_list_options():
    assert kernel.parse_shapes("all") == kernel.PAPER_SHAPES and len(kernel.PAPER_SHAPES) == 12
    assert kernel.parse_shapes("quick") == [(7168, 7168), (27648, 9216), (9216, 36864)]
    assert kernel.parse_shapes("7168x7168,12288X49152") == [(7168, 7168), (12288, 49152)]
    assert kernel.parse_floats("0.5,0.7,0.8,0.9") == list(kernel.PREFILL_SPARSITIES)
    assert kernel.parse_ints("64,128,256,512,1024,2048,4096") == list(kernel.PREFILL_NS)
