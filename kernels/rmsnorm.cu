// rmsnorm.cu — RMSNorm forward, residual-add + RMSNorm forward, and backward.
//
//   rmsnorm_fwd_bf16(out [n,c] bf16, rstd [n] f32, x [n,c] bf16, w [c] bf16, c, eps)
//       rstd[i] = 1/sqrt(mean_j x[i,j]^2 + eps);  out[i,j] = x[i,j]·rstd[i]·w[j]
//   residual_rmsnorm_fwd_bf16(resid_out, out, rstd, resid_in, delta, w, c, eps)
//       resid_out = bf16(resid_in + delta) (may alias resid_in), then rmsnorm of the *rounded*
//       resid_out (what the backward pass will read back as x).
//       Launch (both forwards): grid.x = n rows, one block per row, 256 threads. When
//       c % 8 == 0, c ≤ 8192 and the rows are 16-byte aligned (every Qwen2 width), each
//       thread loads its chunks of 8 bf16 once with 16-byte loads and keeps them in
//       registers across the block reduction: the row is read from memory once. Otherwise
//       two element-wise passes (the second re-reads the row from L1/L2).
//   rmsnorm_fwd_warp_bf16(out, rstd, x, w, n, c, eps) and
//   residual_rmsnorm_fwd_warp_bf16(resid_out, out, rstd, resid_in, delta, w, n, c, eps)
//       The same two forwards, one warp per row, for c ≤ 2048 (Qwen2.5-0.5B to 3B widths).
//       Launch: grid.x = ⌈n/8⌉, 256 threads (8 rows per block). Why: with a block per row a
//       1536-wide row is 192 chunks for 256 threads, each thread issues one 16-byte load and
//       then waits on two __syncthreads, and an SM holds 8 rows in flight; measured on an H200
//       (2026-12-04) that ran at 56% of copy bandwidth. A warp per row keeps up to 8 loads
//       per thread in flight, 64 rows per SM, and reduces with shuffles only.
//       Register path when c % 8 == 0 and the rows are 16-byte aligned (RMS_WARP_VEC uint4
//       per lane); otherwise element-wise two passes within the warp.
//   rmsnorm_bwd_bf16(dx [n,c] bf16 +=, dw [c] f32 +=, dout [n,c] bf16, x, w, rstd, n, c)
//       dot_i = Σ_j dout_ij w_j x_ij
//       dx_ij += rstd_i w_j dout_ij − rstd_i³ x_ij dot_i / c
//       dw_j  += Σ_i dout_ij x_ij rstd_i
//       Launch: grid.x = G ≤ n blocks (host picks ~2 per SM), 256 threads, dynamic shared
//       memory c·4 bytes: each block walks rows blockIdx.x, +G, … and keeps its partial dw
//       in shared memory (each column owned by one thread, so no shared atomics), then
//       adds it to dw with one fp32 atomicAdd per column. Needs c·4 ≤ 48 KB (c ≤ 12288).
//       On the forwards' register path conditions, 16-byte loads and stores, dout and x of a
//       row kept in registers between the dot product and the update (chunk ch of 8 columns
//       and its dw_acc entries owned by thread ch % blockDim).
//       Each thread reads dout/x element j before writing dx element j, so dx may even alias
//       dout.
//
// All math fp32; one bf16 rounding per stored value.
#include "common.cuh"

// The forwards of one row, shared by the block-per-row and the warp-per-row kernels: the row's
// threads are first, first + stride, … (threadIdx.x / blockDim.x, or lane / 32), and `reduce`
// sums a value over them (block_sum or warp_sum). `vec`: c % 8 == 0, c/8 ≤ VEC·stride and
// 16-byte aligned rows — each thread then holds its chunks of 8 bf16 in registers (VEC uint4),
// all loaded before any is used, and the row is read from memory once; otherwise two
// element-wise passes (the second re-reads the row from L1/L2).
#define RMS_VEC 4       // block per row: 8192 columns at 256 threads
#define RMS_WARP_VEC 8  // warp per row: 2048 columns

