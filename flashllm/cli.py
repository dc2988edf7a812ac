"""The `flashllm` command: convert, info, generate and eval, plus the `demo` and `bench` entry points.

Heavy imports (transformers, the models) happen inside the commands so `flashllm --help` stays quick.
Every argument is checked before a model is loaded, and every error is one line on stderr,
`flashllm: error: ...`: exit status 2 for a bad argument, 1 for a failure, 130 for Ctrl-C.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import sys
import time
from pathlib import Path

# Commands whose arguments belong to another module: everything after the name is passed through.
DELEGATED = {"demo": ("flashllm.demo", "the end-to-end demo"),
             "bench": ("flashllm.bench.__main__", "kernel and model benchmarks")}
BENCHMARKS = {"kernel": "flashllm.spmm kernels against dense cuBLAS and PyTorch's sparse peers (GPU)",
              "encode": "encode, decode and validate time of each weight format",
              "e2e": "end-to-end generation: transformers' generate and flashllm's engine, dense and sparse",
              "hf": "transformers' generate with SparseLinear layers, eager and compiled, against dense",
              "overhead": "host time of an eager flashllm.spmm / SparseLinear call against F.linear"}
DTYPES = ("auto", "float16", "bfloat16", "float32")
CALIBRATED = ("wanda", "sparsegpt")


class UsageError(ValueError):
    """An argument that cannot work, found before any model is loaded (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as the same one line as every other error."""

    def error(self, message):
        self.exit(2, f"flashllm: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    parser = _Parser(prog="flashllm", description="Unstructured-sparse LLM weights: "
                     "compress Hugging Face models, inspect and run the checkpoints.")
    parser.add_argument("--version", action="version", version=f"flashllm {__version__}",
                        help="print the version and exit")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    convert = commands.add_parser("convert", help="prune a Hugging Face model and save it compressed",
                                  description="Load MODEL_DIR (dense, dense with zeros, or compressed-tensors "
                                  "sparse-bitmask), prune it with sparsify_, save a flashllm checkpoint to OUT_DIR. "
                                  "The checkpoint is written next to OUT_DIR and moved into place when complete; "
                                  "MODEL_DIR is never written to.")
    convert.add_argument("model_dir", metavar="MODEL_DIR", help="Hugging Face model folder (safetensors)")
    convert.add_argument("out_dir", metavar="OUT_DIR",
                         help="where to write the flashllm checkpoint: a new or empty folder, outside MODEL_DIR")
    convert.add_argument("--overwrite", action="store_true",
                         help="replace OUT_DIR's contents if it is not empty (only once the new checkpoint is complete)")
    convert.add_argument("--sparsity", type=float, default=0.5,
                         help="fraction of zeros per layer, in [0, 1) (default 0.5)")
    convert.add_argument("--method", choices=("magnitude", "wanda", "sparsegpt", "none"), default=None,
                         help="pruning method; wanda and sparsegpt need --calibration; 'none' compresses the zeros "
                              "the weights already hold (default wanda)")
    convert.add_argument("--calibration", metavar="PATH",
                         help="calibration text for wanda and sparsegpt: a text file, or a folder of .txt/.md/.rst "
                              "files; the text is tokenized as one sequence and cut into windows")
    convert.add_argument("--calibration-samples", type=int, default=128, metavar="N",
                         help="calibration windows drawn from the text (default 128; fewer if the text is shorter)")
    convert.add_argument("--calibration-tokens", type=int, default=512, metavar="T",
                         help="tokens per calibration window (default 512)")
    convert.add_argument("--seed", type=int, default=0, help="which calibration windows are drawn (default 0)")
    convert.add_argument("--format", choices=("auto", "tiled_csl", "bitmap", "sell", "pairmap"), default="auto",
                         help="compressed format (default auto: pairmap from 65%% sparsity, else the smaller of "
                              "bitmap and tiled_csl, per layer; sell from 85%% with --max-tokens <= 16)")
    convert.add_argument("--max-tokens", type=int, default=None, metavar="N",
                         help="the most tokens a forward will multiply (e.g. the decode batch), for --format auto")
    convert.add_argument("--exclude", action="append", metavar="PATTERN",
                         help="layers to leave dense, fnmatch on module names; repeatable (default: lm_head)")
    convert.add_argument("--max-shard-size", default="5GB", metavar="SIZE",
                         help="largest safetensors shard, in bytes or like 500MB, 2GB (default 5GB)")
    convert.add_argument("--report", metavar="FILE", help="also write the per-layer report as JSON")
    _add_device(convert)
    convert.add_argument("--dtype", choices=DTYPES, default="auto",
                         help="type of the stored values: float16 or bfloat16 (default auto: fp16 and bf16 weights "
                              "keep theirs, fp32 ones become float16); float32 is refused, compressed values are 16-bit")
    convert.set_defaults(run=run_convert)

    info = commands.add_parser("info", help="show the format, sparsity and size of a checkpoint",
                               description="Describe a flashllm, dense(-with-zeros) or compressed-tensors "
                               "checkpoint folder: format, per-layer sparsity and bytes. Every compressed layer "
                               "is read and validated; a corrupted one is an error naming the broken tensor.")
    info.add_argument("dir", metavar="DIR", help="checkpoint folder (config.json + safetensors)")
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    info.set_defaults(run=run_info)

    generate = commands.add_parser("generate", help="generate text from a checkpoint",
                                   description="Load DIR with flashllm.from_pretrained and continue a prompt "
                                   "(through the tokenizer's chat template when it has one). OPT and Llama-family "
                                   "models (Llama, Mistral, Qwen2) run on flashllm's engine (static KV cache, "
                                   "CUDA-graph decode on a GPU); others on transformers' generate. The text goes "
                                   "to stdout, the speed to stderr.")
    generate.add_argument("dir", metavar="DIR", help="checkpoint folder with its tokenizer files")
    generate.add_argument("--prompt", required=True, help="text to continue, or the user's message to a chat model")
    generate.add_argument("--no-chat-template", dest="chat_template", action="store_false",
                          help="feed the prompt as it is even when the tokenizer has a chat template")
    generate.add_argument("--max-new-tokens", type=int, default=32, metavar="N",
                          help="tokens to generate, at least 1 (default 32)")
    generate.add_argument("--temperature", type=float, default=0.0, help="0 (default) is greedy decoding")
    generate.add_argument("--top-k", type=int, default=None, metavar="K",
                          help="sample among the K most likely tokens")
    generate.add_argument("--top-p", type=float, default=None, metavar="P",
                          help="sample from the smallest set holding this probability mass, in (0, 1]")
    generate.add_argument("--seed", type=int, default=None, help="random seed for sampling")
    generate.add_argument("--no-cuda-graph", dest="cuda_graph", action="store_false",
                          help="decode eagerly on a GPU instead of replaying a CUDA graph")
    generate.add_argument("--tp", type=int, default=1, metavar="G",
                          help="tensor parallelism over G processes (one GPU each; gloo on the CPU), started "
                          "through torchrun unless already inside a torchrun worker (default 1)")
    _add_device(generate)
    generate.add_argument("--dtype", choices=DTYPES, default="auto",
                          help="type the model computes in (default auto: as stored); compressed layers keep "
                               "their 16-bit values, and with float32 a layer whose values are not exactly 16-bit "
                               "stays dense")
    generate.set_defaults(run=run_generate)

    evaluate = commands.add_parser("eval", help="perplexity of a checkpoint on a text corpus",
                                   description="Perplexity of DIR (a flashllm, dense or plain transformers causal "
                                   "LM folder) on the text of --data, tokenized as one sequence and scored in windows "
                                   "of --window tokens; with --stride < --window each window scores only its last "
                                   "--stride tokens, the rest being context.")
    evaluate.add_argument("dir", metavar="DIR", help="checkpoint folder with its tokenizer files")
    evaluate.add_argument("--data", required=True, metavar="PATH",
                          help="text file, or a folder of .txt/.md/.rst files (joined by blank lines)")
    evaluate.add_argument("--window", type=int, default=512, metavar="T", help="tokens per window (default 512)")
    evaluate.add_argument("--stride", type=int, default=None, metavar="S",
                          help="tokens between window starts, in [1, --window] (default: --window, no overlap)")
    evaluate.add_argument("--max-windows", type=int, default=None, metavar="N",
                          help="score only the first N windows (a quick estimate)")
    evaluate.add_argument("--batch-size", type=int, default=1, metavar="B", help="windows per forward (default 1)")
    evaluate.add_argument("--json", action="store_true", help="print the result as JSON")
    _add_device(evaluate)
    evaluate.add_argument("--dtype", choices=DTYPES, default="auto",
                          help="type the model computes in (default auto: as stored)")
    evaluate.set_defaults(run=run_eval)

    commands.add_parser("demo", help="the end-to-end demo (run `flashllm demo --help` for its options)")
    bench = commands.add_parser("bench", help="kernel and model benchmarks", description="Benchmarks; "
                                "`flashllm bench BENCHMARK --help` lists each one's options.")
    benchmarks = bench.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for name in _benchmark_names():
        benchmarks.add_parser(name, help=BENCHMARKS.get(name, ""), add_help=False)
    return parser


def _benchmark_names() -> list[str]:
    try:
        from .bench.__main__ import COMMANDS
    except ImportError:
        return list(BENCHMARKS)
    return list(COMMANDS)


def _add_device(parser) -> None:
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available, else cpu)")


# ------------------------------------------------------------------------------------- argument checks

def resolve_device(name: str | None) -> str:
    """The device a command runs on: `name` checked against this machine, or cuda if available, else cpu."""
    import torch
    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {name!r}: expected cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return str(device)
    if device.type != "cuda":
        raise UsageError(f"--device {name}: flashllm runs on cpu or cuda")
    if not torch.backends.cuda.is_built():
        raise UsageError(f"--device {name}: this torch ({torch.__version__}) is built without CUDA; "
                         "use --device cpu, or install a CUDA build of torch")
    if not torch.cuda.is_available():
        raise UsageError(f"--device {name}: torch sees no CUDA GPU on this machine; use --device cpu")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return str(device)


def _model_folder(path: str) -> tuple[Path, dict]:
    """An existing Hugging Face-style folder and its config.json."""
    from flashllm.models.checkpoint import read_json
    root = Path(path)
    if not root.exists():
        raise UsageError(f"folder {path} does not exist")
    if not root.is_dir():
        raise UsageError(f"{path} is not a folder")
    if not (root / "config.json").is_file():
        raise UsageError(f"{path} has no config.json: not a Hugging Face model folder")
    return root, read_json(root / "config.json")


def _check_range(flag: str, value, low, high=None, low_open=False, high_open=False) -> None:
    too_low = value <= low if low_open else value < low
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        if high is None:
            expected = f"> {low}" if low_open else f">= {low}"
        else:
            expected = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise UsageError(f"{flag} must be {expected}, got {value}")


def _check_output(source: Path, out_dir: str, overwrite: bool) -> Path:
    """OUT_DIR, refused where writing it could touch MODEL_DIR or replace a user's files unasked."""
    out = Path(out_dir)
    src, dst = source.resolve(), out.resolve()
    if dst == src:
        raise UsageError(f"OUT_DIR {out_dir} is the input folder: convert writes a new checkpoint, "
                         "choose another folder")
    if dst.is_relative_to(src):
        raise UsageError(f"OUT_DIR {out_dir} is inside the input folder {source}: choose a folder outside it")
    if src.is_relative_to(dst):
        raise UsageError(f"OUT_DIR {out_dir} contains the input folder {source}: choose a folder outside it")
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise UsageError(f"OUT_DIR {out_dir} exists and is not a folder")
        if any(out.iterdir()) and not overwrite:
            raise UsageError(f"OUT_DIR {out_dir} is not empty: pass --overwrite to replace its contents, "
                             "or choose a new folder")
    parent = next(p for p in dst.parents if p.exists())
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"OUT_DIR {out_dir}: cannot create folders in {parent}")
    return out


