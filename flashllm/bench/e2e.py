"""`flashllm bench e2e`: end-to-end generation on one GPU, Hugging Face generate vs our engine, dense and sparse.

For a model preset with random weights, a prompt of P tokens, N new tokens and each batch size:
  hf          transformers `generate`, dense, out of the box (from_config, SDPA, dynamic cache, greedy)
  dense       our engine on the very same dense weights (cuBLAS), decode step in a CUDA graph
  sparse-S    our engine with every block linear pruned to sparsity S and compressed (--format), built
              layer by layer on the GPU (the dense model never exists)
Per row: tokens/s (= tokens per GPU-second on one GPU), ms per decode step, prefill ms, memory
(weights, KV cache, workspace = peak - weights - KV cache, peak) and the weight-bytes roofline of a
decode step: the bytes one step reads (compressed where compressed) over the measured copy bandwidth.
Prints a table, writes JSON and a PNG with --out.

With --tp G the engine variants run tensor-parallel over G GPUs (G > 1 re-launches the command through
torchrun, one process per GPU; rank 0 prints and writes): every rank builds only its own shard, with
weights that do not depend on G (so `--tp 1` and `--tp 2` run the same network), and `hf` is skipped.
Rows then also give tokens per GPU-second (tokens/s / G) and the all-reduce time per decode step:
2 per layer on the step's [batch, dim] activation, timed on their own (CUDA events on a GPU).

The engine fuses q/k/v and gate/up into one linear each (`flashllm/engine/fuse.py`); --no-fuse keeps them
apart, for comparison. The dense engine's fused linears are copies next to the transformers model's own.
"""

from __future__ import annotations

import argparse
import copy
import gc
import contextlib
import json
import os
import platform
import sys
import statistics
import time
from datetime import date
from pathlib import Path

import torch

from flashllm.engine import Generator, from_hf, preset, random_model, to_hf_config
from flashllm.engine.args import ModelArgs
from flashllm.engine.presets import PRESETS as ENGINE_PRESETS, llama
from flashllm.formats import FORMATS
from flashllm.engine.tp import finish_worker, in_worker, init_tp, relaunch, time_all_reduce, worker_world
from .plotting import pyplot

GB = 1e9
# Shapes the bench knows beside the engine's presets. smollm2-135m (HuggingFaceTB/SmolLM2-135M's config): a
# ~135M-parameter Llama, small enough to generate with on the CPU.
BENCH_SHAPES = {
    "smollm2-135m": llama(576, 30, 9, 3, 1536, vocab=49152, positions=8192, theta=100000.0,
                          llama3_scaling=False).replace(tie_embeddings=True),
}
PRESETS = {**ENGINE_PRESETS, **BENCH_SHAPES}


def copy_bandwidth(device: torch.device) -> float:
    """Bytes read + written per second by a device-to-device copy (how the anchors define the ceiling)."""
    if device.type == "cuda":
        from .timing import copy_bandwidth as cuda_copy_bandwidth
        with torch.cuda.device(device):
            return cuda_copy_bandwidth()
    a = torch.empty(64 << 20, dtype=torch.uint8)
    b = torch.empty_like(a)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        b.copy_(a)
        times.append(time.perf_counter() - t0)
    return 2 * a.numel() / statistics.median(times)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_bytes(device: torch.device) -> int | None:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def free_bytes(device: torch.device) -> float:
    return torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else float("inf")


def kv_cache_bytes(args, batch: int, slots: int, dtype: torch.dtype) -> int:
    return 2 * args.n_layers * batch * slots * args.n_kv_heads * args.head_dim * dtype.itemsize


def activation_margin(args, batch: int, prompt: int) -> int:
    """A generous guess at prefill activations and allocator slack, for the will-it-fit check."""
    return 4 * batch * prompt * max(args.ffn_dim, args.dim) * 4 + batch * args.vocab_size * 4 + (1 << 30)


