// attention.cu — causal grouped-query attention over packed variable-length sequences
// (flash-attention style: tiled over keys with an online softmax, never a T×T matrix in
// global memory), its backward pass, single-query decode over the KV cache, and kv_store.
//
// Layouts (row-major, bf16 unless noted):
//   qkv  [tokens, W], W = (H + 2·KVH)·D; row t = [q heads 0..H | k heads 0..KVH | v heads]
//   out  [tokens, H·D];  lse [tokens·H] f32 (row t·H + h, natural log, of the scaled scores)
//   cu   [S + 1] u32: sequence s owns tokens [cu[s], cu[s+1])
//   kcache / vcache [slots, t_max, KVH, D]
//   q head h reads kv head g = h / (H / KVH).
//
// attn_fwd_d{16,32,64,128}: grid (ceil(max_len / 64), H, S), 256 threads = 16×16 (ty, tx).
//   A block owns 64 queries of one head of one sequence, keeps them in shared memory and
//   loops over key tiles of BC keys (BC = 64 for D ≤ 64, 32 for D = 128, so that shared
//   memory stays under the 48 KB static limit: ≈ 42 KB) up to the causal diagonal:
//     1. S = scale·Q·Kᵀ for the tile: thread (ty, tx) computes rows ty + 16i, columns
//        tx + 16j (fp32 FMA; K rows padded to D + 2 elements so the 16 rows a warp reads
//        fall in distinct banks); causal / out-of-sequence entries become −inf.
//     2. Online softmax, 4 threads per row: new running max m, P = e^{S − m} in place,
//        running sum l, rescale factor α = e^{m_old − m}.
//     3. O = α·O + P·V in registers (thread: rows ty + 16i, dims tx + 16j).
//   Finally out = O / l and lse = m + log l. Key 0 is in every query's first tile, so every
//   valid row has a finite max from the first tile on; −inf is still guarded everywhere.
//   Padding rows / keys past the sequence end are zero-filled (never garbage, since
//   0·NaN would poison the tile) and masked.
//
// Backward (3 kernels, FA2 scheme):
//   attn_bwd_dot: Dvec[t·H + h] = Σ_d dO·O (fp32), one warp per (t, h).
//   attn_bwd_d{16,32,64,128}: grid (ceil(max_len / 32), KVH, S), 256 threads. A block owns a
//     32-key tile of one kv head and loops over the query heads of its group and the query
//     tiles at or after the diagonal: recomputes P = e^{scale·QKᵀ − lse}, dP = dO·Vᵀ,
//     dS = P∘(dP − Dvec); accumulates dV += Pᵀ·dO and dK += scale·dSᵀ·Q in registers
//     (fp32, summed across the whole group: no atomics), and adds dQ = scale·dS·K into an
//     fp32 accumulator with atomicAdd (zeroed by the host first). dK/dV are written to the
//     k/v part of dqkv at the end.
//   attn_dq_convert: dqkv's q part = bf16(dq accumulator).
//
// Decode: attn_decode_partial_d{16,32,64,128}: grid (n_split, H, b), 128 threads (4 warps). Row i's
//   query (the q heads of qkv row i) against cache positions [0, len[i]) of slot[i], split
//   into n_split chunks of `chunk` keys: each warp takes every 4th key of the chunk (lane
//   holds D/32 dims; the dot product is a warp sum), online softmax per warp, the 4 warps
//   merge in shared memory and the block writes an unnormalized partial (m, l, o[D]) to
//   `part` [b, H, n_split, D + 2] f32. attn_decode_combine (grid (H, b), D threads) merges
//   the partials and writes out [b, H·D].
// kv_store: grid n, the k and v heads of qkv row i to [slot[i], pos[i]] of the caches.
//
// These FMA kernels are the fallback and the second implementation the tests compare: for
// head_dim 64/128 the forward, backward and decode run on tensor cores (attention_mma.cu).
#include "common.cuh"

// Two bf16 packed in a u32 → two floats (low half is the lower-index element).
__device__ __forceinline__ float2 bf2x2(u32 w) { return make_float2(__uint_as_float(w << 16), __uint_as_float(w & 0xffff0000u)); }

