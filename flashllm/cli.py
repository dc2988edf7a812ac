"""The `flashllm` command: convert, info and generate, plus the `demo` and `bench` entry points.

Heavy imports (torch, transformers) happen inside the commands so `flashllm --help` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

# Commands whose arguments belong to another module: everything after the name is passed through.
DELEGATED = {"demo": ("flashllm.demo", "the end-to-end demo"),
             "bench": ("flashllm.bench.__main__", "kernel and model benchmarks")}
DTYPES = ("auto", "float16", "bfloat16", "float32")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flashllm", description="Unstructured-sparse LLM weights: "
                                     "compress Hugging Face models, inspect and run the checkpoints.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    convert = commands.add_parser("convert", help="prune a Hugging Face model and save it compressed",
                                  description="Load MODEL_DIR (dense, dense with zeros, or compressed-tensors "
                                  "sparse-bitmask), prune it with sparsify_, save a flashllm checkpoint to OUT_DIR.")
    convert.add_argument("model_dir", metavar="MODEL_DIR", help="Hugging Face model directory (safetensors)")
    convert.add_argument("out_dir", metavar="OUT_DIR", help="where to write the flashllm checkpoint")
    convert.add_argument("--sparsity", type=float, default=0.5, help="fraction of zeros per layer (default 0.5)")
    convert.add_argument("--method", choices=("magnitude", "wanda", "sparsegpt", "none"), default="wanda",
                         help="pruning method; 'none' compresses the zeros the weights already hold (default wanda)")
    convert.add_argument("--calibration", metavar="FILE",
                         help="text file, one calibration sample per line (needed by wanda and sparsegpt)")
    convert.add_argument("--format", choices=("auto", "tiled_csl", "bitmap", "sell", "pairmap"), default="auto",
                         help="compressed format (default auto: pairmap from 65%% sparsity, else the smaller of "
                              "bitmap and tiled_csl, per layer; sell from 85%% with --max-tokens <= 16)")
    convert.add_argument("--max-tokens", type=int, default=None, metavar="N",
                         help="the most tokens a forward will multiply (e.g. the decode batch), for --format auto")
    convert.add_argument("--exclude", action="append", metavar="PATTERN",
                         help="layers to leave dense, fnmatch on module names; repeatable (default: lm_head)")
    convert.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard (default 5GB)")
    convert.add_argument("--report", metavar="FILE", help="also write the per-layer report as JSON")
    _add_device_dtype(convert)
    convert.set_defaults(run=run_convert)

    info = commands.add_parser("info", help="show the format, sparsity and size of a checkpoint",
                               description="Describe a flashllm, dense(-with-zeros) or compressed-tensors "
                               "checkpoint directory: format, per-layer sparsity and bytes.")
    info.add_argument("dir", metavar="DIR", help="checkpoint directory (config.json + safetensors)")
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    info.set_defaults(run=run_info)

    generate = commands.add_parser("generate", help="generate text from a checkpoint",
                                   description="Load DIR with flashllm.from_pretrained and continue a prompt. "
                                   "OPT and Llama-family models (Llama, Mistral, Qwen2) run on flashllm's engine "
                                   "(static KV cache, CUDA-graph decode on a GPU); others on transformers' generate.")
    generate.add_argument("dir", metavar="DIR", help="checkpoint directory with its tokenizer files")
    generate.add_argument("--prompt", required=True, help="text to continue")
    generate.add_argument("--max-new-tokens", type=int, default=32, help="tokens to generate (default 32)")
    generate.add_argument("--temperature", type=float, default=0.0, help="0 (default) is greedy decoding")
    generate.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    generate.add_argument("--top-p", type=float, default=None, help="sample from the smallest set holding this mass")
    generate.add_argument("--seed", type=int, default=None, help="random seed for sampling")
    generate.add_argument("--no-cuda-graph", dest="cuda_graph", action="store_false",
                          help="decode eagerly on a GPU instead of replaying a CUDA graph")
    generate.add_argument("--tp", type=int, default=1, metavar="G",
                          help="tensor parallelism over G processes (one GPU each; gloo on the CPU), started "
                          "through torchrun unless already inside a torchrun worker (default 1)")
    _add_device_dtype(generate)
    generate.set_defaults(run=run_generate)

    for name, (_, help_text) in DELEGATED.items():
        commands.add_parser(name, help=f"{help_text} (run `flashllm {name} --help` for its options)")
    return parser


def _add_device_dtype(parser) -> None:
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", choices=DTYPES, default="auto",
                        help="dtype of the loaded model (default auto: as stored)")


def _device(name: str | None) -> str:
    import torch
    return name or ("cuda" if torch.cuda.is_available() else "cpu")


def _dtype(name: str):
    import torch
    return None if name == "auto" else getattr(torch, name)


def run_convert(args) -> int:
    from pathlib import Path

    from flashllm.models import from_pretrained, save_pretrained
    from flashllm.models.checkpoint import PRODUCER, checkpoint_kind, read_json
    from flashllm.sparsify import sparsify_

    if checkpoint_kind(read_json(Path(args.model_dir) / "config.json")) == PRODUCER:
        raise ValueError(f"{args.model_dir} is already a flashllm checkpoint")
    method = None if args.method == "none" else args.method
    calibration = tokenizer = None
    if args.calibration:
        with open(args.calibration, encoding="utf-8") as f:
            calibration = [line.rstrip("\n") for line in f if line.strip()]
        if not calibration:
            raise ValueError(f"{args.calibration}: no calibration samples (one per line)")
        tokenizer = _tokenizer(args.model_dir)
    # Every layer stays dense while loading (threshold None): pruning decides what gets compressed.
    model = from_pretrained(args.model_dir, device=_device(args.device), dtype=_dtype(args.dtype),
                            sparsity_threshold=None)
    report = sparsify_(model, sparsity=args.sparsity, method=method, calibration=calibration,
                       format=args.format, max_tokens=args.max_tokens, exclude=tuple(args.exclude or ("lm_head",)),
                       tokenizer=tokenizer, progress=True)
    save_pretrained(model, args.out_dir, max_shard_size=args.max_shard_size, tokenizer=tokenizer)
    print(report)
    if args.report:
        with open(args.report, "w") as f:
            json.dump(report.to_dict(), f, indent=2)
    print(f"saved {args.out_dir}")
    return 0


def _tokenizer(directory: str):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(directory, local_files_only=True, trust_remote_code=False)


def run_info(args) -> int:
    from flashllm.models import describe
    from flashllm.nn import format_nbytes

    info = describe(args.dir)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['path']}: {info['kind']} checkpoint, model_type {info['model_type']}, format {info['format']}")
    width = max([len("layer")] + [len(layer["name"]) for layer in info["layers"]])
    print(f"{'layer':<{width}}  {'shape':>11}  {'format':>14}  {'sparsity':>8}  {'bytes':>10}  {'dense':>10}")
    for layer in info["layers"]:
        rows, cols = (layer["shape"] + [1, 1])[:2]
        print(f"{layer['name']:<{width}}  {rows:>5}x{cols:<5}  {layer['format']:>14}  {layer['sparsity']:>8.1%}  "
              f"{format_nbytes(layer['nbytes']):>10}  {format_nbytes(layer['dense_nbytes']):>10}")
    print(f"{len(info['layers'])} linear layers, sparsity {info['sparsity']:.1%}: "
          f"{format_nbytes(info['layer_bytes'])} (dense {format_nbytes(info['dense_layer_bytes'])}); "
          f"files {format_nbytes(info['file_bytes'])}")
    return 0


def run_generate(args) -> int:
    import torch
    from flashllm.engine import supports
    from flashllm.models import from_pretrained

    if args.tp < 1:
        raise ValueError(f"--tp must be >= 1, got {args.tp}")
    if args.tp > 1:
        return _generate_tensor_parallel(args)
    model = from_pretrained(args.dir, device=_device(args.device), dtype=_dtype(args.dtype))
    if not hasattr(model, "generate") or not model.can_generate():
        raise ValueError(f"{args.dir} holds a {type(model).__name__}, which cannot generate text")
    tokenizer = _tokenizer(args.dir)
    if supports(model.config):
        print(_generate_with_engine(model, tokenizer, args))
        return 0
    if args.seed is not None:
        torch.manual_seed(args.seed)
    inputs = tokenizer(args.prompt, return_tensors="pt").to(model.device)
    sampling = dict(do_sample=True, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p) \
        if args.temperature > 0 else dict(do_sample=False)
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=args.max_new_tokens, **sampling,
                                pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    print(tokenizer.decode(output[0], skip_special_tokens=True))
    return 0


def _generate_tensor_parallel(args) -> int:
    """--tp G > 1: outside torchrun, start G ranks of this same command through torch.distributed.run;
    inside a worker, load only this rank's shard and generate, rank 0 printing the text."""
    from pathlib import Path

    from flashllm.engine import supports
    from flashllm.engine.tp import finish_worker, in_worker, init_tp, load_sharded, relaunch, worker_world
    from flashllm.models.checkpoint import load_config

    if not supports(load_config(Path(args.dir))):  # fail before starting any process
        raise ValueError(f"--tp needs a model flashllm's engine runs (OPT, Llama, Mistral, Qwen2): {args.dir}")
    if not in_worker():
        return relaunch("flashllm.cli", args.argv, args.tp)
    worker_world(args.tp)
    backend = "gloo" if args.device is not None and args.device.startswith("cpu") else None
    rank, world, device = init_tp(backend)
    model = load_sharded(args.dir, rank, world, device=device, dtype=_dtype(args.dtype))
    text = _generate_with_engine(model, _tokenizer(args.dir), args, eos=_eos_token_id(Path(args.dir)))
    if rank == 0:
        print(text, flush=True)
    finish_worker(0)  # an exception above propagates instead, and torchrun reports the failure


