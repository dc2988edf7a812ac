"""The CPU path of `flashllm.spmm`: each weight converted once to compressed sparse rows and kept.

The GPU formats are laid out for tensor-core fragments and shared-memory banks; a CPU gains nothing from
that layout and pays for decoding it, so a weight's first CPU multiplication converts it to compressed
sparse rows (CSR) and keeps them beside the SparseWeight for the calls after. Only the non-zeros are
kept, never a dense copy. Two kernels multiply them (`backend()`, or FLASHLLM_CPU_KERNEL=auto|native|mkl):

  native  flashllm's own AVX2/AVX-512 kernel (`_SOURCE`), compiled with the system's C compiler at first
          use (-march=native; cached in $FLASHLLM_CACHE_DIR/cpu or ~/.cache/flashllm/cpu). 4 bytes a
          non-zero: the 16-bit value as stored and a 16-bit column. One token gathers x at each row's
          columns; 2-16 tokens are transposed so that a non-zero meets all of them in one load and one
          FMA. SmolLM2-135M's linears, one thread, one token: 50% sparse 25 ms, 80% 12 ms, against 31 ms
          dense bf16 and 50 / 23 ms through MKL.
  mkl     torch's sparse CSR matmul (MKL's sparse BLAS), where the native kernel cannot be built (no C
          compiler, no AVX2/FMA/F16C, not x86-64) or K > 65536: fp32 values and int32 indices, 8 bytes a
          non-zero, as MKL takes no 16-bit values.

Both compute in fp32 (torch's fp16/bf16 matmuls on a CPU are slower than its fp32 ones, and the values
are exact in fp32) and round once to x's dtype, like the reference; both are tested against fp64 dense
math. `cache_nbytes(w)` gives the cache's size; `drop_cache(w)` frees it.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.weak import WeakIdKeyDictionary

from .formats import SparseWeight
from .kernels.reference import spmm_reference

BACKENDS = ("auto", "native", "mkl")
# Columns past this do not fit the native kernel's 16-bit indices.
NATIVE_MAX_K = 1 << 16
# The native kernel runs on one thread below this many multiply-adds (non-zeros x tokens): a parallel
# region costs a few microseconds, about what 20k non-zeros take.
PARALLEL_MIN_WORK = 1 << 15
# MKL's sparse-times-dense kernel is fastest with the dense operand row-major [K, P] and P a multiple
# of 4: SmolLM2-135M's linears at 50% sparsity, one thread, 51 ms a token as [K, 4] (three zero
# columns) against 80-89 ms as [K, 1] or [K, 3]; 80%: 23 against 31 ms. So x's tokens become columns,
# padded with zero columns to a multiple of COLUMN_MULTIPLE.
COLUMN_MULTIPLE = 4
# Tokens per MKL call: past ~64 columns the dense operand outgrows the caches and the cost per token
# rises (3072x576 at 50%, 512 tokens: 28 ms in chunks of 64, 34 ms in one call; 4096x4096: 232 vs 874).
CHUNK_TOKENS = 64
# Rows converted at a time when the cache is built: bounds the int64 temporaries of `nonzero`.
_SLAB_ELEMENTS = 1 << 22


# ------------------------------------------------------------------------------------ the cache

@dataclass(eq=False)
class _Cached:
    weight: tuple              # (format, shape, dtype) of the weight it was built from
    versions: tuple[int, ...]  # the weight's tensors' in-place modification counters when it was built
    kind: str                  # "native": (ptr int64, col int16, val int16); "mkl": (an fp32 CSR tensor,)
    tensors: tuple
    nnz: int

    @property
    def nbytes(self) -> int:
        parts = self.tensors if self.kind == "native" else \
            (self.tensors[0].values(), self.tensors[0].col_indices(), self.tensors[0].crow_indices())
        return sum(t.numel() * t.element_size() for t in parts)


# Keyed by a weight's first tensor, held weakly: copies, pickles and state dicts of the weight never carry
# its cache, the cache goes when the tensor goes, and every SparseWeight around the same tensors finds it
# (torch.compile's custom op rebuilds a SparseWeight from them at every call: kernels/spmm.py op_weight).
_CACHE = WeakIdKeyDictionary()


def _key(w: SparseWeight) -> torch.Tensor:
    return next(iter(w.tensors.values()))


def _versions(w: SparseWeight) -> tuple[int, ...]:
    return tuple(t._version for t in w.tensors.values())


def _rows(w: SparseWeight) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(non-zeros per row int32 [M], their columns int32 and values in w.dtype, row by row)."""
    m, k = w.shape
    dense = w.to_dense()  # 16-bit, this one weight, dropped on return
    rows = max(1, _SLAB_ELEMENTS // k)
    counts, cols, vals = [], [], []
    for r in range(0, m, rows):
        slab = dense[r:r + rows]
        nz = slab != 0  # NaN and Inf are values, as in the formats
        counts.append(nz.sum(1, dtype=torch.int32))
        cols.append(nz.nonzero()[:, 1].to(torch.int32))
        vals.append(slab[nz])
    return torch.cat(counts), torch.cat(cols), torch.cat(vals)


def _build(w: SparseWeight, kind: str) -> tuple:
    # Normal mode and no autograd: a cache built under inference_mode would hold inference tensors,
    # which autograd refuses to save when a later call's x requires grad.
    with torch.inference_mode(False), torch.no_grad():
        counts, cols, vals = _rows(w)
        if cols.numel() >= 2**31:
            raise ValueError(f"weight {w.shape} has {cols.numel()} non-zeros: more than int32 indices can address")
        if kind == "native":
            ptr = torch.zeros(w.shape[0] + 1, dtype=torch.int64)
            torch.cumsum(counts, 0, out=ptr[1:])
            col = torch.where(cols >= 1 << 15, cols - (1 << 16), cols).to(torch.int16)  # the uint16 bits
            return ptr, col, vals.view(torch.int16)
        crow = torch.zeros(w.shape[0] + 1, dtype=torch.int32)
        torch.cumsum(counts, 0, out=crow[1:])
        with warnings.catch_warnings():  # "sparse CSR support is in beta": every op used here is tested
            warnings.simplefilter("ignore", UserWarning)
            return (torch.sparse_csr_tensor(crow, cols, vals.to(torch.float32), w.shape, dtype=torch.float32,
                                            check_invariants=False),)


def _cached(w: SparseWeight, kind: str) -> _Cached:
    """w's cache of `kind`, built on first use and rebuilt when w's tensors changed in place."""
    if w.device.type != "cpu":
        raise ValueError(f"the CPU cache needs a weight on the CPU, got {w.device}")
    key, weight, versions = _key(w), (w.format, tuple(w.shape), w.dtype), _versions(w)
    entry = _CACHE.get(key)
    if entry is not None and (entry.weight, entry.versions, entry.kind) == (weight, versions, kind):
        return entry
    _CACHE.pop(key, None)  # a stale cache is freed before its successor is built
    tensors = _build(w, kind)
    nnz = tensors[1].numel() if kind == "native" else tensors[0].values().numel()
    entry = _CACHE[key] = _Cached(weight, versions, kind, tensors, nnz)
    return entry


def cache_nbytes(w: SparseWeight) -> int:
    """Bytes of w's CPU cache (0 when none is built)."""
    entry = _CACHE.get(_key(w))
    return entry.nbytes if entry is not None else 0


def drop_cache(w: SparseWeight) -> None:
    """Free w's CPU cache; the next CPU call builds it again."""
    _CACHE.pop(_key(w), None)


# ------------------------------------------------------------------------------- the native kernel

_SOURCE = r"""
/* flashllm's CPU SpMM: y [n, m] (fp32) = x [n, k] (fp32) @ W^T, W [m, k] in compressed sparse rows with
   16-bit values (fp16 or bf16 bits) and 16-bit column indices: 4 bytes a non-zero.
   Built by flashllm/cpu.py with -march=native; AVX2, FMA and F16C are the floor (x86-64 since 2013). */
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if !defined(__AVX2__) || !defined(__FMA__) || !defined(__F16C__)
#error "flashllm's CPU kernel needs AVX2, FMA and F16C"
#endif

/* The AVX-512 paths load 16-bit lanes under a mask (BW, VL) besides the 512-bit arithmetic (F). */
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define WIDE 1
#endif

#define ROWS_PER_TASK 64

static inline __m256 vals8(const uint16_t *v, int bf16) {
  __m128i h = _mm_loadu_si128((const __m128i *)v);
  if (bf16) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  return _mm256_cvtph_ps(h);
}

static inline float val1(uint16_t v, int bf16) {
  if (bf16) { uint32_t b = (uint32_t)v << 16; float f; memcpy(&f, &b, 4); return f; }
  return _cvtsh_ss(v);
}

static inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

/* One token: each row's non-zeros meet x through gathers, 16 (AVX-512) or 8 at a time. */
static void one_token(const int64_t *ptr, const uint16_t *col, const uint16_t *val, int bf16,
                      const float *x, float *y, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; r++) {
    int64_t j = ptr[r], e = ptr[r + 1];
#ifdef WIDE
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    for (; j + 32 <= e; j += 32) {  /* two independent gathers in flight */
      __m512i c0 = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(col + j)));
      __m512i c1 = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(col + j + 16)));
      __m256i h0 = _mm256_loadu_si256((const __m256i *)(val + j));
      __m256i h1 = _mm256_loadu_si256((const __m256i *)(val + j + 16));
      __m512 v0 = bf16 ? _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h0), 16)) : _mm512_cvtph_ps(h0);
      __m512 v1 = bf16 ? _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h1), 16)) : _mm512_cvtph_ps(h1);
      a0 = _mm512_fmadd_ps(v0, _mm512_i32gather_ps(c0, x, 4), a0);
      a1 = _mm512_fmadd_ps(v1, _mm512_i32gather_ps(c1, x, 4), a1);
    }
    for (; j < e; j += 16) {  /* masked: lanes past the row's end load nothing */
      __mmask16 mk = e - j >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (e - j)) - 1);
      __m512i c = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mk, col + j));
      __m256i h = _mm256_maskz_loadu_epi16(mk, val + j);
      __m512 v = bf16 ? _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)) : _mm512_cvtph_ps(h);
      a0 = _mm512_fmadd_ps(v, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), mk, c, x, 4), a0);
    }
    y[r] = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
#else
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    for (; j + 16 <= e; j += 16) {
      __m256i c0 = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(col + j)));
      __m256i c1 = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(col + j + 8)));
      a0 = _mm256_fmadd_ps(vals8(val + j, bf16), _mm256_i32gather_ps(x, c0, 4), a0);
      a1 = _mm256_fmadd_ps(vals8(val + j + 8, bf16), _mm256_i32gather_ps(x, c1, 4), a1);
    }
    float t = 0.f;
    for (; j < e; j++) t += val1(val[j], bf16) * x[col[j]];
    y[r] = hsum256(_mm256_add_ps(a0, a1)) + t;
#endif
  }
}

/* Up to 8 tokens: x transposed to xt [k][8], so a non-zero meets all 8 tokens in one load and one FMA.
   Eight accumulators, one per value of a group of eight: the FMA latency is hidden. */
static void eight_tokens(const int64_t *ptr, const uint16_t *col, const uint16_t *val, int bf16,
                         const float *xt, float *y, int64_t m, int nt, int64_t r0, int64_t r1) {
  float out[8] __attribute__((aligned(32)));
  for (int64_t r = r0; r < r1; r++) {
    int64_t j = ptr[r], e = ptr[r + 1];
    __m256 a[8];
    for (int i = 0; i < 8; i++) a[i] = _mm256_setzero_ps();
    for (; j + 8 <= e; j += 8) {
      __m256 v = vals8(val + j, bf16);
      for (int i = 0; i < 8; i++)
        a[i] = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(v, _mm256_set1_epi32(i)),
                               _mm256_load_ps(xt + 8 * (int64_t)col[j + i]), a[i]);
    }
    for (int i = 0; j < e; j++, i++)
      a[i] = _mm256_fmadd_ps(_mm256_set1_ps(val1(val[j], bf16)), _mm256_load_ps(xt + 8 * (int64_t)col[j]), a[i]);
    __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3])),
                             _mm256_add_ps(_mm256_add_ps(a[4], a[5]), _mm256_add_ps(a[6], a[7])));
    _mm256_store_ps(out, s);
    for (int t = 0; t < nt; t++) y[t * m + r] = out[t];
  }
}

#ifdef WIDE
/* Up to 16 tokens, the same with 16-float rows of xt [k][16]. */
static void sixteen_tokens(const int64_t *ptr, const uint16_t *col, const uint16_t *val, int bf16,
                           const float *xt, float *y, int64_t m, int nt, int64_t r0, int64_t r1) {
  float out[16] __attribute__((aligned(64)));
  for (int64_t r = r0; r < r1; r++) {
    int64_t j = ptr[r], e = ptr[r + 1];
    __m512 a[8];
    for (int i = 0; i < 8; i++) a[i] = _mm512_setzero_ps();
    for (; j + 8 <= e; j += 8) {
      __m256 v = vals8(val + j, bf16);
      for (int i = 0; i < 8; i++)
        a[i] = _mm512_fmadd_ps(_mm512_set1_ps(_mm256_cvtss_f32(_mm256_permutevar8x32_ps(v, _mm256_set1_epi32(i)))),
                               _mm512_load_ps(xt + 16 * (int64_t)col[j + i]), a[i]);
    }
    for (int i = 0; j < e; j++, i++)
      a[i] = _mm512_fmadd_ps(_mm512_set1_ps(val1(val[j], bf16)), _mm512_load_ps(xt + 16 * (int64_t)col[j]), a[i]);
    __m512 s = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3])),
                             _mm512_add_ps(_mm512_add_ps(a[4], a[5]), _mm512_add_ps(a[6], a[7])));
    _mm512_store_ps(out, s);
    for (int t = 0; t < nt; t++) y[t * m + r] = out[t];
  }
}
#define TILE 16
#else
#define TILE 8
#endif

/* Returns 1, y unwritten, when x holds an Inf or NaN (dense math would multiply them by W's zeros). */
int flashllm_spmm(const int64_t *ptr, const uint16_t *col, const uint16_t *val, int bf16,
                  const float *x, int64_t n, int64_t k, float *y, int64_t m, int threads) {
  int bad = 0;
  for (int64_t i = 0; i < n * k; i++) bad |= !(x[i] - x[i] == 0.f);  /* Inf - Inf and NaN are NaN */
  if (bad) return 1;
  int64_t tasks = (m + ROWS_PER_TASK - 1) / ROWS_PER_TASK;
  if (n == 1) {
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t b = 0; b < tasks; b++) {
      int64_t r1 = (b + 1) * ROWS_PER_TASK < m ? (b + 1) * ROWS_PER_TASK : m;
      one_token(ptr, col, val, bf16, x, y, b * ROWS_PER_TASK, r1);
    }
    return 0;
  }
  float *xt = aligned_alloc(64, ((size_t)k * TILE * sizeof(float) + 63) / 64 * 64);
  if (!xt) return 2;
  for (int64_t t0 = 0; t0 < n; t0 += TILE) {
    int nt = n - t0 < TILE ? (int)(n - t0) : TILE;
    int width = nt > 8 ? 16 : 8;  /* 8 tokens or fewer: 8-float rows, half the bytes of xt to read */
    for (int64_t c = 0; c < k; c++)
      for (int t = 0; t < width; t++) xt[c * width + t] = t < nt ? x[(t0 + t) * k + c] : 0.f;
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t b = 0; b < tasks; b++) {
      int64_t r1 = (b + 1) * ROWS_PER_TASK < m ? (b + 1) * ROWS_PER_TASK : m;
#ifdef WIDE
      if (width == 16) sixteen_tokens(ptr, col, val, bf16, xt, y + t0 * m, m, nt, b * ROWS_PER_TASK, r1); else
#endif
      eight_tokens(ptr, col, val, bf16, xt, y + t0 * m, m, nt, b * ROWS_PER_TASK, r1);
    }
  }
  free(xt);
  return 0;
}
"""

_native_lock = threading.Lock()
_native_fn = None      # the loaded flashllm_spmm, once built
_native_error = None   # why it could not be built, once tried
_warned = False


def _cache_dir() -> Path:
    root = os.environ.get("FLASHLLM_CACHE_DIR") or os.path.join(Path.home(), ".cache", "flashllm")
    return Path(root) / "cpu"


def _machine() -> str:
    """What -march=native compiles for: a library built on another processor could hold instructions
    this one lacks (a cache directory shared between machines)."""
    try:
        info = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
        return "\n".join(line for line in info.splitlines() if line.startswith(("vendor_id", "model name", "flags")))
    except OSError:
        return f"{platform.machine()} {platform.processor()}"


def _compile(target_flags: tuple[str, ...] = ("-march=native",)) -> Path:
    """The kernel's shared library, built once per (source, compiler, flags, processor) and cached."""
    cc = os.environ.get("CC") or "cc"
    if shutil.which(cc) is None:
        raise RuntimeError(f"no C compiler ({cc!r} not found; set CC)")
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60).stdout
    base = ["-O3", *target_flags, "-shared", "-fPIC", "-std=gnu11"]
    key = hashlib.sha256("\0".join([_SOURCE, cc, version, " ".join(base), _machine()]).encode()).hexdigest()[:20]
    folder = _cache_dir()
    target = folder / f"spmm-{key}.so"
    if target.exists():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    errors = []
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        src = Path(tmp) / "spmm.c"
        src.write_text(_SOURCE)
        # OpenMP where the compiler has it (gcc links the libgomp.so.1 torch has loaded), else one thread.
        for extra in (["-fopenmp"], []):
            out = Path(tmp) / "spmm.so"
            done = subprocess.run([cc, *base, *extra, "-o", str(out), str(src)], capture_output=True, text=True,
                                  timeout=300)
            if done.returncode == 0:
                os.replace(out, target)  # atomic: a process compiling beside this one never loads half a file
                return target
            errors.append(done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"])
    raise RuntimeError(f"{cc} could not compile the kernel: {errors[0][0]}")


def _bind(library: Path):
    fn = ctypes.CDLL(str(library)).flashllm_spmm
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                   ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def _load_native():
    """The native kernel's entry point, or None (and `native_error()` says why)."""
    global _native_fn, _native_error
    if _native_fn is not None or _native_error is not None:
        return _native_fn
    with _native_lock:
        if _native_fn is None and _native_error is None:
            try:
                _native_fn = _bind(_compile())
            except (OSError, RuntimeError, subprocess.SubprocessError) as e:
                _native_error = str(e)
    return _native_fn


def native_error() -> str | None:
    """Why the native kernel is not in use (None: it is, or was not tried yet)."""
    return _native_error


def backend() -> str:
    """The kernel the CPU path uses: "native" or "mkl" (see the module's docstring)."""
    global _warned
    choice = os.environ.get("FLASHLLM_CPU_KERNEL", "auto")
    if choice not in BACKENDS:
        raise ValueError(f"FLASHLLM_CPU_KERNEL must be one of {BACKENDS}, got {choice!r}")
    if choice == "mkl":
        return "mkl"
    if _load_native() is not None:
        return "native"
    if choice == "native":
        raise RuntimeError(f"FLASHLLM_CPU_KERNEL=native, but the native CPU kernel is unavailable: {_native_error}")
    if not _warned:
        _warned = True
        warnings.warn(f"flashllm: the native CPU kernel is unavailable ({_native_error}); torch's sparse CSR "
                      "matmul runs instead, about half as fast at one token", RuntimeWarning, stacklevel=3)
    return "mkl"


# ---------------------------------------------------------------------------------- the product

def _columns(x: torch.Tensor) -> torch.Tensor:
    """x [n, K] as fp32 [K, P]: tokens as columns, zero-padded to a multiple of COLUMN_MULTIPLE."""
    n, k = x.shape
    p = -(-n // COLUMN_MULTIPLE) * COLUMN_MULTIPLE
    cols = x.new_zeros(k, p, dtype=torch.float32)
    cols[:, :n] = x.T
    return cols


def _spmm_mkl(x, w, bias, out):
    # A zero weight times Inf or NaN is NaN in dense math; the sparse product never multiplies the
    # zeros, so an x holding either is left to the reference. The sum is non-finite exactly then (or on
    # fp32 overflow of finite values, which the reference handles as well).
    if not math.isfinite(x.sum(dtype=torch.float32).item()):
        return spmm_reference(x, w, bias)
    csr = _cached(w, "mkl").tensors[0]
    n = x.shape[0]
    parts = [(csr @ _columns(x[i:i + CHUNK_TOKENS]))[:, :min(CHUNK_TOKENS, n - i)].T
             for i in range(0, n, CHUNK_TOKENS)]
    y = parts[0] if len(parts) == 1 else torch.cat(parts)  # [N, M] fp32
    if bias is not None:
        y = y + bias  # promoted to fp32: the bias joins before the one rounding
    return out.copy_(y)  # contiguous, rounded once to x's dtype


def _spmm_native(x, w, bias, out):
    entry = _cached(w, "native")
    ptr, col, val = entry.tensors
    n, k = x.shape
    m = w.shape[0]
    xf = x.to(torch.float32).contiguous()
    y = out if x.dtype == torch.float32 and bias is None else torch.empty(n, m, dtype=torch.float32)
    threads = torch.get_num_threads() if n * entry.nnz >= PARALLEL_MIN_WORK else 1
    status = _native_fn(ptr.data_ptr(), col.data_ptr(), val.data_ptr(), int(w.dtype == torch.bfloat16),
                        xf.data_ptr(), n, k, y.data_ptr(), m, threads)
    if status == 1:  # x holds Inf or NaN: see _spmm_mkl
        return spmm_reference(x, w, bias)
    if status:
        raise MemoryError(f"flashllm's CPU kernel could not allocate {k * 64} bytes")
    if bias is not None:
        y += bias  # fp32: the bias joins before the one rounding
    return y if y is out else out.copy_(y)


def spmm_cpu(x: torch.Tensor, w: SparseWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [N, K] @ W^T (+ bias [M]) -> [N, M] on the CPU: fp32 accumulate, rounded once to x's dtype."""
    out = x.new_empty(x.shape[0], w.shape[0])
    if x.shape[0] == 0:
        return out
    if backend() == "native" and w.shape[1] <= NATIVE_MAX_K:
        if x.requires_grad and torch.is_grad_enabled():
            return spmm_reference(x, w, bias)  # the kernel has no backward; dense math has
        return _spmm_native(x, w, bias, out)
    return _spmm_mkl(x, w, bias, out)
