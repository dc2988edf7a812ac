"""`flashllm bench hf`: transformers' own `generate` with SparseLinear layers, against the same model dense.

For a model preset with random weights (default llama-3-8b; --layers to cut it), a prompt of P tokens,
N new tokens, greedy, each batch size and each variant (dense, and every block linear pruned by
magnitude to each other --sparsities value and swapped for SparseLinear with flashllm.sparsify_):
  eager     model.generate out of the box (SDPA, dynamic cache)
  compiled  model.generate(cache_implementation="static", compile_config=CompileConfig(fullgraph=True,
            mode="reduce-overhead")): transformers compiles the decode step, CUDA graphs on a GPU (on the
            CPU: mode "default")
  engine    flashllm's engine on the very same weights (`flashllm.engine.from_hf`), for reference
Per row: tokens/s, ms per decode step, prefill ms, peak memory, and the speed-up over dense on the same
path and batch. A compiled row also says whether its greedy tokens equal the eager row's. A path that
fails (e.g. a graph break under fullgraph) gets a note instead of figures. Prints a table; --out writes
JSON, the table (.md) and a PNG.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from datetime import date
from pathlib import Path
from types import SimpleNamespace

import torch

from flashllm.bench.e2e import (GB, PRESETS, build_hf, free_memory, measure_engine, model_args, peak_bytes,
                                sync)
from flashllm.formats import FORMATS
from .plotting import pyplot

PATHS = ("eager", "compiled", "engine")


def generation_settings(hf, mode: str, device: torch.device, new: int):
    from transformers import CompileConfig
    settings = copy.deepcopy(hf.generation_config)
    settings.update(eos_token_id=None, pad_token_id=0, do_sample=False, max_new_tokens=new)  # exactly `new`, greedy
    if mode == "compiled":
        config = CompileConfig(fullgraph=True, mode="reduce-overhead" if device.type == "cuda" else "default")
        if device.type != "cuda":
            config._compile_all_devices = True  # transformers compiles the decode step on GPUs only by default
        settings.update(cache_implementation="static", compile_config=config)
    return settings


def measure_generate(hf, prompts, mode: str, a, device, variant: str) -> dict:
    """One row: `hf.generate` of prompts [B, P] in `mode`, best of a.reps timed runs after the warm-up."""
    r = dict(variant=variant, path=mode, batch=prompts.shape[0], prompt=a.prompt, new_tokens=a.new)
    ids = prompts.to(device)
    mask = torch.ones_like(ids)

    def run(new: int):
        settings = generation_settings(hf, mode, device, new)
        sync(device)
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = hf.generate(input_ids=ids, attention_mask=mask, generation_config=settings)
        sync(device)
        return time.perf_counter() - t0, out[:, ids.shape[1]:].cpu()

    free_memory(device)
    try:
        for _ in range(2 if mode == "compiled" else 1):  # compiled: compile, then record the CUDA graphs
            run(a.new)
        prefill = min(run(1)[0] for _ in range(a.reps))
        timed = [run(a.new) for _ in range(a.reps)]
    except Exception as e:  # a graph break under fullgraph, out of memory: the row says so
        free_memory(device)
        return {**r, "note": f"{type(e).__name__}: {str(e).strip().splitlines()[0][:160] if str(e).strip() else ''}"}
    total, tokens = min(timed, key=lambda t: t[0])
    r.update(tokens_per_s=r["batch"] * a.new / total, ms_per_step=1e3 * (total - prefill) / max(1, a.new - 1),
             prefill_ms=1e3 * prefill, seconds=total, tokens=tokens.tolist())
    peak = peak_bytes(device)
    r["peak_GB"] = peak / GB if peak is not None else None
    return r


def measure_engine_row(hf, prompts, a, device, variant: str) -> dict:
    from flashllm.engine import from_hf
    engine = from_hf(hf, fuse=True)
    try:
        got = measure_engine(engine, prompts, SimpleNamespace(prompt=a.prompt, new=a.new, reps=a.reps,
                                                              cuda_graph=True, world=1),
                             device, variant, 0.0, "", a.copy_bw)
    finally:
        del engine
        free_memory(device)
    keep = ("tokens_per_s", "ms_per_step", "prefill_ms", "seconds", "peak_GB", "note")
    return dict(variant=variant, path="engine", batch=prompts.shape[0], prompt=a.prompt, new_tokens=a.new,
                **{k: got[k] for k in keep if k in got})


def run_variant(args, sparsity: float, prompts, a, device, dtype) -> list[dict]:
    """Build the HF model (the same random dense weights every time), prune it if sparse, and run each path."""
    import flashllm
    variant = "dense" if sparsity == 0 else f"sparse-{sparsity:.0%}"
    free_memory(device)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    hf = build_hf(args, device, dtype)
    if sparsity:
        report = flashllm.sparsify_(hf, sparsity=sparsity, method="magnitude", format=a.format, progress=False)
        formats = "+".join(sorted({layer.format for layer in report}))
        print(f"# {variant}: {len(report)} layers pruned and compressed ({formats}), "
              f"{report.bytes_before / GB:.2f} -> {report.bytes_after / GB:.2f} GB", flush=True)
    sync(device)
    print(f"# {variant}: built in {time.perf_counter() - t0:.1f} s", flush=True)
    rows = []
    for b in a.batch:
        eager = None
        for path in a.paths:
            if path == "engine":
                r = measure_engine_row(hf, prompts[:b], a, device, variant)
            else:
                r = measure_generate(hf, prompts[:b], path, a, device, variant)
                if path == "eager":
                    eager = r
                elif eager is not None and "tokens" in eager and "tokens" in r:
                    r["same_tokens_as_eager"] = r["tokens"] == eager["tokens"]
            rows.append(report_row(r))
    del hf
    free_memory(device)
    return rows


def report_row(r: dict) -> dict:
    head = f"{r['variant']:>11} {r['path']:>8} batch {r['batch']:2d}:"
    if "note" in r:
        print(f"{head} {r['note']}", flush=True)
    else:
        same = r.get("same_tokens_as_eager")
        print(f"{head} {r['tokens_per_s']:9.1f} tok/s {r['ms_per_step']:8.2f} ms/step  prefill {r['prefill_ms']:7.1f} ms"
              + ("" if same is None else f"  tokens {'=' if same else '!='} eager"), flush=True)
    return r


def summarize(result: dict) -> str:
    rows = result["rows"]
    base = {(r["path"], r["batch"]): r for r in rows if r["variant"] == "dense" and "note" not in r}
    head = (f"## transformers generate with SparseLinear: {result['model']} ({result['layers']} layers) on "
            f"{result['device']}, prompt {result['prompt']}, {result['new_tokens']} new tokens greedy, {result['dtype']}")
    cols = ["path", "variant", "batch", "tok/s", "ms/step", "prefill ms", "vs dense", "tokens = eager", "peak GB"]
    lines = [head, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    order = {p: i for i, p in enumerate(PATHS)}
    for r in sorted(rows, key=lambda r: (order[r["path"]], r["batch"])):
        if "note" in r:
            lines.append(f"| {r['path']} | {r['variant']} | {r['batch']} | {r['note']} |" + " |" * (len(cols) - 4))
            continue
        dense = base.get((r["path"], r["batch"]))
        vs = f"{r['tokens_per_s'] / dense['tokens_per_s']:.2f}x" if dense and r["variant"] != "dense" else ""
        same = {True: "yes", False: "no"}.get(r.get("same_tokens_as_eager"), "")
        peak = f"{r['peak_GB']:.1f}" if r.get("peak_GB") is not None else "-"
        lines.append(f"| {r['path']} | {r['variant']} | {r['batch']} | {r['tokens_per_s']:.1f} | {r['ms_per_step']:.2f} "
                     f"| {r['prefill_ms']:.1f} | {vs} | {same} | {peak} |")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    rows = [r for r in result["rows"] if "note" not in r]
    if not rows:
        return
    batches = sorted({r["batch"] for r in rows})
    paths = [p for p in PATHS if any(r["path"] == p for r in rows)]
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    fig, axes = plt.subplots(1, len(batches), figsize=(5.5 * len(batches), 4.5), squeeze=False)
    width = 0.8 / len(variants)
    for ax, b in zip(axes[0], batches):
        got = {(r["path"], r["variant"]): r["tokens_per_s"] for r in rows if r["batch"] == b}
        for i, v in enumerate(variants):
            xs = [j + i * width for j, p in enumerate(paths) if (p, v) in got]
            ax.bar(xs, [got[p, v] for p in paths if (p, v) in got], width, label=v)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(paths))], paths)
        ax.set_title(f"batch {b}: tokens / s")
        ax.legend(fontsize=8)
    fig.suptitle(f"transformers generate with SparseLinear: {result['model']} ({result['layers']} layers), "
                 f"prompt {result['prompt']} + {result['new_tokens']} new, {result['device']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="flashllm bench hf", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llama-3-8b", choices=sorted(PRESETS), help="model preset (default llama-3-8b)")
    ap.add_argument("--layers", type=int, default=None, help="override the number of layers (quick runs)")
    ap.add_argument("--batch", default="1,8", help="batch sizes (default 1,8)")
    ap.add_argument("--prompt", type=int, default=64, help="prompt tokens (default 64)")
    ap.add_argument("--new", type=int, default=64, help="new tokens (default 64)")
    ap.add_argument("--sparsities", default="0,0.5,0.7,0.8",
                    help="variants, 0 being dense (default 0,0.5,0.7,0.8; split a long run, e.g. 0,0.5 then 0.7,0.8)")
    ap.add_argument("--format", default="auto", choices=("auto", *FORMATS), help="compressed format (default auto)")
    ap.add_argument("--paths", default=",".join(PATHS), help=f"any of {','.join(PATHS)} (default all)")
    ap.add_argument("--dtype", default=None, choices=("float16", "bfloat16", "float32"),
                    help="weights and activations (default float16 on a GPU, float32 on the CPU)")
    ap.add_argument("--device", default=None, help="cuda (default when available), cuda:1, cpu")
    ap.add_argument("--reps", type=int, default=2, help="timed runs per row after the warm-up, best kept (default 2)")
    ap.add_argument("--out", default=None, help="directory for the JSON, table and PNG")
    a = ap.parse_args(argv)
    from flashllm.cli import UsageError, resolve_device
    try:
        a.device = resolve_device(a.device)
    except UsageError as e:
        ap.error(str(e))
    a.batch = [int(b) for b in a.batch.split(",") if b]
    a.sparsities = [float(s) for s in a.sparsities.split(",") if s]
    given = {p for p in a.paths.split(",") if p}
    a.paths = [p for p in PATHS if p in given]
    if not a.paths or given - set(PATHS):
        ap.error(f"--paths: expected some of {','.join(PATHS)}")
    if a.dtype is None:
        a.dtype = "float16" if a.device.startswith("cuda") else "float32"
    if any(not 0 <= s < 1 for s in a.sparsities) or any(b < 1 for b in a.batch) or a.reps < 1 or a.new < 2:
        ap.error("sparsities in [0, 1), batch sizes >= 1, --reps >= 1 and --new >= 2")
    return a


def bench(a: argparse.Namespace) -> dict:
    device = torch.device(a.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    dtype = getattr(torch, a.dtype)
    args = model_args(a.model, a.layers)
    if a.prompt + a.new > args.max_positions:
        raise SystemExit(f"prompt + new tokens exceed {a.model}'s {args.max_positions} positions")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or 'host'})"
    from flashllm.bench.e2e import copy_bandwidth
    a.copy_bw = copy_bandwidth(device)
    print(f"# {name}: {a.model} ({args.n_layers} layers), prompt {a.prompt}, {a.new} new tokens, {a.dtype}", flush=True)
    prompts = torch.randint(4, args.vocab_size, (max(a.batch), a.prompt), generator=torch.Generator().manual_seed(0))
    rows = []
    for sparsity in dict.fromkeys(a.sparsities):
        rows += run_variant(args, sparsity, prompts, a, device, dtype)
    import transformers
    result = dict(model=a.model, layers=args.n_layers, args=args.to_dict(), device=name, date=str(date.today()),
                  torch=torch.__version__, transformers=transformers.__version__, host=platform.node(),
                  dtype=a.dtype, prompt=a.prompt, new_tokens=a.new, format=a.format, rows=rows)
    table = summarize(result)
    print("\n" + table)
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        device_tag = name.split("(")[0].strip().replace(" ", "_")
        tag = f"hf_{a.model}{f'-{a.layers}l' if a.layers else ''}_{device_tag}_{date.today()}"
        (out / f"{tag}.json").write_text(json.dumps(result, indent=1))
        (out / f"{tag}.md").write_text(table + "\n")
        plot(result, out / f"{tag}.png")
    return result


def main(argv=None) -> int:
    bench(parse_args(list(sys.argv[1:] if argv is None else argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
