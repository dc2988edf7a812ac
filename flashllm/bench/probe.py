"""`flashllm bench probe`: time what dispatch would not pick, to check or set a tuning rule (docs/tuning.md).

  configs  one format under forced launch configs (dispatch overrides, e.g. 'split=4;wide=1,groups=3') against
           dispatch's own choice and cuBLAS; every column is checked against an fp32 reference first
  ablate   the dispatched kernel with parts of its source cut out (flashllm/bench/edits.py); ablated kernels
           compute garbage, only their time is read
  rates    micro-benchmarks: warp-instructions per clock of the integer pipes, mma.sync, mma.sp and wgmma
  launch   three launches of one kernel, for ncu or compute-sanitizer (prints the config it ran)
  cubins   this machine's NVRTC cubins of kernel instantiations, edited or not, for `cuobjdump -sass`

Timing is the kernel bench's: CUDA events around CUDA-graph replays over rotating weight copies (nothing sits in
L2).  One run of a kernel of a few hundred microseconds moves by up to ~10 % between runs on one machine, more
than many config changes gain, so every column is timed --reps times round-robin and the medians compared.
Weights: random values under uniformly random masks, fp16 (--dtype).  `flashllm bench probe MODE --help`.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import platform
import statistics
import sys
import tempfile
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F

import flashllm
# The library internals this tool drives: the dispatcher's entry points (spmm_forced, config_of), the
# large-N path, and the JIT's source folder and caches (kernel_sources).
from flashllm.kernels import jit
from flashllm.kernels.programs import program_for
from flashllm.kernels.spmm import config_for, spmm_kernel
from flashllm.kernels.decompress import dense_matmul

from . import edits as edit_table
from .kernel import PAPER_SHAPES, clone_weight, rel_err
from .timing import copies_to_defeat_l2, time_graph


def spmm_forced(x, w, overrides: dict):
    """y = x @ W^T through our kernel under dispatch overrides (e.g. split=4, wide=1, groups=3)."""
    return spmm_kernel(x, w, **overrides)


def config_of(w, n: int, overrides: dict):
    return config_for(w, n, **overrides)


def csrc_folder() -> Path:
    return jit.CSRC


@contextlib.contextmanager
def kernel_sources(folder: Path | None):
    """Compile and load kernels from `folder` (a copy of csrc/, edited) while inside; None: the library's own."""
    if folder is None:
        yield
        return
    saved = jit.CSRC
    jit.CSRC = folder
    jit._source.cache_clear()
    jit._loaded.clear()
    try:
        yield
    finally:
        jit.CSRC = saved
        jit._source.cache_clear()
        jit._loaded.clear()


# --- arguments -----------------------------------------------------------------------------------------------

def parse_shapes(text: str) -> list[tuple[int, int]]:
    """'27648x9216,7168x7168', or 'paper': the 12 OPT-30B/66B/175B layer shapes of the kernel bench."""
    if text == "paper":
        return list(PAPER_SHAPES)
    return [tuple(int(v) for v in s.lower().split("x")) for s in text.split(",") if s]


def parse_config(text: str) -> dict | str:
    """'split=4,cluster=1' -> {'split': 4, 'cluster': 1}; 'dense' (decompress + cuBLAS) stays a word."""
    text = text.strip()
    if text in ("", "auto"):
        return {}
    if text == "dense":
        return "dense"
    out = {}
    for kv in text.split(","):
        key, sep, value = kv.partition("=")
        if not sep:
            raise ValueError(f"a config is key=value pairs joined by ',' (or 'dense'), got {text!r}")
        out[key.strip()] = int(value)
    return out


def parse_configs(text: str) -> list[dict | str]:
    return [parse_config(c) for c in text.split(";") if c.strip()]


def label_of(cfg: dict | str) -> str:
    return cfg if isinstance(cfg, str) else (",".join(f"{k}{v}" for k, v in cfg.items()) or "auto")


