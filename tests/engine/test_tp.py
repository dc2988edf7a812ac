"""Tensor parallelism on the CPU: two gloo ranks (torch.multiprocessing) against one process.

One spawn runs every scenario (process start-up and imports dominate); each rank saves what it saw
and the tests below check it: G=2 greedy tokens equal G=1's, and every shard is exactly its slice
of the full (pruned) weight, compressed on its own. The models run fused (q/k/v, gate/up) where the
rank's slices stack; the slices are compared unfused.
"""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from engine_models import PAD, PROMPTS, tiny_model
from flashllm.engine import Generator, from_hf, random_model
from flashllm.engine.fuse import unfuse_block
from flashllm.engine.shard import COLUMN, ROW, shard_model, shard_slice
from flashllm.nn import SparseLinear

WORLD = 2
NEW = 10


def engine_tokens(model, **kwargs):
    return Generator(model, len(PROMPTS), 32).generate(PROMPTS, NEW, pad_token_id=PAD, **kwargs).tokens


def dense_weight(linear):
    return linear.weight.to_dense() if isinstance(linear, SparseLinear) else linear.weight.detach()


def block_linears(model):
    for i, block in enumerate(model.layers):
        for name in COLUMN + ROW:
            sub, child = name.split(".")
            linear = getattr(getattr(block, sub), child)
            if linear is not None:  # OPT has no gate_proj
                yield f"layers.{i}.{name}", name, linear


def fused_groups(model) -> int:
    return sum(m is not None for block in model.layers for m in (block.attn.qkv_proj, block.ffn.gate_up_proj))


def shard_report(full, shard, rank):
    """name -> (is SparseLinear, shard equals its slice of the full weight, bias as expected); unfuses both."""
    for block in (*full.layers, *shard.layers):
        unfuse_block(block)
    out = {}
    shards = {n: m for n, _, m in block_linears(shard)}
    for key, name, linear in block_linears(full):
        dim, cut = shard_slice(full.args, name, rank, WORLD)
        w = dense_weight(linear)
        expected = (w[cut] if dim == 0 else w[:, cut]).to(torch.float16)
        got = shards[key]
        same = torch.equal(dense_weight(got).to(torch.float16), expected)
        if linear.bias is None:
            bias_ok = got.bias is None
        elif dim == 0:
            bias_ok = torch.equal(got.bias, linear.bias[cut])
        else:
            bias_ok = torch.equal(got.bias, linear.bias) if rank == 0 else got.bias is None  # added once
        out[key] = (isinstance(got, SparseLinear), same, bias_ok)
    return out


