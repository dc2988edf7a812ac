"""`flashllm generate` on the engine, and `flashllm bench e2e` as a CPU smoke run on a tiny preset."""

import json

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

import flashllm.cli as cli
from engine_models import tiny_model
from flashllm.models import from_pretrained

pytestmark = pytest.mark.usefixtures("one_torch_thread")
WORDS = ["<unk>", "<pad>", "<eos>"] + [f"w{i}" for i in range(125)]


@pytest.fixture
def opt_dir(tmp_path):
    model = tiny_model("opt", eos_token_id=2)
    model.generation_config.eos_token_id = 2
    cli_dir = tmp_path / "opt"
    from flashllm.models import save_pretrained
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>")
    save_pretrained(model, cli_dir, tokenizer=tokenizer)
    return cli_dir


def test_generate_command_runs_on_the_engine(opt_dir, capsys, monkeypatch):
    calls = []
    engine_path = cli._generate_with_engine
    monkeypatch.setattr(cli, "_generate_with_engine", lambda *a: calls.append(1) or engine_path(*a))
    assert cli.main(["generate", str(opt_dir), "--prompt", "w1 w2 w3", "--max-new-tokens", "8", "--device", "cpu"]) == 0
    text = capsys.readouterr().out.strip()
    assert calls == [1]

    model = from_pretrained(opt_dir, device="cpu")
    tokenizer = PreTrainedTokenizerFast.from_pretrained(opt_dir)
    ids = tokenizer("w1 w2 w3", return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=8, do_sample=False, pad_token_id=1)
    assert text == tokenizer.decode(out[0], skip_special_tokens=True)

    args = ["generate", str(opt_dir), "--prompt", "w1 w2 w3", "--device", "cpu", "--temperature", "0.8",
            "--top-k", "5", "--seed", "3"]
    assert cli.main(args) == 0 and cli.main(args) == 0
    first, second = capsys.readouterr().out.strip().splitlines()
    assert first == second and first.startswith("w1 w2 w3")


def test_bench_e2e_smoke_on_cpu(tmp_path, capsys):
    from flashllm.bench.__main__ import main
    assert main(["e2e", "--model", "opt-tiny", "--device", "cpu", "--dtype", "float32", "--batch", "1,2",
                 "--prompt", "4", "--new", "4", "--sparsities", "0.8", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "| variant | batch | tok/s |" in printed
    result = json.loads(next(tmp_path.glob("e2e_opt-tiny_*.json")).read_text())
    assert [(r["variant"], r["batch"]) for r in result["rows"]] == [
        ("hf", 1), ("dense", 1), ("hf", 2), ("dense", 2), ("sparse-80%", 1), ("sparse-80%", 2)]
    for r in result["rows"]:
        assert r["tokens_per_s"] > 0 and r["ms_per_step"] > 0 and r["roofline_ms"] > 0 and r["prefill_ms"] > 0
        assert r["tokens_per_gpu_s"] == r["tokens_per_s"] and r["weights_GB"] > 0 and r["kv_cache_GB"] > 0
    sparse = next(r for r in result["rows"] if r["variant"] == "sparse-80%")
    dense = next(r for r in result["rows"] if r["variant"] == "dense")
    assert sparse["format"] == "pairmap" and sparse["step_bytes_GB"] < 0.6 * dense["step_bytes_GB"]
    assert sparse["build_s"] > 0
    assert list(tmp_path.glob("e2e_opt-tiny_*.png")) and list(tmp_path.glob("e2e_opt-tiny_*.md"))