def common_args(p: argparse.ArgumentParser, shapes: str, sparsities: str, ns: str) -> None:
    p.add_argument("--format", default="bitmap", choices=flashllm.FORMATS)
    p.add_argument("--shapes", default=shapes, help=f"MxK list or 'paper' (the 12 kernel-bench shapes; default {shapes})")
    p.add_argument("--sparsities", default=sparsities, help=f"(default {sparsities})")
    p.add_argument("--ns", default=ns, help=f"tokens per call (default {ns})")
    p.add_argument("--reps", type=int, default=3, help="interleaved timings per column; medians (default 3)")
    p.add_argument("--dtype", default="float16", choices=("float16", "bfloat16"))
    p.add_argument("--out", default=None, help="also write the rows as JSON to this file")


# --- shared measurement pieces -------------------------------------------------------------------------------

def cases(a):
    """(m, k, sparsity, n, x, dense copies, sparse copies, fp32 reference) for every point of the grid."""
    dtype = getattr(torch, a.dtype)
    torch.manual_seed(0)
    for m, k in parse_shapes(a.shapes):
        dense = torch.randn(m, k, device="cuda", dtype=dtype) * 0.05
        for sp in (float(s) for s in a.sparsities.split(",")):
            w = dense * (torch.rand_like(dense, dtype=torch.float32) >= sp)
            dcopies = [w] + [w.clone() for _ in range(copies_to_defeat_l2(w.numel() * 2) - 1)]
            sw = flashllm.compress(w, a.format)
            copies = [sw] + [clone_weight(sw) for _ in range(copies_to_defeat_l2(sw.nbytes) - 1)]
            for n in (int(v) for v in a.ns.split(",")):
                x = torch.randn(n, k, device="cuda", dtype=dtype)
                yield m, k, sp, n, x, dcopies, copies, x.float() @ w.float().T


def medians(columns: dict, reps: int, sources: dict | None = None, launches: int = 20) -> dict:
    """Median microseconds per column (a list of callables, one per weight copy), timed `reps` times
    round-robin; `sources` may give a column its own kernel-source folder."""
    sources = sources or {}
    times = {label: [] for label in columns}
    for _ in range(reps):
        for label, fns in columns.items():
            with kernel_sources(sources.get(label)):
                times[label].append(time_graph(fns, launches=launches, replays=5))
    return {label: statistics.median(ts) for label, ts in times.items()}


def write_rows(a, rows: list) -> None:
    if not a.out:
        return
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"mode": a.mode, "device": torch.cuda.get_device_name(), "date": date.today().isoformat(),
                               "torch": torch.__version__, "host": platform.node(), "command": a.command,
                               "rows": rows}, indent=1))
    print(f"wrote {out}")


# --- modes ---------------------------------------------------------------------------------------------------

def run_configs(a) -> list:
    configs = ([{}] if a.auto else []) + parse_configs(a.configs)
    rows = []
    for m, k, sp, n, x, dcopies, copies, ref in cases(a):
        columns, shown = {"cuBLAS": [lambda d=d: F.linear(x, d) for d in dcopies]}, {}
        for cfg in configs:
            label = label_of(cfg)
            if cfg == "dense":
                fn, shown[label] = dense_matmul, "decompress + cuBLAS"
            else:
                fn = lambda x, w, cfg=cfg: spmm_forced(x, w, cfg)  # noqa: E731
                try:
                    shown[label] = repr(config_of(copies[0], n, cfg))
                    err = rel_err(fn(x, copies[0]), ref)
                except ValueError as e:  # a forced config this weight cannot take
                    shown[label] = f"n/a: {e}"
                    continue
                if err > 2e-3:
                    raise AssertionError(f"{m}x{k} {sp:.0%} N={n} {label}: relative error {err:.1e}")
            columns[label] = [lambda c=c, fn=fn: fn(x, c) for c in copies]
        us = medians(columns, a.reps)
        base = us.pop("cuBLAS")
        cells = [f"{label} {base / us[label]:.2f}x" if label in us else f"{label} n/a" for label in shown]
        print(f"{m}x{k} {a.format} {sp:.0%} N={n:4d} cuBLAS {base:7.1f} us | " + " | ".join(cells), flush=True)
        if a.show_configs:
            for label, text in shown.items():
                print(f"    {label}: {text}")
        rows.append(dict(M=m, K=k, sparsity=sp, N=n, format=a.format, cublas_us=base, us=us, configs=shown))
    return rows


