"""save_pretrained / from_pretrained: round trips, dense-with-zeros and sparse-bitmask loading, hostile files."""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (AutoConfig, AutoModelForCausalLM, BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel,
                          LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM)

import flashllm
from flashllm.models import CheckpointError, describe, from_pretrained, save_pretrained
from flashllm.models import checkpoint as ckpt
from flashllm.models.files import INDEX_NAME, SINGLE_NAME
from flashllm.nn import SparseLinear, dense_weight_of, is_linear_like

FIXTURES = Path(__file__).parent.parent / "fixtures"
KINDS = ("opt", "llama", "bert", "gpt2")
HEADS = ("lm_head", "cls.predictions.decoder")  # output projections, left dense like sparsify_'s default


def tiny_model(kind: str, seed: int = 0) -> torch.nn.Module:
    """A 2-layer model from its config with random, row-pruned, fp16-representable fp32 weights."""
    torch.manual_seed(seed)
    small = dict(vocab_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64)
    model = {
        "opt": lambda: OPTForCausalLM(OPTConfig(hidden_size=32, ffn_dim=64, word_embed_proj_dim=32, **small)),
        "llama": lambda: LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=80, num_key_value_heads=2,
                                                      **small)),
        "bert": lambda: BertForMaskedLM(BertConfig(hidden_size=32, intermediate_size=64, **small)),
        "gpt2": lambda: GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64, vocab_size=64)),
    }[kind]().eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, module in model.named_modules():
            if is_linear_like(module) and name not in HEADS:
                keep = torch.rand(module.weight.shape, generator=g) > 0.6
                module.weight.mul_(keep)
        for p in model.parameters():
            p.copy_(p.half().float())  # compressed values are 16-bit: make them exact
    return model


def sparsify(model, fmt="auto"):
    for name, module in list(model.named_modules()):
        if is_linear_like(module) and name not in HEADS:
            weight = flashllm.compress(dense_weight_of(module).contiguous(), format=fmt, dtype=torch.float16)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, SparseLinear(weight, module.bias))
    return model


def logits(model, seed=1):
    ids = torch.randint(0, 64, (2, 11), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(input_ids=ids.to(model.device)).logits.float().cpu()


def assert_close_rel(a, b, tol=1e-5):
    rel = float((a - b).abs().max() / a.abs().max())
    assert rel <= tol, rel


def sparse_layers(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, SparseLinear)}


@pytest.fixture
def saved(tmp_path):
    """A sparse tiny Llama saved with save_pretrained; returns (dir, reference logits)."""
    model = sparsify(tiny_model("llama"), "tiled_csl")
    save_pretrained(model, tmp_path / "ckpt")
    return tmp_path / "ckpt", logits(model)


# ------------------------------------------------------------------------------------------ round trips

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fmt", ["tiled_csl", "bitmap"])
def test_round_trip_logits(tmp_path, kind, fmt):
    dense = tiny_model(kind)
    want = logits(dense)
    model = sparsify(dense, fmt)
    save_pretrained(model, tmp_path)
    loaded = from_pretrained(tmp_path, device="cpu")
    assert type(loaded) is type(model)
    assert sparse_layers(loaded).keys() == sparse_layers(model).keys() != set()
    assert all(m.weight.format == fmt for m in sparse_layers(loaded).values())
    assert_close_rel(want, logits(loaded))


def test_config_records_sparsity(saved):
    directory, _ = saved
    entry = json.loads((directory / "config.json").read_text())["sparsity_config"]
    assert entry["producer"] == "flashllm" and entry["flashllm_version"] == flashllm.__version__
    assert entry["format"] == "tiled_csl"
    assert len(entry["layers"]) == 14
    layer = entry["layers"]["model.layers.1.mlp.down_proj"]
    assert layer["shape"] == [32, 80] and layer["format"] == "tiled_csl"
    assert 0.5 < layer["sparsity"] < 0.7 and 0.5 < entry["sparsity"] < 0.7
    assert AutoConfig.from_pretrained(directory, local_files_only=True).model_type == "llama"