def _check_report(path: str | None, source: Path) -> None:
    if path is None:
        return
    report = Path(path)
    if report.is_dir():
        raise UsageError(f"--report {path} is a folder; name a file")
    if not report.resolve().parent.is_dir():
        raise UsageError(f"--report {path}: folder {report.parent} does not exist")
    if report.exists() and report.resolve().is_relative_to(source.resolve()):
        raise UsageError(f"--report {path} would overwrite a file of the input folder")


def _text_source(flag: str, value: str) -> Path:
    """A text file or a folder of text files, readable as UTF-8; every problem is a UsageError."""
    from flashllm.prune import read_corpus
    path = Path(value)
    if not path.exists():
        raise UsageError(f"{flag} {value}: file or folder does not exist")
    try:
        read_corpus(path)
    except ValueError as e:
        raise UsageError(f"{flag} {e}") from None
    return path


def _calibration(args, method: str, config: dict) -> Path | None:
    """The calibration text's path, or None for a method that takes none; every problem is a UsageError."""
    named = f"--method {method}" + ("" if args.method else " (the default)")
    if method not in CALIBRATED:
        if args.calibration:
            raise UsageError(f"--calibration is read by --method wanda and sparsegpt only, not {method}")
        return None
    if config.get("is_encoder_decoder"):
        raise UsageError(f"{named} calibrates decoder-only models, and {args.model_dir} is an encoder-decoder "
                         f"model ({config.get('model_type')}): use --method magnitude")
    if not args.calibration:
        raise UsageError(f"{named} needs --calibration PATH, a text file or folder of calibration text; "
                         "--method magnitude prunes without one")
    _check_range("--calibration-samples", args.calibration_samples, 1)
    _check_range("--calibration-tokens", args.calibration_tokens, 2)
    return _text_source("--calibration", args.calibration)


