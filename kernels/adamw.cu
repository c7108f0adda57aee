// adamw.cu — fused AdamW over flat fp32 buffers (PyTorch's AdamW arithmetic).
//
//   adamw_{master_bf16, master_f32, f32}(params, master, grads, m, v, n, lr, beta1, beta2, eps,
//                                        weight_decay, bc1, bc2_sqrt, grad_scale)
//       g = grad·grad_scale
//       m = β1·m + (1−β1)·g;   v = β2·v + (1−β2)·g²
//       p = p·(1 − lr·wd)                                   (decoupled weight decay)
//       p = p − (lr/bc1) · m / (sqrt(v)/bc2_sqrt + eps)      (bias correction: bc1 = 1−β1^t,
//                                                              bc2_sqrt = sqrt(1−β2^t), host)
//       master_*: p is the fp32 master copy; params (bf16 or f32) receive its cast.
//       f32: params are the fp32 weights, updated in place.
//   adamw_master_bf16_gbf16: master_bf16 with bf16 gradients (`train.grad_dtype = "bf16"`: the
//       decoder layers' matrices accumulate their gradients in bf16, each GEMM adding in fp32
//       in its epilogue; the update itself is fp32 as for the others).
//   Weight decay applies to every element given (the caller splits ranges that skip it).
//   Launch: grid-stride over n, 256 threads. Purely bandwidth bound (≈ 18 bytes/param for
//   master_bf16): groups of 4 elements by float4 loads/stores (bf16 params by 8-byte ones)
//   when all buffers are 16-byte aligned, the n % 4 tail and misaligned views element-wise.
#include "common.cuh"

struct AdamW {
    float lr, beta1, beta2, eps, bc2_sqrt, grad_scale, step_size, decay;
    // One element: m, v updated in place; returns the new weight.
    __device__ __forceinline__ float step(float p, float g, float& m, float& v) const {
        g *= grad_scale;
        m = beta1 * m + (1.f - beta1) * g;
        v = beta2 * v + (1.f - beta2) * g * g;
        p *= decay;
        return p - step_size * m / (sqrtf(v) / bc2_sqrt + eps);
    }
};

__device__ __forceinline__ float4 ld4(const float* p) { return *(const float4*)p; }
__device__ __forceinline__ void st4(float* p, float4 v) { *(float4*)p = v; }
__device__ __forceinline__ float4 ld4(const bf16* p) {
    const uint2 q = *(const uint2*)p;
    return make_float4(__uint_as_float(q.x << 16), __uint_as_float(q.x & 0xffff0000u), __uint_as_float(q.y << 16),
                       __uint_as_float(q.y & 0xffff0000u));
}
__device__ __forceinline__ void st4(bf16* p, float4 v) {
    *(uint2*)p = make_uint2((u32)f2bf(v.x) | ((u32)f2bf(v.y) << 16), (u32)f2bf(v.z) | ((u32)f2bf(v.w) << 16));
}

template <typename P, bool MASTER, typename G = float>
__device__ void adamw_impl(P* params, float* master, const G* grads, float* m, float* v, u64 n, float lr,
                           float beta1, float beta2, float eps, float wd, float bc1, float bc2_sqrt,
                           float grad_scale) {
    const AdamW o{lr, beta1, beta2, eps, bc2_sqrt, grad_scale, lr / bc1, 1.f - lr * wd};
    // Groups of 4 by 16-byte loads (8-byte for bf16 params) when every buffer allows it; the
    // remainder (or everything, for a misaligned view) element by element.
    const bool vec = aligned16(grads) && aligned16(m) && aligned16(v) && (!MASTER || aligned16(master)) &&
                     ((u64)params % (4 * sizeof(P))) == 0;
    const u64 n4 = vec ? n / 4 : 0;
    TZ_GRID_STRIDE(q, n4) {
        const u64 i = 4 * q;
        const float4 g = ld4(grads + i);
        float4 mi = ld4(m + i), vi = ld4(v + i);
        float4 p = MASTER ? ld4(master + i) : ld4(params + i);
        p.x = o.step(p.x, g.x, mi.x, vi.x);
        p.y = o.step(p.y, g.y, mi.y, vi.y);
        p.z = o.step(p.z, g.z, mi.z, vi.z);
        p.w = o.step(p.w, g.w, mi.w, vi.w);
        st4(m + i, mi);
        st4(v + i, vi);
        if (MASTER) st4(master + i, p);
        st4(params + i, p);
    }
    TZ_GRID_STRIDE(k, n - 4 * n4) {
        const u64 i = 4 * n4 + k;
        float mi = m[i], vi = v[i];
        const float p = o.step(MASTER ? master[i] : ld(params + i), ld(grads + i), mi, vi);
        m[i] = mi;
        v[i] = vi;
        if (MASTER) master[i] = p;
        st(params + i, p);
    }
}

extern "C" __global__ void adamw_master_bf16(bf16* params, float* master, const float* grads, float* m, float* v,
                                             u64 n, float lr, float beta1, float beta2, float eps, float wd,
                                             float bc1, float bc2_sqrt, float grad_scale) {
    adamw_impl<bf16, true>(params, master, grads, m, v, n, lr, beta1, beta2, eps, wd, bc1, bc2_sqrt, grad_scale);
}
extern "C" __global__ void adamw_master_bf16_gbf16(bf16* params, float* master, const bf16* grads, float* m,
                                                   float* v, u64 n, float lr, float beta1, float beta2, float eps,
                                                   float wd, float bc1, float bc2_sqrt, float grad_scale) {
    adamw_impl<bf16, true, bf16>(params, master, grads, m, v, n, lr, beta1, beta2, eps, wd, bc1, bc2_sqrt, grad_scale);
}
extern "C" __global__ void adamw_master_f32(float* params, float* master, const float* grads, float* m, float* v,
                                            u64 n, float lr, float beta1, float beta2, float eps, float wd,
                                            float bc1, float bc2_sqrt, float grad_scale) {
    adamw_impl<float, true>(params, master, grads, m, v, n, lr, beta1, beta2, eps, wd, bc1, bc2_sqrt, grad_scale);
}
extern "C" __global__ void adamw_f32(float* params, float* master, const float* grads, float* m, float* v, u64 n,
                                     float lr, float beta1, float beta2, float eps, float wd, float bc1,
                                     float bc2_sqrt, float grad_scale) {
    adamw_impl<float, false>(params, master, grads, m, v, n, lr, beta1, beta2, eps, wd, bc1, bc2_sqrt, grad_scale);
}
