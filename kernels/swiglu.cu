// swiglu.cu — SwiGLU on the fused gate|up projection.
//
//   swiglu_fwd_bf16(out [n, inter] bf16, gu [n, 2·inter] bf16, n, inter)
//       g = gu[i, j], u = gu[i, inter + j];  out[i, j] = silu(g)·u,  silu(g) = g·σ(g)
//   swiglu_bwd_bf16(dgu [n, 2·inter] bf16, dout [n, inter] bf16, gu, n, inter)
//       dgu[i, j]         = dout·u·σ(g)·(1 + g·(1 − σ(g)))
//       dgu[i, inter + j] = dout·silu(g)
//       (written, not accumulated; dgu may alias gu: each element pair is read before it is
//       written by the same thread)
//   Launch: grid-stride over n·inter elements (64-bit), 256 threads; groups of 8 by 16-byte
//   access when inter % 8 == 0 and the buffers are aligned. σ uses expf (accurate)
//   so saturated gates give exactly 0/1 rather than NaN: σ(g) = 1/(1 + e^{−g}) is finite for
//   every finite g.
#include "common.cuh"

__device__ __forceinline__ float sigmoidf_(float g) { return 1.f / (1.f + expf(-g)); }

// Groups of 8 elements by 16-byte loads/stores when inter % 8 == 0 and every pointer is
// 16-byte aligned (each group then lies in one row); element by element otherwise.
__device__ __forceinline__ bool swiglu_vec(u64 inter, const void* a, const void* b, const void* c) {
    return inter % 8 == 0 && aligned16(a) && aligned16(b) && aligned16(c);
}

extern "C" __global__ void swiglu_fwd_bf16(bf16* out, const bf16* gu, u64 n, u64 inter) {
    if (swiglu_vec(inter, out, gu, gu)) {
        TZ_GRID_STRIDE(q, n * inter / 8) {
            const u64 idx = 8 * q, i = idx / inter, j = idx - i * inter;
            float g[8], u[8];
            unpack_bf16x8(*(const uint4*)(gu + i * 2 * inter + j), g);
            unpack_bf16x8(*(const uint4*)(gu + i * 2 * inter + inter + j), u);
#pragma unroll
            for (int e = 0; e < 8; ++e) g[e] = g[e] * sigmoidf_(g[e]) * u[e];
            *(uint4*)(out + idx) = pack_bf16x8(g);
        }
        return;
    }
    TZ_GRID_STRIDE(idx, n * inter) {
        const u64 i = idx / inter, j = idx - i * inter;
        const float g = bf2f(gu[i * 2 * inter + j]);
        const float u = bf2f(gu[i * 2 * inter + inter + j]);
        out[idx] = f2bf(g * sigmoidf_(g) * u);
    }
}

extern "C" __global__ void swiglu_bwd_bf16(bf16* dgu, const bf16* dout, const bf16* gu, u64 n, u64 inter) {
    if (swiglu_vec(inter, dgu, dout, gu)) {
        TZ_GRID_STRIDE(q, n * inter / 8) {
            const u64 idx = 8 * q, i = idx / inter, j = idx - i * inter;
            const u64 gi = i * 2 * inter + j, ui = gi + inter;
            float g[8], u[8], dy[8];
            unpack_bf16x8(*(const uint4*)(gu + gi), g);  // both read before either write (alias-safe)
            unpack_bf16x8(*(const uint4*)(gu + ui), u);
            unpack_bf16x8(*(const uint4*)(dout + idx), dy);
#pragma unroll
            for (int e = 0; e < 8; ++e) {
                const float sg = sigmoidf_(g[e]);
                const float dg = dy[e] * u[e] * sg * (1.f + g[e] * (1.f - sg));
                u[e] = dy[e] * g[e] * sg;
                g[e] = dg;
            }
            *(uint4*)(dgu + gi) = pack_bf16x8(g);
            *(uint4*)(dgu + ui) = pack_bf16x8(u);
        }
        return;
    }
    TZ_GRID_STRIDE(idx, n * inter) {
        const u64 i = idx / inter, j = idx - i * inter;
        const u64 gi = i * 2 * inter + j, ui = gi + inter;
        const float g = bf2f(gu[gi]);
        const float u = bf2f(gu[ui]);
        const float dy = bf2f(dout[idx]);
        const float sg = sigmoidf_(g);
        dgu[gi] = f2bf(dy * u * sg * (1.f + g * (1.f - sg)));
        dgu[ui] = f2bf(dy * g * sg);
    }
}
