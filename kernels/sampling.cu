// sampling.cu — one token per row of bf16 logits, with the exact semantics of
// `SamplingParams` (src/backend/mod.rs), without sorting the vocabulary.
//
//   argmax_bf16(out [b] u32, logits [b, v] bf16, v)
//       temperature == 0: the index of the largest logit, lowest index on ties (NaN ignored).
//   sample_bf16(out [b] u32, logits [b, v] bf16, v, temperature, top_k, top_p,
//               seeds [b] u64, counters [b] u64)
//       z = logit / temperature, p ∝ e^{z − max}.
//       Every logit is mapped to a 16-bit order key (bf16 bits made monotone: key order ==
//       logit order == p order since temperature > 0). Thresholds are found by a two-level
//       radix select on the key: a 256-bin histogram of the high byte (counts and masses),
//       then one of the low byte within the bin the high level chose:
//         top-k (0 < k < v): Kk = the largest key K with #{key ≥ K} ≥ k, i.e. the key of the
//           k-th largest p; ties with it are kept ("p ≥ the k-th largest p").
//         top-p (top_p < 1): Kp = the largest key K ≥ Kk with Σ_{key ≥ K} p ≥
//           top_p · Σ_{key ≥ Kk} p, i.e. the largest threshold whose kept mass reaches top_p
//           of the mass top-k kept (as the CPU oracle does: top-p renormalized after top-k).
//         kept = {j : key_j ≥ max(Kk, Kp)}.
//       Masses in the histograms are fixed point (p·2^40, p ≤ 1 relative to the row max) so
//       the shared-memory atomics are integer adds: the thresholds do not depend on the order
//       threads arrive in (float atomics would), and a row's total (< v·2^40 < 2^58) cannot
//       overflow. Passes over the row: max, high-byte histogram, low-byte histogram for top-k,
//       another for top-p unless it falls in top-k's bin, the final scan: 3 to 5 (the
//       bisection this replaced took up to 35).
//       Then with u = Philox4x32-10(seeds[i], counters[i]) → top 24 bits of word 0 × 2^-24
//       (bit-identical to src/rng.rs), the token is the first kept j in index order whose
//       cumulative kept mass exceeds u·(total kept mass) (strictly, like the CPU oracle, so
//       u = 0 never picks a zero-probability token): each thread owns a contiguous chunk of
//       the row, a block-wide exclusive scan of the chunk sums locates the chunk, and its
//       owner walks it sequentially (the last kept index if rounding leaves it short).
//   Launch: grid.x = b rows, one block of 1024 threads per row. The row (≤ 300 KB, more than
//   shared memory holds) stays in L2 across the passes.
//   Tuning left for hardware: contention of the histogram atomics on the few bins that hold
//   most logits (warp-aggregated or per-warp histograms if a profile shows it).
#include "common.cuh"

#define SAMPLE_THREADS 1024

// Monotone 16-bit key of a bf16 value; NaN maps to 0 (never kept ahead of a number).
__device__ __forceinline__ u32 order_key(bf16 b) {
    const u32 u = b;
    if ((u & 0x7fffu) > 0x7f80u) return 0u;  // NaN
    return (u & 0x8000u) ? ((~u) & 0xffffu) : (u | 0x8000u);
}

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

#define RADIX_BINS 256
#define MASS_SCALE 1099511627776.0f  // 2^40

// p = e^{z − max} of one logit as a fixed-point mass (truncated: < 2^-40 lost per token);
// NaN has none.
__device__ __forceinline__ u64 fixed_mass(bf16 b, float temperature, float mref) {
    const float z = bf2f(b) / temperature;
    return z == z ? (u64)(__expf(z - mref) * MASS_SCALE) : 0ull;
}

