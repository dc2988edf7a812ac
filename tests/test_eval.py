"""flashllm.eval.perplexity and `flashllm eval`, against perplexities computed by hand."""

import json
import math

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from flashllm.cli import main
from flashllm.eval import perplexity, windows

WORDS = ["<unk>", "<pad>", "<eos>"] + [f"w{i}" for i in range(61)]


class Bigram(nn.Module):
    """logits[t] = table[token t]: p(next | window) depends on the previous token only."""

    def __init__(self, vocab=5, seed=0):
        super().__init__()
        self.table = nn.Parameter(torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(seed)))

    def forward(self, ids):
        return self.table[ids]


def bigram_nll(table, prev, cur):
    return -float(torch.log_softmax(table[prev], dim=0)[cur])


def test_overlapping_windows_score_every_token_but_the_first_exactly_once():
    for n, window, stride in [(10, 4, 2), (9, 3, 1), (5, 8, None), (2, 2, None), (17, 5, 3), (17, 5, 4)]:
        spans = windows(n, window, stride)
        scored = [p for _s, e, first in spans for p in range(first, e)]
        assert scored == list(range(1, n)), (n, window, stride)
        assert all(e - s <= window and s < first for s, e, first in spans)


def test_non_overlapping_windows_leave_each_windows_first_token_as_context():
    # [0,4) scores 1..3, [4,8) scores 5..7 (token 4 only starts the window), [8,10) scores 9.
    assert windows(10, 4) == [(0, 4, 1), (4, 8, 5), (8, 10, 9)]
    assert windows(10, 4, 2) == [(0, 4, 1), (2, 6, 4), (4, 8, 6), (6, 10, 8)]


def test_bad_window_or_stride_raise():
    for window, stride in [(1, None), (4, 0), (4, 5)]:
        with pytest.raises(ValueError):
            windows(10, window, stride)


def test_perplexity_by_hand_on_a_bigram_model():
    model = Bigram()
    ids = torch.tensor([0, 3, 1, 4, 2, 2, 0, 1, 3, 4])
    t = model.table.detach()
    # Non-overlapping windows of 4: positions 4 and 8 begin a window and are not predicted.
    scored = [1, 2, 3, 5, 6, 7, 9]
    expected = math.exp(sum(bigram_nll(t, ids[p - 1], ids[p]) for p in scored) / len(scored))
    for batch_size in (1, 2, 8):
        result = perplexity(model, ids=ids, window=4, batch_size=batch_size, progress=False)
        assert result.tokens == 7 and result.windows == 3
        assert result.perplexity == pytest.approx(expected, rel=1e-6)
        assert float(result) == result.perplexity
    # A stride of 1 scores every token after the first (a bigram needs one token of context).
    every = math.exp(sum(bigram_nll(t, ids[p - 1], ids[p]) for p in range(1, 10)) / 9)
    assert perplexity(model, ids=ids, window=4, stride=1, progress=False).perplexity == pytest.approx(every, rel=1e-6)
    assert perplexity(model, ids=ids, window=4, max_windows=1, progress=False).tokens == 3


def test_perplexity_of_one_window_is_exp_of_the_transformers_loss():
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2)).eval()
    ids = torch.randint(50, (40,))
    with torch.no_grad():
        losses = [model(ids[s:s + 20].unsqueeze(0), labels=ids[s:s + 20].unsqueeze(0)).loss for s in (0, 20)]
    expected = math.exp(float(sum(losses)) / 2)  # both windows score 19 tokens
    assert perplexity(model, ids=ids, window=20, batch_size=2, progress=False).perplexity == pytest.approx(expected, rel=1e-5)


def test_perplexity_needs_text_and_tokenizer_or_ids():
    with pytest.raises(ValueError, match="tokenizer"):
        perplexity(Bigram(), text="w1 w2")
    with pytest.raises(ValueError, match="at least 2"):
        perplexity(Bigram(), ids=torch.tensor([1]), progress=False)


@pytest.fixture
def model_dir(tmp_path):
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


def hand_perplexity(model_dir, text, window):
    """log-softmax and gather over consecutive windows, with transformers alone."""
    model = LlamaForCausalLM.from_pretrained(model_dir).eval()
    ids = [WORDS.index(w) for w in text.split()]
    nll, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids), window):
            chunk = torch.tensor(ids[start:start + window])
            if chunk.numel() < 2:
                continue
            logp = torch.log_softmax(model(chunk.unsqueeze(0)).logits[0].float(), dim=-1)
            nll -= float(logp[:-1].gather(1, chunk[1:, None]).sum())
            count += chunk.numel() - 1
    return math.exp(nll / count), count


def test_eval_command_on_a_dense_folder(model_dir, tmp_path, capsys):
    text = " ".join(f"w{(i * 5) % 61}" for i in range(45))
    data = tmp_path / "data.txt"
    data.write_text(text + "\n")
    assert main(["eval", str(model_dir), "--data", str(data), "--window", "16", "--device", "cpu", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    expected, count = hand_perplexity(model_dir, text, 16)
    assert result["tokens"] == count == 15 + 15 + 12
    assert result["perplexity"] == pytest.approx(expected, rel=1e-4)

    # A folder of text files is read in name order, joined by a blank line (no token for the word-level tokenizer).
    folder = tmp_path / "corpus"
    folder.mkdir()
    words = text.split()
    (folder / "a.txt").write_text(" ".join(words[:20]))
    (folder / "b.txt").write_text(" ".join(words[20:]))
    assert main(["eval", str(model_dir), "--data", str(folder), "--window", "16", "--device", "cpu", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["perplexity"] == pytest.approx(expected, rel=1e-4)


def test_eval_command_on_a_flashllm_checkpoint(model_dir, tmp_path, capsys):
    from flashllm.models import from_pretrained
    out = tmp_path / "sparse"
    assert main(["convert", str(model_dir), str(out), "--method", "magnitude", "--device", "cpu"]) == 0
    capsys.readouterr()
    text = " ".join(f"w{(i * 3) % 61}" for i in range(33))
    data = tmp_path / "data.txt"
    data.write_text(text)
    assert main(["eval", str(out), "--data", str(data), "--window", "8", "--stride", "4", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    model = from_pretrained(out, device="cpu")
    ids = torch.tensor([WORDS.index(w) for w in text.split()])
    expected = perplexity(model, ids=ids, window=8, stride=4, progress=False)
    assert f"perplexity {expected.perplexity:.4f}" in printed
    assert expected.tokens == 32


@pytest.mark.parametrize("args, message", [
    (["--window", "1"], "--window"),
    (["--stride", "0"], "--stride"),
    (["--stride", "600"], "--stride"),
    (["--batch-size", "0"], "--batch-size"),
    (["--max-windows", "0"], "--max-windows"),
])
def test_eval_bad_arguments_are_one_line_errors(model_dir, tmp_path, capsys, args, message):
    data = tmp_path / "data.txt"
    data.write_text("w1 w2 w3")
    assert main(["eval", str(model_dir), "--data", str(data), "--device", "cpu"] + args) == 2
    err = capsys.readouterr().err
    assert err.startswith("flashllm: error: ") and message in err and err.count("\n") == 1


def test_eval_missing_data_is_a_usage_error(model_dir, tmp_path, capsys):
    assert main(["eval", str(model_dir), "--data", str(tmp_path / "nope.txt")]) == 2
    assert "--data" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["eval", str(model_dir), "--data", str(empty)]) == 2
    assert "no text files" in capsys.readouterr().err
