"""The engine against transformers on the same pruned weights (CPU, fp32): greedy tokens must be equal."""

import pytest
import torch

from engine_models import PAD, PROMPTS, compressed_projections, hf_generate, left_padded, tiny_model
from flashllm.engine import Generator, from_hf

pytestmark = pytest.mark.usefixtures("one_torch_thread")
KINDS = ["opt", "opt-post-ln", "llama", "qwen2", "mistral"]


@pytest.mark.parametrize("kind", KINDS)
def test_greedy_tokens_equal_hugging_face(kind):
    hf = tiny_model(kind)
    expected = hf_generate(hf, max_new_tokens=16)
    engine = from_hf(hf)
    assert compressed_projections(engine) == 2 * (7 if engine.args.gated_ffn else 6)
    out = Generator(engine, max_batch_size=3, max_seq_len=32, kv_bucket=8).generate(PROMPTS, 16, pad_token_id=PAD)
    assert out.tokens.shape == (3, 16) and out.decode_steps == 15
    assert torch.equal(out.tokens, expected)
    assert out.tokens.unique().numel() >= 4  # a collapsed model would make this test weak


@pytest.mark.parametrize("kind", ["opt", "llama"])
def test_prefill_logits_match_hugging_face(kind):
    hf = tiny_model(kind)
    ids, mask = left_padded()
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask).logits[:, -1]
    gen = Generator(from_hf(hf), 3, 16)
    st = gen._state(3)
    slots = torch.arange(ids.shape[1])
    starts = (1 - mask).sum(1)
    with torch.inference_mode():
        st.starts.copy_(starts)
        logits = gen.model(ids, slots, st.starts, 16)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)


def test_stop_tokens_behave_like_hugging_face_eos():
    hf = tiny_model("llama")
    free = hf_generate(hf, max_new_tokens=12)
    first = next(i for i in range(2, 12) if free[0, i] not in free[0, :i])
    stop = int(free[0, first])  # sequence 0 stops at step `first` (others may too, or never)
    expected = hf_generate(hf, max_new_tokens=12, eos_token_id=stop)
    out = Generator(from_hf(hf), 3, 32).generate(PROMPTS, 12, stop_tokens=[stop], pad_token_id=PAD)
    n = expected.shape[1]
    assert torch.equal(out.tokens[:, :n], expected)
    # Past transformers' early end every finished sequence keeps emitting pad.
    assert (out.tokens[:, n:] == PAD).all()
    assert out.sequences()[0] == free[0, :first + 1].tolist()


def test_generation_ends_once_every_sequence_stopped():
    hf = tiny_model("opt")
    free = hf_generate(hf, max_new_tokens=6)
    stops = {int(row[1]) for row in free}  # every sequence stops by step 1
    gen = Generator(from_hf(hf), 3, 64, stop_check_every=4)
    out = gen.generate(PROMPTS, 40, stop_tokens=stops, pad_token_id=PAD)
    assert out.tokens.shape[1] == 4  # the first check, after 4 tokens, sees everyone done
    assert all(len(s) <= 2 for s in out.sequences())


def test_sliding_window_is_exercised():
    """Mistral's window (4) is shorter than the text: dropping it from the engine changes the tokens."""
    hf = tiny_model("mistral")
    engine = from_hf(hf)
    windowed = Generator(engine, 3, 32).generate(PROMPTS, 16, pad_token_id=PAD).tokens
    for block in engine.layers:
        block.attn.window = None
    engine.args.layer_windows = (None,) * engine.args.n_layers
    full = Generator(engine, 3, 32).generate(PROMPTS, 16, pad_token_id=PAD).tokens
    assert torch.equal(windowed, hf_generate(hf, max_new_tokens=16))
    assert not torch.equal(windowed, full)


def test_dense_model_runs_unchanged():
    """No SparseLinear anywhere: the same code path with nn.Linear."""
    hf = tiny_model("qwen2", sparsity=0)
    out = Generator(from_hf(hf), 3, 32).generate(PROMPTS, 16, pad_token_id=PAD)
    assert torch.equal(out.tokens, hf_generate(hf, max_new_tokens=16))


@pytest.mark.parametrize("kind", ["opt", "llama"])
def test_attention_output_layout_does_not_matter(kind, monkeypatch):
    """CUDA's fused SDPA kernels return [B, H, T, D] stored as [B, T, H, D]; imitate that on the CPU."""
    import torch.nn.functional as F
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention",
                        lambda *a, **k: sdpa(*a, **k).transpose(1, 2).contiguous().transpose(1, 2))
    hf = tiny_model(kind)
    out = Generator(from_hf(hf), 3, 32).generate(PROMPTS, 8, pad_token_id=PAD)
    monkeypatch.undo()
    assert torch.equal(out.tokens, hf_generate(hf, max_new_tokens=8))
