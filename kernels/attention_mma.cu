// attention_mma.cu — causal grouped-query attention forward and backward on tensor cores
// (mma.sync.m16n8k16, bf16 in, fp32 accumulate), flash-attention-2 style: same inputs,
// outputs and masking as attn_fwd_d* / attn_bwd_d* in attention.cu (layouts there), which
// stay as the FMA fallback for head_dim 16/32 and for `TZ_ATTN_FMA=1`; and single-query
// decode over the KV cache, one block per GQA group. The backward and the decode are
// described before their kernels, below.
//
// attn_fwd_mma_d{64,128}: grid (ceil(max_len / 64), H, S), 128 threads = 4 warps.
//   A block owns 64 queries of one head of one sequence; warp w owns rows 16w..16w+15 and
//   keeps, in registers for the whole kernel:
//     - its Q rows as A fragments (D/16 of them, loaded once from global memory),
//     - the output accumulator O (16 × D fp32: D/8 C fragments),
//     - per row half (rows g and g+8 of the lane's fragments) the running max m (log2
//       domain) and this lane's partial running sum l (the 4 lanes of a row are summed once
//       at the end: rescaling by α commutes with the sum).
//   Loop over 64-key tiles up to the causal diagonal:
//     1. K and V tiles → sK, sV [64][D+8], row-major, by 16-byte cp.async (element loads if
//        qkv is not 16-byte aligned). B fragments of Kᵀ are single u32 loads; those of V
//        come from ldmatrix.x4.trans (two d n-tiles per instruction). The +8 padding makes
//        a row stride ≡ 4 words (mod 32 banks): the 8 rows × 4 words a fragment load or an
//        ldmatrix phase touches fall in 32 distinct banks. Rows past the sequence are 0.
//     2. S = Q·Kᵀ: 8 n-tiles of 8 keys × D/16 k-steps of mma; scaled by scale·log2(e);
//        causal / out-of-sequence entries → −inf.
//     3. Online softmax on the fragments: row max over the lane's 16 values, then over the
//        4 lanes of the row (shuffles); P = 2^{S − m}; O and l rescaled by 2^{m_old − m}.
//     4. O += P·V: the S accumulators of key n-tiles 2j and 2j+1 are, packed to bf16,
//        exactly the A fragment of key block j (C and A layouts line up), so P never leaves
//        registers: 4 key blocks × D/8 n-tiles of mma.
//   Finally O / l → out (bf16), lse = ln 2 · (m + log2 l) (natural log of the scaled scores,
//   what the backward kernel expects).
// Shared memory: 2·64·(D+8)·2 bytes = 18.4 KB (D = 64), 34.8 KB (D = 128).
//
// Tiles reach shared memory by cp.async (16-byte copies all in flight at once; the first
// H200 run, 2026-12-04, measured the forward at 122 / 99 TFLOP/s (D = 128 / 64) and the
// backward at ~50 with register load-then-store loops, and element loads in the backward).
// Not yet done (performance): double-buffering of K/V, K/V tiles shared by the query heads
// of a GQA group, wgmma on sm_90a. Logic (forward and backward) is verified against the CPU
// oracle on the CPU emulator (tools/cuda-emu, including mutation checks); the version before
// the cp.async tiles (29525fd) also on an H200 (tests/backend_ops, tests/parity_cuda,
// compute-sanitizer memcheck and racecheck clean). The emulator completes a cp.async at once:
// a missing wait or barrier around one shows only on hardware.
#include "mma.cuh"

// Rows r0 .. r0+ROWS−1 of N row-major bf16 sources (row r of source k: D elements at
// src[k] + r·stride[k]) → dst[k] [ROWS][ks] by 16-byte cp.async, issued by THREADS threads
// (`tid` in 0..THREADS), the N copies of a chunk together; rows at or past `end` are written
// as zeros (row 0 is named as the never-read source). Needs 16-byte aligned rows on both
// sides; completes with the caller's wait and barrier.
template <int ROWS, int D, int THREADS, int N>
__device__ __forceinline__ void copy_rows_async(bf16* const (&dst)[N], const bf16* const (&src)[N], const u64 (&stride)[N],
                                                int ks, int r0, int end, int tid) {
    constexpr int CH = D / 8;  // 16-byte chunks of a row
    static_assert(ROWS * CH % THREADS == 0, "whole chunks per thread");
#pragma unroll 1  // asynchronous copies: no need to unroll for loads in flight
    for (int it = 0; it < ROWS * CH / THREADS; ++it) {
        const int e = tid + THREADS * it;
        const int r = e / CH, c = (e - r * CH) * 8;
        const bool ok = r0 + r < end;
        const u64 row = ok ? r0 + r : 0;
#pragma unroll
        for (int k = 0; k < N; ++k) cp_async16(dst[k] + r * ks + c, src[k] + row * stride[k] + c, ok);
    }
}

