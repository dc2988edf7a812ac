import copy
import json

import pytest
import torch
from torch import nn
from transformers import (BertConfig, BertModel, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM,
                          OPTConfig, OPTForCausalLM)

from flashllm.nn import SparseLinear, is_conv1d
from flashllm.prune import magnitude_prune, zero_count
from flashllm.sparsify import sparsify_

VOCAB = 96


def build(arch: str) -> nn.Module:
    """A tiny random-weight model of each family (fp32, eval mode)."""
    torch.manual_seed(0)
    if arch == "llama":
        cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
        return LlamaForCausalLM(cfg).eval()
    if arch == "opt":
        cfg = OPTConfig(vocab_size=VOCAB, hidden_size=64, ffn_dim=160, num_hidden_layers=2, num_attention_heads=4,
                        max_position_embeddings=64, word_embed_proj_dim=64)
        return OPTForCausalLM(cfg).eval()
    if arch == "bert":
        cfg = BertConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=64)
        return BertModel(cfg).eval()
    cfg = GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=64,
                     bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg).eval()


def calibration(n=4, length=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (length,), generator=g) for _ in range(n)]


def output(model, ids):
    with torch.no_grad():
        out = model(ids)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def copy_stored_weights(sparse_model, dense_model):
    """Give dense_model exactly the weights the SparseLinears store (the dense model 'with the same zeros')."""
    for name, module in sparse_model.named_modules():
        if isinstance(module, SparseLinear):
            target = dense_model.get_submodule(name)
            w = module.weight.to_dense().float()
            target.weight.data = w.t().contiguous() if is_conv1d(target) else w


def relative_error(a, b):
    return float((a - b).abs().max() / b.abs().max())


def count_linears(model):
    return sum(isinstance(m, nn.Linear) or is_conv1d(m) for m in model.modules())


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("arch", ["opt", "llama", "bert", "gpt2"])
def test_outputs_equal_dense_model_with_same_zeros(arch, method):
    model = build(arch)
    original = copy.deepcopy(model)
    n_linear = count_linears(model)
    report = sparsify_(model, 0.5, method, calibration=calibration(), progress=False)

    has_head = arch != "bert"  # lm_head is excluded by default (and tied to the embeddings in OPT/GPT-2)
    assert len(report) == n_linear - has_head
    assert sum(isinstance(m, SparseLinear) for m in model.modules()) == len(report)
    for row in report:
        dense = model.get_submodule(row.name).weight.to_dense()
        out_f, in_f = row.shape
        if method == "sparsegpt":
            assert int((dense == 0).sum()) == zero_count(0.5, out_f * in_f)
        else:
            assert torch.equal((dense == 0).sum(1), torch.full((out_f,), zero_count(0.5, in_f)))
        assert row.sparsity == pytest.approx(float((dense == 0).float().mean()))

    reference = copy.deepcopy(original)
    copy_stored_weights(model, reference)
    ids = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(5))
    got, want = output(model, ids), output(reference, ids)
    assert relative_error(got, want) <= 1e-5
    assert relative_error(output(original, ids), want) > 1e-3  # and pruning did change the model


def test_method_none_keeps_existing_zeros():
    model = build("llama")
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.weight.data = magnitude_prune(m.weight.data, 0.6).half().float()  # fp16-exact values
    ids = torch.randint(0, VOCAB, (2, 16))
    before = output(model, ids)
    report = sparsify_(model, method=None, progress=False)
    for row in report:
        assert row.sparsity == pytest.approx(zero_count(0.6, row.shape[1]) / row.shape[1])
    assert relative_error(output(model, ids), before) <= 1e-5


@pytest.mark.parametrize("max_tokens, fmt", [(None, "pairmap"), (8, "sell"), (64, "pairmap")])
def test_max_tokens_steers_the_auto_format(max_tokens, fmt):
    # at 90 % "auto" takes sliced ELL only for a model that multiplies at most 16 tokens a call
    model = build("llama")
    report = sparsify_(model, 0.9, "magnitude", max_tokens=max_tokens, progress=False)
    assert {row.format for row in report} == {fmt}


def test_sparsity_mapping_include_and_exclude():
    model = build("llama")
    sparsify_(model, {"*": 0.5, "*.mlp.*": 0.75}, "magnitude", exclude=("lm_head", "*.v_proj"), progress=False)
    layer = model.model.layers[0]
    assert isinstance(layer.self_attn.v_proj, nn.Linear) and isinstance(model.lm_head, nn.Linear)
    assert layer.self_attn.q_proj.weight.sparsity == pytest.approx(0.5)
    assert layer.mlp.down_proj.weight.sparsity == pytest.approx(0.75)

    model = build("llama")
    report = sparsify_(model, {"*.q_proj": 0.3}, "magnitude", progress=False)
    assert [r.name for r in report] == ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"]

    model = build("llama")
    report = sparsify_(model, 0.5, "magnitude", include=["*.up_proj", "*.gate_proj"], progress=False)
    assert len(report) == 4 and isinstance(model.model.layers[1].mlp.down_proj, nn.Linear)