def _shard_size(text: str) -> int:
    from flashllm.models.save import parse_size
    try:
        return parse_size(text)
    except ValueError:
        raise UsageError(f"--max-shard-size {text!r}: expected bytes or a size like 500MB or 2GB") from None


# -------------------------------------------------------------------------------------------- convert

def run_convert(args) -> int:
    from flashllm.models.checkpoint import PRODUCER, checkpoint_kind

    source, config = _model_folder(args.model_dir)
    if checkpoint_kind(config) == PRODUCER:
        raise UsageError(f"{args.model_dir} is already a flashllm checkpoint")
    _check_range("--sparsity", args.sparsity, 0, 1, high_open=True)
    if args.max_tokens is not None:
        _check_range("--max-tokens", args.max_tokens, 1)
    shard_size = _shard_size(args.max_shard_size)
    if args.dtype == "float32":
        raise UsageError("--dtype float32: compressed values are 16-bit (the kernels read float16 and bfloat16); "
                         "choose --dtype float16, bfloat16 or auto")
    method = args.method or "wanda"
    calibration = _calibration(args, method, config)
    out = _check_output(source, args.out_dir, args.overwrite)
    _check_report(args.report, source)
    device = resolve_device(args.device)
    tokenizer = _tokenizer(source) if calibration else None

    from flashllm.models import from_pretrained, save_pretrained
    from flashllm.sparsify import sparsify_
    # Every layer stays dense while loading (threshold None): pruning decides what gets compressed.
    model = from_pretrained(source, device=device, dtype=_dtype(args.dtype), sparsity_threshold=None)
    exclude = tuple(args.exclude or ("lm_head",))
    _refuse_fp16_overflow(model, exclude)
    report = sparsify_(model, sparsity=args.sparsity, method=None if method == "none" else method,
                       calibration=calibration, format=args.format, max_tokens=args.max_tokens, exclude=exclude,
                       tokenizer=tokenizer, progress=True, calibration_samples=args.calibration_samples,
                       calibration_tokens=args.calibration_tokens, seed=args.seed)
    _save_atomically(out, lambda folder: save_pretrained(model, folder, max_shard_size=shard_size,
                                                         tokenizer=tokenizer))
    print(_report_text(report))
    if args.report:
        with open(args.report, "w") as f:
            json.dump(report.to_dict(), f, indent=2)
    print(f"saved {args.out_dir}")
    return 0