def test_sharded_save_and_load(tmp_path):
    model = sparsify(tiny_model("opt"), "bitmap")
    save_pretrained(model, tmp_path, max_shard_size="6KB")
    index = json.loads((tmp_path / INDEX_NAME).read_text())
    files = set(index["weight_map"].values())
    assert len(files) > 3 and not (tmp_path / SINGLE_NAME).exists()
    assert files == {p.name for p in tmp_path.glob("model-*.safetensors")}
    for layer in sparse_layers(model):  # a layer's tensors are never split across shards
        assert len({f for n, f in index["weight_map"].items() if n.startswith(layer + ".weight.")}) == 1
    assert index["metadata"]["total_size"] == sum(os.path.getsize(tmp_path / f) for f in files) - sum(
        8 + int.from_bytes((tmp_path / f).read_bytes()[:8], "little") for f in files)
    assert_close_rel(logits(model), logits(from_pretrained(tmp_path, device="cpu")))
    save_pretrained(model, tmp_path)  # one shard now: the old ones must go
    assert sorted(p.name for p in tmp_path.glob("model*")) == [SINGLE_NAME]


def test_tied_embeddings_stay_tied(tmp_path):
    model = sparsify(tiny_model("opt"))
    save_pretrained(model, tmp_path)
    entry = json.loads((tmp_path / "config.json").read_text())["sparsity_config"]
    assert entry["aliases"] == {"lm_head.weight": "model.decoder.embed_tokens.weight"}
    loaded = from_pretrained(tmp_path, device="cpu")
    assert loaded.lm_head.weight is loaded.model.decoder.embed_tokens.weight


def test_sparse_layer_shared_by_two_paths(tmp_path):
    model = sparsify(tiny_model("llama"))
    model.model.layers[1].mlp.up_proj = model.model.layers[0].mlp.up_proj
    save_pretrained(model, tmp_path)
    loaded = from_pretrained(tmp_path, device="cpu")
    assert loaded.model.layers[1].mlp.up_proj is loaded.model.layers[0].mlp.up_proj
    assert_close_rel(logits(model), logits(loaded))


def test_dtype_and_format_override(saved):
    directory, want = saved
    loaded = from_pretrained(directory, device="cpu", dtype=torch.bfloat16, format="bitmap")
    assert {(m.weight.format, m.weight.dtype) for m in sparse_layers(loaded).values()} == {("bitmap", torch.bfloat16)}
    assert loaded.model.embed_tokens.weight.dtype == torch.bfloat16
    assert_close_rel(want, logits(loaded), tol=5e-2)


def test_bad_arguments(saved):
    directory, _ = saved
    with pytest.raises(ValueError, match="format 'csr'"):
        from_pretrained(directory, device="cpu", format="csr")
    with pytest.raises(ValueError, match="dtype 'int8'"):
        from_pretrained(directory, device="cpu", dtype="int8")
    with pytest.raises(ValueError, match="max_shard_size"):
        save_pretrained(sparsify(tiny_model("opt")), directory, max_shard_size="lots")


