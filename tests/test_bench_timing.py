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