def _dtype(name: str):
    import torch
    return None if name == "auto" else getattr(torch, name)


def _refuse_fp16_overflow(model, exclude) -> None:
    """sparsify_ stores an fp32 layer's values as float16: refuse a finite value that would become inf."""
    import fnmatch

    import torch

    from flashllm.nn import dense_weight_of, is_linear_like
    limit = torch.finfo(torch.float16).max
    for name, module in model.named_modules():
        if not is_linear_like(module) or any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(name, "*." + p)
                                             for p in exclude):
            continue
        weight = dense_weight_of(module)
        if weight.dtype != torch.float32:
            continue
        overflow = torch.isinf(weight.to(torch.float16)) & torch.isfinite(weight)
        if bool(overflow.any()):
            value = float(weight[overflow].reshape(-1)[0])
            raise ValueError(f"{name}.weight holds {value:g}, outside float16's range (largest {limit:g}): "
                             "convert with --dtype bfloat16")


def _save_atomically(out: Path, save) -> None:
    """`save(folder)` into a new folder next to `out`, then renamed to `out`: `out` is replaced only by a
    complete checkpoint, and an interrupted or failed save leaves it as it was."""
    import shutil
    import tempfile
    import uuid

    out.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        partial.chmod(0o777 & ~umask)  # mkdtemp's folder is private; the checkpoint is an ordinary folder
        save(partial)
        if not (out.exists() or out.is_symlink()):
            os.rename(partial, out)
            return
        old = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.replaced"
        os.rename(out, old)
        try:
            os.rename(partial, out)
        except BaseException:
            os.rename(old, out)
            raise
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        else:
            old.unlink()
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def _report_text(report) -> str:
    """The sparsify_ table, its size line saying larger or smaller as it is (the formats' offsets and
    masks outweigh the zeros at low sparsity)."""
    from flashllm.nn import format_nbytes
    lines = str(report).splitlines()
    before, after = report.bytes_before, report.bytes_after
    change = "no layers" if not after else (f"{before / after:.2f}x smaller" if before >= after
                                             else f"{after / before:.2f}x larger")
    lines[1 + len(report)] = (f"{len(report)} layers ({report.method or 'no pruning'}): {format_nbytes(before)} -> "
                              f"{format_nbytes(after)} ({change}) in {report.seconds:.1f} s")
    return "\n".join(lines)


