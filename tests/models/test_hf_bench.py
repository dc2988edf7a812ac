"""`flashllm bench hf` on the CPU with a tiny shape: every row measured, the table, JSON and PNG written."""

import json

import pytest

from flashllm import cli
from flashllm.bench import hf as bench_hf

TINY = ["--model", "llama-tiny", "--layers", "1", "--batch", "1,2", "--prompt", "8", "--new", "3",
        "--sparsities", "0,0.5", "--device", "cpu", "--reps", "1"]


def test_bench_hf_smoke(tmp_path, capsys):
    assert cli.main(["bench", "hf", *TINY, "--paths", "eager,engine", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| path | variant | batch |" in out
    (result,) = [json.loads(p.read_text()) for p in tmp_path.glob("hf_llama-tiny-1l_*.json")]
    rows = {(r["path"], r["variant"], r["batch"]): r for r in result["rows"]}
    assert set(rows) == {(p, v, b) for p in ("eager", "engine") for v in ("dense", "sparse-50%") for b in (1, 2)}
    assert all("note" not in r and r["tokens_per_s"] > 0 for r in rows.values()), [r.get("note") for r in rows.values()]
    assert len(rows["eager", "sparse-50%", 2]["tokens"]) == 2 and len(rows["eager", "dense", 1]["tokens"][0]) == 3
    assert list(tmp_path.glob("*.md"))
    pytest.importorskip("matplotlib")
    assert list(tmp_path.glob("*.png"))


@pytest.mark.parametrize("argv,message", [(["--paths", "eager,jit"], "--paths"), (["--sparsities", "1.0"], "sparsities"),
                                          (["--batch", "0"], "batch")])
def test_bench_hf_checks_its_arguments(argv, message, capsys):
    with pytest.raises(SystemExit):
        bench_hf.parse_args(["--device", "cpu", *argv])
    assert message in capsys.readouterr().err
