"""Calibration controls: windows cut from a text file or folder, their number, length and seed, and
padding left out of the statistics; through calibration_windows, sparsify_ and `flashllm convert`."""

import contextlib
import json

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from flashllm.cli import main
from flashllm.prune import InputStats, calibration_windows, read_corpus
from flashllm.sparsify import sparsify_

WORDS = ["<unk>", "<pad>", "<eos>"] + [f"w{i}" for i in range(61)]


class WordTokenizer:
    """'w7 w3' -> [10, 6]: one id per word, as the word-level fixture tokenizer gives."""

    def __call__(self, text, return_attention_mask=True, return_tensors=None):
        ids = [WORDS.index(w) for w in text.split()]
        return {"input_ids": [ids] if return_tensors else ids}


def corpus(n_words, offset=0):
    return " ".join(f"w{(offset + i) % 61}" for i in range(n_words))


def test_windows_are_distinct_consecutive_slices_picked_by_seed():
    text = corpus(100)
    ids = torch.tensor(WordTokenizer()(text)["input_ids"])
    batches = calibration_windows(text, WordTokenizer(), samples=5, tokens=8, seed=3, batch_size=2)
    assert [b.shape for b in batches] == [(2, 8), (2, 8), (1, 8)]
    picked = torch.cat(batches)
    starts = []
    for row in picked:
        # Each window is the slice [8k, 8k + 8) of the token sequence for some k.
        k = next(k for k in range(12) if torch.equal(ids[8 * k:8 * k + 8], row))
        starts.append(k)
    assert len(set(starts)) == 5 and starts == sorted(starts)
    same = torch.cat(calibration_windows(text, WordTokenizer(), samples=5, tokens=8, seed=3))
    other = torch.cat(calibration_windows(text, WordTokenizer(), samples=5, tokens=8, seed=4))
    assert torch.equal(same, picked) and not torch.equal(other, picked)


def test_short_corpus_gives_what_it_has():
    with pytest.warns(UserWarning, match="3 windows"):
        batches = calibration_windows(corpus(30), WordTokenizer(), samples=10, tokens=8)
    assert sum(b.shape[0] for b in batches) == 3
    (single,) = calibration_windows(corpus(5), WordTokenizer(), samples=10, tokens=8)
    assert single.shape == (1, 5)
    with pytest.raises(ValueError, match="samples"):
        calibration_windows(corpus(30), WordTokenizer(), samples=0)
    with pytest.raises(ValueError, match="tokenizer"):
        calibration_windows(corpus(30), None)


def test_folder_is_read_in_path_order_and_skips_other_files(tmp_path):
    (tmp_path / "b.txt").write_text(corpus(3, 10))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.md").write_text(corpus(2, 20) + "\n")
    (tmp_path / "a.txt").write_text(corpus(2))
    (tmp_path / "model.bin").write_bytes(b"\xff\xfe")
    assert read_corpus(tmp_path) == "w0 w1\n\nw10 w11 w12\n\nw20 w21"
    (tmp_path / "a.txt").write_text(corpus(2))
    (single,) = calibration_windows(tmp_path, WordTokenizer(), samples=4, tokens=64)
    assert single.shape == (1, 7)
    with pytest.raises(ValueError, match="no such file"):
        read_corpus(tmp_path / "missing")
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ValueError, match="UTF-8"):
        read_corpus(tmp_path)


def test_padding_tokens_are_left_out_of_the_statistics():
    x = torch.randn(2, 5, 6)
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], dtype=torch.bool)
    masked, plain = InputStats(hessian=True), InputStats(hessian=True)
    masked.add(x, mask)
    plain.add(x[mask])
    assert masked.tokens == plain.tokens == 8
    torch.testing.assert_close(masked.hessian, plain.hessian)
    torch.testing.assert_close(masked.input_norm, plain.input_norm)


def tiny_llama():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                        pad_token_id=1)).eval()


