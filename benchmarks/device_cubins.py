"""Device aid: the device NVRTC's cubins of kernel instantiations, optionally under wide_ablate.py's edits,
written to $OUT for `cuobjdump -sass` here (the device's NVRTC may schedule differently from this machine's).

usage: python benchmarks/device_cubins.py 'spmm_wide<0,16,6,false,2>' [EDIT ...]   (EDIT: a wide_ablate.py label)
"""
import os
import sys
import tempfile

from flashllm.kernels import jit


def edits_by_label() -> dict:
    ns = {}
    path = os.path.join(os.path.dirname(__file__), "wide_ablate.py")
    exec(open(path).read().split("original = jit")[0], ns)  # its EDITS table, without running it
    return ns["EDITS"]


def main(name: str, labels: list[str]) -> None:
    out = os.environ.get("OUT", "/tmp/out")
    os.makedirs(out, exist_ok=True)
    os.environ["FLASHLLM_CACHE_DIR"] = tempfile.mkdtemp()  # compile afresh, whatever is cached
    table, original = edits_by_label(), jit._source
    print("NVRTC", jit.nvrtc_version())
    for label in labels or ["base"]:
        def source(program="spmm.cu", edits=table[label]):
            s = original(program)
            for old, new in edits:
                assert s.count(old) == 1, f"{label}: the edit no longer matches the source: {old!r}"
                s = s.replace(old, new)
            return s
        jit._source = source
        cubin, _ = jit.compile_kernel(name, "sm_90a")
        path = os.path.join(out, f"{label}.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        print(path, len(cubin), "bytes")
    jit._source = original


if __name__ == "__main__":
    argv = sys.argv[1:]
    sys.argv = sys.argv[:1]  # wide_ablate.py's table reads sys.argv for its shapes
    main(argv[0], argv[1:])
