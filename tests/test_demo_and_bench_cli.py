"""The demo and the encode benchmark run end to end on the CPU (tiny sizes)."""

import json

from flashllm.bench import encode
from flashllm import demo


def test_demo_runs_small(capsys):
    demo.main(["--scale", "32"])
    out = capsys.readouterr().out
    assert "bitmap" in out and "tiled_csl" in out and "rel err" in out


def test_encode_bench_writes_json(tmp_path, capsys):
    encode.main(["--m", "128", "--k", "256", "--out", str(tmp_path / "e.json")])
    result = json.loads((tmp_path / "e.json").read_text())
    assert result  # rows for both formats with positive timings
    text = json.dumps(result)
    assert "bitmap" in text and "tiled_csl" in text