def _word_tokenizer(directory):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    words = ["<unk>", "<pad>", "<eos>"] + [f"w{i}" for i in range(61)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>")
    fast.save_pretrained(directory)
    return fast


def test_tokenizer_files_follow_the_model(tmp_path):
    source = tmp_path / "dense"
    tiny_model("llama").save_pretrained(source)
    _word_tokenizer(source)
    model = from_pretrained(source, device="cpu")
    save_pretrained(model, tmp_path / "out")
    assert (tmp_path / "out" / "tokenizer.json").read_text() == (source / "tokenizer.json").read_text()
    save_pretrained(model, tmp_path / "explicit", tokenizer=_word_tokenizer(tmp_path / "tok"))
    assert (tmp_path / "explicit" / "tokenizer_config.json").is_file()


# ------------------------------------------------------------------------------- dense with zeros

@pytest.mark.parametrize("kind", KINDS)
def test_dense_with_zeros_is_compressed_while_loading(tmp_path, kind):
    model = tiny_model(kind)
    model.save_pretrained(tmp_path)  # what llm-compressor writes: a plain dense checkpoint
    loaded = from_pretrained(tmp_path, device="cpu", sparsity_threshold=0.3)
    expected = {n for n, m in model.named_modules() if is_linear_like(m) and n not in HEADS}
    assert sparse_layers(loaded).keys() == expected
    assert all(0.5 < m.weight.sparsity < 0.7 for m in sparse_layers(loaded).values())
    assert_close_rel(logits(model), logits(loaded))
    kept_dense = from_pretrained(tmp_path, device="cpu", sparsity_threshold=None)
    assert sparse_layers(kept_dense) == {}
    assert_close_rel(logits(model), logits(kept_dense), tol=1e-6)


def test_threshold_decides_per_layer(tmp_path):
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.copy_(torch.randn(80, 32).half().float())  # no zeros
    model.save_pretrained(tmp_path)
    loaded = from_pretrained(tmp_path, device="cpu", sparsity_threshold=0.3)
    assert isinstance(loaded.model.layers[0].mlp.up_proj, torch.nn.Linear)
    assert isinstance(loaded.model.layers[0].mlp.down_proj, SparseLinear)
    assert sparse_layers(from_pretrained(tmp_path, device="cpu", sparsity_threshold=0.7)) == {}


def test_dense_checkpoint_streams_one_layer_at_a_time(tmp_path, monkeypatch):
    """When a layer is compressed, no other prunable layer has been materialized dense in the model."""
    model = tiny_model("llama")
    model.save_pretrained(tmp_path)
    seen = []
    real_compress, real_build = ckpt.compress, ckpt.build_skeleton

    def build(config, dtype):
        skeleton = real_build(config, dtype)
        seen.append(skeleton)
        assert all(p.device.type == "meta" for p in skeleton.parameters())
        return skeleton

    def compress(weight, *args, **kwargs):
        dense_linears = [n for n, m in seen[0].named_modules()
                         if isinstance(m, torch.nn.Linear) and n not in HEADS and m.weight.device.type != "meta"]
        assert dense_linears == []
        seen.append(weight.shape)
        return real_compress(weight, *args, **kwargs)

    monkeypatch.setattr(ckpt, "build_skeleton", build)
    monkeypatch.setattr(ckpt, "compress", compress)
    ckpt.from_pretrained(tmp_path, device="cpu")
    assert len(seen) == 1 + 14


# ----------------------------------------------------------------------- compressed-tensors checkpoints

@pytest.mark.parametrize("version", ["0.5.0", "0.8.1", "0.9.4"])
def test_compressed_tensors_checkpoint_loads(version):
    directory = FIXTURES / f"ct_bitmask_v{version}"
    reference = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(directory / "llama")).eval()
    reference.load_state_dict(load_file(directory / "llama_reference.safetensors"))
    loaded = from_pretrained(directory / "llama", device="cpu", dtype=torch.float32)
    assert len(sparse_layers(loaded)) == 14
    for name, layer in sparse_layers(loaded).items():
        assert torch.equal(layer.weight.to_dense(), reference.get_submodule(name).weight.half())
    assert_close_rel(logits(reference.float()), logits(loaded))


def test_compressed_tensors_ignore_list_is_honoured(tmp_path):
    directory = tmp_path / "llama"
    shutil.copytree(FIXTURES / "ct_bitmask_v0.9.4" / "llama", directory)
    config = json.loads((directory / "config.json").read_text())
    config["quantization_config"]["sparsity_config"]["ignore"] = ["lm_head", "re:.*mlp\\.down_proj$"]
    (directory / "config.json").write_text(json.dumps(config))
    loaded = from_pretrained(directory, device="cpu")
    assert len(sparse_layers(loaded)) == 12
    assert isinstance(loaded.model.layers[1].mlp.down_proj, torch.nn.Linear)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", KINDS)
def test_gpu_dense_conversion_and_round_trip(tmp_path, kind):
    """The same flow on the GPU kernels: compress on the device while loading, save, load again."""
    model = tiny_model(kind)
    model.save_pretrained(tmp_path / "dense")
    loaded = from_pretrained(tmp_path / "dense", device="cuda", dtype=torch.float16)
    layers = sparse_layers(loaded)
    assert layers and all(m.weight.device.type == "cuda" for m in layers.values())
    got = logits(loaded)
    assert_close_rel(logits(model), got, tol=2e-2)  # fp16 activations on the GPU
    save_pretrained(loaded, tmp_path / "sparse")
    again = from_pretrained(tmp_path / "sparse", device="cuda")
    assert torch.equal(logits(again), got)