// ---- steps shared by the forward and the decode (one warp, 16 query rows, lane = 4g + t) ----

// S (16 × 8·NT) = Q·Kᵀ over the NT 8-key n-tiles of a row-major K tile in shared memory
// (row stride ks): B fragments of Kᵀ are single u32 loads.
template <int NT, int KSTEPS>
__device__ __forceinline__ void qk_scores(float (&sc)[NT][4], const u32 (&qa)[KSTEPS][4], const bf16* sK, int ks, int g,
                                          int t) {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
        sc[nt][0] = sc[nt][1] = sc[nt][2] = sc[nt][3] = 0.f;
        const bf16* krow = sK + (nt * 8 + g) * ks + 2 * t;
#pragma unroll
        for (int kk = 0; kk < KSTEPS; ++kk) {
            const u32 b[2] = {*(const u32*)(krow + kk * 16), *(const u32*)(krow + kk * 16 + 8)};
            mma_bf16_16816(sc[nt], qa[kk], b);
        }
    }
}

// One online-softmax step on masked log2-domain scores. `mx` holds, per row half, the max of
// the running max and this lane's scores; it is completed over the row's 4 lanes (4g..4g+3).
// O and this lane's partial row sums l are rescaled; sc becomes P = 2^{S − m}.
template <int NT, int DT>
__device__ __forceinline__ void online_softmax(float (&sc)[NT][4], float (&mx)[2], float (&m)[2], float (&l)[2],
                                               float (&o)[DT][4]) {
    float alpha[2], ref[2];
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
        mx[hf] = fmaxf(mx[hf], __shfl_xor_sync(0xffffffffu, mx[hf], 1));
        mx[hf] = fmaxf(mx[hf], __shfl_xor_sync(0xffffffffu, mx[hf], 2));
        ref[hf] = mx[hf] == TZ_NEG_INF ? 0.f : mx[hf];  // a row with no valid key yet
        alpha[hf] = exp2f(m[hf] - ref[hf]);               // 0 while m = −inf
        m[hf] = mx[hf];
        l[hf] *= alpha[hf];
    }
#pragma unroll
    for (int j = 0; j < DT; ++j) {
        o[j][0] *= alpha[0];
        o[j][1] *= alpha[0];
        o[j][2] *= alpha[1];
        o[j][3] *= alpha[1];
    }
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const float p = exp2f(sc[nt][i] - ref[i >> 1]);
            sc[nt][i] = p;
            l[i >> 1] += p;
        }
}

// O += P·V: the C fragments of key n-tiles 2kb and 2kb+1 of P, packed to bf16, are exactly
// the A fragment of 16-key block kb (the layouts line up), so P never leaves registers; V's
// B fragments come from its row-major shared tile (row stride ks) by ldmatrix.x4.trans.
template <int NT, int DT>
__device__ __forceinline__ void pv_accumulate(float (&o)[DT][4], const float (&p)[NT][4], const bf16* sV, int ks) {
#pragma unroll
    for (int kb = 0; kb < NT / 2; ++kb) {
        const u32 pa[4] = {pack_bf16x2(p[2 * kb][0], p[2 * kb][1]), pack_bf16x2(p[2 * kb][2], p[2 * kb][3]),
                           pack_bf16x2(p[2 * kb + 1][0], p[2 * kb + 1][1]),
                           pack_bf16x2(p[2 * kb + 1][2], p[2 * kb + 1][3])};
#pragma unroll
        for (int j = 0; j < DT; j += 2) {
            u32 b0[2], b1[2];
            load_b_frags_x2(b0, b1, sV, ks, kb * 16, j * 8);
            mma_bf16_16816(o[j], pa, b0);
            mma_bf16_16816(o[j + 1], pa, b1);
        }
    }
}

