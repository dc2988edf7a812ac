import pytest
import torch
from torch import nn

from flashllm.prune import (
    calibrate_sequentially,
    magnitude_prune,
    prepare_samples,
    record_inputs,
    sparsegpt_prune,
    wanda_prune,
    zero_count,
)
from flashllm.prune.calibration import find_blocks

SHAPES = [(1, 7), (5, 64), (33, 130), (64, 257)]
SPARSITIES = [0.0, 0.5, 0.7, 0.95]


def correlated_inputs(n, cols, seed=0):
    """Tokens whose features differ in scale and are correlated, like real activations."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(cols, cols, generator=g) / cols**0.5 + torch.eye(cols)
    scale = torch.exp(torch.randn(cols, generator=g))
    return (torch.randn(n, cols, generator=g) @ mix) * scale


def zeros_per_row(w):
    return (w == 0).sum(1)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_magnitude_exact_per_row_and_drops_smallest(shape, sparsity):
    w = torch.randn(*shape)
    p = magnitude_prune(w, sparsity)
    assert torch.equal(zeros_per_row(p), torch.full((shape[0],), zero_count(sparsity, shape[1])))
    kept = p != 0
    assert torch.equal(p[kept], w[kept])
    if 0 < zero_count(sparsity, shape[1]) < shape[1]:
        dropped_max = w.abs().masked_fill(kept, 0).amax(1)
        kept_min = w.abs().masked_fill(~kept, float("inf")).amin(1)
        assert bool((dropped_max <= kept_min).all())


def test_zero_count_rounds_halves_up():
    assert zero_count(0.5, 7) == 4
    assert zero_count(0.7, 10) == 7
    assert zero_count(0.0, 10) == 0


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5])
def test_sparsity_out_of_range_raises(bad):
    w = torch.randn(4, 8)
    for prune in (lambda: magnitude_prune(w, bad), lambda: wanda_prune(w, torch.ones(8), bad),
                  lambda: sparsegpt_prune(w, torch.eye(8), bad)):
        with pytest.raises(ValueError, match="sparsity"):
            prune()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_magnitude_keeps_dtype(dtype):
    w = torch.randn(8, 32).to(dtype)
    p = magnitude_prune(w, 0.5)
    assert p.dtype == dtype and int((p == 0).sum()) == 8 * 16


def test_magnitude_counts_existing_zeros():
    w = torch.randn(4, 10)
    w[:, :3] = 0
    p = magnitude_prune(w, 0.5)
    assert torch.equal(zeros_per_row(p), torch.full((4,), 5))
    assert bool((p[:, :3] == 0).all())


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_wanda_exact_per_row_and_ranks_by_weight_times_norm(shape, sparsity):
    w = torch.randn(*shape)
    norm = torch.rand(shape[1]) * 10
    p = wanda_prune(w, norm, sparsity)
    assert torch.equal(zeros_per_row(p), torch.full((shape[0],), zero_count(sparsity, shape[1])))
    kept = p != 0
    assert torch.equal(p[kept], w[kept])
    score = w.abs() * norm
    if 0 < zero_count(sparsity, shape[1]) < shape[1]:
        assert bool((score.masked_fill(kept, 0).amax(1) <= score.masked_fill(~kept, float("inf")).amin(1)).all())


def test_wanda_with_uniform_norm_is_magnitude():
    w = torch.randn(16, 48)
    assert torch.equal(wanda_prune(w, torch.full((48,), 3.0), 0.6), magnitude_prune(w, 0.6))


def test_wanda_keeps_weights_on_loud_features():
    w = torch.randn(16, 48)
    norm = torch.ones(48)
    norm[5] = 1e4  # an outlier feature: even its smallest weights matter most
    p = wanda_prune(w, norm, 0.5)
    assert bool((p[:, 5] != 0).all())
    assert not bool((magnitude_prune(w, 0.5)[:, 5] != 0).all())


def test_wanda_rejects_wrong_norm_shape():
    with pytest.raises(ValueError, match="input_norm"):
        wanda_prune(torch.randn(4, 8), torch.ones(7), 0.5)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("block_size", [128, 16])
def test_sparsegpt_exact_per_layer(shape, sparsity, block_size):
    w = torch.randn(*shape)
    x = correlated_inputs(300, shape[1])
    p = sparsegpt_prune(w, x.T @ x, sparsity, block_size=block_size)
    assert int((p == 0).sum()) == zero_count(sparsity, shape[0] * shape[1])
    assert p.dtype == w.dtype and p.shape == w.shape


def test_sparsegpt_with_identity_hessian_is_layer_magnitude():
    # H = I: no correlations to compensate, so no updates, and w^2/[H^-1]_jj^2 ranks by |w| alone.
    w = torch.randn(24, 100)
    p = sparsegpt_prune(w, torch.eye(100), 0.6, block_size=128)
    kept = p != 0
    assert torch.allclose(p[kept], w[kept])
    assert float(w.abs()[~kept].max()) <= float(w.abs()[kept].min())


def test_sparsegpt_reconstructs_better_than_wanda_better_than_magnitude():
    torch.manual_seed(0)
    w = torch.randn(64, 96)
    x = correlated_inputs(2000, 96)
    h = x.T @ x
    norm = x.norm(dim=0)

    def err(p):
        return float(((w - p) @ x.T).norm())

    for sparsity in (0.5, 0.7):
        e_sgpt = err(sparsegpt_prune(w, h, sparsity))
        e_wanda = err(wanda_prune(w, norm, sparsity))
        e_mag = err(magnitude_prune(w, sparsity))
        assert e_sgpt < e_wanda < e_mag


def test_sparsegpt_prunes_dead_inputs_first_and_survives_rank_deficient_hessian():
    w = torch.randn(8, 40)
    x = correlated_inputs(10, 40)  # 10 tokens: H has rank 10 < 40, only dampening makes it invertible
    x[:, :4] = 0  # 4 input features never fire
    p = sparsegpt_prune(w, x.T @ x, 0.5)
    assert bool((p[:, :4] == 0).all())
    assert int((p == 0).sum()) == 160
    assert torch.isfinite(p).all()


def test_sparsegpt_half_precision_in_and_out():
    w = torch.randn(32, 64).half()
    x = correlated_inputs(200, 64)
    p = sparsegpt_prune(w, x.T @ x, 0.5)
    assert p.dtype == torch.float16
    assert int((p == 0).sum()) == 32 * 32


def test_record_inputs_matches_direct_statistics():
    lin = nn.Linear(12, 5)
    xs = [torch.randn(3, 7, 12), torch.randn(4, 12)]
    with record_inputs({"lin": lin}, hessian=True) as stats:
        for x in xs:
            lin(x)
    flat = torch.cat([x.reshape(-1, 12) for x in xs])
    s = stats["lin"]
    assert s.tokens == 25
    torch.testing.assert_close(s.input_norm, flat.norm(dim=0))
    torch.testing.assert_close(s.hessian, flat.T @ flat / 25)
    lin(torch.randn(2, 12))  # hooks are gone after the block
    assert s.tokens == 25


def test_prepare_samples_forms():
    class Tok:
        def __call__(self, text, return_tensors):
            return {"input_ids": torch.tensor([[len(text)]]), "attention_mask": torch.ones(1, 1)}

    s = prepare_samples([torch.arange(5), torch.zeros(2, 3, dtype=torch.long), "abc", {"input_ids": torch.ones(1, 2)}],
                        tokenizer=Tok())
    assert s[0][0][0].shape == (1, 5) and s[1][0][0].shape == (2, 3)
    assert s[2] == ((), s[2][1]) and int(s[2][1]["input_ids"]) == 3
    assert set(s[3][1]) == {"input_ids"}
    with pytest.raises(ValueError, match="tokenizer"):
        prepare_samples(["text"])
    with pytest.raises(ValueError, match="empty"):
        prepare_samples([])
    with pytest.raises(TypeError):
        prepare_samples([3.0])


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.up = nn.Linear(d, 2 * d)
        self.down = nn.Linear(2 * d, d)

    def forward(self, h, scale=1.0):
        return h + self.down(torch.relu(self.up(h))) * scale


class Stack(nn.Module):
    def __init__(self, d=8, n=3, chained=True):
        super().__init__()
        self.embed = nn.Embedding(20, d)
        self.blocks = nn.ModuleList(Block(d) for _ in range(n))
        self.head = nn.Linear(d, 20)
        self.chained = chained

    def forward(self, ids):
        h = self.embed(ids)
        for block in self.blocks:
            # Not chained: every block reads the embeddings (no block depends on another).
            h = block(h if self.chained else self.embed(ids), scale=0.5)
        return self.head(h)


def record(model, layers, samples):
    with record_inputs(layers, hessian=False) as stats:
        for args, kwargs in samples:
            model(*args, **kwargs)
    return stats


@pytest.mark.parametrize("chained", [True, False])
def test_calibration_sees_the_pruned_earlier_blocks(chained):
    torch.manual_seed(0)
    model = Stack(chained=chained)
    samples = prepare_samples([torch.randint(0, 20, (6,)) for _ in range(3)])
    layers = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    dense_stats = record(model, layers, samples)
    seen, events = {}, []

    def on_layer(name, stats):
        seen[name] = stats
        events.append(name)
        model.get_submodule(name).weight.data.zero_()  # stands in for pruning

    calibrate_sequentially(model, samples, layers, hessian=False, on_layer=on_layer,
                           after_block=lambda: events.append("|"))
    assert list(seen) == list(layers)  # every layer once, in model order
    if chained:
        # after_block (where sparsify_ swaps in compressed layers) follows each block, not the model.
        assert " ".join(events) == "blocks.0.up blocks.0.down | blocks.1.up blocks.1.down | " \
                                   "blocks.2.up blocks.2.down | head |"
        # Every layer must see what the model with every earlier layer pruned produces: the blocks
        # before it, and within its block the layers it reads from (`down` after `up`).
        expected = record(model, layers, samples)
        checked = list(layers)
        assert not torch.allclose(expected["head"].sq_sum, dense_stats["head"].sq_sum)
    else:
        # Blocks that do not feed each other cannot be streamed: one whole-model pass, dense inputs.
        expected = dense_stats
        checked = list(layers)
    for name in checked:
        torch.testing.assert_close(seen[name].sq_sum, expected[name].sq_sum)


def test_find_blocks_picks_the_layer_stack():
    model = Stack()
    layers = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert find_blocks(model, layers) is model.blocks
    assert find_blocks(model, {"head": model.head}) is None


def test_llama_block_layers_are_calibrated_in_call_order_groups():
    from transformers import LlamaConfig, LlamaForCausalLM

    from flashllm.prune.calibration import _capture_inputs, _layer_groups
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=2)).eval()
    block = model.model.layers[0]
    layers = {n: m for n, m in block.named_modules() if isinstance(m, nn.Linear)}
    with torch.no_grad():
        (sample,) = _capture_inputs(model, block, prepare_samples([torch.randint(32, (8,))]))
        groups, calls = _layer_groups(block, layers, sample)
    assert set(calls.values()) == {1}
    assert [sorted(g) for g in groups] == [["self_attn.k_proj", "self_attn.q_proj", "self_attn.v_proj"],
                                           ["self_attn.o_proj"], ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"]]
