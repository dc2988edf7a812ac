"""The real `flashllm` entry point, run in a subprocess as a user runs it: exit status, stdout, and
stderr holding one `flashllm: error: ...` line and never a traceback. Each run starts Python and torch,
so this file runs one command per behaviour; tests/test_cli.py covers the cases in-process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import flashllm
from test_cli import CHAT_TEMPLATE, one_error_line, snapshot, tiny_llama


def flashllm_cli(*args, env=None, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flashllm.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def fails(result, code, *fragments) -> str:
    assert result.returncode == code, (result.returncode, result.stderr)
    return one_error_line(result.stderr, *fragments)


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    """A sharded dense tiny Llama with a chat template."""
    return tiny_llama(tmp_path_factory.mktemp("cli") / "dense", chat_template=CHAT_TEMPLATE, max_shard_size="20KB")


# --------------------------------------------------------------------------- the quick start, end to end

def test_convert_info_generate(dense, tmp_path):
    out = tmp_path / "sparse"
    result = flashllm_cli("convert", dense, out, "--method", "magnitude", "--sparsity", "0.6", "--device", "cpu")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert "14 layers (magnitude)" in result.stdout and f"saved {out}" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sparse"]  # nothing partial left beside it

    result = flashllm_cli("info", out)
    assert result.returncode == 0 and "flashllm checkpoint" in result.stdout and "14 linear layers" in result.stdout

    result = flashllm_cli("generate", out, "--prompt", "w1 w2", "--max-new-tokens", "4", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() and not result.stdout.startswith("w1 w2")  # the chat reply alone
    assert "tokens/s" in result.stderr and "(prompt 5 tokens)" in result.stderr


# ---------------------------------------------------------------------------------- never lose a file

def test_convert_into_its_own_input_is_refused(dense):
    before = snapshot(dense)
    fails(flashllm_cli("convert", dense, dense, "--method", "magnitude"), 2, "is the input folder")
    assert snapshot(dense) == before


def test_non_empty_output_needs_overwrite(dense, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    fails(flashllm_cli("convert", dense, out, "--method", "magnitude", "--device", "cpu"), 2, "--overwrite")
    assert snapshot(out) == {"notes.txt": b"mine"}
    # At sparsity 0 the formats' offsets and masks only add bytes to fp16: the size line says so.
    result = flashllm_cli("convert", dense, out, "--method", "magnitude", "--sparsity", "0", "--dtype", "float16",
                          "--device", "cpu", "--overwrite")
    assert result.returncode == 0, result.stderr
    assert not (out / "notes.txt").exists() and (out / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    summary = next(line for line in result.stdout.splitlines() if line.startswith("14 layers"))
    assert "x larger" in summary and "smaller" not in summary


# --------------------------------------------------------------------------- arguments checked up front

def test_missing_folder_is_the_same_message_everywhere(tmp_path):
    missing = tmp_path / "nowhere"
    for args in (["info", missing], ["convert", missing, tmp_path / "out", "--method", "magnitude"]):
        fails(flashllm_cli(*args), 2, f"folder {missing} does not exist")


def test_convert_without_method_flags(dense, tmp_path):
    fails(flashllm_cli("convert", dense, tmp_path / "out"), 2, "--method wanda (the default) needs --calibration")
    fails(flashllm_cli("convert", dense, tmp_path / "out", "--calibration", tmp_path / "no.txt"), 2,
          "--calibration", "does not exist")
    assert not (tmp_path / "out").exists()


def test_generate_arguments(dense):
    fails(flashllm_cli("generate", dense, "--prompt", "w1", "--max-new-tokens", "0"), 2, "--max-new-tokens must be >= 1")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_machine_without_it(dense):
    fails(flashllm_cli("generate", dense, "--prompt", "w1", "--device", "cuda"), 2, "--device cuda", "--device cpu")


def test_ctrl_c_is_one_line_and_130(dense, tmp_path):
    """A real SIGINT, delivered while the model loads (sitecustomize runs in the child before the command)."""
    (tmp_path / "sitecustomize.py").write_text(
        "import signal\nimport flashllm.models\n"
        "def interrupted(*args, **kwargs):\n    signal.raise_signal(signal.SIGINT)\n"
        "flashllm.models.from_pretrained = interrupted\n")
    path = os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])
    result = flashllm_cli("generate", dense, "--prompt", "w1", "--device", "cpu", env={"PYTHONPATH": path})
    assert result.returncode == 130 and result.stderr.strip().splitlines()[-1] == "flashllm: interrupted", result.stderr
    assert "Traceback" not in result.stderr


# ------------------------------------------------------------------------------------ numbers and files

def test_value_beyond_the_stored_range_names_the_tensor(tmp_path):
    directory = tiny_llama(tmp_path / "big")
    tensors = load_file(directory / "model.safetensors")
    tensors["model.layers.1.self_attn.v_proj.weight"][0, 0] = -3e5
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    fails(flashllm_cli("convert", directory, tmp_path / "out", "--method", "magnitude", "--device", "cpu"), 1,
          "model.layers.1.self_attn.v_proj.weight", "--dtype bfloat16")


def test_info_refuses_a_corrupted_checkpoint(dense, tmp_path):
    out = tmp_path / "sparse"
    model = flashllm.from_pretrained(dense, device="cpu", sparsity_threshold=None)
    flashllm.sparsify_(model, sparsity=0.7, method="magnitude", format="bitmap", progress=False)
    flashllm.save_pretrained(model, out)
    name = "model.layers.0.mlp.down_proj.weight.data"
    tensors = load_file(out / "model.safetensors")
    tensors[name][0] ^= 0xFF  # the first block's header
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    fails(flashllm_cli("info", out), 1, repr(name))


# ---------------------------------------------------------------------------------------- conventions

def test_version_and_bench_commands():
    result = flashllm_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"flashllm {flashllm.__version__}"
    result = flashllm_cli("bench", "-h")
    assert result.returncode == 0 and all(name in result.stdout for name in ("kernel", "encode", "e2e"))
    fails(flashllm_cli("bench", "foo"), 2, "invalid choice: 'foo'")


def test_python_dash_m_flashllm():
    result = subprocess.run([sys.executable, "-m", "flashllm", "--version"], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0 and result.stdout.startswith("flashllm ")
