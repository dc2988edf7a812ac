"""The `flashllm` command line on tiny models: in-process through flashllm.cli.main for the many cases,
and through the real entry point in a subprocess (tests/test_cli_process.py) for each behaviour."""

import json
import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from flashllm.cli import main
from flashllm.models import describe, from_pretrained
from flashllm.nn import SparseLinear

WORDS = ["<unk>", "<pad>", "<eos>"] + [f"w{i}" for i in range(61)]
CHAT_TEMPLATE = ("{% for m in messages %}w60 {{ m['content'] }} w59{% endfor %}"
                 "{% if add_generation_prompt %} w58{% endif %}")


def tiny_llama(directory, chat_template=None, max_shard_size=None, seed=0):
    """A dense tiny Llama (random weights, no zeros) with a word-level tokenizer, as transformers saves it."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         pad_token_id=1, eos_token_id=2, bos_token_id=2)
    LlamaForCausalLM(config).save_pretrained(directory, **({"max_shard_size": max_shard_size} if max_shard_size else {}))
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>")
    fast.chat_template = chat_template
    fast.save_pretrained(directory)
    return Path(directory)


def snapshot(directory) -> dict:
    """Every file under `directory` with its bytes: what must survive a refused or failed command."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(Path(directory).rglob("*")) if p.is_file()}


@pytest.fixture
def model_dir(tmp_path):
    return tiny_llama(tmp_path / "dense")


@pytest.fixture
def sharded_dir(tmp_path):
    directory = tiny_llama(tmp_path / "sharded", max_shard_size="20KB")
    assert len(list(directory.glob("model-*.safetensors"))) > 1 and (directory / "model.safetensors.index.json").is_file()
    return directory


@pytest.fixture
def calibration(tmp_path):
    path = tmp_path / "calibration.txt"
    path.write_text("\n".join(" ".join(f"w{(i * 7 + j) % 61}" for j in range(12)) for i in range(8)) + "\n\n")
    return path


def one_error_line(err: str, *fragments) -> str:
    """stderr holds exactly one error, `flashllm: error: ...`, as its last line and no traceback."""
    lines = err.strip().splitlines()
    assert "Traceback" not in err and len([l for l in lines if l.startswith("flashllm: error: ")]) == 1, err
    assert lines[-1].startswith("flashllm: error: "), err
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]
    return lines[-1]


# ------------------------------------------------------------------------------------------ the basics