def _tokenizer(directory):
    from transformers import AutoTokenizer
    try:
        return AutoTokenizer.from_pretrained(str(directory), local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{directory}: cannot load its tokenizer: {e}") from e


# ----------------------------------------------------------------------------------------------- eval

def run_eval(args) -> int:
    root, config = _model_folder(args.dir)
    _check_range("--window", args.window, 2)
    if args.stride is not None:
        _check_range("--stride", args.stride, 1, args.window)
    if args.max_windows is not None:
        _check_range("--max-windows", args.max_windows, 1)
    _check_range("--batch-size", args.batch_size, 1)
    if config.get("is_encoder_decoder"):
        raise UsageError(f"eval scores causal language models; {args.dir} is an encoder-decoder model "
                         f"({config.get('model_type')})")
    data = _text_source("--data", args.data)
    device = resolve_device(args.device)
    tokenizer = _tokenizer(root)

    from flashllm.eval import perplexity, tokenize
    from flashllm.models import from_pretrained
    from flashllm.prune import read_corpus
    ids = tokenize(tokenizer, read_corpus(data))
    if ids.numel() < 2:
        raise UsageError(f"--data {args.data}: {ids.numel()} token(s); perplexity needs at least 2")
    model = from_pretrained(root, device=device, dtype=_dtype(args.dtype))
    result = perplexity(model, ids=ids, window=args.window, stride=args.stride, batch_size=args.batch_size,
                        max_windows=args.max_windows, device=device, progress=True)
    if args.json:
        print(json.dumps({"dir": str(root), "data": str(data), **result.to_dict()}, indent=2))
    else:
        print(f"{root}: {result}")
    return 0


# ----------------------------------------------------------------------------------------------- info

def run_info(args) -> int:
    from flashllm.models import describe
    from flashllm.nn import format_nbytes

    root, _ = _model_folder(args.dir)
    info = describe(root)
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


# ------------------------------------------------------------------------------------------- generate

def _check_generate_args(args) -> None:
    _check_range("--max-new-tokens", args.max_new_tokens, 1)
    _check_range("--temperature", args.temperature, 0)
    if args.top_k is not None:
        _check_range("--top-k", args.top_k, 1)
    if args.top_p is not None:
        _check_range("--top-p", args.top_p, 0, 1, low_open=True)
    _check_range("--tp", args.tp, 1)


def _prompt_ids(tokenizer, args) -> tuple[list[int], bool]:
    """The prompt's token ids, and whether the tokenizer's chat template made them."""
    if args.chat_template and getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": args.prompt}], add_generation_prompt=True,
                                            tokenize=True, return_dict=False)
        return list(ids), True
    return list(tokenizer(args.prompt)["input_ids"]), False


