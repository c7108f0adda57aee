// embedding.cu — token embedding lookup and its gradient.
//
//   embedding_fwd_bf16(out [n, c] bf16, table [vocab, c] bf16, ids [n] u32, c)
//       out[i, :] = table[ids[i], :]
//       grid.x = n (one block per token), 128 threads. When c is a multiple of 8 and both row
//       bases are 16-byte aligned (checked per row, so odd views still work) rows move as
//       uint4 (8 bf16 per load); otherwise element by element.
//   embedding_bwd_bf16(dtable [vocab, c] f32, dout [n, c] bf16, ids [n] u32, c)
//       dtable[ids[i], :] += dout[i, :]
//       grid.x = n, 128 threads, fp32 atomicAdd (the same id may occur many times in a batch,
//       so rows are not distinct). Non-deterministic summation order; each element's error is
//       fp32 rounding only.
//
// Ids are validated (< vocab) by the caller before upload.
#include "common.cuh"

extern "C" __global__ void embedding_fwd_bf16(bf16* out, const bf16* table, const u32* ids, int c) {
    const u64 i = blockIdx.x;
    const u64 id = ids[i];
    const bf16* src = table + id * (u64)c;
    bf16* dst = out + i * (u64)c;
    const bool vec = (c % 8 == 0) && ((((u64)src) | ((u64)dst)) % 16 == 0);
    if (vec) {
        const uint4* s4 = (const uint4*)src;
        uint4* d4 = (uint4*)dst;
        for (int j = threadIdx.x; j < c / 8; j += blockDim.x) d4[j] = s4[j];
    } else {
        for (int j = threadIdx.x; j < c; j += blockDim.x) dst[j] = src[j];
    }
}

extern "C" __global__ void embedding_bwd_bf16(float* dtable, const bf16* dout, const u32* ids, int c) {
    const u64 i = blockIdx.x;
    const u64 id = ids[i];
    float* dst = dtable + id * (u64)c;
    const bf16* src = dout + i * (u64)c;
    for (int j = threadIdx.x; j < c; j += blockDim.x) atomicAdd(dst + j, bf2f(src[j]));
}
