// elementwise.cu — flat-buffer utilities of the Backend contract.
//
//   fill_{f32,bf16,u32}            dst[i] = v
//   convert_{f32_bf16,bf16_f32}    dst[i] = src[i] with a dtype change (copy of equal dtypes is
//                                  a cuMemcpyDtoD on the host side)
//   add_assign_{f32_f32,bf16_bf16,f32_bf16}   dst[i] += src[i] (fp32 math, one rounding)
//   scale_{f32,bf16}               dst[i] *= a
//   sum_squares_partial_{f32,bf16} per-block partial Σ x², accumulated in fp64, one double
//                                  per block; the host adds the ≤ 1024 partials in fp64, so
//                                  the result is deterministic for a given launch shape.
//   gather_rows_{b16,b32}          out[i, :] = x[rows[i], :] (raw bits: any 2- or 4-byte dtype)
//   scatter_add_rows_{f32_f32,bf16_bf16,f32_bf16}   dx[rows[i], :] += dout[i, :] (rows distinct,
//                                  so no atomics)
//   copy_block_{f32,bf16}          dst[i·dst_ld + j] = (acc ? dst[..] : 0) + src[i·src_ld + j]: a
//                                  [rows, cols] block between row-major matrices (a column
//                                  range of a fused projection's output); fp32 math
//   bias_bwd_{bf16,f32}            dbias[j] += Σ_i dout[i, j] (dbias fp32)
//   add_bias_rows_{bf16,f32}       c[i, j] += bias[j] (GEMM bias when the cuBLASLt epilogue is
//                                  not available for a layout)
//
// Launch shapes: flat kernels use a grid-stride loop (64-bit indices) with 256 threads and
// at most a few thousand blocks; row kernels use one block per row (grid.x = rows) with
// threads striding over the columns. bias_bwd uses 32×8 blocks: grid.x covers 32-column
// strips, grid.y splits the rows into chunks whose partial sums meet in fp32 atomicAdd.
// All of these are bandwidth-bound; 16-byte vectorization is a later optimization (the
// scalar loads are still fully coalesced).
#include "common.cuh"

template <typename T>
__device__ void fill_impl(T* p, u64 n, float v) {
    TZ_GRID_STRIDE(i, n) st(p + i, v);
}
extern "C" __global__ void fill_f32(float* p, u64 n, float v) { fill_impl(p, n, v); }
extern "C" __global__ void fill_bf16(bf16* p, u64 n, float v) { fill_impl(p, n, v); }
extern "C" __global__ void fill_u32(u32* p, u64 n, u32 v) {
    TZ_GRID_STRIDE(i, n) p[i] = v;
}

template <typename D, typename S>
__device__ void convert_impl(D* dst, const S* src, u64 n) {
    TZ_GRID_STRIDE(i, n) st(dst + i, ld(src + i));
}
extern "C" __global__ void convert_f32_bf16(float* dst, const bf16* src, u64 n) { convert_impl(dst, src, n); }
extern "C" __global__ void convert_bf16_f32(bf16* dst, const float* src, u64 n) { convert_impl(dst, src, n); }

template <typename D, typename S>
__device__ void add_assign_impl(D* dst, const S* src, u64 n) {
    TZ_GRID_STRIDE(i, n) st(dst + i, ld(dst + i) + ld(src + i));
}
extern "C" __global__ void add_assign_f32_f32(float* dst, const float* src, u64 n) { add_assign_impl(dst, src, n); }
extern "C" __global__ void add_assign_bf16_bf16(bf16* dst, const bf16* src, u64 n) { add_assign_impl(dst, src, n); }
extern "C" __global__ void add_assign_f32_bf16(float* dst, const bf16* src, u64 n) { add_assign_impl(dst, src, n); }

template <typename T>
__device__ void scale_impl(T* p, u64 n, float a) {
    TZ_GRID_STRIDE(i, n) st(p + i, ld(p + i) * a);
}
extern "C" __global__ void scale_f32(float* p, u64 n, float a) { scale_impl(p, n, a); }
extern "C" __global__ void scale_bf16(bf16* p, u64 n, float a) { scale_impl(p, n, a); }

// Block size must be 256 (the shared array below holds one double per warp, up to 32).
template <typename T>
__device__ void sum_squares_impl(const T* x, u64 n, double* partial) {
    __shared__ double sh[32];
    double acc = 0.0;
    TZ_GRID_STRIDE(i, n) {
        const float v = ld(x + i);
        acc += (double)(v * v);
    }
    acc = block_sum_d(acc, sh);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}