def _check_length(config: dict, prompt: int, new: int) -> None:
    limit = next((config[k] for k in ("max_position_embeddings", "n_positions", "max_seq_len")
                  if isinstance(config.get(k), int)), None)
    if limit is not None and prompt + new > limit:
        raise UsageError(f"the prompt ({prompt} tokens) and --max-new-tokens {new} exceed the model's {limit} positions")


def run_generate(args) -> int:
    import torch
    from flashllm.engine import supports
    from flashllm.models import from_pretrained

    root, config = _model_folder(args.dir)
    _check_generate_args(args)
    if args.tp > 1:
        return _generate_tensor_parallel(args)
    device = resolve_device(args.device)
    tokenizer = _tokenizer(root)
    ids, chat = _prompt_ids(tokenizer, args)
    _check_length(config, len(ids), args.max_new_tokens)
    model = from_pretrained(root, device=device, dtype=_dtype(args.dtype))
    if not hasattr(model, "generate") or not model.can_generate():
        raise ValueError(f"{args.dir} holds a {type(model).__name__}, which cannot generate text")
    started = time.perf_counter()
    if supports(model.config):
        new = _generate_with_engine(model, ids, args, tokenizer, _stop_tokens(model, tokenizer))
    else:
        if args.seed is not None:
            torch.manual_seed(args.seed)
        sampling = dict(do_sample=True, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p) \
            if args.temperature > 0 else dict(do_sample=False)
        inputs = torch.tensor([ids], device=model.device)
        with torch.inference_mode():
            output = model.generate(input_ids=inputs, attention_mask=torch.ones_like(inputs),
                                    max_new_tokens=args.max_new_tokens, **sampling,
                                    pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
        # A decoder-only model returns the prompt and its continuation; an encoder-decoder the output alone.
        new = output[0].tolist() if model.config.is_encoder_decoder else output[0, len(ids):].tolist()
        chat = chat or model.config.is_encoder_decoder
    _print_generation(tokenizer, ids, new, time.perf_counter() - started, reply_only=chat)
    return 0


def _print_generation(tokenizer, ids: list[int], new: list[int], seconds: float, reply_only: bool) -> None:
    """The text on stdout (the reply alone after a chat template, else prompt and continuation); the
    speed on stderr, so that piping the text stays clean."""
    print(tokenizer.decode(new if reply_only else ids + new, skip_special_tokens=True), flush=True)
    rate = len(new) / seconds if seconds > 0 else float("inf")
    print(f"{len(new)} tokens in {seconds:.2f} s: {rate:.3g} tokens/s (prompt {len(ids)} tokens)", file=sys.stderr)


def _generate_tensor_parallel(args) -> int:
    """--tp G > 1: outside torchrun, start G ranks of this same command through torch.distributed.run;
    inside a worker, load only this rank's shard and generate, rank 0 printing the text."""
    from flashllm.engine import supports
    from flashllm.engine.tp import finish_worker, in_worker, init_tp, load_sharded, relaunch, worker_world
    from flashllm.models.checkpoint import load_config

    root = Path(args.dir)
    if not supports(load_config(root)):  # fail before starting any process
        raise UsageError(f"--tp needs a model flashllm's engine runs (OPT, Llama, Mistral, Qwen2): {args.dir}")
    if args.device is not None:
        resolve_device(args.device)
    if not in_worker():
        return relaunch("flashllm.cli", args.argv, args.tp)
    worker_world(args.tp)
    backend = "gloo" if args.device is not None and args.device.startswith("cpu") else None
    rank, world, device = init_tp(backend)
    tokenizer = _tokenizer(root)
    ids, chat = _prompt_ids(tokenizer, args)
    model = load_sharded(root, rank, world, device=device, dtype=_dtype(args.dtype))
    started = time.perf_counter()
    eos = _eos_token_id(root)
    new = _generate_with_engine(model, ids, args, tokenizer, _stop_tokens(None, tokenizer, eos))
    if rank == 0:
        _print_generation(tokenizer, ids, new, time.perf_counter() - started, reply_only=chat)
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


def _stop_tokens(model, tokenizer, eos=None) -> list[int]:
    """The end-of-sequence ids: `eos`, else the model's generation config's, else the tokenizer's."""
    if eos is None:
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)