template <int D, int BC>
__device__ __forceinline__ void attn_fwd_impl(bf16* out, float* lse, const bf16* qkv, const u32* cu, int H, int KVH,
                                              float scale) {
    constexpr int BR = 64;
    constexpr int DP = D + 2;  // padded shared row, in bf16 elements (keeps u32 alignment)
    constexpr int NI = BR / 16;
    constexpr int NJ = BC / 16;
    constexpr int ND = D / 16;
    constexpr int NT = 256;
    __shared__ __align__(16) bf16 sQ[BR * DP];
    __shared__ __align__(16) bf16 sK[BC * DP];
    __shared__ __align__(16) bf16 sV[BC * DP];
    __shared__ float sS[BR][BC + 1];
    __shared__ float sM[BR], sL[BR], sA[BR];

    const int s = blockIdx.z, h = blockIdx.y;
    const int start = (int)cu[s];
    const int L = (int)cu[s + 1] - start;
    const int q0 = blockIdx.x * BR;
    if (q0 >= L) return;  // uniform over the block
    const int g = h / (H / KVH);
    const u64 W = (u64)(H + 2 * KVH) * D;
    const u64 qoff = (u64)h * D, koff = (u64)(H + g) * D, voff = (u64)(H + KVH + g) * D;
    const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;

    for (int e = tid; e < BR * D; e += NT) {
        const int r = e / D, d = e - r * D;
        const int qi = q0 + r;
        sQ[r * DP + d] = qi < L ? qkv[(u64)(start + qi) * W + qoff + d] : (bf16)0;
    }
    if (tid < BR) {
        sM[tid] = TZ_NEG_INF;
        sL[tid] = 0.f;
    }
    float o[NI][ND];
#pragma unroll
    for (int i = 0; i < NI; ++i)
#pragma unroll
        for (int j = 0; j < ND; ++j) o[i][j] = 0.f;

    const int kend = min(q0 + BR, L);  // causal: keys [0, kend) matter to this tile
    for (int k0 = 0; k0 < kend; k0 += BC) {
        __syncthreads();  // the previous tile's readers are done (first time: Q, sM visible)
        for (int e = tid; e < BC * D; e += NT) {
            const int r = e / D, d = e - r * D;
            const int kj = k0 + r;
            const bool ok = kj < L;
            const u64 row = (u64)(start + (ok ? kj : 0)) * W;
            sK[r * DP + d] = ok ? qkv[row + koff + d] : (bf16)0;
            sV[r * DP + d] = ok ? qkv[row + voff + d] : (bf16)0;
        }
        __syncthreads();

        // 1. scores
        float acc[NI][NJ];
#pragma unroll
        for (int i = 0; i < NI; ++i)
#pragma unroll
            for (int j = 0; j < NJ; ++j) acc[i][j] = 0.f;
#pragma unroll 4
        for (int d2 = 0; d2 < D / 2; ++d2) {
            float2 qv[NI], kv[NJ];
#pragma unroll
            for (int i = 0; i < NI; ++i) qv[i] = bf2x2(((const u32*)(sQ + (ty + 16 * i) * DP))[d2]);
#pragma unroll
            for (int j = 0; j < NJ; ++j) kv[j] = bf2x2(((const u32*)(sK + (tx + 16 * j) * DP))[d2]);
#pragma unroll
            for (int i = 0; i < NI; ++i)
#pragma unroll
                for (int j = 0; j < NJ; ++j) acc[i][j] += qv[i].x * kv[j].x + qv[i].y * kv[j].y;
        }
#pragma unroll
        for (int i = 0; i < NI; ++i)
#pragma unroll
            for (int j = 0; j < NJ; ++j) {
                const int r = ty + 16 * i, c = tx + 16 * j;
                const int qi = q0 + r, kj = k0 + c;
                sS[r][c] = (kj <= qi && kj < L) ? acc[i][j] * scale : TZ_NEG_INF;
            }
        __syncthreads();

        // 2. online softmax, 4 threads per row (consecutive lanes of one warp)
        {
            const int r = tid >> 2, sub = tid & 3;
            float mx = TZ_NEG_INF;
            for (int c = sub; c < BC; c += 4) mx = fmaxf(mx, sS[r][c]);
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            const float m_old = sM[r];
            const float m_new = fmaxf(m_old, mx);
            const float mref = m_new == TZ_NEG_INF ? 0.f : m_new;
            float sum = 0.f;
            for (int c = sub; c < BC; c += 4) {
                const float p = __expf(sS[r][c] - mref);
                sS[r][c] = p;
                sum += p;
            }
            sum += __shfl_xor_sync(0xffffffffu, sum, 1);
            sum += __shfl_xor_sync(0xffffffffu, sum, 2);
            const float alpha = __expf(m_old - mref);
            const float l_old = sL[r];
            __syncwarp();  // all 4 lanes have read sM[r], sL[r] before lane sub == 0 writes them
            if (sub == 0) {
                sM[r] = m_new;
                sL[r] = l_old * alpha + sum;
                sA[r] = alpha;
            }
        }
        __syncthreads();

        // 3. O = α·O + P·V
#pragma unroll
        for (int i = 0; i < NI; ++i) {
            const float a = sA[ty + 16 * i];
#pragma unroll
            for (int j = 0; j < ND; ++j) o[i][j] *= a;
        }
#pragma unroll 2
        for (int c = 0; c < BC; ++c) {
            float vv[ND];
#pragma unroll
            for (int j = 0; j < ND; ++j) vv[j] = bf2f(sV[c * DP + tx + 16 * j]);
#pragma unroll
            for (int i = 0; i < NI; ++i) {
                const float p = sS[ty + 16 * i][c];
#pragma unroll
                for (int j = 0; j < ND; ++j) o[i][j] += p * vv[j];
            }
        }
    }
    __syncthreads();
    const u64 HD = (u64)H * D;
#pragma unroll
    for (int i = 0; i < NI; ++i) {
        const int r = ty + 16 * i;
        const int qi = q0 + r;
        if (qi < L) {
            const float inv = 1.f / sL[r];
            bf16* dst = out + (u64)(start + qi) * HD + qoff;
#pragma unroll
            for (int j = 0; j < ND; ++j) dst[tx + 16 * j] = f2bf(o[i][j] * inv);
        }
    }
    if (tid < BR && q0 + tid < L) lse[(u64)(start + q0 + tid) * H + h] = sM[tid] + logf(sL[tid]);
}