__device__ __forceinline__ u64 warp_sum_u64(u64 v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Lane `lane`'s share of a 256-bin histogram: bins 8·lane .. 8·lane+7.
template <typename T>
__device__ __forceinline__ u64 bins8_sum(const T* hist, int lane) {
    u64 s = 0ull;
#pragma unroll
    for (int i = 0; i < 8; ++i) s += (u64)hist[lane * 8 + i];
    return s;
}

// Call from one whole warp; every lane gets the answer. The largest bin b of hist[0..256)
// with base + Σ_{i ≥ b} hist[i] ≥ need, and in *above base + Σ_{i > b} hist[i]; −1 if even
// b = 0 falls short.
template <typename T>
__device__ int suffix_select(const T* hist, u64 base, u64 need, u64* above) {
    const int lane = threadIdx.x & 31;
    const u64 local = bins8_sum(hist, lane);
    u64 suf = local;  // Σ over lanes ≥ this one
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const u64 y = __shfl_down_sync(0xffffffffu, suf, o);
        if (lane + o < 32) suf += y;
    }
    int owner = base + suf >= need ? lane : -1;  // suffix sums fall with the lane: take the last
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) owner = max(owner, __shfl_xor_sync(0xffffffffu, owner, o));
    if (owner < 0) return -1;
    u64 acc = base + __shfl_sync(0xffffffffu, suf - local, owner);
    int bin = owner * 8;
    for (int i = 7; i >= 0; --i) {
        const u64 h = (u64)hist[owner * 8 + i];
        if (acc + h >= need) {
            bin = owner * 8 + i;
            break;
        }
        acc += h;
    }
    *above = acc;
    return bin;
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
    __shared__ u32 cnt_hi[RADIX_BINS], cnt_lo[RADIX_BINS];
    __shared__ u64 mass_hi[RADIX_BINS], mass_lo[RADIX_BINS];
    __shared__ int sel_bin;
    __shared__ u64 sel_above, sel_need;
    const u64 row = blockIdx.x;
    const bf16* x = logits + row * (u64)v;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

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

    const bool use_k = top_k > 0 && top_k < v, use_p = top_p < 1.f;
    u32 kcut = 0u;
    if (use_k || use_p) {
        for (int i = tid; i < RADIX_BINS; i += blockDim.x) {
            cnt_hi[i] = cnt_lo[i] = 0u;
            mass_hi[i] = mass_lo[i] = 0ull;
        }
        __syncthreads();
        for (int j = tid; j < v; j += blockDim.x) {
            const bf16 b = x[j];
            const u32 h = order_key(b) >> 8;
            if (use_k) atomicAdd(&cnt_hi[h], 1u);
            if (use_p) {
                const u64 m = fixed_mass(b, temperature, mref);
                if (m) atomicAdd(&mass_hi[h], m);
            }
        }
        __syncthreads();

        // Top-k: the high byte, then the low byte within it.
        int hk = 0, lk = 0;
        if (use_k) {
            if (warp == 0) {
                u64 above;
                const int bin = suffix_select(cnt_hi, 0ull, (u64)top_k, &above);  // ≥ 0: v ≥ k
                if (lane == 0) {
                    sel_bin = bin;
                    sel_above = above;
                }
            }
            __syncthreads();
            hk = sel_bin;
            const u64 cnt_above = sel_above;
            for (int j = tid; j < v; j += blockDim.x) {
                const bf16 b = x[j];
                const u32 key = order_key(b);
                if ((int)(key >> 8) != hk) continue;
                atomicAdd(&cnt_lo[key & 0xffu], 1u);
                if (use_p) {
                    const u64 m = fixed_mass(b, temperature, mref);
                    if (m) atomicAdd(&mass_lo[key & 0xffu], m);
                }
            }
            __syncthreads();
            if (warp == 0) {
                u64 above;
                const int bin = suffix_select(cnt_lo, cnt_above, (u64)top_k, &above);
                if (lane == 0) sel_bin = bin;
            }
            __syncthreads();
            lk = sel_bin;
            kcut = ((u32)hk << 8) | (u32)lk;
        }

        // Top-p over the keys top-k kept: mask what it dropped out of the histograms, so bin
        // hk of the high level holds only the mass of keys ≥ Kk.
        if (use_p) {
            for (int i = tid; i < RADIX_BINS; i += blockDim.x) {
                if (i < hk) mass_hi[i] = 0ull;
                if (i < lk) mass_lo[i] = 0ull;
            }
            __syncthreads();
            if (warp == 0) {
                if (use_k) {
                    const u64 part = warp_sum_u64(bins8_sum(mass_lo, lane));
                    if (lane == 0) mass_hi[hk] = part;
                }
                __syncwarp();
                const u64 kept_k = warp_sum_u64(bins8_sum(mass_hi, lane));
                // At least one unit: a zero need would keep nothing (threshold above every key)
                // where the oracle keeps the largest p.
                u64 need = (u64)ceil((double)top_p * (double)kept_k);
                need = need > 0ull ? need : 1ull;
                u64 above;
                const int bin = suffix_select(mass_hi, 0ull, need, &above);
                if (lane == 0) {
                    sel_bin = bin;
                    sel_above = above;
                    sel_need = need;
                }
            }
            __syncthreads();
            const int hp = sel_bin;
            const u64 mass_above = sel_above, need = sel_need;
            if (hp < 0) {
                kcut = 0xffffu;  // no mass at all (every logit NaN or -inf): the greedy fallback
            } else {
                if (!(use_k && hp == hk)) {  // otherwise mass_lo already holds bin hp (masked)
                    __syncthreads();         // every thread has read sel_*
                    for (int i = tid; i < RADIX_BINS; i += blockDim.x) mass_lo[i] = 0ull;
                    __syncthreads();
                    for (int j = tid; j < v; j += blockDim.x) {
                        const bf16 b = x[j];
                        const u32 key = order_key(b);
                        if ((int)(key >> 8) != hp) continue;
                        const u64 m = fixed_mass(b, temperature, mref);
                        if (m) atomicAdd(&mass_lo[key & 0xffu], m);
                    }
                }
                __syncthreads();
                if (warp == 0) {
                    u64 above;
                    const int bin = suffix_select(mass_lo, mass_above, need, &above);
                    if (lane == 0) sel_bin = bin;
                }
                __syncthreads();
                kcut = max(kcut, ((u32)hp << 8) | (u32)sel_bin);
            }
        }
    }

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
    const int nwarps = (blockDim.x + 31) >> 5;
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