def row(variant, sparsity, fmt, batch, a, **fields) -> dict:
    return dict(variant=variant, sparsity=sparsity, format=fmt, batch=batch, prompt=a.prompt, new_tokens=a.new,
                **fields)


def finish_row(r: dict, step_bytes: int, copy_bw: float, weights: int, kv: int, peak: int | None,
               gpus: int = 1) -> dict:
    """weights, kv, peak, step_bytes: one GPU's (rank 0's under tensor parallelism)."""
    r["gpus"] = gpus
    r["tokens_per_gpu_s"] = r["tokens_per_s"] / gpus
    r["step_bytes_GB"] = step_bytes / GB
    r["roofline_ms"] = 1e3 * step_bytes / copy_bw
    r["step_over_roofline"] = r["ms_per_step"] / r["roofline_ms"]
    r["weights_GB"], r["kv_cache_GB"] = weights / GB, kv / GB
    r["peak_GB"] = peak / GB if peak is not None else None
    r["workspace_GB"] = (peak - weights - kv) / GB if peak is not None else None
    return r


# ------------------------------------------------------------------------------------------- runs

def measure_engine(model, prompts, a, device, variant, sparsity, fmt, copy_bw, extra=None) -> dict:
    b = prompts.shape[0]
    r = row(variant, sparsity, fmt, b, a, **(extra or {}))
    world = getattr(a, "world", 1)
    need = kv_cache_bytes(model.args, b, a.prompt + a.new, model.dtype) // world \
        + activation_margin(model.args, b, a.prompt)
    free_memory(device)
    if need > free_bytes(device):
        return {**r, "note": f"skipped: needs ~{need / GB:.1f} GB more, {free_bytes(device) / GB:.1f} GB free"}
    gen = None
    try:
        gen = Generator(model, b, a.prompt + a.new, cuda_graph=None if a.cuda_graph else False)
        gen.generate(prompts, a.new)  # warm-up: kernels compiled, one CUDA graph per attention bucket captured
        runs = [gen.generate(prompts, a.new) for _ in range(a.reps)]
        best = min(runs, key=lambda o: o.seconds)
        kv = model.kv_cache_nbytes
        r.update(tokens_per_s=best.tokens_per_second, ms_per_step=best.ms_per_step,
                 ms_per_token=1e3 * best.seconds / a.new, prefill_ms=1e3 * best.prefill_seconds,
                 seconds=best.seconds, cuda_graphs=len(gen.graphs))
        if world > 1:  # the step's 2 all-reduces per layer, on their own
            ar = time_all_reduce((b, 1, model.args.dim), model.dtype, device, 2 * model.args.n_layers)
            r.update(allreduce_ms_per_step=1e3 * ar, allreduce_share=1e3 * ar / best.ms_per_step)
        return finish_row(r, model.weight_nbytes(per_step=True), copy_bw, model.weight_nbytes(), kv,
                          peak_bytes(device), world)
    except torch.OutOfMemoryError as e:
        return {**r, "note": f"out of memory: {str(e).splitlines()[0][:120]}"}
    finally:
        if gen is not None:
            gen.close()
        free_memory(device)