def test_tied_lm_head_is_left_dense_with_a_warning():
    model = build("opt")
    assert model.lm_head.weight is model.model.decoder.embed_tokens.weight
    with pytest.warns(UserWarning, match="lm_head"):
        report = sparsify_(model, 0.5, "magnitude", exclude=(), progress=False)
    assert isinstance(model.lm_head, nn.Linear)
    assert model.lm_head.weight is model.model.decoder.embed_tokens.weight
    assert [name for name, _ in report.skipped] == ["lm_head"]
    assert "embed_tokens" in report.skipped[0][1]


def test_module_registered_under_two_names_is_swapped_once():
    shared = nn.Linear(16, 16)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    ids = torch.randn(3, 16)
    report = sparsify_(model, 0.5, "magnitude", progress=False)
    assert len(report) == 1
    assert isinstance(model[0], SparseLinear) and model[0] is model[2]
    assert model(ids).shape == (3, 16)


def test_calibration_from_strings_and_dicts(tmp_path):
    from transformers import BertTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(VOCAB - 5)]
    (tmp_path / "vocab.txt").write_text("\n".join(words))
    tokenizer = BertTokenizer(vocab_file=str(tmp_path / "vocab.txt"))
    texts = [" ".join(f"w{(i * 7 + j) % 80}" for j in range(10)) for i in range(4)]

    model = build("bert")
    by_text = sparsify_(model, 0.5, "wanda", calibration=texts, tokenizer=tokenizer, progress=False)
    model2 = build("bert")
    encoded = [dict(tokenizer(t, return_tensors="pt")) for t in texts]
    by_dict = sparsify_(model2, 0.5, "wanda", calibration=encoded, progress=False)
    for a, b in zip(by_text, by_dict):
        assert torch.equal(model.get_submodule(a.name).weight.to_dense(),
                           model2.get_submodule(b.name).weight.to_dense())


def test_calibrated_methods_restore_training_mode_and_cache_flag():
    model = build("llama").train()
    assert model.config.use_cache
    sparsify_(model, 0.5, "sparsegpt", calibration=calibration(), progress=False)
    assert model.training and model.config.use_cache


@pytest.mark.parametrize("kwargs, message", [
    ({"method": "random"}, "method"),
    ({"sparsity": 1.0, "method": "magnitude"}, "sparsity"),
    ({"sparsity": -0.1, "method": "magnitude"}, "sparsity"),
    ({"sparsity": {"*": 1.2}, "method": "magnitude"}, "sparsity"),
    ({"method": "wanda"}, "calibration"),
    ({"method": "sparsegpt"}, "calibration"),
    ({"method": "wanda", "calibration": ["some text"]}, "tokenizer"),
])
def test_bad_arguments_raise_value_error(kwargs, message):
    model = build("llama")
    with pytest.raises(ValueError, match=message):
        sparsify_(model, **{"progress": False, **kwargs})
    assert not any(isinstance(m, SparseLinear) for m in model.modules())


def test_report_table_dict_and_progress_bar(capsys):
    model = build("llama")
    report = sparsify_(model, 0.5, "magnitude", progress=True)
    assert "sparsify (magnitude)" in capsys.readouterr().err
    text = str(report)
    assert all(row.name in text for row in report) and "smaller" in text
    d = json.loads(json.dumps(report.to_dict()))
    assert len(d["layers"]) == len(report) == 14
    assert report.bytes_after < report.bytes_before / 2  # fp32 -> fp16 and half the values gone
    assert all(row.seconds >= 0 and row.bytes_after > 0 for row in report)


@pytest.mark.gpu  # skipped without CUDA by tests/conftest.py
@pytest.mark.parametrize("arch", ["llama", "opt"])
def test_sparsify_on_gpu_matches_dense_with_same_zeros(arch):
    model = build(arch).half().cuda()
    original = copy.deepcopy(model)
    calib = [t.cuda() for t in calibration()]
    sparsify_(model, 0.5, "sparsegpt", calibration=calib, progress=False)
    reference = copy.deepcopy(original)
    copy_stored_weights(model, reference)
    reference.half()
    ids = torch.randint(0, VOCAB, (2, 16), device="cuda")
    assert relative_error(output(model, ids).float(), output(reference, ids).float()) <= 1e-2
