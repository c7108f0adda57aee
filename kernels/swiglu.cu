// swiglu.cu — SwiGLU on the fused gate|up projection.
//
//   swiglu_fwd_bf16(out [n, inter] bf16, gu [n, 2·inter] bf16, n, inter)
//       g = gu[i, j], u = gu[i, inter + j];  out[i, j] = silu(g)·u,  silu(g) = g·σ(g)
//   swiglu_bwd_bf16(dgu [n, 2·inter] bf16, dout [n, inter] bf16, gu, n, inter)
//       dgu[i, j]         = dout·u·σ(g)·(1 + g·(1 − σ(g)))
//       dgu[i, inter + j] = dout·silu(g)
//       (written, not accumulated; dgu may alias gu: each element pair is read before it is
//       written by the same thread)
//   Launch: grid-stride over n·inter elements (64-bit), 256 threads. σ uses expf (accurate)
//   so saturated gates give exactly 0/1 rather than NaN: σ(g) = 1/(1 + e^{−g}) is finite for
//   every finite g.
#include "common.cuh"

__device__ __forceinline__ float sigmoidf_(float g) { return 1.f / (1.f + expf(-g)); }

extern "C" __global__ void swiglu_fwd_bf16(bf16* out, const bf16* gu, u64 n, u64 inter) {
    TZ_GRID_STRIDE(idx, n * inter) {
        const u64 i = idx / inter, j = idx - i * inter;
        const float g = bf2f(gu[i * 2 * inter + j]);
        const float u = bf2f(gu[i * 2 * inter + inter + j]);
        out[idx] = f2bf(g * sigmoidf_(g) * u);
    }
}

extern "C" __global__ void swiglu_bwd_bf16(bf16* dgu, const bf16* dout, const bf16* gu, u64 n, u64 inter) {
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
