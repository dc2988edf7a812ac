"""The device ablation scripts edit csrc/spmm.cu by string replacement: each edit must still match exactly once,
or an ablation would silently time the unedited kernel."""
import os
import sys

import pytest

from flashllm.kernels import jit

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
from wide_edits import EDITS  # noqa: E402


@pytest.mark.parametrize("label", sorted(EDITS))
def test_wide_ablate_edit_matches_once(label):
    source = jit._source("spmm.cu")
    for old, _ in EDITS[label]:
        assert source.count(old) == 1, f"{label}: {old!r}"
