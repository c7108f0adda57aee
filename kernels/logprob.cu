// logprob.cu — fused log-prob gather (and entropy) over the vocabulary, and its backward.
// No [n, V] fp32 tensor is ever materialized: the logits are read once (forward) or once
// read + once written (backward).
//
//   logprob_fwd_bf16{,_ent}(logp [n] f32, lse [n] f32, entropy [n] f32 | null,
//                           logits [n, v] bf16, targets [n] u32, v, inv_temp)
//       z = logits[i]·inv_temp;  lse = logsumexp(z);  logp = z[target] − lse;
//       entropy = −Σ p log p = log S − T/S with, relative to the running max m,
//       S = Σ e^{z−m}, T = Σ e^{z−m}(z−m)  (well conditioned when p is peaked).
//       One pass, online: each thread keeps (m, S, T) over its strided elements, rescaling
//       when a chunk of 8 brings a new max (one exp per element, a second one only on a new
//       max); the states then merge across the block (warp shuffles + shared memory).
//   logprob_bwd_bf16{,_ent}(dlogits [n, v] bf16, logits, targets, lse, entropy | null,
//                           dlogp [n], dentropy [n] | null, v, inv_temp)
//       p_j = e^{z_j − lse};
//       dlogits_j = inv_temp·(dlogp·(1[j = target] − p_j) − dent·p_j·(log p_j + H))
//       Single pass; dlogits may alias logits (each element is read, then written, by the
//       same thread).
//   Launch: grid.x = n rows, one block per row, 512 threads. When v % 8 == 0 and the rows
//   are 16-byte aligned the forward reads, and the backward reads and writes, 8 bf16 per
//   16-byte access.
//   Performance plan: for very few rows (decode-time scoring) split a row over several
//   blocks with a second merge pass; for training shapes (thousands of rows) one block per
//   row already fills the GPU and the kernel runs at memory bandwidth.
#include "common.cuh"

struct Ent {
    float m, s, t;  // running max, Σ e^{z−m}, Σ e^{z−m}(z−m)
};

template <bool ENT>
__device__ __forceinline__ void ent_push(Ent& a, float z) {
    if (!(z > TZ_NEG_INF)) return;  // -inf (or NaN) contributes nothing
    if (a.s == 0.f) {
        a.m = z;
        a.s = 1.f;
        a.t = 0.f;
    } else if (z > a.m) {
        const float sc = __expf(a.m - z);
        if (ENT) a.t = (a.t + a.s * (a.m - z)) * sc;
        a.s = a.s * sc + 1.f;
        a.m = z;
    } else {
        const float e = __expf(z - a.m);
        a.s += e;
        if (ENT) a.t += e * (z - a.m);
    }
}

// Eight logits at once: one max and at most one rescale per 8 elements, then 8 independent
// exps against a fixed max. Why: the element-at-a-time update above is a branch and a
// dependent chain per element; on an H200 (2026-12-04) that held the forward to 53% of copy
// bandwidth while the backward (a plain map) ran at ~90%. -inf and NaN still contribute
// nothing.
template <bool ENT>
__device__ __forceinline__ void ent_push8(Ent& a, const float (&z)[8]) {
    float cm = TZ_NEG_INF;
#pragma unroll
    for (int i = 0; i < 8; ++i) cm = (z[i] > cm) ? z[i] : cm;  // NaN never wins
    if (!(cm > TZ_NEG_INF)) return;
    if (a.s == 0.f) {
        a.m = cm;
        a.t = 0.f;
    } else if (cm > a.m) {
        const float sc = __expf(a.m - cm);
        if (ENT) a.t = (a.t + a.s * (a.m - cm)) * sc;
        a.s *= sc;
        a.m = cm;
    }
    float s = 0.f, t = 0.f;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        const bool live = z[i] > TZ_NEG_INF;
        const float d = live ? z[i] - a.m : 0.f;
        const float e = live ? __expf(d) : 0.f;
        s += e;
        if (ENT) t += e * d;
    }
    a.s += s;
    if (ENT) a.t += t;
}

template <bool ENT>
__device__ __forceinline__ Ent ent_merge(Ent a, Ent b) {
    if (a.s == 0.f) return b;
    if (b.s == 0.f) return a;
    const float m = fmaxf(a.m, b.m);
    const float ea = __expf(a.m - m), eb = __expf(b.m - m);
    Ent r;
    r.m = m;
    r.s = a.s * ea + b.s * eb;
    r.t = ENT ? (a.t + a.s * (a.m - m)) * ea + (b.t + b.s * (b.m - m)) * eb : 0.f;
    return r;
}

