"""Sampling: the exponential race draws from softmax, top-k / top-p restrict it, seeds reproduce it."""

import pytest
import torch

from engine_models import PAD, PROMPTS, tiny_model
from flashllm.engine import Generator, Sampling, from_hf, sample

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def draws(logits, sampling, n=4000):
    torch.manual_seed(0)
    return sample(logits.expand(n, -1), sampling)


def test_greedy_is_argmax():
    logits = torch.randn(5, 50)
    assert torch.equal(sample(logits, Sampling()), logits.argmax(-1))


def test_draws_follow_the_softmax():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, -30.0]])
    counts = torch.bincount(draws(logits, Sampling(temperature=1.0)), minlength=5).float() / 4000
    torch.testing.assert_close(counts, logits.softmax(-1)[0], atol=0.03, rtol=0)
    hot = torch.bincount(draws(logits, Sampling(temperature=2.0)), minlength=5).float() / 4000
    torch.testing.assert_close(hot, (logits / 2).softmax(-1)[0], atol=0.03, rtol=0)


def test_top_k_keeps_only_the_k_best():
    logits = torch.randn(1, 64)
    best = set(logits[0].topk(5).indices.tolist())
    got = set(draws(logits, Sampling(temperature=5.0, top_k=5)).tolist())
    assert got == best  # hot enough that all five show up in 4000 draws
    assert set(draws(logits, Sampling(temperature=5.0, top_k=1)).tolist()) == {int(logits.argmax())}


def test_top_p_keeps_the_nucleus():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    got = set(draws(probs.log(), Sampling(temperature=1.0, top_p=0.8)).tolist())
    assert got == {0, 1}  # 0.5 + 0.3 reaches 0.8: token 2 is out
    got = set(draws(probs.log(), Sampling(temperature=1.0, top_p=0.81)).tolist())
    assert got == {0, 1, 2}
    assert set(draws(probs.log(), Sampling(temperature=1.0, top_p=0.1)).tolist()) == {0}


@pytest.mark.parametrize("bad", [dict(temperature=-1), dict(top_k=0), dict(top_p=0.0), dict(top_p=1.5)])
def test_bad_settings_are_refused(bad):
    with pytest.raises(ValueError):
        Sampling(**{"temperature": 1.0, **bad})


def test_engine_sampling_is_reproducible_with_a_seed():
    gen = Generator(from_hf(tiny_model("llama")), 3, 32)
    kw = dict(temperature=1.0, top_k=20, top_p=0.95, pad_token_id=PAD)
    a = gen.generate(PROMPTS, 12, seed=1, **kw).tokens
    b = gen.generate(PROMPTS, 12, seed=1, **kw).tokens
    c = gen.generate(PROMPTS, 12, seed=2, **kw).tokens
    assert torch.equal(a, b) and not torch.equal(a, c)
    greedy = gen.generate(PROMPTS, 12, pad_token_id=PAD).tokens
    assert torch.equal(gen.generate(PROMPTS, 12, temperature=0.7, top_k=1, seed=3).tokens, greedy)
