"""Pruning quality on a trained model: loss(dense) <= loss(sparsegpt) <= loss(wanda) <= loss(magnitude).

A tiny Llama is trained on the CPU (about 15 s) on a synthetic language: words of 3-5 tokens from a
fixed lexicon, the next word drawn from a fixed Markov chain. Predicting the inside of a word needs
the previous tokens (attention); predicting the next word needs the transition table (MLP).
"""

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from flashllm.sparsify import sparsify_

VOCAB, SEQ_LEN = 48, 64


def synthetic_corpus(n_seq: int, seed: int, n_words: int = 32) -> torch.Tensor:
    lexicon = torch.Generator().manual_seed(1234)  # the language is fixed; `seed` only picks sentences
    lengths = torch.randint(3, 6, (n_words,), generator=lexicon)
    words = torch.randint(1, VOCAB, (n_words, 5), generator=lexicon)
    transitions = torch.softmax(2.5 * torch.randn(n_words, n_words, generator=lexicon), dim=1)

    g = torch.Generator().manual_seed(seed)
    n_steps = SEQ_LEN // 3 + 1  # enough words to fill a sequence even if all are 3 long
    chain = [torch.randint(n_words, (n_seq,), generator=g)]
    for _ in range(n_steps - 1):
        chain.append(torch.multinomial(transitions[chain[-1]], 1, generator=g).squeeze(1))
    chain = torch.stack(chain, 1)  # [n_seq, n_steps] word ids
    tokens = words[chain].flatten(1)  # [n_seq, n_steps * 5], padded words
    valid = (torch.arange(5) < lengths[chain].unsqueeze(-1)).flatten(1)
    position = valid.cumsum(1) - 1  # where each valid token lands once padding is squeezed out
    out = torch.zeros_like(tokens)
    out.scatter_(1, torch.where(valid, position, out.shape[1] - 1), tokens * valid)
    return out[:, :SEQ_LEN]


def train_tiny_llama(train: torch.Tensor, steps: int = 300) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=SEQ_LEN,
                         tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    matrices = [p for p in model.parameters() if p.dim() == 2]
    others = [p for p in model.parameters() if p.dim() != 2]
    opt = torch.optim.AdamW([{"params": matrices, "weight_decay": 0.1}, {"params": others, "weight_decay": 0.0}])
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        batch = train[torch.randint(len(train), (32,), generator=g)]
        loss = model(batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
    return model.eval()


def add_outlier_features(model: LlamaForCausalLM, n: int = 4, scale: float = 20.0) -> None:
    """Give the model the few large-magnitude hidden features trained LLMs have (Dettmers et al. 2022).

    A model trained for seconds does not grow them, and without them Wanda's |W|*||X|| ranks almost
    like |W|. Multiplying RMSNorm gain j by c and dividing input column j of the linears it feeds by c
    leaves the model's function unchanged (checked below) but makes feature j's activations large
    and its weights small, as in real LLMs. Wanda and SparseGPT are invariant to it; magnitude is not.
    """
    g = torch.Generator().manual_seed(99)
    with torch.no_grad():
        for layer in model.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            for norm, linears in ((layer.input_layernorm, (attn.q_proj, attn.k_proj, attn.v_proj)),
                                  (layer.post_attention_layernorm, (mlp.gate_proj, mlp.up_proj))):
                c = torch.ones(norm.weight.numel())
                c[torch.randperm(c.numel(), generator=g)[:n]] = scale
                norm.weight.mul_(c)
                for linear in linears:
                    linear.weight.div_(c)


def eval_loss(model, data) -> float:
    with torch.no_grad():
        return float(model(data, labels=data).loss)


@pytest.fixture(scope="module")
def trained():
    train, held_out = synthetic_corpus(2048, seed=1), synthetic_corpus(128, seed=2)
    # Matmuls this small gain nothing from more threads, and on a busy machine OpenMP threads
    # spin-waiting on each other made this module 10x slower. One thread until its last test ends.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = train_tiny_llama(train)
        before = eval_loss(model, held_out)
        add_outlier_features(model)
        yield model, train, held_out, before
    finally:
        torch.set_num_threads(threads)


def test_model_learned_the_language_and_outliers_kept_its_function(trained):
    model, _, held_out, before = trained
    uniform = torch.log(torch.tensor(float(VOCAB)))
    assert before < 0.25 * uniform  # far below guessing: there is something to lose by pruning
    assert eval_loss(model, held_out) == pytest.approx(before, rel=1e-4)


@pytest.mark.parametrize("sparsity", [0.5, 0.7])
def test_loss_order_dense_sparsegpt_wanda_magnitude(trained, sparsity):
    model, train, held_out, _ = trained
    calibration = list(train[:32])
    loss = {"dense": eval_loss(model, held_out)}
    for method in ("magnitude", "wanda", "sparsegpt"):
        pruned = copy.deepcopy(model)
        report = sparsify_(pruned, sparsity, method, calibration=calibration, progress=False)
        assert len(report) == 14  # every linear but lm_head
        loss[method] = eval_loss(pruned, held_out)
    print(f"sparsity {sparsity}: " + ", ".join(f"{k} {v:.4f}" for k, v in loss.items()))
    assert loss["dense"] <= loss["sparsegpt"] <= loss["wanda"] <= loss["magnitude"]