template <int D>
__device__ __forceinline__ void attn_fwd_mma_impl(bf16* out, float* lse, const bf16* qkv, const u32* cu, int H, int KVH,
                                                  float scale) {
    constexpr int BR = 64, BC = 64;
    constexpr int KS = D + 8;  // sK, sV row stride (bf16 elements)
    constexpr int KSTEPS = D / 16;
    constexpr int DT = D / 8;   // n-tiles of O
    __shared__ __align__(16) bf16 sK[BC * KS];
    __shared__ __align__(16) bf16 sV[BC * KS];

    const int s = blockIdx.z, h = blockIdx.y;
    const int start = (int)cu[s];
    const int L = (int)cu[s + 1] - start;
    const int q0 = blockIdx.x * BR;
    if (q0 >= L) return;  // uniform over the block
    const int g_kv = h / (H / KVH);
    const u64 W = (u64)(H + 2 * KVH) * D;
    const u64 qoff = (u64)h * D, koff = (u64)(H + g_kv) * D, voff = (u64)(H + KVH + g_kv) * D;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int g = lane >> 2, t = lane & 3;
    // K and V rows by 16-byte loads when qkv is 16-byte aligned (row strides and head offsets
    // are multiples of 8 elements); element by element otherwise (a misaligned view).
    const bool vec = ((u64)qkv & 15u) == 0;
    // The two query rows (within the sequence) this lane's fragments cover.
    const int r0 = q0 + warp * 16 + g, r1 = r0 + 8;

    // Q fragments, straight from global memory (once per block; rows past the end are 0).
    u32 qa[KSTEPS][4];
    load_a_frags<KSTEPS>(qa, r0 < L ? qkv + (u64)(start + r0) * W + qoff : nullptr,
                         r1 < L ? qkv + (u64)(start + r1) * W + qoff : nullptr, t);
    float o[DT][4];
#pragma unroll
    for (int j = 0; j < DT; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
    float m[2] = {TZ_NEG_INF, TZ_NEG_INF}, l[2] = {0.f, 0.f};
    const float sl2 = scale * TZ_LOG2E;

    const int kend = min(q0 + BR, L);  // causal: keys [0, kend) matter to this tile
    // 16-byte path: K and V of a tile are separate cp.async groups, so V's copies fly while
    // S = Q·Kᵀ is computed and the next tile's K copies fly during softmax and P·V (one
    // buffer each: a barrier after the last reader of sK / sV frees it for the next copies).
    //   pending groups, per thread:  K(0) | +V(i) → wait ≤1 → K(i) done | S | barrier |
    //   +K(i+1) → wait ≤1 (≤0 on the last tile) → V(i) done | P·V | barrier
    auto copy_tile = [&](bf16* dst, int kb, u64 off) {
        copy_rows_async<BC, D, 128, 1>({dst}, {qkv + (u64)start * W + off}, {W}, KS, kb, L, tid);
        cp_async_commit();
    };
    if (vec) copy_tile(sK, 0, koff);
    for (int k0 = 0; k0 < kend; k0 += BC) {
        const bool last = k0 + BC >= kend;
        if (vec) {
            copy_tile(sV, k0, voff);  // sV is free: the previous tile ended with a barrier
            cp_async_wait<1>();       // K(k0) has landed (V(k0) may still be in flight)
        } else {
            __syncthreads();  // the previous tile's readers are done
            for (int e = tid; e < BC * D; e += 128) {
                const int r = e / D, d = e - r * D;
                const int kj = k0 + r;
                const bool ok = kj < L;
                const u64 row = (u64)(start + (ok ? kj : 0)) * W;
                sK[r * KS + d] = ok ? qkv[row + koff + d] : (bf16)0;
                sV[r * KS + d] = ok ? qkv[row + voff + d] : (bf16)0;
            }
        }
        __syncthreads();

        // 2. scores, in the log2 domain
        float sc[8][4];
        qk_scores<8, KSTEPS>(sc, qa, sK, KS, g, t);
        float mx[2] = {m[0], m[1]};
#pragma unroll
        for (int nt = 0; nt < 8; ++nt)
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int r = i < 2 ? r0 : r1;
                const int c = k0 + nt * 8 + 2 * t + (i & 1);
                const float v = (c <= r && c < L) ? sc[nt][i] * sl2 : TZ_NEG_INF;
                sc[nt][i] = v;
                mx[i >> 1] = fmaxf(mx[i >> 1], v);
            }
        if (vec) {
            __syncthreads();  // every warp is done reading sK
            if (!last) copy_tile(sK, k0 + BC, koff);
        }
        // 3. online softmax; 4. O += P·V
        online_softmax<8, DT>(sc, mx, m, l, o);
        if (vec) {
            if (last)
                cp_async_wait<0>();
            else
                cp_async_wait<1>();  // V(k0) has landed (K(k0 + BC) may still be in flight)
            __syncthreads();
        }
        pv_accumulate<8, DT>(o, sc, sV, KS);
        if (vec) __syncthreads();  // every warp is done reading sV
    }

    // Row sums over the 4 lanes of each row, then normalize and store.
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
        l[hf] += __shfl_xor_sync(0xffffffffu, l[hf], 1);
        l[hf] += __shfl_xor_sync(0xffffffffu, l[hf], 2);
    }
    const u64 HD = (u64)H * D;
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
        const int r = hf ? r1 : r0;
        if (r >= L) continue;
        const float inv = l[hf] > 0.f ? 1.f / l[hf] : 0.f;
        bf16* dst = out + (u64)(start + r) * HD + (u64)h * D + 2 * t;