# ------------------------------------------------------------------------------------ hostile files

def _rewrite(path, change):
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path)


def _edit_config(directory, change):
    config = json.loads((directory / "config.json").read_text())
    change(config)
    (directory / "config.json").write_text(json.dumps(config))


def _fails(directory, *fragments):
    with pytest.raises(CheckpointError) as info:
        from_pretrained(directory, device="cpu")
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)
    return str(info.value)


def test_truncated_shard(saved):
    directory, _ = saved
    shard = directory / SINGLE_NAME
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    _fails(directory, str(shard))


def test_header_claims_more_than_the_file(saved):
    directory, _ = saved
    shard = directory / SINGLE_NAME
    data = bytearray(shard.read_bytes())
    data[:8] = (2**40).to_bytes(8, "little")
    shard.write_bytes(bytes(data))
    _fails(directory, str(shard), "safetensors")


@pytest.mark.parametrize("key,change,message", [
    ("tile_ptr", lambda t: t.index_put_((torch.tensor([-1]),), t[-1:] + 4), "tile_ptr"),
    ("tile_ptr", lambda t: t.index_fill_(0, torch.tensor([1]), 2**40), "tile_ptr"),
    ("words", lambda t: t[:-4].clone(), "tile_ptr"),
    ("meta", lambda t: t.index_fill_(0, torch.tensor([1]), 77), "format code"),
    ("meta", lambda t: t.index_fill_(0, torch.tensor([2]), 2**33), "shape"),
])
def test_sparse_weight_out_of_range(saved, key, change, message):
    directory, _ = saved
    name = f"model.layers.1.self_attn.o_proj.weight.{key}"
    _rewrite(directory / SINGLE_NAME, lambda d: d.__setitem__(name, change(d[name])))
    text = _fails(directory, str(directory / SINGLE_NAME), "model.layers.1.self_attn.o_proj")
    assert message in text


@pytest.mark.parametrize("change,message", [
    (lambda c: c["sparsity_config"]["layers"]["model.layers.0.mlp.up_proj"].update(format="evil"), "format must be"),
    (lambda c: c["sparsity_config"]["layers"]["model.layers.0.mlp.up_proj"].update(format="bitmap"),
     "config.json says"),
    (lambda c: c["sparsity_config"]["layers"].update({"model.nope": {"format": "bitmap"}}), "does not exist"),
    (lambda c: c["sparsity_config"]["layers"].update({"model.embed_tokens": {"format": "bitmap"}}), "not a linear"),
    (lambda c: c["sparsity_config"].update(layers=["x"]), "must be an object"),
    (lambda c: c["sparsity_config"].update(aliases={"lm_head.weight": "model.x.weight"}), "alias"),
    (lambda c: c["sparsity_config"].update(aliases={"lm_head.weight": 3}), "must map names"),
    (lambda c: c["sparsity_config"].update(aliases={"model.norm.weight": "model.layers.0.mlp.up_proj.weight"}),
     "alias"),
    (lambda c: c["sparsity_config"].update(shared_layers={"model.layers.1.mlp.up_proj": "model.norm"}), "shared layer"),
])
def test_bad_sparsity_config(saved, change, message):
    directory, _ = saved
    _edit_config(directory, change)
    _fails(directory, message)


@pytest.mark.parametrize("shard_name", ["../outside.safetensors", "/etc/passwd", "sub/model.safetensors",
                                        "model.safetensors\x00.txt", 7])
def test_index_cannot_point_outside(saved, shard_name):
    directory, _ = saved
    (directory / INDEX_NAME).write_text(json.dumps({"weight_map": {"model.norm.weight": shard_name}}))
    _fails(directory, INDEX_NAME, "plain")


def test_symlinked_shard_outside_the_directory(saved, tmp_path):
    directory, _ = saved
    outside = tmp_path / "elsewhere.safetensors"
    (directory / SINGLE_NAME).rename(outside)
    (directory / SINGLE_NAME).symlink_to(outside)
    _fails(directory, "outside")