def edited_folder(spec: str, root: Path) -> Path:
    """A copy of csrc/ with `spec`'s edits, under `root`."""
    files = edit_table.apply(edit_table.source_files(csrc_folder()), spec)
    folder = root / spec.replace("+", "_")
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def run_ablate(a) -> list:
    specs = [s for s in a.edits.split(",") if s]
    forced = parse_config(a.config)
    if forced == "dense":
        raise SystemExit("--config names a kernel config to ablate, not 'dense'")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        sources = {spec: edited_folder(spec, Path(tmp)) for spec in specs}
        if a.csrc:
            sources["other"] = Path(a.csrc)
        for m, k, sp, n, x, dcopies, copies, ref in cases(a):
            columns = {"cuBLAS": [lambda d=d: F.linear(x, d) for d in dcopies]}
            for label in sources:
                with kernel_sources(sources[label]):
                    spmm_forced(x, copies[0], forced)  # compile outside the timing
                columns[label] = [lambda c=c: spmm_forced(x, c, forced) for c in copies]
            us = medians(columns, a.reps, sources)
            cfg = config_of(copies[0], n, forced)
            print(f"{m}x{k} {a.format} {sp:.0%} N={n:4d} | cuBLAS {us['cuBLAS']:7.1f} | "
                  + " | ".join(f"{label} {us[label]:7.1f}" for label in sources) + f" us  [{cfg}]", flush=True)
            rows.append(dict(M=m, K=k, sparsity=sp, N=n, format=a.format, us=us, config=repr(cfg)))
    return rows


