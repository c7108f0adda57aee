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
//   Weight decay applies to every element given (the caller splits ranges that skip it).
//   Launch: grid-stride over n, 256 threads. Purely bandwidth bound (≈ 18 bytes/param for
//   master_bf16); vectorized float4 access is the next step.
#include "common.cuh"

template <typename P, bool MASTER>
__device__ void adamw_impl(P* params, float* master, const float* grads, float* m, float* v, u64 n, float lr,
                           float beta1, float beta2, float eps, float wd, float bc1, float bc2_sqrt,
                           float grad_scale) {
    const float step_size = lr / bc1;
    const float decay = 1.f - lr * wd;
    TZ_GRID_STRIDE(i, n) {
        const float g = grads[i] * grad_scale;
        const float mi = beta1 * m[i] + (1.f - beta1) * g;
        const float vi = beta2 * v[i] + (1.f - beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        float p = MASTER ? master[i] : ld(params + i);
        p *= decay;
        p -= step_size * mi / (sqrtf(vi) / bc2_sqrt + eps);
        if (MASTER) master[i] = p;
        st(params + i, p);
    }
}

extern "C" __global__ void adamw_master_bf16(bf16* params, float* master, const float* grads, float* m, float* v,
                                             u64 n, float lr, float beta1, float beta2, float eps, float wd,
                                             float bc1, float bc2_sqrt, float grad_scale) {
    adamw_impl<bf16, true>(params, master, grads, m, v, n, lr, beta1, beta2, eps, wd, bc1, bc2_sqrt, grad_scale);
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