def test_index_lists_a_tensor_the_shard_lacks(saved):
    directory, _ = saved
    names = list(load_file(directory / SINGLE_NAME)) + ["model.ghost.weight"]
    (directory / INDEX_NAME).write_text(json.dumps({"weight_map": dict.fromkeys(names, SINGLE_NAME)}))
    _fails(directory, "model.ghost.weight", SINGLE_NAME)


def test_wrong_shape_missing_and_unexpected_tensors(saved):
    directory, _ = saved
    shard = directory / SINGLE_NAME
    original = shard.read_bytes()
    _rewrite(shard, lambda d: d.__setitem__("model.norm.weight", torch.ones(31)))
    _fails(directory, "model.norm.weight", "(31,)", "(32,)")
    shard.write_bytes(original)
    _rewrite(shard, lambda d: d.pop("model.norm.weight"))
    _fails(directory, "lacks", "model.norm.weight")
    shard.write_bytes(original)
    _rewrite(shard, lambda d: d.__setitem__("model.extra", torch.ones(3)))
    _fails(directory, "model.extra", "not part of the model")
    shard.write_bytes(original)
    _rewrite(shard, lambda d: d.__setitem__("model.layers.0.mlp.up_proj.weight", torch.ones(80, 32)))
    _fails(directory, "model.layers.0.mlp.up_proj.weight", "stored twice")


@pytest.mark.parametrize("section", ["quantization_config", "compression_config"])
@pytest.mark.parametrize("fmt,message", [("sparse-24-bitmask", "not supported"), ("my.module:Loader", "unknown")])
def test_unknown_compressed_tensors_format(tmp_path, section, fmt, message):
    shutil.copytree(FIXTURES / "ct_bitmask_v0.9.4" / "llama", tmp_path / "m")
    _edit_config(tmp_path / "m", lambda c: [c.pop("quantization_config"),
                                            c.update({section: {"sparsity_config": {"format": fmt}}})])
    _fails(tmp_path / "m", "config.json", message)


def test_corrupt_bitmask_in_checkpoint(tmp_path):
    shutil.copytree(FIXTURES / "ct_bitmask_v0.9.4" / "llama", tmp_path / "m")
    name = "model.layers.0.mlp.gate_proj.row_offsets"
    _rewrite(tmp_path / "m" / SINGLE_NAME, lambda d: d[name].__setitem__(5, 10**6))
    _fails(tmp_path / "m", SINGLE_NAME, "model.layers.0.mlp.gate_proj", "row_offsets[5]")


