// selftest.cpp — checks of the emulator itself (run by tools/emu-check.sh): warp shuffles
// follow CUDA's semantics, dynamic shared memory starts poisoned, and a barrier that can
// never complete fails the launch with a deadlock error instead of hanging.
#include <cstdio>
#include <vector>

#include "emu.h"
#include "registry.h"

extern "C" __global__ void shuffles(int* out) {
    const int lane = threadIdx.x & 31;
    int v = lane + 1, incl = v;
    for (int o = 1; o < 32; o <<= 1) {
        const int y = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += y;
    }
    out[threadIdx.x * 4 + 0] = incl;                                 // inclusive prefix sum
    out[threadIdx.x * 4 + 1] = __shfl_xor_sync(0xffffffffu, v, 5);    // lane ^ 5, + 1
    out[threadIdx.x * 4 + 2] = __shfl_down_sync(0xffffffffu, v, 3);   // lane + 3 (or own) + 1
    out[threadIdx.x * 4 + 3] = __shfl_sync(0xffffffffu, v, 7);        // lane 7's: 8
}
extern "C" __global__ void smem_poison(float* out) {
    TZ_DYN_SMEM(float, buf);
    out[threadIdx.x] = buf[threadIdx.x];
}
extern "C" __global__ void split_barrier(int* out) {
    // Warp 1's lanes 0-15 wait in a shuffle for lanes 16-31, which wait in __syncthreads for
    // lanes 0-15: no barrier can ever complete.
    if (threadIdx.x >= 32 && threadIdx.x < 48) out[0] = __shfl_xor_sync(0xffffffffu, (int)threadIdx.x, 16);
    __syncthreads();
}

namespace tz_emu {
const KernelEntry kernels[] = {TZ_EMU_KERNEL(shuffles), TZ_EMU_KERNEL(smem_poison), TZ_EMU_KERNEL(split_barrier)};
const size_t kernel_count = 3;
}  // namespace tz_emu

extern "C" int cuModuleGetFunction(void**, void*, const char*);
extern "C" int cuLaunchKernel(void*, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, void*, void**, void**);

static int failures = 0;
static void check(bool ok, const char* what) {
    std::printf("%s: %s\n", ok ? "ok" : "FAILED", what);
    failures += !ok;
}
static int launch(const char* name, unsigned threads, unsigned smem, void* arg) {
    void* f = nullptr;
    if (cuModuleGetFunction(&f, nullptr, name) != 0) return -1;
    void* params[] = {&arg};
    return cuLaunchKernel(f, 1, 1, 1, threads, 1, 1, smem, nullptr, params, nullptr);
}

int main() {
    std::vector<int> out(64 * 4, -1);
    check(launch("shuffles", 64, 0, out.data()) == 0, "shuffles launch");
    bool ok = true;
    for (int t = 0; t < 64; ++t) {
        const int lane = t & 31;
        ok &= out[t * 4 + 0] == (lane + 1) * (lane + 2) / 2;
        ok &= out[t * 4 + 1] == (lane ^ 5) + 1;
        ok &= out[t * 4 + 2] == (lane + 3 < 32 ? lane + 3 : lane) + 1;
        ok &= out[t * 4 + 3] == 8;
    }
    check(ok, "__shfl_up/xor/down/_sync values");
    std::vector<float> f(32, 0.f);
    check(launch("smem_poison", 32, 32 * 4, f.data()) == 0, "smem_poison launch");
    ok = true;
    for (float x : f) ok &= x != x;
    check(ok, "dynamic shared memory starts as NaN");
    int sink = 0;
    check(launch("split_barrier", 64, 0, &sink) == 719, "split barrier fails with CUDA_ERROR_LAUNCH_FAILED");
    check(launch("shuffles", 64, 0, out.data()) == 719, "the failed launch poisons the context");
    return failures ? 1 : 0;
}