def fp16_valued_dense(kind):
    """Dense weights with 60% zeros in the blocks, rounded to fp16 values so per-rank compression is lossless."""
    hf = tiny_model(kind, sparsity=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if p.dim() == 2 and ".layers." in name:
                p.mul_(torch.rand(p.shape, generator=g) >= 0.6)
            p.copy_(p.half().float())
    return hf


def worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    result, ok = {}, False
    try:
        for kind in ("opt", "llama"):
            for path, hf in (("sparse", tiny_model(kind)), ("dense", fp16_valued_dense(kind))):
                full = from_hf(hf)
                shard = shard_model(from_hf(hf), rank, WORLD)
                result[kind, path] = dict(g1=engine_tokens(full), g2=engine_tokens(shard),
                                          sampled=engine_tokens(shard, temperature=1.0, seed=rank),
                                          fused=fused_groups(shard), shards=shard_report(full, shard, rank))
        for preset in ("opt-tiny", "llama-tiny"):
            build = dict(sparsity=0.5, device="cpu", dtype=torch.float32, std=0.1, n_layers=2)
            full, _ = random_model(preset, tp_world=1, **build)
            shard, _ = random_model(preset, tp_rank=rank, tp_world=WORLD, **build)
            result[preset, "random"] = dict(g1=engine_tokens(full), g2=engine_tokens(shard),
                                            fused=fused_groups(shard), shards=shard_report(full, shard, rank))
        ok = True
    finally:
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.destroy_process_group()
        # leave without C++ static teardown, which after gloo sometimes aborts (see ranks.finish_worker)
        os._exit(0 if ok else 1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("tp")
    mp.spawn(worker, args=(free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


CASES = [("opt", "sparse"), ("opt", "dense"), ("llama", "sparse"), ("llama", "dense"),
         ("opt-tiny", "random"), ("llama-tiny", "random")]


@pytest.mark.parametrize("case", CASES, ids="-".join)
def test_two_ranks_give_the_greedy_tokens_of_one(ranks, case):
    for rank in ranks:
        assert rank[case]["g2"].shape[1] == NEW >= 8
        assert torch.equal(rank[case]["g2"], rank[case]["g1"])


@pytest.mark.parametrize("case", CASES, ids="-".join)
def test_each_shard_is_its_slice_compressed_on_its_own(ranks, case):
    for rank in ranks:
        shards = rank[case]["shards"]
        assert len(shards) == 2 * (6 if case[0].startswith("opt") else 7)
        for name, (sparse, same, bias_ok) in shards.items():
            assert sparse, f"{name} is not a SparseLinear"  # dense zeros-holding slices compressed per rank
            assert same, f"{name} differs from its slice of the full weight"
            assert bias_ok, f"{name}: bias not split as expected"


# Per rank, the tiny transformers models' q/k/v slices are 32 rows (cat_rows needs 64) and stay apart;
# the presets' slices are whole 64-row blocks. Llama's FFN slices (64 rows) always fuse, OPT has no gate.
FUSED = {("opt", "sparse"): 0, ("opt", "dense"): 0, ("llama", "sparse"): 2, ("llama", "dense"): 2,
         ("opt-tiny", "random"): 2, ("llama-tiny", "random"): 4}


@pytest.mark.parametrize("case", CASES, ids="-".join)
def test_each_rank_fuses_its_own_slices(ranks, case):
    for rank in ranks:
        assert rank[case]["fused"] == FUSED[case]


def test_sampled_tokens_agree_across_ranks(ranks):
    """Each rank seeds its own generator differently; the first rank's draw is broadcast."""
    for case in CASES[:4]:
        assert torch.equal(ranks[0][case]["sampled"], ranks[1][case]["sampled"])


def test_world_one_is_the_plain_engine():
    hf = tiny_model("opt")
    model = from_hf(hf)
    assert shard_model(model, 0, 1) is model and model.tp is None


def test_heads_must_divide():
    hf = tiny_model("llama")  # 4 heads, 2 KV heads
    with pytest.raises(ValueError, match="n_kv_heads 2"):
        shard_model(from_hf(hf), 0, 4)


# ------------------------------------------------------------------ `flashllm generate --tp 2` via torchrun

def saved_model(tmp_path, kind, hf):
    """`hf` saved with a word-level tokenizer, as `flashllm generate` expects."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from flashllm.models import save_pretrained
    words = ["<unk>", "<pad>", "<eos>"] + [f"w{i}" for i in range(hf.config.vocab_size - 3)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>")
    out = tmp_path / kind
    save_pretrained(hf, out, tokenizer=tokenizer)
    return out


def test_generate_command_with_tp_2_gives_the_text_of_tp_1(tmp_path):
    """`flashllm generate --tp 2` re-launches itself through torchrun (2 gloo ranks on the CPU); rank 0
    alone prints, and greedily continues the prompt exactly as one process does."""
    import subprocess
    import sys

    path = saved_model(tmp_path, "opt", tiny_model("opt"))  # a compressed flashllm checkpoint
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1")
    texts = []
    for tp in (1, 2):
        cmd = [sys.executable, "-m", "flashllm.cli", "generate", str(path), "--prompt", "w1 w2 w3",
               "--max-new-tokens", "8", "--device", "cpu", "--tp", str(tp)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        texts.append(done.stdout.strip().splitlines())
    assert len(texts[0]) == 1 and texts[0][0].startswith("w1 w2 w3") and len(texts[0][0].split()) > 3
    assert texts[1] == texts[0]  # one line: rank 1 printed nothing


# ------------------------------------------------------------------ rank-local checkpoint loading

def engine_state(model):
    """Every tensor of an engine model, SparseLinears as (dense values, format), by name."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, SparseLinear):
            out[name + ".weight"] = (module.weight.to_dense(), module.weight.format, module.weight.dtype)
            out[name + ".bias"] = module.bias
        elif not list(module.children()):
            for pname, p in module.named_parameters(recurse=False):
                out[f"{name}.{pname}"] = p
            if isinstance(module, torch.nn.Linear) and module.bias is None:
                out[name + ".bias"] = None
    return out


@pytest.mark.parametrize("kind,stored", [("opt", "flashllm"), ("llama", "flashllm"), ("opt", "dense-zeros"),
                                         ("llama", "dense-zeros"), ("llama", "dense")])
def test_load_sharded_reads_slices_and_equals_load_then_shard(tmp_path, monkeypatch, kind, stored):
    from flashllm.engine.tp import load_dense_then_shard, load_sharded
    from flashllm.models import checkpoint as ck

    if stored == "flashllm":
        path = saved_model(tmp_path, kind, tiny_model(kind))  # compressed layers
    else:
        hf = fp16_valued_dense(kind) if stored == "dense-zeros" else tiny_model(kind, sparsity=0)
        path = tmp_path / stored
        hf.save_pretrained(path)  # plain transformers safetensors
    whole_reads = []
    get = ck.Shards.get
    monkeypatch.setattr(ck.Shards, "get", lambda self, name: whole_reads.append(name) or get(self, name))
    for rank in range(WORLD):
        whole_reads.clear()
        got = engine_state(load_sharded(path, rank, WORLD, device="cpu"))
        rank_reads = list(whole_reads)
        expected = engine_state(load_dense_then_shard(path, rank, WORLD, device="cpu"))
        assert got.keys() == expected.keys()
        for name, want in expected.items():
            have = got[name]
            if isinstance(want, tuple):
                assert isinstance(have, tuple) and have[1:] == want[1:], name
                assert torch.equal(have[0], want[0]), name
            elif want is None:
                assert have is None, name
            else:
                assert not isinstance(have, tuple) and have is not None, name
                assert have.shape == want.shape and have.dtype == want.dtype and torch.equal(have, want), name
        if stored != "flashllm":  # dense block linears come through get_slice only, never whole
            assert not any(".layers." in n and n.endswith("proj.weight") or n.endswith(("fc1.weight", "fc2.weight"))
                           for n in rank_reads), rank_reads
            assert any(n.endswith("embed_tokens.weight") for n in rank_reads)