extern "C" __global__ void __launch_bounds__(256) attn_fwd_d16(bf16* out, float* lse, const bf16* qkv, const u32* cu,
                                                               int H, int KVH, float scale) {
    attn_fwd_impl<16, 64>(out, lse, qkv, cu, H, KVH, scale);
}
extern "C" __global__ void __launch_bounds__(256) attn_fwd_d32(bf16* out, float* lse, const bf16* qkv, const u32* cu,
                                                               int H, int KVH, float scale) {
    attn_fwd_impl<32, 64>(out, lse, qkv, cu, H, KVH, scale);
}
extern "C" __global__ void __launch_bounds__(256) attn_fwd_d64(bf16* out, float* lse, const bf16* qkv, const u32* cu,
                                                               int H, int KVH, float scale) {
    attn_fwd_impl<64, 64>(out, lse, qkv, cu, H, KVH, scale);
}
extern "C" __global__ void __launch_bounds__(256) attn_fwd_d128(bf16* out, float* lse, const bf16* qkv,
                                                                const u32* cu, int H, int KVH, float scale) {
    attn_fwd_impl<128, 32>(out, lse, qkv, cu, H, KVH, scale);
}

// ---- backward --------------------------------------------------------------------------------

// Dvec[t·H + h] = Σ_d dout[t, h·D + d]·out[t, h·D + d]; one warp per (t, h), 8 warps a block.
extern "C" __global__ void attn_bwd_dot(float* dvec, const bf16* dout, const bf16* out, u64 rows, int D) {
    const u64 w = (u64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (w >= rows) return;
    const bf16* a = dout + w * D;
    const bf16* b = out + w * D;
    float acc = 0.f;
    for (int d = lane; d < D; d += 32) acc += bf2f(a[d]) * bf2f(b[d]);
    acc = warp_sum(acc);
    if (lane == 0) dvec[w] = acc;
}

template <int D>
__device__ __forceinline__ void attn_bwd_impl(bf16* dqkv, float* dq_acc, const bf16* dout, const bf16* qkv,
                                              const float* lse, const float* dvec, const u32* cu, int H, int KVH,
                                              float scale) {
    constexpr int B = 32;
    constexpr int DP = D + 2;
    constexpr int ND = D / 16;
    constexpr int NT = 256;
    __shared__ __align__(16) bf16 sK[B * DP];
    __shared__ __align__(16) bf16 sV[B * DP];
    __shared__ __align__(16) bf16 sQ[B * DP];
    __shared__ __align__(16) bf16 sdO[B * DP];
    __shared__ float sP[B][B + 1];
    __shared__ float sdS[B][B + 1];
    __shared__ float sLse[B], sDv[B];

    const int s = blockIdx.z, g = blockIdx.y;
    const int start = (int)cu[s];
    const int L = (int)cu[s + 1] - start;
    const int k0 = blockIdx.x * B;
    if (k0 >= L) return;
    const int G = H / KVH;
    const u64 W = (u64)(H + 2 * KVH) * D;
    const u64 HD = (u64)H * D;
    const u64 koff = (u64)(H + g) * D, voff = (u64)(H + KVH + g) * D;
    const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;

    for (int e = tid; e < B * D; e += NT) {
        const int r = e / D, d = e - r * D;
        const int kj = k0 + r;
        const bool ok = kj < L;
        const u64 row = (u64)(start + (ok ? kj : 0)) * W;
        sK[r * DP + d] = ok ? qkv[row + koff + d] : (bf16)0;
        sV[r * DP + d] = ok ? qkv[row + voff + d] : (bf16)0;
    }
    float dk[2][ND], dv[2][ND];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < ND; ++j) {
            dk[i][j] = 0.f;
            dv[i][j] = 0.f;
        }

    for (int hh = 0; hh < G; ++hh) {
        const int h = g * G + hh;
        const u64 qoff = (u64)h * D;
        for (int q0 = k0; q0 < L; q0 += B) {
            __syncthreads();  // previous iteration's readers are done (first: sK, sV visible)
            for (int e = tid; e < B * D; e += NT) {
                const int r = e / D, d = e - r * D;
                const int qi = q0 + r;
                const bool ok = qi < L;
                const u64 t = (u64)(start + (ok ? qi : 0));
                sQ[r * DP + d] = ok ? qkv[t * W + qoff + d] : (bf16)0;
                sdO[r * DP + d] = ok ? dout[t * HD + qoff + d] : (bf16)0;
            }
            if (tid < B) {
                const int qi = q0 + tid;
                const bool ok = qi < L;
                sLse[tid] = ok ? lse[(u64)(start + qi) * H + h] : 0.f;
                sDv[tid] = ok ? dvec[(u64)(start + qi) * H + h] : 0.f;
            }
            __syncthreads();

            // S = scale·QKᵀ → P; dP = dO·Vᵀ → dS. Thread: rows ty + 16i, keys tx + 16j.
            float sa[2][2], pa[2][2];
#pragma unroll
            for (int i = 0; i < 2; ++i)
#pragma unroll
                for (int j = 0; j < 2; ++j) {
                    sa[i][j] = 0.f;
                    pa[i][j] = 0.f;
                }
#pragma unroll 4
            for (int d2 = 0; d2 < D / 2; ++d2) {
                float2 qv[2], ov[2], kv[2], vv[2];
#pragma unroll
                for (int i = 0; i < 2; ++i) {
                    qv[i] = bf2x2(((const u32*)(sQ + (ty + 16 * i) * DP))[d2]);
                    ov[i] = bf2x2(((const u32*)(sdO + (ty + 16 * i) * DP))[d2]);
                }
#pragma unroll
                for (int j = 0; j < 2; ++j) {
                    kv[j] = bf2x2(((const u32*)(sK + (tx + 16 * j) * DP))[d2]);
                    vv[j] = bf2x2(((const u32*)(sV + (tx + 16 * j) * DP))[d2]);
                }
#pragma unroll
                for (int i = 0; i < 2; ++i)
#pragma unroll
                    for (int j = 0; j < 2; ++j) {
                        sa[i][j] += qv[i].x * kv[j].x + qv[i].y * kv[j].y;
                        pa[i][j] += ov[i].x * vv[j].x + ov[i].y * vv[j].y;
                    }
            }
#pragma unroll
            for (int i = 0; i < 2; ++i)
#pragma unroll
                for (int j = 0; j < 2; ++j) {
                    const int r = ty + 16 * i, c = tx + 16 * j;
                    const int qi = q0 + r, kj = k0 + c;
                    const bool valid = qi < L && kj < L && kj <= qi;
                    const float p = valid ? __expf(sa[i][j] * scale - sLse[r]) : 0.f;
                    sP[r][c] = p;
                    sdS[r][c] = p * (pa[i][j] - sDv[r]);
                }
            __syncthreads();

            // dV += Pᵀ·dO, dK += dSᵀ·Q. Thread: keys ty + 16i, dims tx + 16j.
#pragma unroll 2
            for (int r = 0; r < B; ++r) {
                float pr[2], dr[2];
#pragma unroll
                for (int i = 0; i < 2; ++i) {
                    pr[i] = sP[r][ty + 16 * i];
                    dr[i] = sdS[r][ty + 16 * i];
                }
#pragma unroll
                for (int j = 0; j < ND; ++j) {
                    const float ov = bf2f(sdO[r * DP + tx + 16 * j]);
                    const float qv = bf2f(sQ[r * DP + tx + 16 * j]);
#pragma unroll
                    for (int i = 0; i < 2; ++i) {
                        dv[i][j] += pr[i] * ov;
                        dk[i][j] += dr[i] * qv;
                    }
                }
            }
            // dQ += scale·dS·K. Thread: rows ty + 16i, dims tx + 16j.
            float dq[2][ND];
#pragma unroll
            for (int i = 0; i < 2; ++i)
#pragma unroll
                for (int j = 0; j < ND; ++j) dq[i][j] = 0.f;
#pragma unroll 2
            for (int c = 0; c < B; ++c) {
                const float d0 = sdS[ty][c], d1 = sdS[ty + 16][c];
#pragma unroll
                for (int j = 0; j < ND; ++j) {
                    const float kv = bf2f(sK[c * DP + tx + 16 * j]);
                    dq[0][j] += d0 * kv;
                    dq[1][j] += d1 * kv;
                }
            }
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                const int qi = q0 + ty + 16 * i;
                if (qi < L) {
                    float* dst = dq_acc + (u64)(start + qi) * HD + qoff;
#pragma unroll
                    for (int j = 0; j < ND; ++j) atomicAdd(dst + tx + 16 * j, dq[i][j] * scale);
                }
            }
        }
    }
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const int kj = k0 + ty + 16 * i;
        if (kj < L) {
            bf16* row = dqkv + (u64)(start + kj) * W;
#pragma unroll
            for (int j = 0; j < ND; ++j) {
                row[koff + tx + 16 * j] = f2bf(dk[i][j] * scale);
                row[voff + tx + 16 * j] = f2bf(dv[i][j]);
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(256)
    attn_bwd_d16(bf16* dqkv, float* dq_acc, const bf16* dout, const bf16* qkv, const float* lse, const float* dvec,
                 const u32* cu, int H, int KVH, float scale) {
    attn_bwd_impl<16>(dqkv, dq_acc, dout, qkv, lse, dvec, cu, H, KVH, scale);
}
extern "C" __global__ void __launch_bounds__(256)
    attn_bwd_d32(bf16* dqkv, float* dq_acc, const bf16* dout, const bf16* qkv, const float* lse, const float* dvec,
                 const u32* cu, int H, int KVH, float scale) {
    attn_bwd_impl<32>(dqkv, dq_acc, dout, qkv, lse, dvec, cu, H, KVH, scale);
}
extern "C" __global__ void __launch_bounds__(256)
    attn_bwd_d64(bf16* dqkv, float* dq_acc, const bf16* dout, const bf16* qkv, const float* lse, const float* dvec,
                 const u32* cu, int H, int KVH, float scale) {
    attn_bwd_impl<64>(dqkv, dq_acc, dout, qkv, lse, dvec, cu, H, KVH, scale);
}
extern "C" __global__ void __launch_bounds__(256)
    attn_bwd_d128(bf16* dqkv, float* dq_acc, const bf16* dout, const bf16* qkv, const float* lse, const float* dvec,
                  const u32* cu, int H, int KVH, float scale) {
    attn_bwd_impl<128>(dqkv, dq_acc, dout, qkv, lse, dvec, cu, H, KVH, scale);
}

// dqkv[t, 0 .. H·D) = bf16(dq_acc[t, :]) for t < tokens.
extern "C" __global__ void attn_dq_convert(bf16* dqkv, const float* dq_acc, u64 tokens, int HD, int W) {
    TZ_GRID_STRIDE(i, tokens * (u64)HD) {
        const u64 t = i / HD, c = i - t * HD;
        dqkv[t * W + c] = f2bf(dq_acc[i]);
    }
}

// ---- decode ----------------------------------------------------------------------------------

template <int D>
__device__ __forceinline__ void decode_partial_impl(float* part, const bf16* qkv, const bf16* kc, const bf16* vc,
                                                    const u32* slot, const u32* len, int H, int KVH, int t_max,
                                                    int n_split, int chunk, float scale) {
    constexpr int EPL = (D + 31) / 32;  // dims per lane (D < 32: lanes ≥ D hold none)
    constexpr int NW = 4;        // warps per block
    __shared__ float sq[D];
    __shared__ float sm[NW], sl[NW];
    __shared__ float sacc[NW][D];
    const int i = blockIdx.z, h = blockIdx.y, sp = blockIdx.x;
    const int g = h / (H / KVH);
    const u64 W = (u64)(H + 2 * KVH) * D;
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
    for (int d = tid; d < D; d += blockDim.x) sq[d] = bf2f(qkv[(u64)i * W + (u64)h * D + d]) * scale;
    __syncthreads();
    const u64 sl_i = slot[i];
    const int n = (int)len[i];
    const int k0 = sp * chunk;
    const int k1 = min(k0 + chunk, n);
    float m = TZ_NEG_INF, l = 0.f, acc[EPL];
#pragma unroll
    for (int e = 0; e < EPL; ++e) acc[e] = 0.f;
    for (int j = k0 + w; j < k1; j += NW) {
        const u64 base = ((sl_i * t_max + j) * KVH + g) * D;
        float s = 0.f;
#pragma unroll
        for (int e = 0; e < EPL; ++e)
            if (D % 32 == 0 || lane + 32 * e < D) s += sq[lane + 32 * e] * bf2f(kc[base + lane + 32 * e]);
        s = warp_sum(s);
        const float mn = fmaxf(m, s);
        const float a = __expf(m - mn);  // 0 on the first key (m = −inf)
        const float p = __expf(s - mn);
        l = l * a + p;
#pragma unroll
        for (int e = 0; e < EPL; ++e)
            if (D % 32 == 0 || lane + 32 * e < D) acc[e] = acc[e] * a + p * bf2f(vc[base + lane + 32 * e]);
        m = mn;
    }
    if (lane == 0) {
        sm[w] = m;
        sl[w] = l;
    }
#pragma unroll
    for (int e = 0; e < EPL; ++e)
        if (D % 32 == 0 || lane + 32 * e < D) sacc[w][lane + 32 * e] = acc[e];
    __syncthreads();
    float M = TZ_NEG_INF;
#pragma unroll
    for (int k = 0; k < NW; ++k) M = fmaxf(M, sm[k]);
    const float Mref = M == TZ_NEG_INF ? 0.f : M;
    float* dst = part + ((u64)(i * H + h) * n_split + sp) * (D + 2);
    for (int d = tid; d < D; d += blockDim.x) {
        float o = 0.f;
#pragma unroll
        for (int k = 0; k < NW; ++k) o += sacc[k][d] * __expf(sm[k] - Mref);
        dst[2 + d] = o;
    }
    if (tid == 0) {
        float Lsum = 0.f;
#pragma unroll
        for (int k = 0; k < NW; ++k) Lsum += sl[k] * __expf(sm[k] - Mref);
        dst[0] = M;
        dst[1] = Lsum;
    }
}

extern "C" __global__ void __launch_bounds__(128)
    attn_decode_partial_d16(float* part, const bf16* qkv, const bf16* kc, const bf16* vc, const u32* slot,
                            const u32* len, int H, int KVH, int t_max, int n_split, int chunk, float scale) {
    decode_partial_impl<16>(part, qkv, kc, vc, slot, len, H, KVH, t_max, n_split, chunk, scale);
}
extern "C" __global__ void __launch_bounds__(128)
    attn_decode_partial_d32(float* part, const bf16* qkv, const bf16* kc, const bf16* vc, const u32* slot,
                            const u32* len, int H, int KVH, int t_max, int n_split, int chunk, float scale) {
    decode_partial_impl<32>(part, qkv, kc, vc, slot, len, H, KVH, t_max, n_split, chunk, scale);
}
extern "C" __global__ void __launch_bounds__(128)
    attn_decode_partial_d64(float* part, const bf16* qkv, const bf16* kc, const bf16* vc, const u32* slot,
                            const u32* len, int H, int KVH, int t_max, int n_split, int chunk, float scale) {
    decode_partial_impl<64>(part, qkv, kc, vc, slot, len, H, KVH, t_max, n_split, chunk, scale);
}
extern "C" __global__ void __launch_bounds__(128)
    attn_decode_partial_d128(float* part, const bf16* qkv, const bf16* kc, const bf16* vc, const u32* slot,
                             const u32* len, int H, int KVH, int t_max, int n_split, int chunk, float scale) {
    decode_partial_impl<128>(part, qkv, kc, vc, slot, len, H, KVH, t_max, n_split, chunk, scale);
}

// grid (H, b), blockDim = D: out[i, h·D + d] = Σ_s o_s[d]·e^{m_s − M} / Σ_s l_s·e^{m_s − M}.
extern "C" __global__ void attn_decode_combine(bf16* out, const float* part, int H, int D, int n_split) {
    const int h = blockIdx.x, i = blockIdx.y, d = threadIdx.x;
    const float* p = part + (u64)(i * H + h) * n_split * (D + 2);
    float M = TZ_NEG_INF;
    for (int s = 0; s < n_split; ++s)
        if (p[s * (D + 2) + 1] > 0.f) M = fmaxf(M, p[s * (D + 2)]);
    const float Mref = M == TZ_NEG_INF ? 0.f : M;
    float Lsum = 0.f, o = 0.f;
    for (int s = 0; s < n_split; ++s) {
        const float* q = p + s * (D + 2);
        if (q[1] > 0.f) {
            const float e = __expf(q[0] - Mref);
            Lsum += q[1] * e;
            o += q[2 + d] * e;
        }
    }
    if (d < D) out[(u64)i * H * D + (u64)h * D + d] = f2bf(Lsum > 0.f ? o / Lsum : 0.f);
}

// grid n, block 128: caches [slots, t_max, KVH, D] at (slot[i], pos[i]) ← k, v heads of row i.
extern "C" __global__ void kv_store_bf16(bf16* kc, bf16* vc, const bf16* qkv, const u32* slot, const u32* pos, int H,
                                         int KVH, int D, int t_max) {
    const u64 i = blockIdx.x;
    const u64 W = (u64)(H + 2 * KVH) * D;
    const int KD = KVH * D;
    const u64 dst = ((u64)slot[i] * t_max + pos[i]) * KD;
    const bf16* src = qkv + i * W + (u64)H * D;
    for (int e = threadIdx.x; e < KD; e += blockDim.x) {
        kc[dst + e] = src[e];
        vc[dst + e] = src[KD + e];
    }
}
