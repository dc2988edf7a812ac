"""`python -m flashllm`: the `flashllm` command."""

import sys

from flashllm.cli import main

if __name__ == "__main__":
    sys.exit(main())