RATE_SRC = r"""
#include "common.cuh"
#include "wgmma.cuh"

// CHAINS independent mma.sync m16n8k16 accumulators per warp: cycles per MMA per SM sub-partition.
template <int NT, int CHAINS>
__global__ void mma_rate(float* out, int iters) {
  u32 a[4], b[NT][2];
  for (int i = 0; i < 4; i++) a[i] = 0x3c003c00u ^ ((threadIdx.x * 2654435761u + i * 40503u) & 0x03ff03ffu);
  for (int n = 0; n < NT; n++) b[n][0] = b[n][1] = 0x3c003c00u ^ ((threadIdx.x * 97u + n) & 0x03ff03ffu);
  float acc[CHAINS][4] = {};
  for (int it = 0; it < iters; it++)
#pragma unroll
    for (int c = 0; c < CHAINS; c++) mma16816<false>(acc[c], a, b[c % NT]);
  float s = 0.f;
  for (int c = 0; c < CHAINS; c++) s += acc[c][0] + acc[c][3];
  if (s == 12345.f) out[threadIdx.x] = s;
}

// The sparse tensor core: mma.sp m16n8k32 (A 2:4: 4 value registers + a metadata register for a 16x32 tile).
template <int NT, int CHAINS>
__global__ void mma_sp_rate(float* out, int iters) {
  u32 a[4], b[NT][4];
  for (int i = 0; i < 4; i++) a[i] = 0x3c003c00u ^ ((threadIdx.x * 2654435761u + i * 40503u) & 0x03ff03ffu);
  for (int n = 0; n < NT; n++)
    for (int i = 0; i < 4; i++) b[n][i] = 0x3c003c00u ^ ((threadIdx.x * 97u + n + i) & 0x03ff03ffu);
  const u32 meta = 0x44444444u;  // every group: values at columns 0 and 1
  float acc[CHAINS][4] = {};
  for (int it = 0; it < iters; it++)
#pragma unroll
    for (int c = 0; c < CHAINS; c++) {
      const u32(&bb)[4] = b[c % NT];
      asm volatile("mma.sp.sync.aligned.m16n8k32.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
                   "{%8,%9,%10,%11}, {%0,%1,%2,%3}, %12, 0x0;\n"
                   : "+f"(acc[c][0]), "+f"(acc[c][1]), "+f"(acc[c][2]), "+f"(acc[c][3])
                   : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(bb[0]), "r"(bb[1]), "r"(bb[2]), "r"(bb[3]),
                     "r"(meta));
    }
  float s = 0.f;
  for (int c = 0; c < CHAINS; c++) s += acc[c][0] + acc[c][3];
  if (s == 12345.f) out[threadIdx.x] = s;
}

// Integer pipes: 8 independent chains of one instruction (OP 0 popc, 1 lop3, 2 shf, 3 prmt, 4 imad,
// 5 popc and lop3 alternating).
template <int OP>
__global__ void alu_rate(u32* out, int iters) {
  u32 x[8];
  for (int c = 0; c < 8; c++) x[c] = threadIdx.x * 2654435761u + c * 40503u;
  const u32 y = threadIdx.x ^ 0x5bd1e995u, z = threadIdx.x + 7u;
  for (int it = 0; it < iters; it++)
#pragma unroll
    for (int c = 0; c < 8; c++) {
      if (OP == 0) asm volatile("popc.b32 %0, %0;" : "+r"(x[c]));
      if (OP == 1) asm volatile("lop3.b32 %0, %0, %1, %2, 0x96;" : "+r"(x[c]) : "r"(y), "r"(z));
      if (OP == 2) asm volatile("shf.l.wrap.b32 %0, %0, %0, %1;" : "+r"(x[c]) : "r"(y));
      if (OP == 3) asm volatile("prmt.b32 %0, %0, %1, 0x1032;" : "+r"(x[c]) : "r"(y));
      if (OP == 4) asm volatile("mad.lo.u32 %0, %0, %1, %2;" : "+r"(x[c]) : "r"(y), "r"(z));
      if (OP == 5) {
        if (c & 1) asm volatile("popc.b32 %0, %0;" : "+r"(x[c]));
        else asm volatile("lop3.b32 %0, %0, %1, %2, 0x96;" : "+r"(x[c]) : "r"(y), "r"(z));
      }
    }
  u32 s = 0;
  for (int c = 0; c < 8; c++) s += x[c];
  if (s == 12345u) out[threadIdx.x] = s;
}

// wgmma m64nNk16, A from registers (RS) or shared memory, 4 per commit group (sm_90a).
template <int NT, bool RS>
__global__ void wgmma_rate(float* out, int iters) {
  __shared__ __align__(1024) u16 tiles[2 * 64 * 64];  // [B: 64 rows | A: 64 rows] x 64 halves
  for (int i = threadIdx.x; i < 2 * 64 * 64; i += blockDim.x) tiles[i] = 0x3c00 ^ ((i * 2654435761u) & 0x03ff);
  fence_proxy_async();
  __syncthreads();
  const unsigned long long bdesc = sw128_desc(smem_addr(tiles)), adesc = sw128_desc(smem_addr(tiles + 64 * 64));
  u32 a[4];
  for (int i = 0; i < 4; i++) a[i] = 0x3c003c00u ^ ((threadIdx.x * 2654435761u + i * 40503u) & 0x03ff03ffu);
  float acc[NT][4] = {};
  for (int it = 0; it < iters; it++) {
    wgmma_fence();
#pragma unroll
    for (int f = 0; f < 4; f++) {
      if (RS) wgmma_rs<NT, false>(acc, a, bdesc + 2 * f);
      else wgmma_ss<NT, false>(acc, adesc + 2 * f, bdesc + 2 * f);
    }
    wgmma_commit();
    wgmma_wait<0>();
  }
  float s = 0.f;
  for (int n = 0; n < NT; n++) s += acc[n][0];
  if (s == 12345.f) out[threadIdx.x] = s;
}
"""


