"""A flashllm directory through transformers: AutoModelForCausalLM.from_pretrained with quant_method "flashllm"."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_checkpoint import logits, sparsify, tiny_model
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import AutoModelForCausalLM

import flashllm
from flashllm import hf
from flashllm.models import CheckpointError
from flashllm.models.files import SINGLE_NAME
from flashllm.nn import SparseLinear

ROOT = Path(__file__).resolve().parents[2]


def sparse_names(model):
    return sorted(n for n, m in model.named_modules() if isinstance(m, SparseLinear))


def saved(tmp_path, kind="llama", fmt="bitmap", **kwargs):
    model = sparsify(tiny_model(kind), fmt)
    out = flashllm.save_pretrained(model, tmp_path / f"{kind}-{fmt}", **kwargs)
    return out, model


def read_config(path):
    return json.loads((Path(path) / "config.json").read_text())


@pytest.mark.parametrize("kind,fmt", [("llama", "bitmap"), ("llama", "pairmap"), ("opt", "tiled_csl"),
                                      ("opt", "sell")])
def test_transformers_loads_what_flashllm_saved(tmp_path, kind, fmt):
    out, model = saved(tmp_path, kind, fmt)
    config = read_config(out)
    assert config["quantization_config"]["quant_method"] == "flashllm"
    assert config[hf.GUARD_KEY] == hf.GUARD_FILE and not (out / hf.GUARD_FILE).exists()

    ours = flashllm.from_pretrained(out, device="cpu")
    theirs = AutoModelForCausalLM.from_pretrained(out)
    assert sparse_names(theirs) == sparse_names(ours) == sparse_names(model) != []
    assert {m.weight.format for m in theirs.modules() if isinstance(m, SparseLinear)} == {fmt}
    assert torch.equal(logits(theirs), logits(ours))
    assert torch.equal(logits(theirs), logits(model))
    assert theirs.is_quantized and theirs.config.quantization_config.quant_method == "flashllm"
    assert not hasattr(theirs.config, hf.GUARD_KEY)


def test_sharded_directory_and_a_16_bit_dtype(tmp_path):
    out, model = saved(tmp_path, "llama", "bitmap", max_shard_size=4000)
    assert not (out / SINGLE_NAME).exists()
    theirs = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16)
    layers = [m for m in theirs.modules() if isinstance(m, SparseLinear)]
    assert layers and {m.weight.dtype for m in layers} == {torch.bfloat16} and theirs.dtype == torch.bfloat16
    ours = flashllm.from_pretrained(out, device="cpu", dtype=torch.bfloat16)
    assert torch.equal(logits(theirs), logits(ours))


class _DenseWatch(TorchDispatchMode):
    """Records every floating-point tensor an op creates with the shape of one of `shapes`."""

    def __init__(self, shapes):
        super().__init__()
        self.shapes, self.seen = shapes, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if (isinstance(t, torch.Tensor) and t.device.type != "meta" and t.dtype.is_floating_point
                    and tuple(t.shape) in self.shapes):
                self.seen.append((str(func), tuple(t.shape)))
        return out


def test_no_dense_copy_of_a_sparse_layer_while_loading(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DEACTIVATE_ASYNC_LOAD", "1")  # every tensor op on this thread, where the mode sees it
    out, model = saved(tmp_path, "llama", "bitmap")
    shapes = {tuple(m.weight.shape) for m in model.modules() if isinstance(m, SparseLinear)}
    others = {tuple(p.shape) for n, p in model.named_parameters()}
    assert not shapes & others  # the check below would see the dense tensors of other layers
    with _DenseWatch(shapes) as watch:
        loaded = AutoModelForCausalLM.from_pretrained(out)
    assert sparse_names(loaded) == sparse_names(model)
    assert watch.seen == []


def test_save_pretrained_round_trip(tmp_path):
    out, model = saved(tmp_path, "llama", "tiled_csl")
    loaded = AutoModelForCausalLM.from_pretrained(out)
    again = tmp_path / "again"
    loaded.save_pretrained(again)
    config = read_config(again)
    assert config["quantization_config"]["quant_method"] == "flashllm"
    assert config[hf.GUARD_KEY] == hf.GUARD_FILE
    assert sorted(config["sparsity_config"]["layers"]) == sparse_names(model)
    stored = load_file(again / SINGLE_NAME)
    assert "model.layers.0.mlp.up_proj.weight.meta" in stored and "model.layers.0.mlp.up_proj.weight" not in stored
    for reload in (AutoModelForCausalLM.from_pretrained(again), flashllm.from_pretrained(again, device="cpu")):
        assert sparse_names(reload) == sparse_names(model)
        assert torch.equal(logits(reload), logits(model))
    # flashllm.save_pretrained of the transformers-loaded model: the same layout, loaded the same way
    third = flashllm.save_pretrained(loaded, tmp_path / "third")
    assert read_config(third)[hf.GUARD_KEY] == hf.GUARD_FILE
    assert set(load_file(third / SINGLE_NAME)) == set(stored)
    assert torch.equal(logits(AutoModelForCausalLM.from_pretrained(third)), logits(model))


def test_config_describes_the_model_as_saved(tmp_path):
    out, _ = saved(tmp_path, "llama", "bitmap")
    loaded = AutoModelForCausalLM.from_pretrained(out)
    down = loaded.model.layers[1].mlp.down_proj
    loaded.model.layers[1].mlp.down_proj = torch.nn.Linear(down.in_features, down.out_features, bias=False)
    loaded.save_pretrained(tmp_path / "edited")
    assert "model.layers.1.mlp.down_proj" not in read_config(tmp_path / "edited")["sparsity_config"]["layers"]
    reload = AutoModelForCausalLM.from_pretrained(tmp_path / "edited")
    assert isinstance(reload.model.layers[1].mlp.down_proj, torch.nn.Linear)
    assert torch.equal(logits(reload), logits(loaded))


def test_a_dense_save_has_no_quantization_config(tmp_path):
    flashllm.save_pretrained(tiny_model("llama"), tmp_path / "dense")
    config = read_config(tmp_path / "dense")
    assert "quantization_config" not in config and hf.GUARD_KEY not in config
    assert not sparse_names(AutoModelForCausalLM.from_pretrained(tmp_path / "dense"))


def test_a_directory_without_quant_method_still_loads_with_flashllm(tmp_path):
    out, model = saved(tmp_path, "opt", "bitmap")
    config = read_config(out)
    del config["quantization_config"], config[hf.GUARD_KEY]
    (out / "config.json").write_text(json.dumps(config))
    assert torch.equal(logits(flashllm.from_pretrained(out, device="cpu")), logits(model))


def _corrupt_block_ptr(out):
    tensors = load_file(out / SINGLE_NAME)
    tensors["model.layers.1.self_attn.o_proj.weight.block_ptr"][1] += 16
    save_file(tensors, out / SINGLE_NAME, metadata={"format": "pt"})


def _corrupt_meta(out):
    tensors = load_file(out / SINGLE_NAME)
    tensors["model.layers.0.mlp.up_proj.weight.meta"][2] += 64  # the rows
    save_file(tensors, out / SINGLE_NAME, metadata={"format": "pt"})


def _stray_layer(out):
    config = read_config(out)
    del config["sparsity_config"]["layers"]["model.layers.0.mlp.gate_proj"]
    (out / "config.json").write_text(json.dumps(config))


def _wrong_format_record(out):
    config = read_config(out)
    config["sparsity_config"]["layers"]["model.layers.0.self_attn.q_proj"]["format"] = "tiled_csl"
    (out / "config.json").write_text(json.dumps(config))


def _no_such_layer(out):
    config = read_config(out)
    layers = config["sparsity_config"]["layers"]
    layers["model.layers.7.mlp.up_proj"] = layers["model.layers.0.mlp.up_proj"]
    (out / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("corrupt,message", [
    (_corrupt_block_ptr, "o_proj.weight"), (_corrupt_meta, "up_proj.weight.meta"),
    (_stray_layer, "does not list"), (_wrong_format_record, "config.json says"),
    (_no_such_layer, "not a module"),
])
def test_a_corrupted_directory_raises_checkpoint_error(tmp_path, corrupt, message):
    out, _ = saved(tmp_path, "llama", "bitmap")
    corrupt(out)
    with pytest.raises(CheckpointError, match=message):
        AutoModelForCausalLM.from_pretrained(out)


def test_quant_method_flashllm_refuses_a_dense_model_to_quantize(tmp_path):
    tiny_model("llama").save_pretrained(tmp_path / "dense")
    from flashllm.models.hf_quantizer import FlashLLMConfig
    with pytest.raises(ValueError, match="flashllm"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "dense", quantization_config=FlashLLMConfig())


def _run(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          timeout=300)


def test_without_flashllm_transformers_refuses_the_directory(tmp_path):
    out, _ = saved(tmp_path, "llama", "bitmap")
    loaded = AutoModelForCausalLM.from_pretrained(out)
    loaded.save_pretrained(tmp_path / "again")
    result = _run(f"""
        import sys
        from transformers import AutoModelForCausalLM
        for path in ({str(out)!r}, {str(tmp_path / 'again')!r}):
            try:
                AutoModelForCausalLM.from_pretrained(path)
            except FileNotFoundError as e:
                assert {hf.GUARD_FILE!r} in str(e), e
            else:
                sys.exit("loaded without flashllm")
        assert "flashllm" not in sys.modules
    """)
    assert result.returncode == 0, result.stderr[-3000:]


def test_import_flashllm_registers_when_transformers_loads(tmp_path):
    out, model = saved(tmp_path, "opt", "bitmap")
    torch.save(logits(model), tmp_path / "expected.pt")
    result = _run(f"""
        import sys, torch
        import flashllm
        assert "transformers.quantizers" not in sys.modules  # importing flashllm does not import transformers
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained({str(out)!r})
        ids = torch.randint(0, 64, (2, 11), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            got = model(input_ids=ids).logits.float()
        assert torch.equal(got, torch.load({str(tmp_path / 'expected.pt')!r})), "logits differ"
        assert type(model.model.decoder.layers[0].fc1).__name__ == "SparseLinear"
    """)
    assert result.returncode == 0, result.stderr[-3000:]
