// loss.cu — policy-gradient losses on per-token log-probs (all fp32).
//
//   apo_loss(loss [S], dlogp [T], logp [T], ref_logp [T], target [S], cu [S+1] u32, beta2,
//            grad_scale)
//       A*PO, per sequence s over tokens t ∈ [cu[s], cu[s+1]):
//       d_s = beta2·Σ_t (logp[t] − ref_logp[t]) − target[s];  loss[s] = d_s²;
//       dlogp[t] = 2·beta2·d_s·grad_scale.
//       Launch: grid.x = S (one block per sequence), 256 threads; block reduction in fp32
//       (sequences are ≤ a few thousand tokens). Tokens outside every sequence are untouched.
//   grpo_loss(loss [n], dlogp [n], logp, old_logp, ref_logp, adv, weight, n, clip_eps, kl_coef, k1)
//       GRPO per token: ratio = exp(logp − old); pg = −min(ratio·A, clip(ratio, 1±ε)·A);
//       k3 KL (k1 = 0): kl = e^{ref−logp} − (ref − logp) − 1, ∂kl/∂logp = 1 − e^{ref−logp};
//       k1 KL (k1 = 1): kl = logp − ref, ∂kl/∂logp = 1;
//       loss = w·(pg + kl_coef·kl), dlogp = w·(∂pg/∂logp + kl_coef·∂kl/∂logp).
//       ∂pg/∂logp = −A·ratio where the unclipped term is the min (ties included), else 0
//       (the clipped term is then the min, which only happens with the ratio outside
//       [1−ε, 1+ε], where clip is constant).
//       Launch: grid-stride over n, 256 threads.
#include "common.cuh"

extern "C" __global__ void apo_loss(float* loss, float* dlogp, const float* logp, const float* ref_logp,
                                    const float* target, const u32* cu, float beta2, float grad_scale) {
    __shared__ float sh[32];
    const int s = blockIdx.x;
    const u32 t0 = cu[s], t1 = cu[s + 1];
    float acc = 0.f;
    for (u32 t = t0 + threadIdx.x; t < t1; t += blockDim.x) acc += logp[t] - ref_logp[t];
    acc = block_sum(acc, sh);
    const float d = beta2 * acc - target[s];
    if (threadIdx.x == 0) loss[s] = d * d;
    const float g = 2.f * beta2 * d * grad_scale;
    for (u32 t = t0 + threadIdx.x; t < t1; t += blockDim.x) dlogp[t] = g;
}

extern "C" __global__ void grpo_loss(float* loss, float* dlogp, const float* logp, const float* old_logp,
                                     const float* ref_logp, const float* adv, const float* weight, u64 n,
                                     float clip_eps, float kl_coef, u32 k1) {
    TZ_GRID_STRIDE(i, n) {
        const float lp = logp[i];
        const float a = adv[i];
        const float w = weight[i];
        const float ratio = expf(lp - old_logp[i]);
        const float lo = 1.f - clip_eps, hi = 1.f + clip_eps;
        const float clipped = fminf(fmaxf(ratio, lo), hi);
        const float unc = ratio * a, clp = clipped * a;
        float pg, dpg;
        if (unc <= clp) {
            pg = -unc;
            dpg = -a * ratio;
        } else {
            pg = -clp;
            dpg = 0.f;
        }
        const float diff = ref_logp[i] - lp;
        float kl, dkl;
        if (k1) {
            kl = -diff;
            dkl = 1.f;
        } else {
            const float e = expf(diff);
            kl = e - diff - 1.f;
            dkl = 1.f - e;
        }
        loss[i] = w * (pg + kl_coef * kl);
        dlogp[i] = w * (dpg + kl_coef * dkl);
    }
}
