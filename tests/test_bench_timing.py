"""The kernel bench's interleaved timing (CPU: a fake timer stands in for CUDA events)."""

from flashllm.bench.kernel import interleaved_medians


def test_interleaved_medians_round_robin_and_median():
    calls = []
    # rounds of (a, b, c): a's first sample falls in a slow stretch, c's second
    samples = iter([50.0, 9.0, 10.0, 12.0, 11.0, 31.0, 13.0, 29.0, 10.0])

    def timer(fns, launches, replays):
        calls.append(fns[0]())
        return next(samples)

    medians = interleaved_medians({"a": [lambda: "a"], "b": [lambda: "b"], "c": [lambda: "c"]}, reps=3, timer=timer)
    assert calls == ["a", "b", "c"] * 3  # every column once per round, in order
    assert medians == {"a": 13.0, "b": 11.0, "c": 10.0}  # the slow samples do not set any column's figure


def test_kernel_summary_floor_column_is_the_auto_formats_slowest_point(capsys):
    """The summary's floor column must report the format `auto` picks, not the fastest one per point."""
    from flashllm.bench.kernel import summarize
    row = dict(M=64, K=64, sparsity=0.5, eff_bw_GBs=1.0, rel_err=0.0)
    rows = [dict(row, N=8, format="bitmap", speedup=1.4, auto=True), dict(row, N=8, format="pairmap", speedup=1.1),
            dict(row, N=64, format="bitmap", speedup=0.8, auto=True), dict(row, N=64, format="pairmap", speedup=1.3)]
    summarize({"device": "test", "copy_bw_GBs": 1.0, "rows": rows})
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.strip().startswith("50%"))
    best32, auto32, worst = (float(c.strip().rstrip("x")) for c in line.split("|")[-4:-1])
    assert (best32, auto32, worst) == (1.4, 1.4, 0.8)