#pragma unroll
        for (int j = 0; j < DT; ++j) {
            dst[j * 8] = f2bf(o[j][2 * hf] * inv);
            dst[j * 8 + 1] = f2bf(o[j][2 * hf + 1] * inv);
        }
        if (t == 0) lse[(u64)(start + r) * H + h] = TZ_LN2 * (m[hf] + log2f(l[hf]));
    }
}

extern "C" __global__ void __launch_bounds__(128) attn_fwd_mma_d64(bf16* out, float* lse, const bf16* qkv, const u32* cu,
                                                                   int H, int KVH, float scale) {
    attn_fwd_mma_impl<64>(out, lse, qkv, cu, H, KVH, scale);
}
// At most 168 registers, so 3 blocks fit an SM (169 rounds up to 176 and leaves 2).
extern "C" __global__ void __launch_bounds__(128, 3) attn_fwd_mma_d128(bf16* out, float* lse, const bf16* qkv,
                                                                    const u32* cu, int H, int KVH, float scale) {
    attn_fwd_mma_impl<128>(out, lse, qkv, cu, H, KVH, scale);
}

// ---- backward --------------------------------------------------------------------------------
//
// attn_bwd_mma_d{64,128}: grid (ceil(max_len / 64), KVH, S), 128 threads = 4 warps; the same
// arguments, Dvec precompute (attn_bwd_dot) and dQ accumulator (fp32, zeroed, then
// attn_dq_convert) as attn_bwd_d* in attention.cu.
//   A block owns 64 keys of one kv head; warp w owns keys 16w..16w+15 and keeps in registers
//   its V rows as A fragments and its dK, dV accumulators (16 × D fp32 each). It loops over
//   the group's query heads and the 32-query tiles at or after the diagonal:
//     1. Q, dO tiles → sQ, sdO [32][D+8]; lse, Dvec → shared (rows past the end: lse = +inf,
//        so P = 0, and Dvec = 0).
//     2. Sᵀ = K·Qᵀ (16 keys × 32 queries per warp; K rows from sK, loaded once per block),
//        Pᵀ = e^{scale·Sᵀ − lse} with the causal / sequence mask; dPᵀ = V·dOᵀ;
//        dSᵀ = Pᵀ ∘ (dPᵀ − Dvec).
//     3. dV += Pᵀ·dO and dK += dSᵀ·Q: Pᵀ and dSᵀ repacked from C to A fragments as in the
//        forward; B fragments of dO and Q (pairs along the query axis) from two 16-bit
//        shared loads each (conflict-free with the D+8 stride; ldmatrix.trans: not yet).
//     4. dSᵀ → sdS [32 queries][64+8 keys] (bf16); then dQ = scale·dS·K for the tile, split
//        over the warps (2 query m-tiles × 2 halves of D; K's B fragments by ldmatrix.trans
//        from sK), added to the fp32 accumulator with atomics (blocks of other key tiles add
//        to the same rows).
//   Finally dK·scale and dV → the k and v parts of dqkv (bf16).
// Shared memory: (64 + 2·32)·(D+8)·2 + 32·72·2 + 256 bytes = 23.5 KB (D = 64), 39.7 KB (128).