def measure_hf(hf, args, prompts, a, device, step_bytes, weights, copy_bw) -> dict:
    b = prompts.shape[0]
    r = row("hf", 0.0, "dense", b, a)
    kv = kv_cache_bytes(args, b, a.prompt + a.new, hf.dtype)
    free_memory(device)
    if 2 * kv > free_bytes(device):  # the dynamic cache grows by concatenation: room for two copies
        return {**r, "note": f"skipped: needs ~{2 * kv / GB:.1f} GB more, {free_bytes(device) / GB:.1f} GB free"}
    settings = copy.deepcopy(hf.generation_config)
    settings.update(eos_token_id=None, pad_token_id=1, do_sample=False)  # exactly a.new tokens, greedy
    ids = prompts.to(device)
    mask = torch.ones_like(ids)

    def timed(new: int) -> float:
        settings.max_new_tokens = new
        sync(device)
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = hf.generate(input_ids=ids, attention_mask=mask, generation_config=settings)
        sync(device)
        assert out.shape[1] == ids.shape[1] + new
        return time.perf_counter() - t0

    try:
        timed(2)  # warm-up
        prefill = min(timed(1) for _ in range(a.reps))
        total = min(timed(a.new) for _ in range(a.reps))
    except torch.OutOfMemoryError as e:
        free_memory(device)
        return {**r, "note": f"out of memory: {str(e).splitlines()[0][:120]}"}
    r.update(tokens_per_s=b * a.new / total, ms_per_step=1e3 * (total - prefill) / max(1, a.new - 1),
             ms_per_token=1e3 * total / a.new, prefill_ms=1e3 * prefill, seconds=total)
    return finish_row(r, step_bytes, copy_bw, weights, kv, peak_bytes(device))


def build_hf(args, device, dtype):
    from transformers import AutoModelForCausalLM
    config = to_hf_config(args)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def run_dense(args, prompts, a, device, dtype, copy_bw) -> list[dict]:
    """HF generate and our dense engine, on one set of dense weights (built once, by transformers)."""
    rows = []
    dense_bytes = dense_weight_bytes(args, dtype)
    free_memory(device)
    if dense_bytes * 1.05 > free_bytes(device):
        note = f"skipped: dense weights need {dense_bytes / GB:.1f} GB, {free_bytes(device) / GB:.1f} GB free"
        return [row(v, 0.0, "dense", b, a, note=note) for v in ("hf", "dense") if v in a.variants for b in a.batch]
    t0 = time.perf_counter()
    hf = build_hf(args, device, dtype)
    sync(device)
    build_s = time.perf_counter() - t0
    engine = from_hf(hf, fuse=a.fuse)
    step_bytes, weights = engine.weight_nbytes(per_step=True), engine.weight_nbytes()
    print(f"# dense {dtype}: {weights / GB:.2f} GB of weights, built by transformers in {build_s:.1f} s", flush=True)
    for b in a.batch:
        if "hf" in a.variants:
            rows.append(report(measure_hf(hf, args, prompts[:b], a, device, step_bytes, weights, copy_bw)))
        if "dense" in a.variants:
            rows.append(report(measure_engine(engine, prompts[:b], a, device, "dense", 0.0, "dense", copy_bw,
                                              dict(build_s=build_s))))
    del hf, engine
    free_memory(device)
    return rows


def tp_kwargs(a) -> dict:
    """random_model's tensor-parallel arguments: with --tp (any G, 1 included) the weights drawn per
    KV-head-sized unit, the same network for every G."""
    return dict(tp_rank=a.rank, tp_world=a.world) if a.tp else {}


def run_dense_tp(args, prompts, a, device, dtype, copy_bw) -> list[dict]:
    """--tp: our dense engine on this rank's dense shard, built per rank (no HF model: it cannot be sharded)."""
    free_memory(device)
    model, built = random_model(args, sparsity=0.0, device=device, dtype=dtype, seed=0, fuse=a.fuse, **tp_kwargs(a))
    print(f"# dense {dtype}, tp {a.world}: {built}", flush=True)
    rows = [report(measure_engine(model, prompts[:b], a, device, "dense", 0.0, "dense", copy_bw,
                                  dict(build_s=built.seconds))) for b in a.batch]
    del model
    free_memory(device)
    return rows


def run_sparse(args, prompts, a, device, dtype, copy_bw, sparsity) -> list[dict]:
    free_memory(device)
    try:
        model, built = random_model(args, sparsity=sparsity, format=a.format, device=device, dtype=dtype, seed=0,
                                    fuse=a.fuse, max_tokens=max(a.batch), **tp_kwargs(a))
    except torch.OutOfMemoryError as e:
        free_memory(device)
        return [row(f"sparse-{sparsity:.0%}", sparsity, a.format, b, a, note=f"build out of memory: {e}"[:160])
                for b in a.batch]
    print(f"# sparse {sparsity:.0%}: {built}", flush=True)
    fmt = "+".join(sorted(built.formats)) or "dense"
    rows = [report(measure_engine(model, prompts[:b], a, device, f"sparse-{sparsity:.0%}", sparsity, fmt, copy_bw,
                                  dict(build_s=built.seconds))) for b in a.batch]
    del model
    free_memory(device)
    return rows


