// emu.h — the subset of the CUDA device language our kernels use, for host C++.
//
// The CPU emulator (tools/cuda-emu/, docs/cuda.md "Emulated GPU") compiles kernels/*.cu as
// ordinary C++ with this header forced in first. Each CUDA thread of a block becomes a fiber
// (ucontext) on one host thread; the fibers of a block run until they block on a barrier:
//   - __syncthreads(): all live threads of the block;
//   - __syncwarp() and every warp collective (__shfl_*_sync): the live lanes of the warp;
// so warp-synchronous code must use the _sync primitives, exactly as on Volta and newer.
// A barrier that can never complete (a thread skipped it while others wait) is reported
// as a deadlock instead of hanging. Blocks run one after another, so `__shared__` can be a
// function-local static. Atomics are plain read-modify-writes (one host thread).
//
// What this proves: the kernels' indexing, tiling, masking, reductions and barriers produce
// the CPU oracle's results. What it cannot: timing, the hardware memory model, __expf's
// approximation error (emulated with expf), register/shared-memory limits, real PTX.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <algorithm>

#define TZ_EMU 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __shared__ static
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))

struct dim3 {
    unsigned int x = 1, y = 1, z = 1;
};
struct float2 {
    float x, y;
};
struct float4 {
    float x, y, z, w;
};
struct uint2 {
    unsigned int x, y;
};
struct uint4 {
    unsigned int x, y, z, w;
};
struct int2 {
    int x, y;
};
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
inline int2 make_int2(int x, int y) { return {x, y}; }

// ---- the emulator's interface (runtime.cpp) -------------------------------------------------
namespace tz_emu {
struct ThreadCtx {
    dim3 tid;
    unsigned lane, warp;
};
extern ThreadCtx* cur;
extern dim3 block_idx, block_dim, grid_dim;
void syncthreads();
void syncwarp();
// Warp exchange: publish this lane's 8-byte value, wait for the warp, read lane `src`'s value
// (own value when src is out of range), wait again so the slots can be reused.
unsigned long long exchange(unsigned long long v, int src);
void* dyn_smem();
// mma.sync.m16n8k16.row.col.f32.bf16.bf16.f32, d += a·b, from the PTX fragment layouts
// (kernels/mma.cuh); a warp collective.
void mma_bf16_16816(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]);
// ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 (kernels/mma.cuh); a warp collective.
void ldmatrix_x4_trans(unsigned (&r)[4], const unsigned short* row);
}  // namespace tz_emu

#define threadIdx (tz_emu::cur->tid)
#define blockIdx (tz_emu::block_idx)
#define blockDim (tz_emu::block_dim)
#define gridDim (tz_emu::grid_dim)
#define warpSize 32

inline void __syncthreads() { tz_emu::syncthreads(); }
inline void __syncwarp(unsigned = 0xffffffffu) { tz_emu::syncwarp(); }

template <typename T>
inline T tz_emu_shfl(T v, int src) {
    static_assert(sizeof(T) <= 8, "shuffle of a value wider than 8 bytes");
    unsigned long long bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    bits = tz_emu::exchange(bits, src);
    T r;
    std::memcpy(&r, &bits, sizeof(T));
    return r;
}
template <typename T>
inline T __shfl_sync(unsigned, T v, int src, int width = 32) {
    const int lane = (int)tz_emu::cur->lane;
    return tz_emu_shfl(v, (lane & ~(width - 1)) + (src & (width - 1)));
}
template <typename T>
inline T __shfl_xor_sync(unsigned, T v, int m, int width = 32) {
    const int lane = (int)tz_emu::cur->lane;
    const int src = lane ^ m;
    return tz_emu_shfl(v, (src & ~(width - 1)) == (lane & ~(width - 1)) ? src : lane);
}
template <typename T>
inline T __shfl_up_sync(unsigned, T v, unsigned d, int width = 32) {
    const int lane = (int)tz_emu::cur->lane;
    const int src = lane - (int)d;
    return tz_emu_shfl(v, src >= (lane & ~(width - 1)) ? src : lane);
}
template <typename T>
inline T __shfl_down_sync(unsigned, T v, unsigned d, int width = 32) {
    const int lane = (int)tz_emu::cur->lane;
    const int src = lane + (int)d;
    return tz_emu_shfl(v, src < (lane & ~(width - 1)) + width ? src : lane);
}

// Dynamic shared memory: kernels declare it with TZ_DYN_SMEM (common.cuh).
#define TZ_DYN_SMEM(T, name) T* name = (T*)tz_emu::dyn_smem()

// ---- atomics (one host thread: plain read-modify-write) -------------------------------------
template <typename T>
inline T atomicAdd(T* p, T v) {
    T old = *p;
    *p = old + v;
    return old;
}
template <typename T>
inline T atomicMin(T* p, T v) {
    T old = *p;
    *p = std::min(old, v);
    return old;
}
template <typename T>
inline T atomicMax(T* p, T v) {
    T old = *p;
    *p = std::max(old, v);
    return old;
}
template <typename T>
inline T atomicExch(T* p, T v) {
    T old = *p;
    *p = v;
    return old;
}
inline unsigned atomicCAS(unsigned* p, unsigned cmp, unsigned v) {
    unsigned old = *p;
    if (old == cmp) *p = v;
    return old;
}

// ---- intrinsics ----------------------------------------------------------------------------
inline float __uint_as_float(unsigned u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline unsigned __float_as_uint(float f) {
    unsigned u;
    std::memcpy(&u, &f, 4);
    return u;
}
inline float __int_as_float(int i) {
    float f;
    std::memcpy(&f, &i, 4);
    return f;
}
inline int __float_as_int(float f) {
    int i;
    std::memcpy(&i, &f, 4);
    return i;
}
inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a * b) >> 32); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __clz(unsigned x) { return x ? __builtin_clz(x) : 32; }
inline int __ffs(unsigned x) { return __builtin_ffs((int)x); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __saturatef(float x) { return std::fmin(std::fmax(x, 0.f), 1.f); }
template <typename T>
inline T __ldg(const T* p) {
    return *p;
}
using std::max;
using std::min;
inline float max(float a, float b) { return std::fmax(a, b); }
inline float min(float a, float b) { return std::fmin(a, b); }
inline unsigned max(unsigned a, int b) { return std::max(a, (unsigned)b); }
using std::exp;
using std::isinf;
using std::isnan;
using std::log;
using std::ceil;