template <int D>
__device__ __forceinline__ void attn_bwd_mma_impl(bf16* dqkv, float* dq_acc, const bf16* dout, const bf16* qkv,
                                                  const float* lse, const float* dvec, const u32* cu, int H, int KVH,
                                                  float scale) {
    constexpr int BC = 64, BR = 32;
    constexpr int KS = D + 8;   // sK / sQ / sdO row stride
    constexpr int SS = BC + 8;  // sdS row stride
    constexpr int KSTEPS = D / 16;
    constexpr int DT = D / 8;
    __shared__ __align__(16) bf16 sK[BC * KS];
    __shared__ __align__(16) bf16 sQ[BR * KS];
    __shared__ __align__(16) bf16 sdO[BR * KS];
    __shared__ __align__(16) bf16 sdS[BR * SS];
    __shared__ float sLse[BR], sDv[BR];

    const int s = blockIdx.z, g_kv = blockIdx.y;
    const int start = (int)cu[s];
    const int L = (int)cu[s + 1] - start;
    const int k0 = blockIdx.x * BC;
    if (k0 >= L) return;  // uniform over the block
    const int G = H / KVH;
    const u64 W = (u64)(H + 2 * KVH) * D;
    const u64 HD = (u64)H * D;
    const u64 koff = (u64)(H + g_kv) * D, voff = (u64)(H + KVH + g_kv) * D;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int g = lane >> 2, t = lane & 3;
    const float sl2 = scale * TZ_LOG2E;
    // The two keys (within the sequence) this lane's fragments cover.
    const int kr0 = k0 + warp * 16 + g, kr1 = kr0 + 8;

    // 16-byte copies when qkv and dout are 16-byte aligned (row strides and head offsets are
    // multiples of 8 elements), element loads otherwise.
    const bool vec = aligned16(qkv) && aligned16(dout);
    if (vec) {
        copy_rows_async<BC, D, 128, 1>({sK}, {qkv + (u64)start * W + koff}, {W}, KS, k0, L, tid);
        cp_async_wait_all();
    } else {
        for (int e = tid; e < BC * D; e += 128) {
            const int r = e / D, d = e - r * D;
            const int kj = k0 + r;
            sK[r * KS + d] = kj < L ? qkv[(u64)(start + kj) * W + koff + d] : (bf16)0;
        }
    }
    u32 va[KSTEPS][4];
    load_a_frags<KSTEPS>(va, kr0 < L ? qkv + (u64)(start + kr0) * W + voff : nullptr,
                         kr1 < L ? qkv + (u64)(start + kr1) * W + voff : nullptr, t);
    float dk[DT][4], dv[DT][4];
#pragma unroll
    for (int j = 0; j < DT; ++j)
#pragma unroll
        for (int i = 0; i < 4; ++i) dk[j][i] = dv[j][i] = 0.f;

    const bf16* krow = sK + (warp * 16 + g) * KS + 2 * t;  // this lane's K A-fragment base
    for (int hh = 0; hh < G; ++hh) {
        const int h = g_kv * G + hh;
        const u64 qoff = (u64)h * D;
        for (int q0 = k0; q0 < L; q0 += BR) {
            __syncthreads();  // previous tile's readers of sQ, sdO, sdS are done (first: sK visible)
            if (vec) {
                // Inline rather than copy_rows_async: its two source pointers live across this
                // loop cost the d128 kernel (at 255 registers) 12 bytes of spills.
#pragma unroll 1
                for (int it = 0; it < BR * (D / 8) / 128; ++it) {
                    const int e = tid + 128 * it, r = e / (D / 8), c = (e - r * (D / 8)) * 8;
                    const bool ok = q0 + r < L;
                    const u64 row = (u64)(start + (ok ? q0 + r : 0));
                    cp_async16(sQ + r * KS + c, qkv + row * W + qoff + c, ok);
                    cp_async16(sdO + r * KS + c, dout + row * HD + qoff + c, ok);
                }
                cp_async_wait_all();
            } else {
                for (int e = tid; e < BR * D; e += 128) {
                    const int r = e / D, d = e - r * D;
                    const int qi = q0 + r;
                    const bool ok = qi < L;
                    sQ[r * KS + d] = ok ? qkv[(u64)(start + qi) * W + qoff + d] : (bf16)0;
                    sdO[r * KS + d] = ok ? dout[(u64)(start + qi) * HD + qoff + d] : (bf16)0;
                }
            }
            if (tid < BR) {
                const int qi = q0 + tid;
                sLse[tid] = qi < L ? lse[(u64)(start + qi) * H + h] * TZ_LOG2E : TZ_INF;
                sDv[tid] = qi < L ? dvec[(u64)(start + qi) * H + h] : 0.f;
            }
            __syncthreads();

            // 2. Sᵀ and dPᵀ: 4 n-tiles of 8 queries
            float p[4][4], ds[4][4];
#pragma unroll
            for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
                for (int i = 0; i < 4; ++i) p[nt][i] = ds[nt][i] = 0.f;
                const bf16* qrow = sQ + (nt * 8 + g) * KS + 2 * t;
                const bf16* orow = sdO + (nt * 8 + g) * KS + 2 * t;
#pragma unroll
                for (int kk = 0; kk < KSTEPS; ++kk) {
                    const u32 ka[4] = {*(const u32*)(krow + kk * 16), *(const u32*)(krow + 8 * KS + kk * 16),
                                       *(const u32*)(krow + kk * 16 + 8), *(const u32*)(krow + 8 * KS + kk * 16 + 8)};
                    const u32 bq[2] = {*(const u32*)(qrow + kk * 16), *(const u32*)(qrow + kk * 16 + 8)};
                    mma_bf16_16816(p[nt], ka, bq);
                    const u32 bo[2] = {*(const u32*)(orow + kk * 16), *(const u32*)(orow + kk * 16 + 8)};
                    mma_bf16_16816(ds[nt], va[kk], bo);
                }
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    const int key = i < 2 ? kr0 : kr1;
                    const int qc = nt * 8 + 2 * t + (i & 1);
                    const int q = q0 + qc;
                    const float pv = (key <= q && key < L && q < L) ? exp2f(p[nt][i] * sl2 - sLse[qc]) : 0.f;
                    p[nt][i] = pv;
                    ds[nt][i] = pv * (ds[nt][i] - sDv[qc]);
                }
            }
            // 3. dV += Pᵀ·dO, dK += dSᵀ·Q (A fragments: query blocks of 16)
#pragma unroll
            for (int kb = 0; kb < 2; ++kb) {
                const u32 pa[4] = {pack_bf16x2(p[2 * kb][0], p[2 * kb][1]), pack_bf16x2(p[2 * kb][2], p[2 * kb][3]),
                                   pack_bf16x2(p[2 * kb + 1][0], p[2 * kb + 1][1]),
                                   pack_bf16x2(p[2 * kb + 1][2], p[2 * kb + 1][3])};
                const u32 sa[4] = {pack_bf16x2(ds[2 * kb][0], ds[2 * kb][1]), pack_bf16x2(ds[2 * kb][2], ds[2 * kb][3]),
                                   pack_bf16x2(ds[2 * kb + 1][0], ds[2 * kb + 1][1]),
                                   pack_bf16x2(ds[2 * kb + 1][2], ds[2 * kb + 1][3])};
#pragma unroll
                for (int j = 0; j < DT; j += 2) {
                    u32 bo0[2], bo1[2], bq0[2], bq1[2];
                    load_b_frags_x2(bo0, bo1, sdO, KS, kb * 16, j * 8);
                    load_b_frags_x2(bq0, bq1, sQ, KS, kb * 16, j * 8);
                    mma_bf16_16816(dv[j], pa, bo0);
                    mma_bf16_16816(dv[j + 1], pa, bo1);
                    mma_bf16_16816(dk[j], sa, bq0);
                    mma_bf16_16816(dk[j + 1], sa, bq1);
                }
            }
            // 4. dS (query-major) to shared memory, then dQ += scale·dS·K
#pragma unroll
            for (int nt = 0; nt < 4; ++nt)
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    const int kc = warp * 16 + g + 8 * (i >> 1);
                    const int qc = nt * 8 + 2 * t + (i & 1);
                    sdS[qc * SS + kc] = f2bf(ds[nt][i]);
                }
            __syncthreads();
            {
                const int mt = warp & 1;           // queries mt·16 .. +15
                const int j0 = (warp >> 1) * (DT / 2);  // this warp's half of D's n-tiles
                float dq[DT / 2][4];
#pragma unroll
                for (int j = 0; j < DT / 2; ++j) dq[j][0] = dq[j][1] = dq[j][2] = dq[j][3] = 0.f;
                const bf16* srow = sdS + (mt * 16 + g) * SS + 2 * t;
#pragma unroll
                for (int kk = 0; kk < BC / 16; ++kk) {
                    const u32 a[4] = {*(const u32*)(srow + kk * 16), *(const u32*)(srow + 8 * SS + kk * 16),
                                      *(const u32*)(srow + kk * 16 + 8), *(const u32*)(srow + 8 * SS + kk * 16 + 8)};
#pragma unroll
                    for (int j = 0; j < DT / 2; j += 2) {
                        u32 b0[2], b1[2];
                        load_b_frags_x2(b0, b1, sK, KS, kk * 16, (j0 + j) * 8);
                        mma_bf16_16816(dq[j], a, b0);
                        mma_bf16_16816(dq[j + 1], a, b1);
                    }
                }
#pragma unroll
                for (int hf = 0; hf < 2; ++hf) {
                    const int q = q0 + mt * 16 + g + 8 * hf;
                    if (q >= L) continue;
                    float* dst = dq_acc + (u64)(start + q) * HD + qoff + 2 * t;
#pragma unroll
                    for (int j = 0; j < DT / 2; ++j) {
                        atomicAdd(dst + (j0 + j) * 8, dq[j][2 * hf] * scale);
                        atomicAdd(dst + (j0 + j) * 8 + 1, dq[j][2 * hf + 1] * scale);
                    }
                }
            }
        }
    }

    // dK, dV → dqkv
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
        const int key = hf ? kr1 : kr0;
        if (key >= L) continue;
        bf16* drow = dqkv + (u64)(start + key) * W + 2 * t;
