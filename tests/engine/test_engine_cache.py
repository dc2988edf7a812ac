"""Static KV cache and the Generator's bookkeeping: shapes, slots, padding, buckets, errors."""

import pytest
import torch

from engine_models import PAD, PROMPTS, tiny_model
from flashllm.engine import Generator, KVCache, from_hf

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def llama():
    return from_hf(tiny_model("llama"))


def test_cache_shapes(llama):
    gen = Generator(llama, max_batch_size=4, max_seq_len=30)
    assert gen.max_seq == 32  # rounded up to a multiple of 8
    args = llama.args
    for block in llama.layers:
        assert block.attn.kv_cache.k.shape == (4, args.n_kv_heads, 32, args.head_dim)
        assert block.attn.kv_cache.v.shape == (4, args.n_kv_heads, 32, args.head_dim)
        assert block.attn.kv_cache.k.dtype == llama.dtype
    assert llama.kv_cache_nbytes == args.n_layers * 2 * 4 * args.n_kv_heads * 32 * args.head_dim * 4
    assert llama.rope_cos.shape == (32, args.head_dim)
    gen.close()
    assert llama.layers[0].attn.kv_cache is None and llama.kv_cache_nbytes == 0


def test_cache_writes_in_place_at_slots():
    cache = KVCache(3, 2, 10, 4, torch.float32)
    k, v = torch.randn(2, 2, 3, 4), torch.randn(2, 2, 3, 4)
    keys, values = cache.update(torch.tensor([4, 5, 6]), k, v)
    assert keys.shape == (2, 2, 10, 4) and keys.data_ptr() == cache.k.data_ptr()
    assert torch.equal(cache.k[:2, :, 4:7], k) and torch.equal(cache.v[:2, :, 4:7], v)
    assert cache.k[:, :, :4].abs().sum() == 0 and cache.k[2].abs().sum() == 0


def test_prefill_fills_the_prompt_slots_and_decode_one_more(llama):
    gen = Generator(llama, 3, 32)
    gen.generate(PROMPTS, 4, pad_token_id=PAD)
    cache = llama.layers[0].attn.kv_cache
    t = max(len(p) for p in PROMPTS)
    assert (cache.k[:, :, : t + 3].abs().sum(-1) > 0).all()  # prompt slots, then 3 decode steps
    assert cache.k[:, :, t + 3:].abs().sum() == 0
    st = gen.states[3]
    assert st.starts.tolist() == [t - len(p) for p in PROMPTS] and int(st.slot) == t + 3


def test_every_prompt_form_and_batch_size_gives_the_same_tokens(llama):
    gen = Generator(llama, 3, 40)
    ref = gen.generate(PROMPTS, 10, pad_token_id=PAD).tokens
    t = max(len(p) for p in PROMPTS)
    right = torch.tensor([p + [PAD] * (t - len(p)) for p in PROMPTS])
    mask = torch.tensor([[1] * len(p) + [0] * (t - len(p)) for p in PROMPTS])
    assert torch.equal(gen.generate(right, 10, attention_mask=mask, pad_token_id=PAD).tokens, ref)
    assert torch.equal(gen.generate([torch.tensor(p) for p in PROMPTS], 10).tokens, ref)
    for i, p in enumerate(PROMPTS):  # alone, each sequence continues the same way
        assert torch.equal(gen.generate([p], 10).tokens[0], ref[i])
    assert set(gen.states) == {1, 3}


def test_attention_bucket_does_not_change_tokens(llama):
    small = Generator(llama, 3, 64, kv_bucket=8).generate(PROMPTS, 20, pad_token_id=PAD).tokens
    whole = Generator(llama, 3, 64, kv_bucket=64).generate(PROMPTS, 20, pad_token_id=PAD).tokens
    assert torch.equal(small, whole)


def test_errors(llama):
    gen = Generator(llama, 2, 16)
    with pytest.raises(ValueError, match="max_batch_size"):
        gen.generate(PROMPTS, 4)
    with pytest.raises(ValueError, match="cache slots"):
        gen.generate([[5] * 10], 8)
    with pytest.raises(ValueError, match="at least one token"):
        gen.generate([[5], []], 2)
    with pytest.raises(ValueError, match="max_new_tokens"):
        gen.generate([[5]], 0)
    with pytest.raises(RuntimeError, match="before a prefill"):
        Generator(llama, 2, 16).decode_step(2)
    with pytest.raises(ValueError, match="CUDA"):
        Generator(llama, 2, 16, cuda_graph=True)


def test_a_second_generator_invalidates_the_first(llama):
    first = Generator(llama, 3, 32)
    first.generate(PROMPTS, 4)
    second = Generator(llama, 3, 32)
    with pytest.raises(RuntimeError, match="create a new Generator"):
        first.generate(PROMPTS, 4)
    first.close()  # must not free the second one's cache
    assert second.generate(PROMPTS, 4).tokens.shape == (3, 4)
    second.close()
    with pytest.raises(RuntimeError, match="closed"):
        second.generate(PROMPTS, 4)


def test_opt_cache_never_exceeds_its_position_table():
    engine = from_hf(tiny_model("opt", max_position_embeddings=20))
    assert Generator(engine, 1, 19).max_seq == 20
    with pytest.raises(ValueError, match="positions"):
        Generator(engine, 1, 21)


def test_timings_are_reported(llama):
    out = Generator(llama, 3, 32).generate(PROMPTS, 6)
    assert out.prefill_seconds > 0 and out.decode_seconds > 0 and out.decode_steps == 5
    assert out.tokens_per_second > 0 and out.ms_per_step > 0


def test_one_off_generate_function(llama):
    from flashllm.engine import generate
    ref = Generator(llama, 3, 32).generate(PROMPTS, 6, pad_token_id=PAD).tokens
    assert torch.equal(generate(llama, PROMPTS, 6, pad_token_id=PAD).tokens, ref)
    assert llama.kv_cache_nbytes == 0  # its cache is freed afterwards