def dense_weight_bytes(args, dtype) -> int:
    per_layer = (2 * args.n_heads + 2 * args.n_kv_heads) * args.head_dim * args.dim \
        + (3 if args.gated_ffn else 2) * args.dim * args.ffn_dim
    embeddings = args.vocab_size * args.word_dim * (1 if args.tie_embeddings else 2)
    if args.family == "opt":
        embeddings += (args.max_positions + 2) * args.dim
    return (args.n_layers * per_layer + embeddings) * dtype.itemsize


def report(r: dict) -> dict:
    if "note" in r:
        print(f"{r['variant']:>10} batch {r['batch']:3d}: {r['note']}", flush=True)
    else:
        ar = f"  all-reduce {r['allreduce_ms_per_step']:.2f} ms/step" if "allreduce_ms_per_step" in r else ""
        print(f"{r['variant']:>10} batch {r['batch']:3d}: {r['tokens_per_s']:9.1f} tok/s  "
              f"{r['ms_per_step']:8.2f} ms/step "
              f"(roofline {r['roofline_ms']:.2f}, x{r['step_over_roofline']:.2f})  prefill {r['prefill_ms']:8.1f} ms"
              + ar, flush=True)
    return r


# ------------------------------------------------------------------------------------------ output

def summarize(result: dict) -> str:
    rows = result["rows"]
    base = {(r["variant"], r["batch"]): r for r in rows if "note" not in r}
    head = (f"## {result['model']} on {result['device']}: prompt {result['prompt']}, "
            f"{result['new_tokens']} new tokens, {result['dtype']}; copy bandwidth {result['copy_bw_GBs']:.0f} GB/s"
            + (f"; tensor parallel over {result['gpus']} GPUs (memory per GPU)" if result.get("gpus", 1) > 1 else ""))
    cols = ["variant", "batch", "tok/s", "tok/GPU-s", "ms/step", "all-reduce ms/step", "roofline ms", "x roofline",
            "prefill ms", "weights GB", "KV GB", "peak GB", "vs HF", "vs dense"]
    lines = [head, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        if "note" in r:
            lines.append(f"| {r['variant']} | {r['batch']} | {r['note']} |" + " |" * (len(cols) - 3))
            continue

        def vs(other):
            o = base.get((other, r["batch"]))
            return f"{r['tokens_per_s'] / o['tokens_per_s']:.2f}x" if o and r["variant"] != other else ""

        peak = f"{r['peak_GB']:.1f}" if r["peak_GB"] is not None else "-"
        ar = f"{r['allreduce_ms_per_step']:.3f}" if "allreduce_ms_per_step" in r else "-"
        lines.append(f"| {r['variant']} | {r['batch']} | {r['tokens_per_s']:.1f} | {r['tokens_per_gpu_s']:.1f} | "
                     f"{r['ms_per_step']:.2f} | {ar} | "
                     f"{r['roofline_ms']:.2f} | {r['step_over_roofline']:.2f} | {r['prefill_ms']:.1f} | "
                     f"{r['weights_GB']:.2f} | {r['kv_cache_GB']:.2f} | {peak} | {vs('hf')} | {vs('dense')} |")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    rows = [r for r in result["rows"] if "note" not in r]
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    batches = sorted({r["batch"] for r in rows})
    if not rows:
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    width = 0.8 / max(1, len(variants))
    for i, v in enumerate(variants):
        got = {r["batch"]: r for r in rows if r["variant"] == v}
        xs = [j + i * width for j, b in enumerate(batches) if b in got]
        ax1.bar(xs, [got[b]["tokens_per_s"] for b in batches if b in got], width, label=v)
        ax2.bar(xs, [got[b]["ms_per_step"] for b in batches if b in got], width, label=v)
        ax2.scatter(xs, [got[b]["roofline_ms"] for b in batches if b in got], marker="_", s=200, color="black",
                    zorder=3, label="weight-bytes roofline" if i == 0 else None)
    for ax, title in ((ax1, "tokens / s (one GPU)"), (ax2, "ms per decode step")):
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(batches))], [f"batch {b}" for b in batches])
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.suptitle(f"{result['model']}, prompt {result['prompt']} + {result['new_tokens']} new, {result['device']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


CPU_PARAMETERS = 200e6  # the CPU path checks results; beyond this size a default run takes minutes


def default_model(device: torch.device, dtype: torch.dtype) -> str:
    """The largest preset that fits `device`: weights within 3/4 of a GPU's memory (room for the KV cache
    of the default batches), or at most CPU_PARAMETERS parameters on the CPU."""
    if device.type == "cuda":
        budget = 0.75 * torch.cuda.get_device_properties(device).total_memory
    else:
        budget = CPU_PARAMETERS * dtype.itemsize
    sizes = {name: dense_weight_bytes(args, dtype) for name, args in PRESETS.items()}
    fitting = [name for name, size in sizes.items() if size <= budget]
    return max(fitting, key=sizes.get) if fitting else min(sizes, key=sizes.get)


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="flashllm bench e2e", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, choices=sorted(PRESETS),
                    help="model preset (default: on a GPU the largest whose weights take at most 3/4 of its memory, "
                         "opt-30b on 80 GB; on the CPU the largest of at most 200M parameters)")
    ap.add_argument("--layers", type=int, default=None, help="override the number of layers (quick runs)")
    ap.add_argument("--batch", default=None, help="batch sizes (default 8,16,32,64 on a GPU, 1,8 on the CPU)")
    ap.add_argument("--prompt", type=int, default=64, help="prompt tokens (default 64)")
    ap.add_argument("--new", type=int, default=128, help="new tokens (default 128)")
    ap.add_argument("--sparsities", default="0.5,0.7,0.8,0.9", help="sparse variants (default 0.5,0.7,0.8,0.9)")
    ap.add_argument("--format", default="auto", choices=("auto", *FORMATS),
                    help="compressed format (auto: pairmap from 65%% sparsity, else the smaller of bitmap and tiled_csl; "
                         "sell from 85%% when the largest batch is <= 16)")
    ap.add_argument("--variants", default="hf,dense,sparse", help="any of hf,dense,sparse (default all)")
    ap.add_argument("--dtype", default="float16", choices=("float16", "bfloat16", "float32"),
                    help="dtype of the weights and activations (default float16)")
    ap.add_argument("--device", default=None, help="cuda (default when available), cuda:1, cpu (smoke runs)")
    ap.add_argument("--no-cuda-graph", dest="cuda_graph", action="store_false", help="decode eagerly")
    ap.add_argument("--no-fuse", dest="fuse", action="store_false", help="keep q/k/v and gate/up as separate linears")
    ap.add_argument("--reps", type=int, default=1, help="measured runs per row after the warm-up (best kept)")
    ap.add_argument("--out", default=None, help="directory for the JSON and PNG")
    ap.add_argument("--tp", type=int, default=None, metavar="G",
                    help="tensor parallelism over G GPUs (G > 1: started through torchrun); engine variants only")
    a = ap.parse_args(argv)
    if a.tp is not None and a.tp < 1:
        ap.error(f"--tp must be >= 1, got {a.tp}")
    from flashllm.cli import resolve_device
    try:
        device = torch.device(resolve_device(a.device))
    except ValueError as e:
        ap.error(str(e))
    if a.model is None:
        a.model = default_model(device, getattr(torch, a.dtype))
    a.batch = [int(b) for b in (a.batch or ("8,16,32,64" if device.type == "cuda" else "1,8")).split(",")]
    a.sparsities = [float(s) for s in a.sparsities.split(",") if s]
    a.variants = set(a.variants.split(","))
    if a.variants - {"hf", "dense", "sparse"}:
        ap.error(f"unknown variants {sorted(a.variants - {'hf', 'dense', 'sparse'})}")
    return a


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parse_args(argv)
    if a.tp and a.tp > 1 and not in_worker():
        return relaunch("flashllm.bench.e2e", argv, a.tp)
    bench(a)
    return 0