__device__ __forceinline__ bool rms_aligned(const void* a, const void* b, const void* d, const void* e, const void* f) {
    return aligned16(a) && aligned16(b) && aligned16(d) && aligned16(e) && aligned16(f);
}

// The block-per-row kernels' register path (the backward's too).
__device__ __forceinline__ bool rms_vec_ok(int c, const void* a, const void* b, const void* d, const void* e) {
    return c % 8 == 0 && c / 8 <= RMS_VEC * (int)blockDim.x && rms_aligned(a, b, d, e, e);
}

// out = bf16(x·r·w) for the chunks this thread holds.
template <int VEC>
__device__ __forceinline__ void rms_scale_store(uint4* o, const uint4 (&xv)[VEC], const uint4* w, int nc, int first, int stride,
                                                float r) {
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
        const int ch = first + k * stride;
        if (ch >= nc) break;
        float f[8], g[8];
        unpack_bf16x8(xv[k], f);
        unpack_bf16x8(w[ch], g);
#pragma unroll
        for (int i = 0; i < 8; ++i) f[i] = f[i] * r * g[i];
        o[ch] = pack_bf16x8(f);
    }
}

// out = x·rstd·w, rstd = 1/sqrt(mean x² + eps), for one row.
template <int VEC, class Reduce>
__device__ __forceinline__ void rms_row_fwd(bf16* o, float* rstd, const bf16* xr, const bf16* w, int c, float eps, int first,
                                            int stride, bool vec, Reduce reduce) {
    float ss = 0.f;
    if (vec) {
        const int nc = c / 8;
        uint4 xv[VEC];
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
            const int ch = first + k * stride;
            if (ch < nc) xv[k] = ((const uint4*)xr)[ch];
        }
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
            const int ch = first + k * stride;
            if (ch >= nc) break;
            float f[8];
            unpack_bf16x8(xv[k], f);
#pragma unroll
            for (int i = 0; i < 8; ++i) ss += f[i] * f[i];
        }
        const float r = rsqrtf(reduce(ss) / (float)c + eps);
        rms_scale_store<VEC>((uint4*)o, xv, (const uint4*)w, nc, first, stride, r);
        if (first == 0) *rstd = r;
        return;
    }
    for (int j = first; j < c; j += stride) {
        const float v = bf2f(xr[j]);
        ss += v * v;
    }
    const float r = rsqrtf(reduce(ss) / (float)c + eps);
    for (int j = first; j < c; j += stride) o[j] = f2bf(bf2f(xr[j]) * r * bf2f(w[j]));
    if (first == 0) *rstd = r;
}

// resid_out = bf16(resid_in + delta) (may alias resid_in), then the RMSNorm of the rounded sum,
// for one row. Each thread reads its elements before writing them (alias-safe).
template <int VEC, class Reduce>
__device__ __forceinline__ void residual_rms_row_fwd(bf16* ro, bf16* o, float* rstd, const bf16* ri, const bf16* d,
                                                     const bf16* w, int c, float eps, int first, int stride, bool vec,
                                                     Reduce reduce) {
    float ss = 0.f;
    if (vec) {
        const int nc = c / 8;
        uint4 av[VEC], dv[VEC];
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
            const int ch = first + k * stride;
            if (ch < nc) {
                av[k] = ((const uint4*)ri)[ch];  // every chunk read before any (possibly aliased) write below
                dv[k] = ((const uint4*)d)[ch];
            }
        }
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
            const int ch = first + k * stride;
            if (ch >= nc) break;
            float fa[8], fd[8];
            unpack_bf16x8(av[k], fa);
            unpack_bf16x8(dv[k], fd);
#pragma unroll
            for (int i = 0; i < 8; ++i) fa[i] += fd[i];
            av[k] = pack_bf16x8(fa);
            ((uint4*)ro)[ch] = av[k];
            unpack_bf16x8(av[k], fa);  // the rounded sum: what the backward reads back as x
#pragma unroll
            for (int i = 0; i < 8; ++i) ss += fa[i] * fa[i];
        }
        const float r = rsqrtf(reduce(ss) / (float)c + eps);
        rms_scale_store<VEC>((uint4*)o, av, (const uint4*)w, nc, first, stride, r);
        if (first == 0) *rstd = r;
        return;
    }
    // Pass 1: each thread writes, then later re-reads, the same elements (alias-safe).
    for (int j = first; j < c; j += stride) {
        const bf16 r = f2bf(bf2f(ri[j]) + bf2f(d[j]));
        ro[j] = r;
        const float v = bf2f(r);
        ss += v * v;
    }
    const float r = rsqrtf(reduce(ss) / (float)c + eps);
    for (int j = first; j < c; j += stride) o[j] = f2bf(bf2f(ro[j]) * r * bf2f(w[j]));
    if (first == 0) *rstd = r;
}

