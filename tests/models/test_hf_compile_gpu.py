"""GPU: a flashllm directory loaded by transformers generates the same greedy tokens eagerly, compiled
(static cache, fullgraph, mode="reduce-overhead": CUDA graphs) and through flashllm's engine."""

import pytest
import torch
from transformers import AutoModelForCausalLM, CompileConfig, LlamaConfig, LlamaForCausalLM

import flashllm
from flashllm.engine import from_hf, generate
from flashllm.nn import SparseLinear

pytestmark = pytest.mark.gpu

NEW = 24


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A 4-layer Llama, block linears magnitude-pruned to 50 % (two formats), saved by flashllm."""
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=512, intermediate_size=1536, num_hidden_layers=4, num_attention_heads=8,
                         num_key_value_heads=4, vocab_size=1024, max_position_embeddings=256, pad_token_id=0,
                         bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(config).to(torch.float16).cuda().eval()
    flashllm.sparsify_(model, sparsity={"*.mlp.*": 0.5, "*.self_attn.*": 0.7}, method="magnitude", progress=False)
    out = tmp_path_factory.mktemp("hf-gpu") / "llama-sparse"
    flashllm.save_pretrained(model, out)
    return out


def prompts(batch: int) -> torch.Tensor:
    return torch.randint(3, 1024, (batch, 16), generator=torch.Generator().manual_seed(batch))


def load(path, **kwargs):
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float16, **kwargs)
    return model.cuda().eval() if "device_map" not in kwargs else model.eval()


def greedy(model, ids: torch.Tensor, **kwargs) -> torch.Tensor:
    with torch.inference_mode():
        out = model.generate(input_ids=ids.cuda(), attention_mask=torch.ones_like(ids).cuda(), max_new_tokens=NEW,
                             do_sample=False, eos_token_id=None, pad_token_id=0, **kwargs)
    return out[:, ids.shape[1]:].cpu()


def assert_same_greedy(model, ids, expected, got, what: str) -> None:
    """Equal tokens, or rows that part where the eager model's two candidates tie (fp16 rounding picks one)."""
    for row in range(ids.shape[0]):
        differ = (expected[row] != got[row]).nonzero()
        if not len(differ):
            continue
        i = int(differ[0])
        prefix = torch.cat([ids[row], expected[row, :i]])[None].cuda()
        with torch.inference_mode():
            logits = model(input_ids=prefix).logits[0, -1].float()
        a, b = logits[expected[row, i]], logits[got[row, i]]
        spread = float(logits.max() - logits.min())
        assert abs(float(a - b)) <= 5e-3 * spread, (
            f"{what}: row {row} parts from eager at token {i} ({int(expected[row, i])} vs {int(got[row, i])}) "
            f"where the logits differ by {float(a - b):.4f} (spread {spread:.2f}): not a tie")


@pytest.mark.parametrize("batch", [1, 4])
def test_eager_compiled_and_engine_give_the_same_greedy_tokens(checkpoint, batch):
    model = load(checkpoint)
    assert sum(isinstance(m, SparseLinear) for m in model.modules()) == 4 * 7
    ids = prompts(batch)
    eager = greedy(model, ids)

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    config = CompileConfig(fullgraph=True, mode="reduce-overhead")
    compiled = [greedy(model, ids, cache_implementation="static", compile_config=config) for _ in range(3)]
    assert hasattr(model, "_compiled_call"), "generate did not compile the decode step"
    assert not torch._dynamo.utils.counters["graph_break"], dict(torch._dynamo.utils.counters["graph_break"])
    assert torch.equal(compiled[1], compiled[2])  # the replayed CUDA graphs give what the first run gave
    for run in compiled:
        assert_same_greedy(model, ids, eager, run, "compiled")

    engine = from_hf(model)
    out = generate(engine, [row.tolist() for row in ids], max_new_tokens=NEW)
    assert_same_greedy(model, ids, eager, out.tokens, "engine")


def test_static_cache_eager_matches_dynamic(checkpoint):
    model = load(checkpoint)
    ids = prompts(2)
    assert_same_greedy(model, ids, greedy(model, ids), greedy(model, ids, cache_implementation="static",
                                                               disable_compile=True), "static cache")


def test_device_map_cuda(checkpoint):
    pytest.importorskip("accelerate")
    model = load(checkpoint, device_map="cuda")
    layers = [m for m in model.modules() if isinstance(m, SparseLinear)]
    assert layers and {m.weight.device.type for m in layers} == {"cuda"}
    ids = prompts(2)
    assert_same_greedy(model, ids, greedy(load(checkpoint), ids), greedy(model, ids), "device_map")
