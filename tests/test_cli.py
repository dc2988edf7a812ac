"""The `flashllm` command line, run in-process through flashllm.cli.main on tiny models."""

import json
import sys
import types

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from flashllm.cli import main
from flashllm.models import describe, from_pretrained
from flashllm.nn import SparseLinear

WORDS = ["<unk>", "<pad>", "<eos>"] + [f"w{i}" for i in range(61)]


@pytest.fixture
def model_dir(tmp_path):
    """A dense tiny Llama (random weights, no zeros) with a word-level tokenizer, as transformers saves it."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         pad_token_id=1, eos_token_id=2, bos_token_id=2)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "dense")
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                            eos_token="<eos>").save_pretrained(tmp_path / "dense")
    return tmp_path / "dense"


@pytest.fixture
def calibration(tmp_path):
    path = tmp_path / "calibration.txt"
    path.write_text("\n".join(" ".join(f"w{(i * 7 + j) % 61}" for j in range(12)) for i in range(8)) + "\n\n")
    return path


@pytest.mark.parametrize("command", [[], ["convert"], ["info"], ["generate"]])
def test_help_on_every_command(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(command + ["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: flashllm")
    if not command:
        assert all(name in out for name in ("convert", "info", "generate", "demo", "bench"))


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["frobnicate"])
    assert exit_info.value.code == 2


@pytest.mark.parametrize("method", ["wanda", "magnitude"])
def test_convert_then_info_then_generate(model_dir, calibration, tmp_path, capsys, method):
    out_dir = tmp_path / "sparse"
    report = tmp_path / "report.json"
    code = main(["convert", str(model_dir), str(out_dir), "--sparsity", "0.6", "--method", method,
                 "--calibration", str(calibration), "--format", "bitmap", "--device", "cpu", "--report", str(report)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "model.layers.1.mlp.down_proj" in printed and f"14 layers ({method})" in printed

    info = describe(out_dir)
    assert info["kind"] == "flashllm" and info["format"] == "bitmap" and len(info["layers"]) == 14
    assert all(abs(layer["sparsity"] - 0.6) < 0.02 for layer in info["layers"])
    assert json.loads(report.read_text())["method"] == method
    assert (out_dir / "tokenizer.json").is_file()
    model = from_pretrained(out_dir, device="cpu")
    assert len([m for m in model.modules() if isinstance(m, SparseLinear)]) == 14

    assert main(["info", str(out_dir)]) == 0
    table = capsys.readouterr().out
    q_proj = next(line for line in table.splitlines() if line.startswith("model.layers.0.self_attn.q_proj"))
    assert "flashllm checkpoint" in table and "32x32" in q_proj and "bitmap" in q_proj
    assert f"{info['layers'][0]['sparsity']:.1%}" in q_proj
    assert main(["info", str(out_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["kind"] == "flashllm"

    assert main(["generate", str(out_dir), "--prompt", "w1 w2 w3", "--max-new-tokens", "5", "--device", "cpu"]) == 0
    text = capsys.readouterr().out.strip()
    assert text.startswith("w1 w2 w3") and len(text.split()) > 3


@pytest.mark.parametrize("max_tokens, fmt", [([], "pairmap"), (["--max-tokens", "4"], "sell")])
def test_convert_max_tokens_steers_the_auto_format(model_dir, tmp_path, max_tokens, fmt):
    out_dir = tmp_path / "sparse"
    assert main(["convert", str(model_dir), str(out_dir), "--sparsity", "0.9", "--method", "magnitude",
                 "--device", "cpu", *max_tokens]) == 0
    assert describe(out_dir)["format"] == fmt


def test_convert_without_pruning_keeps_existing_zeros(model_dir, tmp_path, capsys):
    assert main(["convert", str(model_dir), str(tmp_path / "out"), "--method", "none", "--device", "cpu",
                 "--exclude", "lm_head", "--exclude", "*.mlp.*"]) == 0
    info = describe(tmp_path / "out")
    assert len(info["layers"]) == 8 and all(layer["sparsity"] < 0.01 for layer in info["layers"])


def test_info_on_dense_and_compressed_tensors_dirs(model_dir, capsys):
    from pathlib import Path
    assert main(["info", str(model_dir)]) == 0
    assert "dense checkpoint" in capsys.readouterr().out
    fixture = Path(__file__).parent / "fixtures" / "ct_bitmask_v0.9.4" / "llama"
    assert main(["info", str(fixture)]) == 0
    out = capsys.readouterr().out
    assert "sparse-bitmask checkpoint" in out and "model.layers.1.mlp.up_proj" in out


def test_errors_are_messages_not_tracebacks(model_dir, tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing")]) == 1
    assert "flashllm info: error:" in capsys.readouterr().err
    assert main(["convert", str(model_dir), str(tmp_path / "out"), "--method", "wanda", "--device", "cpu"]) == 1
    assert "calibration" in capsys.readouterr().err
    (model_dir / "model.safetensors").write_bytes(b"\x00" * 7)
    assert main(["generate", str(model_dir), "--prompt", "w1", "--device", "cpu"]) == 1
    assert "model.safetensors" in capsys.readouterr().err


def test_convert_refuses_a_flashllm_checkpoint(model_dir, tmp_path, capsys):
    assert main(["convert", str(model_dir), str(tmp_path / "a"), "--method", "magnitude", "--device", "cpu"]) == 0
    assert main(["convert", str(tmp_path / "a"), str(tmp_path / "b"), "--method", "magnitude", "--device", "cpu"]) == 1
    assert "already a flashllm checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("command,module", [("demo", "flashllm.demo"), ("bench", "flashllm.bench.__main__")])
def test_demo_and_bench_get_the_rest_of_argv(command, module, monkeypatch):
    seen = []
    fake = types.ModuleType(module)
    fake.main = lambda argv: seen.append(argv) or 3
    monkeypatch.setitem(sys.modules, module, fake)
    assert main([command, "--help", "--x", "1"]) == 3
    assert seen == [["--help", "--x", "1"]]


def test_missing_delegate_is_reported(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "flashllm.demo", None)  # makes the import fail as if the file were absent
    import importlib

    def absent(name, *args):
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    monkeypatch.setattr(importlib, "import_module", absent)
    assert main(["demo"]) == 1
    assert "not available" in capsys.readouterr().err