extern "C" __global__ void rmsnorm_fwd_bf16(bf16* out, float* rstd, const bf16* x, const bf16* w, int c, float eps) {
    __shared__ float sh[32];
    const u64 base = blockIdx.x * (u64)c;
    const bool vec = rms_vec_ok(c, x, w, out, x);
    rms_row_fwd<RMS_VEC>(out + base, rstd + blockIdx.x, x + base, w, c, eps, threadIdx.x, blockDim.x, vec,
                         [&](float v) { return block_sum(v, sh); });
}

extern "C" __global__ void residual_rmsnorm_fwd_bf16(bf16* resid_out, bf16* out, float* rstd, const bf16* resid_in,
                                                     const bf16* delta, const bf16* w, int c, float eps) {
    __shared__ float sh[32];
    const u64 base = blockIdx.x * (u64)c;
    const bool vec = rms_vec_ok(c, resid_out, out, resid_in, delta) && aligned16(w);
    residual_rms_row_fwd<RMS_VEC>(resid_out + base, out + base, rstd + blockIdx.x, resid_in + base, delta + base, w, c, eps,
                                  threadIdx.x, blockDim.x, vec, [&](float v) { return block_sum(v, sh); });
}

// One warp per row: the warp's lanes take 8 rows' worth of a 256-thread block each; a warp
// whose row is past n leaves at once (no block barrier follows).
extern "C" __global__ void rmsnorm_fwd_warp_bf16(bf16* out, float* rstd, const bf16* x, const bf16* w, int n, int c,
                                                 float eps) {
    const u64 row = (u64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= (u64)n) return;
    const u64 base = row * (u64)c;
    const bool vec = c % 8 == 0 && c / 8 <= RMS_WARP_VEC * 32 && rms_aligned(x, w, out, x, x);
    rms_row_fwd<RMS_WARP_VEC>(out + base, rstd + row, x + base, w, c, eps, threadIdx.x & 31, 32, vec,
                              [](float v) { return warp_sum(v); });
}

extern "C" __global__ void residual_rmsnorm_fwd_warp_bf16(bf16* resid_out, bf16* out, float* rstd, const bf16* resid_in,
                                                          const bf16* delta, const bf16* w, int n, int c, float eps) {
    const u64 row = (u64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= (u64)n) return;
    const u64 base = row * (u64)c;
    const bool vec = c % 8 == 0 && c / 8 <= RMS_WARP_VEC * 32 && rms_aligned(resid_out, out, resid_in, delta, w);
    residual_rms_row_fwd<RMS_WARP_VEC>(resid_out + base, out + base, rstd + row, resid_in + base, delta + base, w, c, eps,
                                       threadIdx.x & 31, 32, vec, [](float v) { return warp_sum(v); });
}