def _eos_token_id(root):
    """eos_token_id of generation_config.json, else of config.json (None if neither has one)."""
    from flashllm.models.checkpoint import read_json
    for name in ("generation_config.json", "config.json"):
        if (root / name).is_file():
            eos = read_json(root / name).get("eos_token_id")
            if eos is not None:
                return eos
    return None


def _generate_with_engine(model, tokenizer, args, eos=None) -> str:
    """`model`: a transformers model (wrapped with from_hf) or an engine Transformer (a tensor-parallel shard)."""
    from flashllm.engine import Generator, Transformer, from_hf

    ids = tokenizer(args.prompt)["input_ids"]
    if eos is None:
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    stops = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stops or [0])[0]
    engine = model if isinstance(model, Transformer) else from_hf(model)
    generator = Generator(engine, 1, len(ids) + args.max_new_tokens,
                          cuda_graph=None if args.cuda_graph else False)
    out = generator.generate([ids], args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                             top_p=args.top_p, stop_tokens=stops, pad_token_id=pad, seed=args.seed)
    return tokenizer.decode(ids + out.sequences()[0], skip_special_tokens=True)


def run_delegated(name: str, argv: list[str]) -> int:
    module_name = DELEGATED[name][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        # Only the command's own module counts as missing; a missing dependency inside it is a real error.
        if e.name is None or not module_name.startswith(e.name):
            raise
        print(f"flashllm: '{name}' is not available in this installation ({module_name} not found)", file=sys.stderr)
        return 1
    return module.main(argv) or 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED:
        return run_delegated(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    args.argv = argv  # what a tensor-parallel `generate --tp G` re-runs in each of its G processes
    try:
        return args.run(args)
    except BrokenPipeError:  # output piped into `head`; silence Python's flush at exit, as its docs advise
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (ValueError, OSError) as e:  # CheckpointError is a ValueError: print it, not a traceback
        print(f"flashllm {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
