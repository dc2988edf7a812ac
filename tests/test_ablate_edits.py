"""`flashllm bench probe ablate` edits the kernel sources by string replacement: each edit must still match as often
as it says, or an ablation would silently time the unedited kernel."""
import pytest

from flashllm.bench import edits
from flashllm.kernels import jit


@pytest.mark.parametrize("label", sorted(edits.EDITS))
def test_ablation_edit_matches(label):
    edits.apply(edits.source_files(jit.CSRC), label)  # raises if an edit's text is not found as often as it says


def test_unknown_edit_is_named():
    with pytest.raises(ValueError, match="nosuchedit"):
        edits.parse("base+nosuchedit")