extern "C" __global__ void rmsnorm_bwd_bf16(bf16* dx, float* dw, const bf16* dout, const bf16* x, const bf16* w,
                                            const float* rstd, int n, int c) {
    TZ_DYN_SMEM(float, dw_acc);  // c floats
    __shared__ float sh[32];
    for (int j = threadIdx.x; j < c; j += blockDim.x) dw_acc[j] = 0.f;
    __syncthreads();  // the vector path's ownership of dw_acc differs from this loop's
    const float inv_c = 1.f / (float)c;
    if (rms_vec_ok(c, dx, dout, x, w)) {
        // Chunk ch (8 columns) is owned by thread ch % blockDim: its dw_acc entries too.
        const int nc = c / 8;
        const uint4* w4 = (const uint4*)w;
        float4* acc4 = (float4*)dw_acc;
        for (int row = blockIdx.x; row < n; row += gridDim.x) {
            const u64 base = (u64)row * c;
            const uint4* dy4 = (const uint4*)(dout + base);
            const uint4* x4 = (const uint4*)(x + base);
            uint4* dx4 = (uint4*)(dx + base);
            const float r = rstd[row];
            uint4 dv[RMS_VEC], xv[RMS_VEC];
            float dot = 0.f;
#pragma unroll
            for (int k = 0; k < RMS_VEC; ++k) {
                const int ch = threadIdx.x + k * blockDim.x;
                if (ch >= nc) break;
                dv[k] = dy4[ch];
                xv[k] = x4[ch];
                float fd[8], fx[8], fw[8];
                unpack_bf16x8(dv[k], fd);
                unpack_bf16x8(xv[k], fx);
                unpack_bf16x8(w4[ch], fw);
#pragma unroll
                for (int i = 0; i < 8; ++i) dot += fd[i] * fw[i] * fx[i];
            }
            dot = block_sum(dot, sh);
            const float kk = r * r * r * dot * inv_c;
#pragma unroll
            for (int k = 0; k < RMS_VEC; ++k) {
                const int ch = threadIdx.x + k * blockDim.x;
                if (ch >= nc) break;
                float fd[8], fx[8], fw[8], fo[8];
                unpack_bf16x8(dv[k], fd);  // dout and x were read before dx is written (alias-safe)
                unpack_bf16x8(xv[k], fx);
                unpack_bf16x8(w4[ch], fw);
                unpack_bf16x8(dx4[ch], fo);
#pragma unroll
                for (int i = 0; i < 8; ++i) fo[i] += r * fw[i] * fd[i] - kk * fx[i];
                dx4[ch] = pack_bf16x8(fo);
                float4 a0 = acc4[2 * ch], a1 = acc4[2 * ch + 1];
                a0.x += fd[0] * fx[0] * r;
                a0.y += fd[1] * fx[1] * r;
                a0.z += fd[2] * fx[2] * r;
                a0.w += fd[3] * fx[3] * r;
                a1.x += fd[4] * fx[4] * r;
                a1.y += fd[5] * fx[5] * r;
                a1.z += fd[6] * fx[6] * r;
                a1.w += fd[7] * fx[7] * r;
                acc4[2 * ch] = a0;
                acc4[2 * ch + 1] = a1;
            }
        }
    } else {
        // Thread t only ever touches dw_acc[j] with j % blockDim == t.
        for (int row = blockIdx.x; row < n; row += gridDim.x) {
            const u64 base = (u64)row * c;
            const float r = rstd[row];
            float dot = 0.f;
            for (int j = threadIdx.x; j < c; j += blockDim.x)
                dot += bf2f(dout[base + j]) * bf2f(w[j]) * bf2f(x[base + j]);
            dot = block_sum(dot, sh);
            const float k = r * r * r * dot * inv_c;
            for (int j = threadIdx.x; j < c; j += blockDim.x) {
                const float dy = bf2f(dout[base + j]);
                const float xv = bf2f(x[base + j]);
                const float g = r * bf2f(w[j]) * dy - k * xv;
                dx[base + j] = f2bf(bf2f(dx[base + j]) + g);
                dw_acc[j] += dy * xv * r;
            }
        }
    }
    __syncthreads();
    for (int j = threadIdx.x; j < c; j += blockDim.x) atomicAdd(dw + j, dw_acc[j]);
}
