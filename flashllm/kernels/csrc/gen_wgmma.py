"""Writes wgmma.cuh: the wgmma.mma_async wrappers for N = 8 .. 64, and 128 / 256 with A from registers
(the wide kernel's), whose operand lists are long.

Run `python flashllm/kernels/csrc/gen_wgmma.py` after changing it; the output is committed.
"""
from pathlib import Path

HEAD = r'''// Hopper warpgroup MMA (sm_90a): wgmma.mma_async m64nNk16, fp32 accumulators, N = 8 * NT.
// Written by gen_wgmma.py beside this file (the operand lists are long).
// The accumulator layout per warp equals mma.sync m16n8k16's (acc[nt][0..3] = rows g, g, g+8, g+8;
// cols 8nt+2t, +1, 2t, +1), and a register A operand is each warp's 16-row m16k16 fragment, so the
// decode and the epilogue are shared with the mma.sync path.  Only sm_90a has these instructions;
// compiled for anything else the wrappers trap (dispatch never picks a wgmma kernel there).
#pragma once
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define SM90A_ONLY(...) __VA_ARGS__
#else
#define SM90A_ONLY(...) __trap()
#endif

// Shared-memory matrix descriptor: K-major, 128-byte swizzle (16-byte chunk c of row r stored at
// chunk c ^ (r % 8): our X tiles and Tiled-CSL dense tiles), 8-row groups 1024 bytes apart.  The tile
// must start 1024-byte aligned.  Stepping K by 16 halves within the row adds 32 bytes (2 units).
__device__ __forceinline__ unsigned long long sw128_desc(u32 addr) {
  return (unsigned long long)((addr & 0x3FFFF) >> 4) | (1ull << 16) | ((unsigned long long)(1024 >> 4) << 32) |
         (1ull << 62);
}
__device__ __forceinline__ void wgmma_fence() { SM90A_ONLY(asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory")); }
__device__ __forceinline__ void wgmma_commit() {
  SM90A_ONLY(asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"));
}
// Wait until at most N committed wgmma groups of this warp are still running.
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  SM90A_ONLY(asm volatile("wgmma.wait_group.sync.aligned %0;\n" :: "n"(N) : "memory"));
}
// st.shared and cp.async write through the generic proxy; wgmma reads through the async proxy.
__device__ __forceinline__ void fence_proxy_async() {
  SM90A_ONLY(asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"));
}
'''


def wrapper(src: str, nt: int) -> str:
    n, nd = 8 * nt, 4 * nt
    d = ",".join(f"%{i}" for i in range(nd))
    outs = ", ".join(f'"+f"(c[{i}][{j}])' for i in range(nt) for j in range(4))
    if src == "rs":  # A: this warp's fragment registers; B: descriptor
        ops, tail = f"{{%{nd},%{nd + 1},%{nd + 2},%{nd + 3}}}, %{nd + 4}", "1, 1, 1, 0"
        ins = '"r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b)'
        sig = "const u32 (&a)[4], unsigned long long desc_b"
    else:  # both from shared memory
        ops, tail = f"%{nd}, %{nd + 1}", "1, 1, 1, 0, 0"
        ins = '"l"(desc_a), "l"(desc_b)'
        sig = "unsigned long long desc_a, unsigned long long desc_b"
    body = []
    for t in ("bf16", "f16"):
        # scale-d = 1 (accumulate) as an immediate: a setp defining a predicate operand between two
        # wgmmas makes ptxas serialize them (C7513)
        body.append(f'''SM90A_ONLY(asm volatile(
        "wgmma.mma_async.sync.aligned.m64n{n}k16.f32.{t}.{t} {{{d}}}, {ops}, {tail};\\n"
        : {outs}
        : {ins}))''')
    return f'''template <bool BF16>
__device__ __forceinline__ void wgmma_{src}_n{n}(float (&c)[{nt}][4], {sig}) {{
  if (BF16)
    {body[0]};
  else
    {body[1]};
}}
'''


RS_NTS = (1, 2, 4, 8, 16, 32)  # A from registers: the SpMM kernels and the wide (prefill) kernel
SS_NTS = (1, 2, 4, 8)


def dispatcher(src: str) -> str:
    sig = "const u32 (&a)[4], unsigned long long desc_b" if src == "rs" else \
        "unsigned long long desc_a, unsigned long long desc_b"
    args = "a, desc_b" if src == "rs" else "desc_a, desc_b"
    wide = "".join(f"\n  else if constexpr (NT == {nt}) wgmma_{src}_n{8 * nt}<BF16>(c, {args});"
                   for nt in (RS_NTS if src == "rs" else SS_NTS) if nt > 8)
    return f'''template <int NT, bool BF16>
__device__ __forceinline__ void wgmma_{src}(float (&c)[NT][4], {sig}) {{
  if constexpr (NT == 1) wgmma_{src}_n8<BF16>(c, {args});
  else if constexpr (NT == 2) wgmma_{src}_n16<BF16>(c, {args});
  else if constexpr (NT == 4) wgmma_{src}_n32<BF16>(c, {args});
  else if constexpr (NT == 8) wgmma_{src}_n64<BF16>(c, {args});{wide}
}}
'''


def main():
    parts = [HEAD]
    for src in ("rs", "ss"):
        parts += [wrapper(src, nt) for nt in (RS_NTS if src == "rs" else SS_NTS)] + [dispatcher(src)]
    (Path(__file__).parent / "wgmma.cuh").write_text("\n".join(parts))


if __name__ == "__main__":
    main()