template <bool ENT>
__device__ void logprob_fwd_impl(float* logp, float* lse, float* entropy, const bf16* logits, const u32* targets,
                                 int v, float inv_temp) {
    __shared__ float sm[32], ss[32], st_[32];
    const u64 row = blockIdx.x;
    const bf16* x = logits + row * (u64)v;
    Ent a;
    a.m = TZ_NEG_INF;
    a.s = 0.f;
    a.t = 0.f;
    if ((v % 8 == 0) && (((u64)x) % 16 == 0)) {
        // Four 16-byte loads issued before any of them is used: more bytes in flight per thread.
        const uint4* x4 = (const uint4*)x;
        const int nc = v / 8, step = blockDim.x;
        int k = threadIdx.x;
        for (; k + 3 * step < nc; k += 4 * step) {
            uint4 q[4];
#pragma unroll
            for (int u = 0; u < 4; ++u) q[u] = x4[k + u * step];
#pragma unroll
            for (int u = 0; u < 4; ++u) {
                float f[8];
                unpack_bf16x8(q[u], f);
#pragma unroll
                for (int i = 0; i < 8; ++i) f[i] *= inv_temp;
                ent_push8<ENT>(a, f);
            }
        }
        for (; k < nc; k += step) {
            float f[8];
            unpack_bf16x8(x4[k], f);
#pragma unroll
            for (int i = 0; i < 8; ++i) f[i] *= inv_temp;
            ent_push8<ENT>(a, f);
        }
    } else {
        for (int j = threadIdx.x; j < v; j += blockDim.x) ent_push<ENT>(a, bf2f(x[j]) * inv_temp);
    }
    // Warp merge.
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        Ent b;
        b.m = __shfl_xor_sync(0xffffffffu, a.m, o);
        b.s = __shfl_xor_sync(0xffffffffu, a.s, o);
        b.t = __shfl_xor_sync(0xffffffffu, a.t, o);
        a = ent_merge<ENT>(a, b);
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
    if (lane == 0) {
        sm[warp] = a.m;
        ss[warp] = a.s;
        st_[warp] = a.t;
    }
    __syncthreads();
    if (warp == 0) {
        Ent b;
        b.m = lane < nwarps ? sm[lane] : TZ_NEG_INF;
        b.s = lane < nwarps ? ss[lane] : 0.f;
        b.t = lane < nwarps ? st_[lane] : 0.f;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            Ent c;
            c.m = __shfl_xor_sync(0xffffffffu, b.m, o);
            c.s = __shfl_xor_sync(0xffffffffu, b.s, o);
            c.t = __shfl_xor_sync(0xffffffffu, b.t, o);
            b = ent_merge<ENT>(b, c);
        }
        if (lane == 0) {
            const float log_s = logf(b.s);
            const float l = b.m + log_s;
            lse[row] = l;
            logp[row] = bf2f(x[targets[row]]) * inv_temp - l;
            if (ENT) entropy[row] = log_s - b.t / b.s;
        }
    }
}

extern "C" __global__ void logprob_fwd_bf16(float* logp, float* lse, float* entropy, const bf16* logits,
                                            const u32* targets, int v, float inv_temp) {
    logprob_fwd_impl<false>(logp, lse, entropy, logits, targets, v, inv_temp);
}
extern "C" __global__ void logprob_fwd_bf16_ent(float* logp, float* lse, float* entropy, const bf16* logits,
                                                const u32* targets, int v, float inv_temp) {
    logprob_fwd_impl<true>(logp, lse, entropy, logits, targets, v, inv_temp);
}

// d logits of one element (see the header).
template <bool ENT>
__device__ __forceinline__ float logprob_grad(float z, bool is_target, float inv_temp, float l, float dl, float h,
                                              float de) {
    const float lp = z * inv_temp - l;
    const float p = __expf(lp);
    float g = dl * ((is_target ? 1.f : 0.f) - p);
    if (ENT) g -= de * p * (lp + h);
    return inv_temp * g;
}

template <bool ENT>
__device__ void logprob_bwd_impl(bf16* dlogits, const bf16* logits, const u32* targets, const float* lse,
                                 const float* entropy, const float* dlogp, const float* dentropy, int v,
                                 float inv_temp) {
    const u64 row = blockIdx.x;
    const bf16* x = logits + row * (u64)v;
    bf16* dx = dlogits + row * (u64)v;
    const float l = lse[row];
    const float dl = dlogp[row];
    const u32 tgt = targets[row];
    const float h = ENT ? entropy[row] : 0.f;
    const float de = ENT ? dentropy[row] : 0.f;
    if ((v % 8 == 0) && aligned16(x) && aligned16(dx)) {
        const uint4* x4 = (const uint4*)x;
        uint4* dx4 = (uint4*)dx;
        for (int k = threadIdx.x; k < v / 8; k += blockDim.x) {
            float f[8];
            unpack_bf16x8(x4[k], f);
#pragma unroll
            for (int i = 0; i < 8; ++i) f[i] = logprob_grad<ENT>(f[i], (u32)(8 * k + i) == tgt, inv_temp, l, dl, h, de);
            dx4[k] = pack_bf16x8(f);
        }
        return;
    }
    for (int j = threadIdx.x; j < v; j += blockDim.x)
        dx[j] = f2bf(logprob_grad<ENT>(bf2f(x[j]), (u32)j == tgt, inv_temp, l, dl, h, de));
}

extern "C" __global__ void logprob_bwd_bf16(bf16* dlogits, const bf16* logits, const u32* targets, const float* lse,
                                            const float* entropy, const float* dlogp, const float* dentropy, int v,
                                            float inv_temp) {
    logprob_bwd_impl<false>(dlogits, logits, targets, lse, entropy, dlogp, dentropy, v, inv_temp);
}
extern "C" __global__ void logprob_bwd_bf16_ent(bf16* dlogits, const bf16* logits, const u32* targets,
                                                const float* lse, const float* entropy, const float* dlogp,
                                                const float* dentropy, int v, float inv_temp) {
    logprob_bwd_impl<true>(dlogits, logits, targets, lse, entropy, dlogp, dentropy, v, inv_temp);
}
