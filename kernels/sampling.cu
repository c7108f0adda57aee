// sampling.cu — one token per row of bf16 logits, with the exact semantics of
// `SamplingParams` (src/backend/mod.rs), without sorting the vocabulary.
//
//   argmax_bf16(out [b] u32, logits [b, v] bf16, v)
//       temperature == 0: the index of the largest logit, lowest index on ties (NaN ignored).
//   sample_bf16(out [b] u32, logits [b, v] bf16, v, temperature, top_k, top_p,
//               seeds [b] u64, counters [b] u64)
//       z = logit / temperature, p ∝ e^{z − max}.
//       Every logit is mapped to a 16-bit order key (bf16 bits made monotone: key order ==
//       logit order == p order since temperature > 0). Thresholds are found by bisection on
//       the key (16 passes over the row, each a block-wide count or sum):
//         top-k (0 < k < v): Kk = the largest key K with #{key ≥ K} ≥ k, i.e. the key of the
//           k-th largest p; ties with it are kept ("p ≥ the k-th largest p").
//         top-p (top_p < 1): Kp = the largest key K ≥ Kk with Σ_{key ≥ K} p ≥
//           top_p · Σ_{key ≥ Kk} p, i.e. the largest threshold whose kept mass reaches top_p
//           of the mass top-k kept (as the CPU oracle does: top-p renormalized after top-k).
//         kept = {j : key_j ≥ max(Kk, Kp)}.
//       Then with u = Philox4x32-10(seeds[i], counters[i]) → top 24 bits of word 0 × 2^-24
//       (bit-identical to src/rng.rs), the token is the first kept j in index order whose
//       cumulative kept mass exceeds u·(total kept mass) (strictly, like the CPU oracle, so
//       u = 0 never picks a zero-probability token): each thread owns a contiguous chunk of
//       the row, a block-wide exclusive scan of the chunk sums locates the chunk, and its
//       owner walks it sequentially (the last kept index if rounding leaves it short).
//   Launch: grid.x = b rows, one block of 1024 threads per row. The row (≤ 300 KB) stays in
//   L2 across the ~35 passes.
//   Performance plan: replace the 2×16 bisection passes with a two-level radix select
//   (256-bin shared-memory histograms over the high, then low key byte: 4 passes), and
//   stage the row in shared memory where it fits.
#include "common.cuh"

#define SAMPLE_THREADS 1024

// Monotone 16-bit key of a bf16 value; NaN maps to 0 (never kept ahead of a number).
__device__ __forceinline__ u32 order_key(bf16 b) {
    const u32 u = b;
    if ((u & 0x7fffu) > 0x7f80u) return 0u;  // NaN
    return (u & 0x8000u) ? ((~u) & 0xffffu) : (u | 0x8000u);
}

__device__ __forceinline__ float block_sum_f(float v, float* sh) { return block_sum(v, sh); }

__device__ __forceinline__ u32 block_max_u(u32 v, u32* sh) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, o));
    __syncthreads();
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    u32 r = lane < nwarps ? sh[lane] : 0u;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) r = max(r, __shfl_xor_sync(0xffffffffu, r, o));
    return r;
}

__device__ __forceinline__ u32 block_sum_u(u32 v, u32* sh) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    __syncthreads();
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    u32 r = lane < nwarps ? sh[lane] : 0u;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) r += __shfl_xor_sync(0xffffffffu, r, o);
    return r;
}

extern "C" __global__ void argmax_bf16(u32* out, const bf16* logits, int v) {
    __shared__ float shv[32];
    __shared__ u32 shi[32];
    const u64 row = blockIdx.x;
    const bf16* x = logits + row * (u64)v;
    float best = TZ_NEG_INF;
    u32 idx = 0xffffffffu;
    for (int j = threadIdx.x; j < v; j += blockDim.x) {
        const float z = bf2f(x[j]);
        if (z > best || (z == best && (u32)j < idx)) {
            best = z;
            idx = (u32)j;
        }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float ob = __shfl_xor_sync(0xffffffffu, best, o);
        const u32 oi = __shfl_xor_sync(0xffffffffu, idx, o);
        if (ob > best || (ob == best && oi < idx)) {
            best = ob;
            idx = oi;
        }
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
    if (lane == 0) {
        shv[warp] = best;
        shi[warp] = idx;
    }
    __syncthreads();
    if (warp == 0) {
        best = lane < nwarps ? shv[lane] : TZ_NEG_INF;
        idx = lane < nwarps ? shi[lane] : 0xffffffffu;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const float ob = __shfl_xor_sync(0xffffffffu, best, o);
            const u32 oi = __shfl_xor_sync(0xffffffffu, idx, o);
            if (ob > best || (ob == best && oi < idx)) {
                best = ob;
                idx = oi;
            }
        }
        if (lane == 0) out[row] = idx == 0xffffffffu ? 0u : idx;  // all-NaN row: token 0
    }
}

extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS)
    sample_bf16(u32* out, const bf16* logits, int v, float temperature, int top_k, float top_p, const u64* seeds,
                const u64* counters) {
    __shared__ float shf[32];
    __shared__ u32 shu[32];
    __shared__ float scan_warp[32];
    __shared__ int winner;
    const u64 row = blockIdx.x;
    const bf16* x = logits + row * (u64)v;
    const int tid = threadIdx.x;

    // Pass 1: max logit (for a stable exp) and max key (upper bound of the bisections).
    float zmax = TZ_NEG_INF;
    u32 kmax = 0u;
    for (int j = tid; j < v; j += blockDim.x) {
        const bf16 b = x[j];
        const float z = bf2f(b) / temperature;
        zmax = fmaxf(zmax, z);  // fmaxf ignores NaN
        kmax = max(kmax, order_key(b));
    }
    zmax = block_max(zmax, shf);
    kmax = block_max_u(kmax, shu);
    const float mref = zmax == TZ_NEG_INF ? 0.f : zmax;

    // Top-k threshold.
    u32 kk = 0u;
    if (top_k > 0 && top_k < v) {
        u32 lo = 0u, hi = kmax;  // count(key >= 0) = v >= k: lo is always feasible
        while (lo < hi) {
            const u32 mid = lo + (hi - lo + 1u) / 2u;
            u32 cnt = 0u;
            for (int j = tid; j < v; j += blockDim.x) cnt += order_key(x[j]) >= mid ? 1u : 0u;
            cnt = block_sum_u(cnt, shu);
            if (cnt >= (u32)top_k) lo = mid;
            else hi = mid - 1u;
        }
        kk = lo;
    }

    // Top-p threshold.
    u32 kp = 0u;
    if (top_p < 1.f) {
        float kept_k = 0.f;  // the mass top-k kept (everything when top-k is off)
        for (int j = tid; j < v; j += blockDim.x) {
            const bf16 b = x[j];
            const float z = bf2f(b) / temperature;
            if (z == z && order_key(b) >= kk) kept_k += __expf(z - mref);
        }
        kept_k = block_sum_f(kept_k, shf);
        const float need = top_p * kept_k;
        u32 lo = kk, hi = kmax;  // mass(key >= kk) = kept_k >= need: lo is always feasible
        while (lo < hi) {
            const u32 mid = lo + (hi - lo + 1u) / 2u;
            float mass = 0.f;
            for (int j = tid; j < v; j += blockDim.x) {
                const bf16 b = x[j];
                if (order_key(b) >= mid) mass += __expf(bf2f(b) / temperature - mref);
            }
            mass = block_sum_f(mass, shf);
            if (mass >= need) lo = mid;
            else hi = mid - 1u;
        }
        kp = lo;
    }
    const u32 kcut = max(kk, kp);

    // Chunked index-order scan of the kept mass.
    const int chunk = (v + (int)blockDim.x - 1) / (int)blockDim.x;
    const int j0 = min(v, tid * chunk), j1 = min(v, j0 + chunk);
    float local = 0.f;
    for (int j = j0; j < j1; ++j) {
        const bf16 b = x[j];
        if (order_key(b) >= kcut) {
            const float z = bf2f(b) / temperature;
            if (z == z) local += __expf(z - mref);
        }
    }
    // Block exclusive scan of `local`.
    const int lane = tid & 31, warp = tid >> 5, nwarps = (blockDim.x + 31) >> 5;
    float incl = local;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const float y = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += y;
    }
    if (lane == 31) scan_warp[warp] = incl;
    if (tid == 0) winner = 0x7fffffff;
    __syncthreads();
    if (warp == 0) {
        float w = lane < nwarps ? scan_warp[lane] : 0.f;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const float y = __shfl_up_sync(0xffffffffu, w, o);
            if (lane >= o) w += y;
        }
        if (lane < nwarps) scan_warp[lane] = w;  // inclusive warp-prefix totals
    }
    __syncthreads();
    const float warp_off = warp > 0 ? scan_warp[warp - 1] : 0.f;
    const float excl = warp_off + incl - local;
    const float total_kept = scan_warp[nwarps - 1];
    const float u = philox_uniform(seeds[row], counters[row]);
    const float target = u * total_kept;
    if (local > 0.f && excl + local > target) atomicMin(&winner, tid);
    __syncthreads();
    if (tid == winner) {
        float cum = excl;
        int pick = -1, last = -1;
        for (int j = j0; j < j1; ++j) {
            const bf16 b = x[j];
            if (order_key(b) >= kcut) {
                const float z = bf2f(b) / temperature;
                if (!(z == z)) continue;
                last = j;
                cum += __expf(z - mref);
                if (cum > target) {
                    pick = j;
                    break;
                }
            }
        }
        out[row] = (u32)(pick >= 0 ? pick : last);
    }
    // No thread won only if the kept mass is 0 (every kept logit NaN or -inf): fall back to
    // the greedy-by-key choice, the first index holding the largest key.
    if (winner == 0x7fffffff) {
        u32 first = 0xffffffffu;
        for (int j = tid; j < v; j += blockDim.x)
            if (order_key(x[j]) == kmax) first = min(first, (u32)j);
        // reuse the max reduction on the complement to get a min
        const u32 m = block_max_u(0xffffffffu - first, shu);
        if (tid == 0) out[row] = 0xffffffffu - m == 0xffffffffu ? 0u : 0xffffffffu - m;
    }
}
