// rmsnorm.cu — RMSNorm forward, residual-add + RMSNorm forward, and backward.
//
//   rmsnorm_fwd_bf16(out [n,c] bf16, rstd [n] f32, x [n,c] bf16, w [c] bf16, c, eps)
//       rstd[i] = 1/sqrt(mean_j x[i,j]^2 + eps);  out[i,j] = x[i,j]·rstd[i]·w[j]
//   residual_rmsnorm_fwd_bf16(resid_out, out, rstd, resid_in, delta, w, c, eps)
//       resid_out = bf16(resid_in + delta) (may alias resid_in), then rmsnorm of the *rounded*
//       resid_out (what the backward pass will read back as x).
//       Launch (both forwards): grid.x = n rows, one block per row, 256 threads; two passes
//       over the row (sum of squares with a block reduction, then the scaled write). The
//       row is re-read from L1/L2 instead of being staged in shared memory: c ≤ 8192 bf16 =
//       16 KB per row is cache resident.
//   rmsnorm_bwd_bf16(dx [n,c] bf16 +=, dw [c] f32 +=, dout [n,c] bf16, x, w, rstd, n, c)
//       dot_i = Σ_j dout_ij w_j x_ij
//       dx_ij += rstd_i w_j dout_ij − rstd_i³ x_ij dot_i / c
//       dw_j  += Σ_i dout_ij x_ij rstd_i
//       Launch: grid.x = G ≤ n blocks (host picks ~2 per SM), 256 threads, dynamic shared
//       memory c·4 bytes: each block walks rows blockIdx.x, +G, … and keeps its partial dw
//       in shared memory (column j owned by thread j % blockDim, so no shared atomics), then
//       adds it to dw with one fp32 atomicAdd per column. Needs c·4 ≤ 48 KB (c ≤ 12288).
//       Each thread reads dout/x element j before writing dx element j, so dx may even alias
//       dout.
//
// All math fp32; one bf16 rounding per stored value.
#include "common.cuh"

extern "C" __global__ void rmsnorm_fwd_bf16(bf16* out, float* rstd, const bf16* x, const bf16* w, int c, float eps) {
    __shared__ float sh[32];
    const u64 row = blockIdx.x;
    const bf16* xr = x + row * (u64)c;
    bf16* o = out + row * (u64)c;
    float ss = 0.f;
    for (int j = threadIdx.x; j < c; j += blockDim.x) {
        const float v = bf2f(xr[j]);
        ss += v * v;
    }
    ss = block_sum(ss, sh);
    const float r = rsqrtf(ss / (float)c + eps);
    for (int j = threadIdx.x; j < c; j += blockDim.x) o[j] = f2bf(bf2f(xr[j]) * r * bf2f(w[j]));
    if (threadIdx.x == 0) rstd[row] = r;
}

extern "C" __global__ void residual_rmsnorm_fwd_bf16(bf16* resid_out, bf16* out, float* rstd, const bf16* resid_in,
                                                     const bf16* delta, const bf16* w, int c, float eps) {
    __shared__ float sh[32];
    const u64 row = blockIdx.x;
    const u64 base = row * (u64)c;
    float ss = 0.f;
    // Pass 1: each thread writes, then later re-reads, the same elements (alias-safe).
    for (int j = threadIdx.x; j < c; j += blockDim.x) {
        const bf16 r = f2bf(bf2f(resid_in[base + j]) + bf2f(delta[base + j]));
        resid_out[base + j] = r;
        const float v = bf2f(r);
        ss += v * v;
    }
    ss = block_sum(ss, sh);
    const float r = rsqrtf(ss / (float)c + eps);
    for (int j = threadIdx.x; j < c; j += blockDim.x) out[base + j] = f2bf(bf2f(resid_out[base + j]) * r * bf2f(w[j]));
    if (threadIdx.x == 0) rstd[row] = r;
}

extern "C" __global__ void rmsnorm_bwd_bf16(bf16* dx, float* dw, const bf16* dout, const bf16* x, const bf16* w,
                                            const float* rstd, int n, int c) {
    TZ_DYN_SMEM(float, dw_acc);  // c floats
    __shared__ float sh[32];
    for (int j = threadIdx.x; j < c; j += blockDim.x) dw_acc[j] = 0.f;
    // No barrier needed: thread t only ever touches dw_acc[j] with j % blockDim == t.
    const float inv_c = 1.f / (float)c;
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
    for (int j = threadIdx.x; j < c; j += blockDim.x) atomicAdd(dw + j, dw_acc[j]);
}
