"""`flashllm bench <command>` (also `python -m flashllm.bench <command>`): every benchmark the README and docs quote.

  kernel     SpMM kernels against cuBLAS over the Flash-LLM paper's shapes, every format (--large-n: prefill sizes)
  decode     each block layout's decode alone (shared memory to A registers), SM cycles per 1024 weights
  e2e        generation end to end: Hugging Face, the engine dense and sparse (--tp G: tensor parallel)
  hf         transformers' generate with SparseLinear layers, eager and compiled, against dense
  encode     compress / decompress / validate speed of every format (CPU or GPU)
  step       one decode step's GPU time by kernel
  attention  the decode-attention kernel against cuDNN SDPA
  quality    perplexity of a model pruned by magnitude, Wanda and SparseGPT
  overhead   host time of an eager flashllm.spmm / SparseLinear call against F.linear
  probe      forced configs, source ablations and instruction rates, for the tuning rules (docs/tuning.md)
"""

import importlib
import sys

COMMANDS = {name: f"flashllm.bench.{name}" for name in
            ("kernel", "decode", "e2e", "hf", "encode", "step", "attention", "quality", "overhead", "probe")}


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(__doc__)
        print(f"usage: flashllm bench {{{','.join(COMMANDS)}}} [--help]")
        return 2
    return importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