def run_rates(a) -> list:
    props = torch.cuda.get_device_properties(0)
    sms, cap = props.multi_processor_count, torch.cuda.get_device_capability(0)
    clock_ghz = a.clock_ghz
    out = torch.zeros(1024, device="cuda")
    iters, stream, rows = 2000, torch.cuda.current_stream().cuda_stream, []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name, text in edit_table.source_files(csrc_folder()).items():
            (folder / name).write_text(text)
        (folder / "probe_rates.cu").write_text(RATE_SRC)
        with kernel_sources(folder):
            def seconds(name: str, ctas: int) -> float:
                """One timed launch of `name` over `ctas` CTAs of 128 threads, after a warm-up launch."""
                k = jit.get_kernel(name, 0, cap, program="probe_rates.cu")
                args = [out.data_ptr(), ctypes.c_int(iters)]
                k.launch_args((ctas, 1, 1), (128, 1, 1), stream, args)
                torch.cuda.synchronize()
                e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                e0.record()
                k.launch_args((ctas, 1, 1), (128, 1, 1), stream, args)
                e1.record()
                e1.synchronize()
                return e0.elapsed_time(e1) * 1e-3

            print(f"{torch.cuda.get_device_name()}: {sms} SMs, at an assumed {clock_ghz:.2f} GHz SM clock")
            for op, what in enumerate(("popc", "lop3", "shf", "prmt", "imad", "popc+lop3")):
                sec = seconds(f"alu_rate<{op}>", sms * 8)
                rate = 8 * 4 * iters * 8 / (sec * clock_ghz * 1e9)  # warp-instructions per clock per SM
                rows.append(dict(kernel=what, warp_instructions_per_clock_per_sm=rate))
                print(f"  {what:10s} {rate:5.2f} warp-instructions per clock per SM", flush=True)
            mmas = ([(f"mma_rate<{nt},8>", 2 * 16 * 8 * 16) for nt in (1, 2, 4)]
                    + [(f"mma_sp_rate<{nt},8>", 2 * 16 * 8 * 32) for nt in (1, 2, 4)])
            if jit.arch_for(cap) == "sm_90a":
                mmas += [(f"wgmma_rate<{nt},{rs}>", 2 * 64 * 8 * nt * 16) for nt in (1, 2, 4, 8)
                         for rs in ("true", "false")]
            for name, flops_per in mmas:
                wg = name.startswith("wgmma")
                ctas = sms * (2 if wg else 4)
                sec = seconds(name, ctas)
                count = ctas * iters * (4 if wg else 4 * 8)  # wgmma: per warpgroup; mma: per warp
                per_unit = count / sms if wg else count / (sms * 4)  # a wgmma takes all 4 sub-partitions
                cycles = sec * clock_ghz * 1e9 / per_unit
                tflops = count * flops_per / sec / 1e12
                rows.append(dict(kernel=name, tflops=tflops, cycles=cycles, per="SM" if wg else "SM sub-partition"))
                print(f"  {name:22s} {tflops:7.1f} TFLOPS  {cycles:6.1f} cycles per instruction "
                      f"{'(whole SM)' if wg else 'per SM sub-partition'}", flush=True)
    return rows


def run_launch(a) -> list:
    m, k = parse_shapes(a.shape)[0]
    dtype = getattr(torch, a.dtype)
    torch.manual_seed(0)
    w = torch.randn(m, k, device="cuda", dtype=dtype) * (torch.rand(m, k, device="cuda") >= a.sparsity)
    sw = flashllm.compress(w, a.format)
    x = torch.randn(a.n, k, device="cuda", dtype=dtype)
    forced = parse_config(a.config)
    for _ in range(3):
        dense_matmul(x, sw) if forced == "dense" else spmm_forced(x, sw, forced)
    torch.cuda.synchronize()
    shown = "decompress + cuBLAS" if forced == "dense" else repr(config_of(sw, a.n, forced))
    print(f"config: {shown}")
    return []