#pragma unroll
        for (int j = 0; j < DT; ++j) {
            drow[koff + j * 8] = f2bf(dk[j][2 * hf] * scale);
            drow[koff + j * 8 + 1] = f2bf(dk[j][2 * hf + 1] * scale);
            drow[voff + j * 8] = f2bf(dv[j][2 * hf]);
            drow[voff + j * 8 + 1] = f2bf(dv[j][2 * hf + 1]);
        }
    }
}

extern "C" __global__ void __launch_bounds__(128)
    attn_bwd_mma_d64(bf16* dqkv, float* dq_acc, const bf16* dout, const bf16* qkv, const float* lse, const float* dvec,
                     const u32* cu, int H, int KVH, float scale) {
    attn_bwd_mma_impl<64>(dqkv, dq_acc, dout, qkv, lse, dvec, cu, H, KVH, scale);
}
extern "C" __global__ void __launch_bounds__(128)
    attn_bwd_mma_d128(bf16* dqkv, float* dq_acc, const bf16* dout, const bf16* qkv, const float* lse, const float* dvec,
                      const u32* cu, int H, int KVH, float scale) {
    attn_bwd_mma_impl<128>(dqkv, dq_acc, dout, qkv, lse, dvec, cu, H, KVH, scale);
}

// ---- decode ----------------------------------------------------------------------------------
//
// attn_decode_mma_d{64,128}: the same arguments and `part` output as attn_decode_partial_d*
// (attention.cu; attn_decode_combine merges the splits), grid (n_split, KVH, b) instead of
// (n_split, H, b), 128 threads = 4 warps.
//   The G = H/KVH query heads of one kv group (G ≤ 16; Qwen2.5: 6 to 8) are the rows of one
//   16-row mma tile (rows ≥ G are zero and discarded), so each cache row is read once per
//   group instead of once per query head, by 16-byte loads. Warp w takes the 16-key tiles
//   w, w+4, … of the split's chunk: K and V tile → its own shared tiles [16][D+8]; S = Q·Kᵀ
//   (2 n-tiles × D/16 k-steps), keys past len masked; online softmax on the fragments (log2
//   domain) as in the forward; O += P·V with P as one A fragment and V's B fragments by
//   ldmatrix.x4.trans. The 4 warps' (m, l, O) then merge through shared memory (reusing the
//   tiles' space) into part[(i·H + h)·n_split + split] = (m (natural log domain), l, o[D]).
// Shared memory: 4·2·16·(D+8)·2 bytes = 18.4 KB (D = 64), 34.8 KB (D = 128).
template <int D>
__device__ __forceinline__ void decode_mma_impl(float* part, const bf16* qkv, const bf16* kc, const bf16* vc,
                                                const u32* slot, const u32* len, int H, int KVH, int t_max,
                                                int n_split, int chunk, float scale) {
    constexpr int NW = 4, KS = D + 8, KSTEPS = D / 16, DT = D / 8;
    constexpr int TILE = 16 * KS;  // one warp's K (or V) tile, bf16 elements
    // Tiles during the key loop; the merge's fp32 O accumulators [NW][16][D] afterwards.
    constexpr int BYTES = 2 * NW * TILE * 2 > NW * 16 * D * 4 ? 2 * NW * TILE * 2 : NW * 16 * D * 4;
    __shared__ __align__(16) unsigned char smem[BYTES];
    __shared__ float sm[NW][16], sl[NW][16];
    const int i = blockIdx.z, grp = blockIdx.y, sp = blockIdx.x;
    const int G = H / KVH;
    const int tid = threadIdx.x, w = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    bf16* sK = (bf16*)smem + w * TILE;
    bf16* sV = (bf16*)smem + (NW + w) * TILE;
    const u64 W = (u64)(H + 2 * KVH) * D;
    const bf16* q = qkv + (u64)i * W + (u64)grp * G * D;
    u32 qa[KSTEPS][4];
    load_a_frags<KSTEPS>(qa, g < G ? q + (u64)g * D : nullptr, g + 8 < G ? q + (u64)(g + 8) * D : nullptr, t);
    const bool vec = aligned16(kc) && aligned16(vc);
    const u64 sl_i = slot[i];
    const int n = (int)len[i];
    const int k0 = sp * chunk, k1 = min(k0 + chunk, n);
    const float sl2 = scale * TZ_LOG2E;
    float o[DT][4];
#pragma unroll
    for (int j = 0; j < DT; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
    float m[2] = {TZ_NEG_INF, TZ_NEG_INF}, l[2] = {0.f, 0.f};

    for (int kt = k0 + 16 * w; kt < k1; kt += 16 * NW) {
        __syncwarp();  // the previous tile's readers (this warp only) are done
        if (vec) {
            // Cache rows of this slot and kv head: position j at (slot·t_max + j)·KVH + grp.
            const u64 at = (sl_i * t_max * KVH + grp) * D, stride = (u64)KVH * D;
            copy_rows_async<16, D, 32, 2>({sK, sV}, {kc + at, vc + at}, {stride, stride}, KS, kt, k1, lane);
            cp_async_wait_all();
        } else {
            for (int e = lane; e < 16 * D; e += 32) {
                const int r = e / D, d = e - r * D;
                const bool ok = kt + r < k1;
                const u64 base = ((sl_i * t_max + (ok ? kt + r : 0)) * KVH + grp) * D + d;
                sK[r * KS + d] = ok ? kc[base] : (bf16)0;
                sV[r * KS + d] = ok ? vc[base] : (bf16)0;
            }
        }
        __syncwarp();

        float sc[2][4];
        qk_scores<2, KSTEPS>(sc, qa, sK, KS, g, t);
        float mx[2] = {m[0], m[1]};
#pragma unroll
        for (int nt = 0; nt < 2; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int key = kt + nt * 8 + 2 * t + (e & 1);
                const float s = key < k1 ? sc[nt][e] * sl2 : TZ_NEG_INF;
                sc[nt][e] = s;
                mx[e >> 1] = fmaxf(mx[e >> 1], s);
            }
        online_softmax<2, DT>(sc, mx, m, l, o);
        pv_accumulate<2, DT>(o, sc, sV, KS);
    }

    // Merge the warps: row sums over the row's 4 lanes, then (m, l, O) through shared memory.
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
        l[hf] += __shfl_xor_sync(0xffffffffu, l[hf], 1);
        l[hf] += __shfl_xor_sync(0xffffffffu, l[hf], 2);
    }
    __syncthreads();  // every warp is done with its tiles: their space becomes the accumulators
    float* acc = (float*)smem;  // [NW][16][D]
    if (t == 0) {
        sm[w][g] = m[0];
        sm[w][g + 8] = m[1];
        sl[w][g] = l[0];
        sl[w][g + 8] = l[1];
    }
#pragma unroll
    for (int j = 0; j < DT; ++j) {
        float* r0 = acc + (w * 16 + g) * D + j * 8 + 2 * t;
        float* r1 = r0 + 8 * D;
        r0[0] = o[j][0];
        r0[1] = o[j][1];
        r1[0] = o[j][2];
        r1[1] = o[j][3];
    }
    __syncthreads();
    for (int e = tid; e < G * (D + 1); e += blockDim.x) {
        const int r = e / (D + 1), d = e - r * (D + 1);  // d == D: the row's (m, l)
        float M = TZ_NEG_INF;
#pragma unroll
        for (int k = 0; k < NW; ++k) M = fmaxf(M, sm[k][r]);
        const float ref = M == TZ_NEG_INF ? 0.f : M;
        float* dst = part + ((u64)(i * H + grp * G + r) * n_split + sp) * (D + 2);
        float s = 0.f;
        if (d < D) {
#pragma unroll
            for (int k = 0; k < NW; ++k) s += acc[(k * 16 + r) * D + d] * exp2f(sm[k][r] - ref);
            dst[2 + d] = s;
        } else {
#pragma unroll
            for (int k = 0; k < NW; ++k) s += sl[k][r] * exp2f(sm[k][r] - ref);
            dst[0] = M * TZ_LN2;  // −inf stays −inf (an empty split: l = 0, ignored by the combine)
            dst[1] = s;
        }
    }
}

extern "C" __global__ void __launch_bounds__(128)
    attn_decode_mma_d64(float* part, const bf16* qkv, const bf16* kc, const bf16* vc, const u32* slot,
                        const u32* len, int H, int KVH, int t_max, int n_split, int chunk, float scale) {
    decode_mma_impl<64>(part, qkv, kc, vc, slot, len, H, KVH, t_max, n_split, chunk, scale);
}
extern "C" __global__ void __launch_bounds__(128)
    attn_decode_mma_d128(float* part, const bf16* qkv, const bf16* kc, const bf16* vc, const u32* slot,
                         const u32* len, int H, int KVH, int t_max, int n_split, int chunk, float scale) {
    decode_mma_impl<128>(part, qkv, kc, vc, slot, len, H, KVH, t_max, n_split, chunk, scale);
}
