// mma.cuh — warp-level tensor-core helpers (sm_80+): mma.sync.m16n8k16 with bf16 inputs and
// fp32 accumulation, and bf16 packing.
//
// Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type");
// lane = 4·g + t (g = lane >> 2 in 0..8, t = lane & 3), two bf16 per u32 with the
// lower-index element in the low half:
//   A (16×16, row-major): a[0] = A[g][2t, 2t+1], a[1] = A[g+8][2t, 2t+1],
//                         a[2] = A[g][2t+8, 2t+9], a[3] = A[g+8][2t+8, 2t+9];
//   B (16×8, "col"):      b[0] = B[2t, 2t+1][g],  b[1] = B[2t+8, 2t+9][g];
//   C/D (16×8, fp32):     c[0], c[1] = C[g][2t, 2t+1], c[2], c[3] = C[g+8][2t, 2t+1].
// So a row-major [n][k] matrix in shared memory gives B fragments of its transpose with
// one u32 load per register (the two k values are adjacent).
//
// Under the CPU emulator (tools/cuda-emu) the instruction is emulated from exactly these
// layouts; on a GPU it is the PTX instruction.
#pragma once
#include "common.cuh"

__device__ __forceinline__ void mma_bf16_16816(float (&d)[4], const u32 (&a)[4], const u32 (&b)[2]) {
#ifdef TZ_EMU
    tz_emu::mma_bf16_16816(d, a, b);
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16: four 8×8 bf16 matrices in shared memory,
// each row 16 contiguous bytes (16-byte aligned); lane l gives the address of row l % 8 of
// matrix l / 8 and receives r[i] = (M_i[2t][g], M_i[2t+1][g]) — the transposed fragment.
// For a row-major [k][n] tile that is exactly the B fragment of mma.m16n8k16:
// M_0 = rows k0..k0+7, M_1 = rows k0+8..k0+15 (columns n0..n0+7) give b = {r[0], r[1]}, and
// M_2, M_3 the same for columns n0+8..n0+15.
__device__ __forceinline__ void ldmatrix_x4_trans(u32 (&r)[4], const bf16* row) {
#ifdef TZ_EMU
    tz_emu::ldmatrix_x4_trans(r, row);
#else
    const u32 addr = (u32)__cvta_generic_to_shared(row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
#endif
}
// The B fragments of n-tiles n0/8 and n0/8 + 1 for k rows k0..k0+15 of a row-major bf16 tile
// in shared memory with row stride `ld` elements (a multiple of 8): b0 for columns n0..n0+7,
// b1 for n0+8..n0+15.
__device__ __forceinline__ void load_b_frags_x2(u32 (&b0)[2], u32 (&b1)[2], const bf16* tile, int ld, int k0, int n0) {
    const int lane = threadIdx.x & 31, m = lane >> 3;
    u32 r[4];
    ldmatrix_x4_trans(r, tile + (k0 + (lane & 7) + 8 * (m & 1)) * ld + n0 + 8 * (m >> 1));
    b0[0] = r[0];
    b0[1] = r[1];
    b1[0] = r[2];
    b1[1] = r[3];
}

// cp.async.cg (sm_80+): 16 bytes global → shared without passing through registers, so a
// thread can have all of its tile's copies in flight at once (a load-then-store loop waits a
// memory round trip per iteration unless the compiler unrolls and hoists it). `valid` false
// writes 16 zero bytes and reads nothing (src-size 0; `gmem` must still be a mapped address).
// Both addresses 16-byte aligned. The copies are complete, for this thread, after
// cp_async_wait_all(); a barrier after that makes them visible to the others. The emulator
// copies at once (an allowed completion order).
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
#ifdef TZ_EMU
    if (valid)
        std::memcpy(smem, gmem, 16);
    else
        std::memset(smem, 0, 16);
#else
    const u32 dst = (u32)__cvta_generic_to_shared(smem);
    const int n = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem), "r"(n) : "memory");
#endif
}
__device__ __forceinline__ void cp_async_wait_all() {
#ifndef TZ_EMU
    asm volatile("cp.async.wait_all;\n" ::: "memory");
#endif
}
// Closes this thread's copies issued since the last commit into one group.
__device__ __forceinline__ void cp_async_commit() {
#ifndef TZ_EMU
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
// Waits until at most N of this thread's committed groups are still in flight (the oldest
// complete first).
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#ifndef TZ_EMU
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

// Two floats → a u32 of two bf16 (round to nearest even), `lo` in the low half.
__device__ __forceinline__ u32 pack_bf16x2(float lo, float hi) { return (u32)f2bf(lo) | ((u32)f2bf(hi) << 16); }
// Two bf16 from memory (any alignment) → a u32, p[0] in the low half.
__device__ __forceinline__ u32 load_bf16x2(const bf16* p) { return (u32)p[0] | ((u32)p[1] << 16); }

// The A fragments of a 16-row × 16·KSTEPS tile, one per k-step, for lane (g, t): `row_g` and
// `row_g8` point at rows g and g+8 of the tile (global or shared memory, any alignment);
// a null row reads as zeros (rows past a sequence's end).
template <int KSTEPS>
__device__ __forceinline__ void load_a_frags(u32 (&a)[KSTEPS][4], const bf16* row_g, const bf16* row_g8, int t) {
#pragma unroll
    for (int kk = 0; kk < KSTEPS; ++kk) {
        const int c = kk * 16 + 2 * t;
        a[kk][0] = row_g ? load_bf16x2(row_g + c) : 0u;
        a[kk][1] = row_g8 ? load_bf16x2(row_g8 + c) : 0u;
        a[kk][2] = row_g ? load_bf16x2(row_g + c + 8) : 0u;
        a[kk][3] = row_g8 ? load_bf16x2(row_g8 + c + 8) : 0u;
    }
}