def bench(a: argparse.Namespace) -> dict:
    a.rank, a.world = 0, 1
    if not (a.tp and a.tp > 1):
        return _bench(a)
    worker_world(a.tp)
    cpu = a.device is not None and a.device.startswith("cpu")
    a.rank, a.world, device = init_tp("gloo" if cpu else None)
    a.device = str(device)
    quiet = open(os.devnull, "w") if a.rank else None  # only rank 0 prints (and writes)
    with contextlib.redirect_stdout(quiet) if quiet else contextlib.nullcontext():
        _bench(a)
    finish_worker(0)  # an exception above propagates instead, and torchrun reports the failure


def model_args(name: str, n_layers: int | None) -> ModelArgs:
    """A preset's or bench shape's args, optionally with another number of layers."""
    if name not in BENCH_SHAPES:
        return preset(name, n_layers)
    return BENCH_SHAPES[name].replace(n_layers=n_layers) if n_layers else BENCH_SHAPES[name]


def _bench(a: argparse.Namespace) -> dict:
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    dtype = getattr(torch, a.dtype)
    args = model_args(a.model, a.layers)
    if a.prompt + a.new > args.max_positions:
        raise SystemExit(f"prompt + new tokens exceed {a.model}'s {args.max_positions} positions")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or 'host'})"
    copy_bw = copy_bandwidth(device)
    print(f"# {name}: copy bandwidth {copy_bw / GB:.0f} GB/s (read + write); {a.model}"
          f"{f' ({a.layers} layers)' if a.layers else ''}, prompt {a.prompt}, {a.new} new tokens", flush=True)
    gen = torch.Generator().manual_seed(0)
    prompts = torch.randint(4, args.vocab_size, (max(a.batch), a.prompt), generator=gen)
    rows = []
    if a.tp:
        if "hf" in a.variants:
            print("# --tp: hf skipped (transformers' generate is not tensor-parallel here)", flush=True)
        if "dense" in a.variants:
            rows += run_dense_tp(args, prompts, a, device, dtype, copy_bw)
    elif a.variants & {"hf", "dense"}:
        rows += run_dense(args, prompts, a, device, dtype, copy_bw)
    if "sparse" in a.variants:
        for s in a.sparsities:
            rows += run_sparse(args, prompts, a, device, dtype, copy_bw, s)
    result = dict(model=a.model, layers=args.n_layers, args=args.to_dict(), device=name, gpus=a.world, tp=a.tp,
                  date=str(date.today()), torch=torch.__version__, host=platform.node(), dtype=a.dtype,
                  prompt=a.prompt, new_tokens=a.new, format=a.format, cuda_graph=a.cuda_graph and device.type == "cuda",
                  fused=a.fuse, copy_bw_GBs=copy_bw / GB, rows=rows)
    table = summarize(result)
    print("\n" + table)
    if a.out and a.rank == 0:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        device_tag = name.split("(")[0].strip().replace(" ", "_")
        tag = f"e2e_{a.model}{f'-{a.layers}l' if a.layers else ''}{f'_tp{a.tp}' if a.tp else ''}_{device_tag}_{date.today()}"
        (out / f"{tag}.json").write_text(json.dumps(result, indent=1))
        (out / f"{tag}.md").write_text(table + "\n")
        plot(result, out / f"{tag}.png")
    return result


if __name__ == "__main__":
    main()
