"""The device ablation scripts edit csrc/spmm.cu by string replacement: each edit must still match exactly once,
or an ablation would silently time the unedited kernel."""
import os
import sys

import pytest

from flashllm.kernels import jit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def wide_ablate_edits() -> dict:
    ns: dict = {}
    argv, sys.argv = sys.argv, ["wide_ablate.py"]
    try:
        exec(open(os.path.join(ROOT, "benchmarks", "wide_ablate.py")).read().split("original = jit")[0], ns)
    finally:
        sys.argv = argv
    return ns["EDITS"]


@pytest.mark.parametrize("label", sorted(wide_ablate_edits()))
def test_wide_ablate_edit_matches_once(label):
    source = jit._source("spmm.cu")
    for old, _ in wide_ablate_edits()[label]:
        assert source.count(old) == 1, f"{label}: {old!r}"
