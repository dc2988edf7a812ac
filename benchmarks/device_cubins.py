"""Device aid: the device NVRTC's cubins of kernel instantiations, optionally under wide_edits.py's edits,
written to $OUT for `cuobjdump -sass` here (the device's NVRTC may schedule differently from this machine's).

usage: python benchmarks/device_cubins.py 'spmm_wide<0,16,6,false,2>' [EDIT ...]   (EDIT: a wide_edits.py label)
"""
import os
import sys
import tempfile

from flashllm.kernels import jit
from wide_edits import EDITS, edited  # benchmarks/ is the script's directory


def main(name: str, labels: list[str]) -> None:
    out = os.environ.get("OUT", "/tmp/out")
    os.makedirs(out, exist_ok=True)
    os.environ["FLASHLLM_CACHE_DIR"] = tempfile.mkdtemp()  # compile afresh, whatever is cached
    original = jit._source
    print("NVRTC", jit.nvrtc_version())
    for label in labels or ["base"]:
        def source(program="spmm.cu", label=label):
            return edited(original(program), EDITS[label], label)
        jit._source = source
        cubin, _ = jit.compile_kernel(name, "sm_90a")
        path = os.path.join(out, f"{label}.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        print(path, len(cubin), "bytes")
    jit._source = original


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