extern "C" __global__ void sum_squares_partial_f32(const float* x, u64 n, double* partial) { sum_squares_impl(x, n, partial); }
extern "C" __global__ void sum_squares_partial_bf16(const bf16* x, u64 n, double* partial) { sum_squares_impl(x, n, partial); }

template <typename T>
__device__ void gather_rows_impl(T* out, const T* x, const u32* rows, int c) {
    const u64 i = blockIdx.x;
    const u64 r = rows[i];
    for (int j = threadIdx.x; j < c; j += blockDim.x) out[i * c + j] = x[r * c + j];
}
extern "C" __global__ void gather_rows_b16(unsigned short* out, const unsigned short* x, const u32* rows, int c) {
    gather_rows_impl(out, x, rows, c);
}
extern "C" __global__ void gather_rows_b32(u32* out, const u32* x, const u32* rows, int c) {
    gather_rows_impl(out, x, rows, c);
}

template <typename T>
__device__ void copy_block_impl(T* dst, int dst_ld, const T* src, int src_ld, int cols, int acc) {
    const u64 i = blockIdx.x;
    T* d = dst + i * (u64)dst_ld;
    const T* s = src + i * (u64)src_ld;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) st(d + j, (acc ? ld(d + j) : 0.0f) + ld(s + j));
}
extern "C" __global__ void copy_block_f32(float* dst, int dst_ld, const float* src, int src_ld, int cols, int acc) {
    copy_block_impl(dst, dst_ld, src, src_ld, cols, acc);
}
extern "C" __global__ void copy_block_bf16(bf16* dst, int dst_ld, const bf16* src, int src_ld, int cols, int acc) {
    copy_block_impl(dst, dst_ld, src, src_ld, cols, acc);
}

template <typename D, typename S>
__device__ void scatter_add_rows_impl(D* dx, const S* dout, const u32* rows, int c) {
    const u64 i = blockIdx.x;
    const u64 r = rows[i];
    for (int j = threadIdx.x; j < c; j += blockDim.x) {
        D* p = dx + r * c + j;
        st(p, ld(p) + ld(dout + i * c + j));
    }
}
extern "C" __global__ void scatter_add_rows_f32_f32(float* dx, const float* dout, const u32* rows, int c) {
    scatter_add_rows_impl(dx, dout, rows, c);
}
extern "C" __global__ void scatter_add_rows_bf16_bf16(bf16* dx, const bf16* dout, const u32* rows, int c) {
    scatter_add_rows_impl(dx, dout, rows, c);
}
extern "C" __global__ void scatter_add_rows_f32_bf16(float* dx, const bf16* dout, const u32* rows, int c) {
    scatter_add_rows_impl(dx, dout, rows, c);
}

// Block (32, 8). Column j = blockIdx.x*32 + threadIdx.x; rows [row0, row1) of this block's
// chunk, strided by 8 over threadIdx.y; the 8 partial sums meet in shared memory and one
// atomicAdd per column and block goes to dbias.
template <typename T>
__device__ void bias_bwd_impl(float* dbias, const T* dout, int m, int n, int rows_per_chunk) {
    __shared__ float sh[8][33];
    const int j = blockIdx.x * 32 + threadIdx.x;
    const int row0 = blockIdx.y * rows_per_chunk;
    int row1 = row0 + rows_per_chunk;
    if (row1 > m) row1 = m;
    float acc = 0.f;
    if (j < n) {
        for (int i = row0 + threadIdx.y; i < row1; i += 8) acc += ld(dout + (u64)i * n + j);
    }
    sh[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && j < n) {
        float s = 0.f;
#pragma unroll
        for (int y = 0; y < 8; ++y) s += sh[y][threadIdx.x];
        atomicAdd(dbias + j, s);
    }
}
extern "C" __global__ void bias_bwd_bf16(float* dbias, const bf16* dout, int m, int n, int rows_per_chunk) {
    bias_bwd_impl(dbias, dout, m, n, rows_per_chunk);
}
extern "C" __global__ void bias_bwd_f32(float* dbias, const float* dout, int m, int n, int rows_per_chunk) {
    bias_bwd_impl(dbias, dout, m, n, rows_per_chunk);
}

template <typename T>
__device__ void add_bias_rows_impl(T* c, const bf16* bias, u64 m, u64 n) {
    TZ_GRID_STRIDE(i, m * n) st(c + i, ld(c + i) + bf2f(bias[i % n]));
}
extern "C" __global__ void add_bias_rows_bf16(bf16* c, const bf16* bias, u64 m, u64 n) { add_bias_rows_impl(c, bias, m, n); }
extern "C" __global__ void add_bias_rows_f32(float* c, const bf16* bias, u64 m, u64 n) { add_bias_rows_impl(c, bias, m, n); }