@pytest.mark.parametrize("command", [[], ["convert"], ["info"], ["generate"], ["bench"]])
def test_help_on_every_command(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(command + ["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: flashllm")
    if not command:
        assert all(name in out for name in ("convert", "info", "generate", "demo", "bench", "--version"))
    if command == ["bench"]:
        assert all(name in out for name in ("kernel", "encode", "e2e"))


def test_every_option_has_help():
    import argparse

    from flashllm.cli import build_parser

    def parsers(parser):
        yield parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from parsers(sub)
    for parser in parsers(build_parser()):
        for action in parser._actions:
            if not isinstance(action, argparse._SubParsersAction):
                assert action.help, (parser.prog, action.option_strings or action.dest)


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["frobnicate"])
    assert exit_info.value.code == 2
    one_error_line(capsys.readouterr().err, "invalid choice", "frobnicate")


# -------------------------------------------------------------------------------- convert, info, generate

@pytest.mark.parametrize("method", ["wanda", "magnitude"])
def test_convert_then_info_then_generate(model_dir, calibration, tmp_path, capsys, method):
    out_dir = tmp_path / "sparse"
    report = tmp_path / "report.json"
    calibrate = ["--calibration", str(calibration)] if method == "wanda" else []
    code = main(["convert", str(model_dir), str(out_dir), "--sparsity", "0.6", "--method", method, *calibrate,
                 "--format", "bitmap", "--device", "cpu", "--report", str(report)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "model.layers.1.mlp.down_proj" in printed and f"14 layers ({method})" in printed and "x smaller" in printed

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
    captured = capsys.readouterr()
    text = captured.out.strip()
    assert text.startswith("w1 w2 w3") and len(text.split()) > 3
    assert "tokens/s" in captured.err


@pytest.mark.parametrize("max_tokens, fmt", [([], "pairmap"), (["--max-tokens", "4"], "sell")])
def test_convert_max_tokens_steers_the_auto_format(model_dir, tmp_path, max_tokens, fmt):
    out_dir = tmp_path / "sparse"
    assert main(["convert", str(model_dir), str(out_dir), "--sparsity", "0.9", "--method", "magnitude",
                 "--device", "cpu", *max_tokens]) == 0
    assert describe(out_dir)["format"] == fmt


def test_convert_without_pruning_keeps_existing_zeros(model_dir, tmp_path, capsys):
    assert main(["convert", str(model_dir), str(tmp_path / "out"), "--method", "none", "--device", "cpu",
                 "--exclude", "lm_head", "--exclude", "*.mlp.*", "--dtype", "float16"]) == 0
    info = describe(tmp_path / "out")
    assert len(info["layers"]) == 8 and all(layer["sparsity"] < 0.01 for layer in info["layers"])
    assert "x larger" in capsys.readouterr().out  # fp16 without zeros: the offsets and masks only add bytes


def test_info_on_dense_and_compressed_tensors_dirs(model_dir, capsys):
    assert main(["info", str(model_dir)]) == 0
    assert "dense checkpoint" in capsys.readouterr().out
    fixture = Path(__file__).parent / "fixtures" / "ct_bitmask_v0.9.4" / "llama"
    assert main(["info", str(fixture)]) == 0
    out = capsys.readouterr().out
    assert "sparse-bitmask checkpoint" in out and "model.layers.1.mlp.up_proj" in out


def test_generate_with_and_without_the_chat_template(tmp_path, capsys):
    directory = tiny_llama(tmp_path / "chat", chat_template=CHAT_TEMPLATE)
    assert main(["generate", str(directory), "--prompt", "w1 w2", "--max-new-tokens", "4", "--device", "cpu",
                 "--no-chat-template", "--dtype", "float32"]) == 0
    assert capsys.readouterr().out.startswith("w1 w2")  # the prompt as it is, then its continuation
    assert main(["generate", str(directory), "--prompt", "w1 w2", "--max-new-tokens", "4", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert not captured.out.startswith("w1 w2")  # the reply alone
    assert "(prompt 5 tokens)" in captured.err  # w60 w1 w2 w59 w58: the template made the prompt


# ---------------------------------------------------------------------------------- never lose a file

@pytest.mark.parametrize("out", ["same", "inside", "contains", "file", "non-empty"])
def test_convert_refuses_an_output_that_would_touch_the_input(sharded_dir, tmp_path, capsys, out):
    target = {"same": sharded_dir, "inside": sharded_dir / "sparse", "contains": tmp_path,
              "file": tmp_path / "a-file", "non-empty": tmp_path / "full"}[out]
    if out == "file":
        target.write_text("keep me")
    if out == "non-empty":
        target.mkdir()
        (target / "notes.txt").write_text("keep me")
    before_input, before_target = snapshot(sharded_dir), snapshot(tmp_path)
    assert main(["convert", str(sharded_dir), str(target), "--method", "magnitude", "--device", "cpu"]) == 2
    message = one_error_line(capsys.readouterr().err)
    assert {"same": "is the input folder", "inside": "inside the input folder", "contains": "contains the input",
            "file": "is not a folder", "non-empty": "--overwrite"}[out] in message
    assert snapshot(sharded_dir) == before_input and snapshot(tmp_path) == before_target


def test_overwrite_replaces_a_folder_only_when_the_new_checkpoint_is_complete(model_dir, tmp_path, monkeypatch,
                                                                             capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    import flashllm.models

    def interrupted_save(model, folder, **kwargs):
        (Path(folder) / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt
    real_save = flashllm.models.save_pretrained
    monkeypatch.setattr(flashllm.models, "save_pretrained", interrupted_save)
    args = ["convert", str(model_dir), str(out), "--method", "magnitude", "--device", "cpu", "--overwrite"]
    assert main(args) == 130
    assert capsys.readouterr().err.strip().endswith("flashllm: interrupted")
    assert snapshot(out) == {"old.txt": b"old"} and sorted(p.name for p in tmp_path.iterdir()) == ["dense", "out"]

    monkeypatch.setattr(flashllm.models, "save_pretrained", real_save)
    assert main(args) == 0
    assert not (out / "old.txt").exists() and describe(out)["kind"] == "flashllm"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dense", "out"]  # no partial or replaced folder left
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["convert", str(model_dir), str(empty), "--method", "magnitude", "--device", "cpu"]) == 0


# --------------------------------------------------------------------------- arguments checked up front

def encoder_decoder_dir(tmp_path) -> Path:
    directory = tmp_path / "t5"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({"model_type": "t5", "is_encoder_decoder": True}))
    return directory


@pytest.mark.parametrize("case,args,fragments", [
    ("sparsity", ["--method", "magnitude", "--sparsity", "1.5"], ["--sparsity must be in [0, 1), got 1.5"]),
    ("sparsity", ["--method", "magnitude", "--sparsity", "-0.1"], ["--sparsity"]),
    ("shard", ["--method", "magnitude", "--max-shard-size", "abc"], ["--max-shard-size 'abc'"]),
    ("shard", ["--method", "magnitude", "--max-shard-size", "0"], ["--max-shard-size '0'"]),
    ("tokens", ["--method", "magnitude", "--max-tokens", "0"], ["--max-tokens must be >= 1"]),
    ("no-method", [], ["--method wanda (the default) needs --calibration"]),
    ("no-calibration", ["--method", "sparsegpt"], ["--method sparsegpt needs --calibration"]),
    ("missing-calibration", ["--calibration", "nowhere.txt"], ["--calibration nowhere.txt", "does not exist"]),
    ("calibration-unused", ["--method", "magnitude", "--calibration", "CAL"], ["--calibration", "magnitude"]),
    ("float32", ["--method", "magnitude", "--dtype", "float32"], ["--dtype float32", "float16", "bfloat16"]),
    ("device", ["--method", "magnitude", "--device", "tpu"], ["--device 'tpu'"]),
    ("report", ["--method", "magnitude", "--report", "REPORT_DIR"], ["--report", "is a folder"]),
])
def test_convert_argument_errors_come_before_loading(model_dir, calibration, tmp_path, monkeypatch, capsys,
                                                      case, args, fragments):
    import flashllm.models
    monkeypatch.setattr(flashllm.models, "from_pretrained", lambda *a, **k: pytest.fail("model loaded"))
    args = [str(calibration) if a == "CAL" else str(tmp_path) if a == "REPORT_DIR" else a for a in args]
    assert main(["convert", str(model_dir), str(tmp_path / "out"), *args]) == 2
    one_error_line(capsys.readouterr().err, *fragments)
    assert not (tmp_path / "out").exists()


def test_calibrated_methods_refuse_encoder_decoder_models(tmp_path, calibration, capsys):
    directory = encoder_decoder_dir(tmp_path)
    for method in ("wanda", "sparsegpt"):
        assert main(["convert", str(directory), str(tmp_path / "out"), "--method", method,
                     "--calibration", str(calibration)]) == 2
        one_error_line(capsys.readouterr().err, f"--method {method}", "encoder-decoder", "--method magnitude")


@pytest.mark.parametrize("args,fragments", [
    (["--max-new-tokens", "0"], ["--max-new-tokens must be >= 1, got 0"]),
    (["--max-new-tokens", "100"], ["exceed the model's 64 positions"]),
    (["--temperature", "-1"], ["--temperature"]),
    (["--top-p", "0"], ["--top-p must be in (0, 1]"]),
    (["--top-k", "0"], ["--top-k"]),
    (["--tp", "0"], ["--tp"]),
])
def test_generate_argument_errors_come_before_loading(model_dir, monkeypatch, capsys, args, fragments):
    import flashllm.models
    monkeypatch.setattr(flashllm.models, "from_pretrained", lambda *a, **k: pytest.fail("model loaded"))
    assert main(["generate", str(model_dir), "--prompt", "w1", "--device", "cpu", *args]) == 2
    one_error_line(capsys.readouterr().err, *fragments)


@pytest.mark.parametrize("command", [["info"], ["convert", "--method", "magnitude"], ["generate", "--prompt", "w1"]])
def test_missing_or_wrong_folder(tmp_path, command, capsys):
    name, *rest = command
    extra = [str(tmp_path / "out")] if name == "convert" else []
    assert main([name, str(tmp_path / "missing"), *extra, *rest]) == 2
    one_error_line(capsys.readouterr().err, f"folder {tmp_path / 'missing'} does not exist")
    (tmp_path / "file").write_text("x")
    assert main([name, str(tmp_path / "file"), *extra, *rest]) == 2
    one_error_line(capsys.readouterr().err, "is not a folder")
    assert main([name, str(tmp_path), *extra, *rest]) == 2
    one_error_line(capsys.readouterr().err, "no config.json")


def test_failures_are_one_line_messages(model_dir, tmp_path, capsys):
    (model_dir / "model.safetensors").write_bytes(b"\x00" * 7)
    assert main(["generate", str(model_dir), "--prompt", "w1", "--device", "cpu"]) == 1
    one_error_line(capsys.readouterr().err, "model.safetensors")


def test_convert_refuses_a_flashllm_checkpoint(model_dir, tmp_path, capsys):
    assert main(["convert", str(model_dir), str(tmp_path / "a"), "--method", "magnitude", "--device", "cpu"]) == 0
    assert main(["convert", str(tmp_path / "a"), str(tmp_path / "b"), "--method", "magnitude", "--device", "cpu"]) == 2
    one_error_line(capsys.readouterr().err, "already a flashllm checkpoint")


def test_fp32_value_beyond_float16_is_refused(tmp_path, capsys):
    directory = tiny_llama(tmp_path / "big")
    tensors = load_file(directory / "model.safetensors")
    tensors["model.layers.0.mlp.up_proj.weight"][1, 2] = 1e6
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    assert main(["convert", str(directory), str(tmp_path / "out"), "--method", "magnitude", "--device", "cpu"]) == 1
    one_error_line(capsys.readouterr().err, "model.layers.0.mlp.up_proj.weight", "float16", "--dtype bfloat16")
    assert main(["convert", str(directory), str(tmp_path / "out"), "--method", "magnitude", "--device", "cpu",
                 "--dtype", "float16"]) == 1
    one_error_line(capsys.readouterr().err, "model.layers.0.mlp.up_proj.weight", "float16's range")
    assert not (tmp_path / "out").exists()
    assert main(["convert", str(directory), str(tmp_path / "out"), "--method", "magnitude", "--device", "cpu",
                 "--dtype", "bfloat16"]) == 0


# ------------------------------------------------------------------------------------- delegated commands

@pytest.mark.parametrize("argv,module,passed", [(["demo", "--help", "--x", "1"], "flashllm.demo", ["--help", "--x", "1"]),
                                                (["bench", "kernel", "--x", "1"], "flashllm.bench.__main__",
                                                 ["kernel", "--x", "1"])])
def test_demo_and_bench_get_the_rest_of_argv(argv, module, passed, monkeypatch):
    seen = []
    fake = types.ModuleType(module)
    fake.main = lambda argv: seen.append(argv) or 3
    fake.COMMANDS = {"kernel": "x"}
    monkeypatch.setitem(sys.modules, module, fake)
    assert main(argv) == 3
    assert seen == [passed]


def test_missing_delegate_is_reported(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "flashllm.demo", None)  # makes the import fail as if the file were absent
    import importlib

    def absent(name, *args):
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    monkeypatch.setattr(importlib, "import_module", absent)
    assert main(["demo"]) == 1
    one_error_line(capsys.readouterr().err, "not available")


def test_bench_e2e_defaults_fit_the_device():
    from flashllm.bench import e2e
    a = e2e.parse_args(["--device", "cpu"])
    args = e2e.PRESETS[a.model]
    assert e2e.dense_weight_bytes(args, torch.float32) <= 4 * e2e.CPU_PARAMETERS and a.batch == [1, 8]
    assert e2e.parse_args(["--device", "cpu", "--model", "opt-30b", "--batch", "2"]).model == "opt-30b"
    assert e2e.default_model(torch.device("cpu"), torch.float16) != "opt-30b"
