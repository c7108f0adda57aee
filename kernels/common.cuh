// common.cuh — shared device helpers for every tz-engine kernel file.
//
// - bf16 <-> f32 loads/stores through one overloaded interface (`ld`, `st`) so kernels can be
//   templated on the storage type while all math is fp32;
// - warp and block reductions (sum, max) built on shuffles, block size a multiple of 32 and at
//   most 1024;
// - Philox4x32-10, bit-identical to `src/rng.rs` (token sampling must draw the same uniforms on
//   the CPU oracle and on the GPU).
//
// Must compile under both nvcc and NVRTC with no include path at all: no headers whatsoever
// (NVRTC has no standard library, and whether it bundles cuda_bf16.h depends on its version).
// bf16 is therefore stored as raw `unsigned short` bits and converted with the same
// round-to-nearest-even bit trick that `half::bf16::from_f32` uses on the host, so device and
// host conversions agree bit for bit.
#pragma once

typedef unsigned int u32;
typedef unsigned long long u64;
typedef long long i64;
typedef unsigned short bf16;  // raw bfloat16 bits

#define TZ_INF __int_as_float(0x7f800000)
#define TZ_NEG_INF __int_as_float(0xff800000)
#define TZ_LOG2E 1.4426950408889634f
#define TZ_LN2 0.6931471805599453f

// ---- bf16 conversions, loads / stores -------------------------------------------------------
__device__ __forceinline__ float bf2f(bf16 b) { return __uint_as_float(((u32)b) << 16); }
// Round to nearest even; NaN stays a quiet NaN keeping its sign and top payload bits (exactly
// as half::bf16::from_f32).
__device__ __forceinline__ bf16 f2bf(float f) {
    u32 u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16)((u >> 16) | 0x0040u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16)(u >> 16);
}
// The float a value becomes once stored as bf16.
__device__ __forceinline__ float round_bf(float f) { return bf2f(f2bf(f)); }

__device__ __forceinline__ float ld(const float* p) { return *p; }
__device__ __forceinline__ float ld(const bf16* p) { return bf2f(*p); }
__device__ __forceinline__ void st(float* p, float v) { *p = v; }
__device__ __forceinline__ void st(bf16* p, float v) { *p = f2bf(v); }

// Eight bf16 in one 16-byte word (uint4, lowest index in the low half of .x) <-> floats.
// Vectorized paths use them where a row or buffer is 16-byte aligned.
__device__ __forceinline__ void unpack_bf16x8(uint4 q, float (&f)[8]) {
    const u32 w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
    for (int h = 0; h < 4; ++h) {
        f[2 * h] = __uint_as_float(w[h] << 16);
        f[2 * h + 1] = __uint_as_float(w[h] & 0xffff0000u);
    }
}
__device__ __forceinline__ uint4 pack_bf16x8(const float (&f)[8]) {
    u32 w[4];
#pragma unroll
    for (int h = 0; h < 4; ++h) w[h] = (u32)f2bf(f[2 * h]) | ((u32)f2bf(f[2 * h + 1]) << 16);
    return make_uint4(w[0], w[1], w[2], w[3]);
}
__device__ __forceinline__ bool aligned16(const void* p) { return ((u64)p & 15u) == 0; }

// ---- reductions ----------------------------------------------------------------------------
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ double warp_sum_d(double v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Block-wide sum; every thread gets the result. `sh` needs 32 floats. Contains __syncthreads:
// call from all threads of the block, and not twice in a row on the same `sh` without the
// barrier this function ends with.
__device__ __forceinline__ float block_sum(float v, float* sh) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int nwarps = (blockDim.x + 31) >> 5;
    v = warp_sum(v);
    __syncthreads();  // protect sh from a previous use
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    float r = (lane < nwarps) ? sh[lane] : 0.f;
    r = warp_sum(r);
    return r;
}
__device__ __forceinline__ double block_sum_d(double v, double* sh) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int nwarps = (blockDim.x + 31) >> 5;
    v = warp_sum_d(v);
    __syncthreads();
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    double r = (lane < nwarps) ? sh[lane] : 0.0;
    r = warp_sum_d(r);
    return r;
}
__device__ __forceinline__ float block_max(float v, float* sh) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int nwarps = (blockDim.x + 31) >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    float r = (lane < nwarps) ? sh[lane] : TZ_NEG_INF;
    r = warp_max(r);
    return r;
}

// ---- online softmax state ------------------------------------------------------------------
// (m, s): running max and Σ exp(z - m). Merging handles m = -inf (empty state).
struct MaxSum {
    float m, s;
};
__device__ __forceinline__ MaxSum maxsum_merge(MaxSum a, MaxSum b) {
    if (a.m == TZ_NEG_INF) return b;
    if (b.m == TZ_NEG_INF) return a;
    float m = fmaxf(a.m, b.m);
    MaxSum r;
    r.m = m;
    r.s = a.s * __expf(a.m - m) + b.s * __expf(b.m - m);
    return r;
}

// ---- Philox4x32-10 (same as src/rng.rs) ----------------------------------------------------
// Counter (ctr_lo, ctr_hi, 0, 0), key (seed_lo, seed_hi). Returns word 0..3.
__device__ __forceinline__ uint4 philox4x32_10(u64 seed, u64 counter) {
    const u32 M0 = 0xD2511F53u, M1 = 0xCD9E8D57u, W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
    u32 c0 = (u32)counter, c1 = (u32)(counter >> 32), c2 = 0u, c3 = 0u;
    u32 k0 = (u32)seed, k1 = (u32)(seed >> 32);
#pragma unroll
    for (int round = 0; round < 10; ++round) {
        if (round > 0) {
            k0 += W0;
            k1 += W1;
        }
        const u32 hi0 = __umulhi(M0, c0), lo0 = M0 * c0;
        const u32 hi1 = __umulhi(M1, c2), lo1 = M1 * c2;
        const u32 n0 = hi1 ^ c1 ^ k0;
        const u32 n1 = lo1;
        const u32 n2 = hi0 ^ c3 ^ k1;
        const u32 n3 = lo0;
        c0 = n0;
        c1 = n1;
        c2 = n2;
        c3 = n3;
    }
    return make_uint4(c0, c1, c2, c3);
}

// The uniform in [0, 1) used by token sampling: top 24 bits of word 0 times 2^-24.
__device__ __forceinline__ float philox_uniform(u64 seed, u64 counter) {
    return (float)(philox4x32_10(seed, counter).x >> 8) * (1.0f / 16777216.0f);
}

// ---- misc ----------------------------------------------------------------------------------
// Dynamic shared memory (sized by the launch). A macro so the CPU emulator (tools/cuda-emu)
// can give it a per-block buffer instead.
#ifndef TZ_DYN_SMEM
#define TZ_DYN_SMEM(T, name) extern __shared__ T name[]
#endif
// Grid-stride loop over [0, n) with 64-bit indices.
#define TZ_GRID_STRIDE(i, n)                                                              \
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < (u64)(n);                 \
         i += (u64)blockDim.x * gridDim.x)