def run_cubins(a) -> list:
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    print("NVRTC", jit.nvrtc_version())
    with tempfile.TemporaryDirectory() as tmp:
        for spec in [s for s in a.edits.split(",") if s]:
            with kernel_sources(edited_folder(spec, Path(tmp))):
                program = a.program or program_for(a.name)
                cubin, _ = jit.compile_kernel(a.name, a.arch, program)
            path = out / f"{spec.replace('+', '_')}.cubin"
            path.write_bytes(cubin)
            print(path, len(cubin), "bytes")
    return []


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="flashllm bench probe", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    modes = ap.add_subparsers(dest="mode", required=True)

    p = modes.add_parser("configs", help="forced launch configs against dispatch's own and cuBLAS")
    common_args(p, "27648x9216", "0.8", "8,16,32")
    p.add_argument("--configs", default="", help="';'-separated dispatch overrides, each 'key=value,...' "
                   "(split, spw, stages, nt, wg, cluster, wide, groups, ctas; sell: warps, depth, parts) or "
                   "'dense' (decompress + cuBLAS)")
    p.add_argument("--no-auto", dest="auto", action="store_false", help="leave out dispatch's own config")
    p.add_argument("--show-configs", action="store_true", help="print the launch config behind every column")
    p.set_defaults(run=run_configs)

    p = modes.add_parser("ablate", help="the kernel with parts of its source cut out (times only)")
    common_args(p, "27648x9216", "0.5", "8,32")
    p.add_argument("--edits", default="base,spmm-nomma",
                   help="','-separated columns, each an edit label or labels joined by '+' (flashllm/bench/edits.py)")
    p.add_argument("--config", default="", help="dispatch overrides for every column, e.g. 'wide=1,nt=32'")
    p.add_argument("--csrc", default=None, help="also time the kernels of another csrc/ folder (column 'other')")
    p.set_defaults(run=run_ablate)

    p = modes.add_parser("rates", help="instruction-rate micro-benchmarks")
    p.add_argument("--clock-ghz", type=float, default=1.98, help="SM clock to convert time to cycles (default 1.98)")
    p.add_argument("--out", default=None, help="also write the rows as JSON to this file")
    p.set_defaults(run=run_rates)

    p = modes.add_parser("launch", help="one kernel, three launches (for ncu / compute-sanitizer)")
    p.add_argument("--format", default="bitmap", choices=flashllm.FORMATS)
    p.add_argument("--shape", default="27648x9216")
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--config", default="", help="dispatch overrides, or 'dense'")
    p.add_argument("--dtype", default="float16", choices=("float16", "bfloat16"))
    p.set_defaults(run=run_launch, out=None)

    p = modes.add_parser("cubins", help="NVRTC cubins of one instantiation, per edit (no GPU needed)")
    p.add_argument("name", help="instantiation, e.g. 'spmm_wide<0,16,6,false,2>'")
    p.add_argument("--edits", default="base", help="','-separated edit specs, one cubin each (default base)")
    p.add_argument("--arch", default="sm_90a")
    p.add_argument("--program", default=None, help="csrc/ program (default: the one dispatch compiles it from)")
    p.add_argument("--out-dir", default="cubins")
    p.set_defaults(run=run_cubins, out=None)
    return ap


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = build_parser().parse_args(argv)
    a.command = "flashllm bench probe " + " ".join(argv)
    if a.mode != "cubins" and not torch.cuda.is_available():
        raise SystemExit(f"flashllm bench probe {a.mode} needs a CUDA GPU")
    write_rows(a, a.run(a))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