def tokens_seen(monkeypatch):
    """A dict filled, as calibration runs, with the tokens each layer's statistics counted."""
    from flashllm.prune import calibration as module
    real = module.record_inputs
    counts = {}

    @contextlib.contextmanager
    def spy(layers, hessian, token_mask=None):
        with real(layers, hessian, token_mask) as stats:
            yield stats
        counts.update({name: s.tokens for name, s in stats.items()})

    monkeypatch.setattr(module, "record_inputs", spy)
    return counts


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_sparsify_calibrates_on_the_asked_windows(monkeypatch, tmp_path, method):
    (tmp_path / "text.txt").write_text(corpus(200))
    counts = tokens_seen(monkeypatch)
    seen = []
    model = tiny_llama()
    model.model.embed_tokens.register_forward_pre_hook(lambda _m, args: seen.append(args[0].clone()))
    sparsify_(model, 0.5, method, calibration=str(tmp_path / "text.txt"), tokenizer=WordTokenizer(),
              calibration_samples=6, calibration_tokens=16, seed=1, progress=False)
    assert set(counts.values()) == {6 * 16}  # every layer saw exactly 6 windows of 16 tokens
    fed = torch.cat(seen)
    assert fed.shape[1] == 16 and len({tuple(r.tolist()) for r in fed}) == 6


def test_sparsify_strings_with_window_options_are_concatenated(monkeypatch):
    counts = tokens_seen(monkeypatch)
    with pytest.warns(UserWarning, match="4 windows of 10 tokens"):
        sparsify_(tiny_llama(), 0.5, "wanda", calibration=[corpus(20), corpus(20, 5)], tokenizer=WordTokenizer(),
                  calibration_tokens=10, progress=False)
    assert set(counts.values()) == {40}  # 40 words, cut into 4 windows of 10
    with pytest.raises(ValueError, match="windows"):
        sparsify_(tiny_llama(), 0.5, "wanda", calibration=[torch.arange(5)], calibration_samples=2, progress=False)


def test_sparsify_padded_dict_samples_count_real_tokens_only(monkeypatch):
    counts = tokens_seen(monkeypatch)
    ids = torch.randint(3, 64, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[0, :3] = 0  # left padding
    ids[0, :3] = 1
    sparsify_(tiny_llama(), 0.5, "sparsegpt", calibration=[{"input_ids": ids, "attention_mask": mask}],
              progress=False)
    assert set(counts.values()) == {13}


@pytest.fixture
def model_dir(tmp_path):
    tiny_llama().save_pretrained(tmp_path / "dense")
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                            eos_token="<eos>").save_pretrained(tmp_path / "dense")
    return tmp_path / "dense"


def test_convert_with_a_calibration_folder_and_window_options(model_dir, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "one.txt").write_text(corpus(100))
    (folder / "two.txt").write_text(corpus(100, 30))
    counts = tokens_seen(monkeypatch)
    out = tmp_path / "sparse"
    assert main(["convert", str(model_dir), str(out), "--method", "sparsegpt", "--calibration", str(folder),
                 "--calibration-samples", "5", "--calibration-tokens", "12", "--seed", "2", "--device", "cpu",
                 "--report", str(tmp_path / "r.json")]) == 0
    assert set(counts.values()) == {60}
    assert json.loads((tmp_path / "r.json").read_text())["method"] == "sparsegpt"


@pytest.mark.parametrize("args, message", [
    (["--calibration-samples", "0"], "--calibration-samples"),
    (["--calibration-tokens", "1"], "--calibration-tokens"),
])
def test_convert_bad_calibration_options_are_one_line_errors(model_dir, tmp_path, capsys, args, message):
    text = tmp_path / "c.txt"
    text.write_text(corpus(50))
    assert main(["convert", str(model_dir), str(tmp_path / "o"), "--calibration", str(text), "--device", "cpu"]
                + args) == 2
    err = capsys.readouterr().err
    assert err.startswith("flashllm: error: ") and message in err and err.count("\n") == 1


def test_convert_calibration_folder_without_text_is_a_usage_error(model_dir, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["convert", str(model_dir), str(tmp_path / "o"), "--calibration", str(empty)]) == 2
    assert "no text files" in capsys.readouterr().err