def _generate_with_engine(model, ids: list[int], args, tokenizer, stops: list[int]) -> list[int]:
    """The new token ids. `model`: a transformers model (wrapped with from_hf) or an engine Transformer
    (a tensor-parallel shard)."""
    from flashllm.engine import Generator, Transformer, from_hf

    engine = model if isinstance(model, Transformer) else from_hf(model)
    generator = Generator(engine, 1, len(ids) + args.max_new_tokens,
                          cuda_graph=None if args.cuda_graph else False)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stops or [0])[0]
    out = generator.generate([ids], args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                             top_p=args.top_p, stop_tokens=stops, pad_token_id=pad, seed=args.seed)
    return list(out.sequences()[0])


# ------------------------------------------------------------------------------------------------ main

def run_delegated(name: str, argv: list[str]) -> int:
    module_name = DELEGATED[name][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        # Only the command's own module counts as missing; a missing dependency inside it is a real error.
        if e.name is None or not module_name.startswith(e.name):
            raise
        print(f"flashllm: error: '{name}' is not available in this installation ({module_name} not found)",
              file=sys.stderr)
        return 1
    return module.main(argv) or 0


def _error(message: str, code: int) -> int:
    # One line: the messages of transformers and safetensors often span several.
    print("flashllm: error: " + re.sub(r"\s*\n\s*", " ", message.strip()), file=sys.stderr)
    return code


def _run(argv: list[str]) -> int:
    if argv[:1] == ["demo"] or argv[:1] == ["bench"] and argv[1:2] and argv[1] in _benchmark_names():
        return run_delegated(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    args.argv = argv  # what a tensor-parallel `generate --tp G` re-runs in each of its G processes
    return args.run(args)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _run(argv)
    except KeyboardInterrupt:
        print("flashllm: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head`; silence Python's flush at exit, as its docs advise
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except UsageError as e:
        return _error(str(e), 2)
    except ModuleNotFoundError as e:
        return _error(f"this needs the Python package {e.name!r}, which is not installed "
                      f"(pip install {e.name.split('.')[0] if e.name else '...'})", 1)
    except (ValueError, OSError, MemoryError) as e:  # CheckpointError is a ValueError
        return _error(str(e) or type(e).__name__, 1)
    except RuntimeError as e:
        if "out of memory" not in str(e):
            raise  # a bug: its traceback is what a report needs
        return _error(str(e), 1)


if __name__ == "__main__":
    sys.exit(main())
