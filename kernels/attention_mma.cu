// attention_mma.cu — causal grouped-query attention forward on tensor cores
// (mma.sync.m16n8k16, bf16 in, fp32 accumulate), flash-attention-2 style: same inputs,
// outputs and masking as attn_fwd_d* in attention.cu (layouts there), which stays as the
// FMA fallback for head_dim 16/32 and for `TZ_ATTN_FMA=1`.
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
//     1. K tile → sK [64][D+8] (row-major: B fragments of Kᵀ are single u32 loads);
//        V tile → sVt [D][64+8] (transposed: B fragments of V likewise). The +8 padding
//        makes a row stride ≡ 4 words (mod 32 banks): the 8 rows × 4 words a fragment
//        load touches fall in 32 distinct banks. Rows past the sequence are zero-filled.
//     2. S = Q·Kᵀ: 8 n-tiles of 8 keys × D/16 k-steps of mma; scaled by scale·log2(e);
//        causal / out-of-sequence entries → −inf.
//     3. Online softmax on the fragments: row max over the lane's 16 values, then over the
//        4 lanes of the row (shuffles); P = 2^{S − m}; O and l rescaled by 2^{m_old − m}.
//     4. O += P·V: the S accumulators of key n-tiles 2j and 2j+1 are, packed to bf16,
//        exactly the A fragment of key block j (C and A layouts line up), so P never leaves
//        registers: 4 key blocks × D/8 n-tiles of mma.
//   Finally O / l → out (bf16), lse = ln 2 · (m + log2 l) (natural log of the scaled scores,
//   what the backward kernel expects).
// Shared memory: (64·(D+8) + D·72)·2 bytes = 18.4 KB (D = 64), 35.8 KB (D = 128).
//
// Not yet done (performance): ldmatrix, cp.async double-buffering of K/V, K/V tiles shared
// by the query heads of a GQA group, wgmma on sm_90a. Logic is verified on the CPU emulator
// (tools/cuda-emu) against the CPU oracle; nothing here has run on a GPU yet.
#include "mma.cuh"

template <int D>
__device__ __forceinline__ void attn_fwd_mma_impl(bf16* out, float* lse, const bf16* qkv, const u32* cu, int H, int KVH,
                                                  float scale) {
    constexpr int BR = 64, BC = 64;
    constexpr int KS = D + 8;   // sK row stride (bf16 elements)
    constexpr int VS = BC + 8;  // sVt row stride
    constexpr int KSTEPS = D / 16;
    constexpr int DT = D / 8;  // n-tiles of O
    __shared__ __align__(16) bf16 sK[BC * KS];
    __shared__ __align__(16) bf16 sVt[D * VS];

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
    // The two query rows (within the sequence) this lane's fragments cover.
    const int r0 = q0 + warp * 16 + g, r1 = r0 + 8;

    // Q fragments, straight from global memory (once per block; rows past the end are 0).
    u32 qa[KSTEPS][4];
    {
        const bf16* q_r0 = qkv + (u64)(start + r0) * W + qoff;
        const bf16* q_r1 = qkv + (u64)(start + r1) * W + qoff;
#pragma unroll
        for (int kk = 0; kk < KSTEPS; ++kk) {
            const int c = kk * 16 + 2 * t;
            qa[kk][0] = r0 < L ? load_bf16x2(q_r0 + c) : 0u;
            qa[kk][1] = r1 < L ? load_bf16x2(q_r1 + c) : 0u;
            qa[kk][2] = r0 < L ? load_bf16x2(q_r0 + c + 8) : 0u;
            qa[kk][3] = r1 < L ? load_bf16x2(q_r1 + c + 8) : 0u;
        }
    }
    float o[DT][4];
#pragma unroll
    for (int j = 0; j < DT; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
    float m[2] = {TZ_NEG_INF, TZ_NEG_INF}, l[2] = {0.f, 0.f};
    const float sl2 = scale * TZ_LOG2E;

    const int kend = min(q0 + BR, L);  // causal: keys [0, kend) matter to this tile
    for (int k0 = 0; k0 < kend; k0 += BC) {
        __syncthreads();  // the previous tile's readers are done
        for (int e = tid; e < BC * D; e += 128) {
            const int r = e / D, d = e - r * D;
            const int kj = k0 + r;
            const bool ok = kj < L;
            const u64 row = (u64)(start + (ok ? kj : 0)) * W;
            sK[r * KS + d] = ok ? qkv[row + koff + d] : (bf16)0;
            sVt[d * VS + r] = ok ? qkv[row + voff + d] : (bf16)0;
        }
        __syncthreads();

        // 2. scores, in the log2 domain
        float sc[8][4];
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
            sc[nt][0] = sc[nt][1] = sc[nt][2] = sc[nt][3] = 0.f;
            const bf16* krow = sK + (nt * 8 + g) * KS + 2 * t;
#pragma unroll
            for (int kk = 0; kk < KSTEPS; ++kk) {
                const u32 b[2] = {*(const u32*)(krow + kk * 16), *(const u32*)(krow + kk * 16 + 8)};
                mma_bf16_16816(sc[nt], qa[kk], b);
            }
        }
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
        // 3. online softmax (the 4 lanes of a row are lanes 4g..4g+3)
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
        for (int nt = 0; nt < 8; ++nt)
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const float p = exp2f(sc[nt][i] - ref[i >> 1]);
                sc[nt][i] = p;
                l[i >> 1] += p;
            }
        // 4. O += P·V, P as A fragments
#pragma unroll
        for (int kb = 0; kb < 4; ++kb) {
            const u32 pa[4] = {pack_bf16x2(sc[2 * kb][0], sc[2 * kb][1]), pack_bf16x2(sc[2 * kb][2], sc[2 * kb][3]),
                               pack_bf16x2(sc[2 * kb + 1][0], sc[2 * kb + 1][1]),
                               pack_bf16x2(sc[2 * kb + 1][2], sc[2 * kb + 1][3])};
#pragma unroll
            for (int j = 0; j < DT; ++j) {
                const bf16* vrow = sVt + (j * 8 + g) * VS + kb * 16 + 2 * t;
                const u32 b[2] = {*(const u32*)vrow, *(const u32*)(vrow + 8)};
                mma_bf16_16816(o[j], pa, b);
            }
        }
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
extern "C" __global__ void __launch_bounds__(128) attn_fwd_mma_d128(bf16* out, float* lse, const bf16* qkv,
                                                                    const u32* cu, int H, int KVH, float scale) {
    attn_fwd_mma_impl<128>(out, lse, qkv, cu, H, KVH, scale);
}
