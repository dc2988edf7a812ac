"""`python -m flashllm.bench <kernel|encode|...>`: the benchmarks behind `flashllm bench`."""

import importlib
import sys

COMMANDS = {"kernel": "flashllm.bench.kernel", "encode": "flashllm.bench.encode", "e2e": "flashllm.bench.e2e"}


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: flashllm bench {{{','.join(COMMANDS)}}} [--help]")
        return 2
    return importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
