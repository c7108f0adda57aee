// rope.cu — rotary position embedding, in place on packed qkv rows (Hugging Face Qwen2
// "rotate half" convention).
//
//   rope_bf16(qkv [n, W] bf16, pos [n] u32, n_head, n_kv_head, d, W, theta, inverse)
//       For each row i, each q head (0..n_head) and k head (n_head..n_head+n_kv_head), each pair
//       (j, j + d/2), j < d/2:
//         inv_freq = 1 / theta^(2j/d)   (fp32, like HF's inv_freq)
//         a = pos[i] · inv_freq;  (c, s) = (cos a, sin a)   (accurate sincosf, fp32)
//         forward: x1' = x1 c − x2 s,  x2' = x2 c + x1 s
//         inverse (backward pass, the transposed rotation): s → −s
//       v heads are untouched.
//   Launch: grid.x = n rows, 128 threads striding over (n_head + n_kv_head)·d/2 pairs. Each
//   pair is read and written by exactly one thread, so in-place is race free.
//   Performance plan: the sin/cos table could be precomputed per position; with accurate
//   sincosf this kernel is still far below the GEMMs around it.
#include "common.cuh"

extern "C" __global__ void rope_bf16(bf16* qkv, const u32* pos, int n_head, int n_kv_head, int d, int w, float theta,
                                     int inverse) {
    const u64 row = blockIdx.x;
    const int half = d / 2;
    const int items = (n_head + n_kv_head) * half;
    const float p = (float)pos[row];
    bf16* base = qkv + row * (u64)w;
    for (int it = threadIdx.x; it < items; it += blockDim.x) {
        const int head = it / half;
        const int j = it - head * half;
        const float inv_freq = 1.0f / powf(theta, (float)(2 * j) / (float)d);
        float s, c;
        sincosf(p * inv_freq, &s, &c);
        if (inverse) s = -s;
        bf16* h = base + (u64)head * d;
        const float x1 = bf2f(h[j]);
        const float x2 = bf2f(h[j + half]);
        h[j] = f2bf(x1 * c - x2 * s);
        h[j + half] = f2bf(x2 * c + x1 * s);
    }
}