def test_remote_code_is_never_run(saved, tmp_path):
    directory, _ = saved
    marker = tmp_path / "ran"
    (directory / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    _edit_config(directory, lambda c: c.update(model_type="evil", auto_map={"AutoConfig": "evil.EvilConfig"}))
    _fails(directory, "config.json")
    assert not marker.exists()


def test_pickle_checkpoints_are_not_read(tmp_path):
    tiny_model("opt").save_pretrained(tmp_path)
    (tmp_path / SINGLE_NAME).rename(tmp_path / "pytorch_model.bin")
    _fails(tmp_path, "only safetensors")


def test_not_a_checkpoint(tmp_path):
    _fails(tmp_path, "no config.json")
    (tmp_path / "config.json").write_text("[1, 2")
    _fails(tmp_path, "config.json", "JSON")


# ------------------------------------------------------------------------------------------- describe

def test_describe_every_kind(saved, tmp_path):
    directory, _ = saved
    info = describe(directory)
    assert info["kind"] == "flashllm" and info["format"] == "tiled_csl" and len(info["layers"]) == 14
    assert all(layer["nbytes"] > 0 for layer in info["layers"])
    tiny_model("llama").save_pretrained(tmp_path / "dense")
    dense = describe(tmp_path / "dense")
    assert dense["kind"] == "dense" and len(dense["layers"]) == 15 and dense["compressible"] == 14
    bitmask = describe(FIXTURES / "ct_bitmask_v0.8.1" / "llama")
    assert bitmask["kind"] == "sparse-bitmask" and len(bitmask["layers"]) == 15
    assert {layer["format"] for layer in bitmask["layers"]} == {"sparse-bitmask"}


@pytest.mark.parametrize("change", [dict(hidden_size=-32), dict(num_hidden_layers="two"), dict(vocab_size=2**62)])
def test_absurd_config_values(saved, change):
    directory, _ = saved
    _edit_config(directory, lambda c: c.update(change))
    _fails(directory, "config.json")


# ------------------------------------------------------------------- corruption names the broken tensor

@pytest.fixture
def saved_bitmap(tmp_path):
    model = sparsify(tiny_model("llama"), "bitmap")
    save_pretrained(model, tmp_path / "ckpt")
    return tmp_path / "ckpt"


def _poke(key, index, value):
    def change(t):
        t = t.clone()
        t.view(-1)[index] = value
        return t
    return key, change


@pytest.mark.parametrize("key,change", [
    _poke("data", 0, 255),                             # a block header's strip ends
    ("data", lambda t: t[:-16].clone()),               # values cut off: the offsets now run past the end
    _poke("block_ptr", 1, 17),                         # offsets
    ("block_ptr", lambda t: torch.cat([t[:-1], t[-1:] + 16])),
    _poke("meta", 0, 9),                               # format version
    _poke("meta", 2, 96),                              # M: config.json says otherwise
    _poke("meta", 5, 1),                               # nnz
    _poke("meta", 6, 7),                               # max_block_bytes
])
def test_corruption_names_the_broken_tensor(saved_bitmap, key, change):
    name = f"model.layers.1.mlp.up_proj.weight.{key}"
    _rewrite(saved_bitmap / SINGLE_NAME, lambda d: d.__setitem__(name, change(d[name])))
    for call in (lambda: from_pretrained(saved_bitmap, device="cpu"), lambda: describe(saved_bitmap)):
        with pytest.raises(CheckpointError) as info:
            call()
        assert f"tensor {name!r}" in str(info.value), str(info.value)
    assert describe(saved_bitmap, validate=False)["kind"] == "flashllm"  # headers alone do not see it


def test_describe_validates_bitmask_layers(tmp_path):
    shutil.copytree(FIXTURES / "ct_bitmask_v0.9.4" / "llama", tmp_path / "m")
    name = "model.layers.0.mlp.gate_proj.row_offsets"
    _rewrite(tmp_path / "m" / SINGLE_NAME, lambda d: d[name].__setitem__(5, 10**6))
    with pytest.raises(CheckpointError, match="row_offsets"):
        describe(tmp_path / "m")


# ------------------------------------------------------------------------------------ dtype and range

def test_value_out_of_the_requested_range_is_an_error(tmp_path):
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[3, 5] = 1e6  # finite in fp32 and bf16, inf in fp16
        model.model.norm.weight[0] = -1e6
    model.save_pretrained(tmp_path)
    for threshold in (0.3, None):  # compressed on load, or kept dense
        with pytest.raises(CheckpointError, match=r"model\.(layers\.0\.mlp\.down_proj|norm)\.weight.*float16's range"):
            from_pretrained(tmp_path, device="cpu", dtype=torch.float16, sparsity_threshold=threshold)
    loaded = from_pretrained(tmp_path, device="cpu", dtype=torch.bfloat16)
    assert float(loaded.model.layers[0].mlp.down_proj.weight.to_dense()[3, 5]) == pytest.approx(1e6, rel=1e-2)
    auto = from_pretrained(tmp_path, device="cpu")  # fp32 stored: bf16 values where fp16 would overflow
    assert auto.model.layers[0].mlp.down_proj.weight.dtype == torch.bfloat16


def test_float32_never_rounds_a_compressed_value(tmp_path):
    model = tiny_model("llama")  # every value fp16-exact
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[0, 0] = 1 / 3  # one value no 16-bit type holds
    model.save_pretrained(tmp_path)
    loaded = from_pretrained(tmp_path, device="cpu", dtype=torch.float32)
    up = loaded.model.layers[1].mlp.up_proj
    assert isinstance(up, torch.nn.Linear) and up.weight.dtype == torch.float32 and float(up.weight[0, 0]) == float(torch.tensor(1 / 3))
    assert isinstance(loaded.model.layers[0].mlp.up_proj, SparseLinear)
    assert loaded.model.embed_tokens.weight.dtype == torch.float32
    assert_close_rel(logits(model), logits(loaded), tol=1e-6)
