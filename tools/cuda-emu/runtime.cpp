// runtime.cpp — the emulated GPU: a stand-in libcuda.so implementing the driver-API calls
// cudarc makes for tz-engine, with kernels compiled from kernels/*.cu as host C++ (see
// emu.h). Device memory is host memory; every call is synchronous; one global lock makes
// concurrent test threads take turns.
//
// Kernel execution: blocks run one after another; the threads of a block are fibers
// (one host thread; a 14-instruction stack switch on x86-64, ucontext elsewhere) scheduled round-robin until each finishes or blocks on a
// barrier (emu.h lists which). If no fiber can run while some are unfinished, the launch
// fails with a "barrier deadlock" message naming the kernel and block.
//
// Dynamic shared memory and each block's start are poisoned (0xff bytes: NaN as f32/bf16)
// so a kernel that reads shared memory it never wrote gets NaN, not a lucky zero.
#include <ucontext.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "emu.h"
#include "registry.h"

// ---- fiber switching -------------------------------------------------------------------------
// x86-64: save the System V callee-saved registers on the current stack, swap stack pointers,
// restore. glibc's swapcontext also saves the signal mask with a system call per switch,
// which made it most of the emulator's run time.
#if defined(__x86_64__)
extern "C" void tz_emu_switch(void** save_sp, void* load_sp);
asm(R"(
    .text
    .globl tz_emu_switch
    .type tz_emu_switch, @function
tz_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size tz_emu_switch, .-tz_emu_switch
    .section .note.GNU-stack,"",@progbits
    .text
)");
struct FiberCtx {
    void* sp = nullptr;
};
#if defined(__SANITIZE_ADDRESS__)
extern "C" void __asan_unpoison_memory_region(void const volatile* addr, size_t size);
#define TZ_EMU_UNPOISON(p, n) __asan_unpoison_memory_region(p, n)
#else
#define TZ_EMU_UNPOISON(p, n) ((void)0)
#endif
// A fresh fiber's stack: six zeroed registers, then `entry` as the return address, placed so
// that `entry` starts with the stack alignment of a called function (rsp ≡ 8 mod 16).
inline void fiber_init(FiberCtx& c, char* stack, size_t size, void (*entry)()) {
    TZ_EMU_UNPOISON(stack, size);  // a finished fiber's frames were never unwound (ASan builds)
    uintptr_t top = ((uintptr_t)(stack + size)) & ~(uintptr_t)15;
    void** sp = (void**)(top - 16);
    sp[0] = (void*)entry;
    sp -= 6;
    for (int i = 0; i < 6; ++i) sp[i] = nullptr;
    c.sp = sp;
}
inline void fiber_switch(FiberCtx& from, FiberCtx& to) { tz_emu_switch(&from.sp, to.sp); }
#else
struct FiberCtx {
    ucontext_t uc;
};
inline void fiber_init(FiberCtx& c, char* stack, size_t size, void (*entry)()) {
    getcontext(&c.uc);
    c.uc.uc_stack.ss_sp = stack;
    c.uc.uc_stack.ss_size = size;
    c.uc.uc_link = nullptr;
    makecontext(&c.uc, entry, 0);
}
inline void fiber_switch(FiberCtx& from, FiberCtx& to) { swapcontext(&from.uc, &to.uc); }
#endif

namespace tz_emu {
ThreadCtx* cur = nullptr;
dim3 block_idx, block_dim, grid_dim;

namespace {
constexpr size_t kStack = 256 << 10;

struct Fiber {
    FiberCtx ctx;
    ThreadCtx t;
    char* stack = nullptr;
    bool done = false;
    int wait = 0;  // 0: runnable, 1: block barrier, 2: warp barrier
    unsigned long long wait_gen = 0;
};
struct Warp {
    unsigned long long gen = 0;
    int arrived = 0, alive = 0;
    unsigned long long slot[32];
};

std::vector<Fiber> fibers;
std::vector<Warp> warps;
FiberCtx sched_ctx;
int cur_idx = 0;
unsigned long long block_gen = 0;
int block_arrived = 0, block_alive = 0;
std::vector<unsigned char> dyn;
void (*cur_kernel)(void**) = nullptr;
void** cur_params = nullptr;

void block_wait() {
    Fiber& f = fibers[cur_idx];
    f.wait = 1;
    f.wait_gen = block_gen;
    fiber_switch(f.ctx, sched_ctx);
}
void warp_wait() {
    Fiber& f = fibers[cur_idx];
    f.wait = 2;
    f.wait_gen = warps[f.t.warp].gen;
    fiber_switch(f.ctx, sched_ctx);
}
void release_if_complete() {
    if (block_arrived > 0 && block_arrived >= block_alive) {
        block_arrived = 0;
        ++block_gen;
    }
    for (Warp& w : warps)
        if (w.arrived > 0 && w.arrived >= w.alive) {
            w.arrived = 0;
            ++w.gen;
        }
}
// A fiber's whole life: run the kernel, retire, hand control back for good.
void fiber_main() {
    const int idx = cur_idx;
    cur_kernel(cur_params);
    Fiber& f = fibers[idx];
    f.done = true;
    --block_alive;
    --warps[f.t.warp].alive;
    release_if_complete();
    fiber_switch(f.ctx, sched_ctx);  // never resumed
    std::abort();
}
}  // namespace

void syncthreads() {
    if (++block_arrived == block_alive) {
        block_arrived = 0;
        ++block_gen;
        return;
    }
    block_wait();
}
void syncwarp() {
    Warp& w = warps[fibers[cur_idx].t.warp];
    if (++w.arrived == w.alive) {
        w.arrived = 0;
        ++w.gen;
        return;
    }
    warp_wait();
}
unsigned long long exchange(unsigned long long v, int src) {
    Warp& w = warps[fibers[cur_idx].t.warp];
    w.slot[cur->lane] = v;
    syncwarp();
    const unsigned long long r = (src >= 0 && src < 32) ? w.slot[src] : v;
    syncwarp();
    return r;
}
void* dyn_smem() { return dyn.data(); }

namespace {
struct MmaSlot {
    unsigned a[4], b[2];
};
MmaSlot mma_slots[1024];  // 32 per warp; fixed: lanes keep pointers into it across barriers
float bf_lo(unsigned w) { return __uint_as_float(w << 16); }
float bf_hi(unsigned w) { return __uint_as_float(w & 0xffff0000u); }
}  // namespace

const unsigned short* ldm_rows[1024];  // one row address per lane, 32 per warp (fixed)

void ldmatrix_x4_trans(unsigned (&r)[4], const unsigned short* row) {
    const unsigned lane = cur->lane, warp = cur->warp;
    const unsigned short** rows = &ldm_rows[warp * 32];
    if (((uintptr_t)row & 15) != 0) {
        std::fprintf(stderr, "cuda-emu: ldmatrix row address %p is not 16-byte aligned\n", (const void*)row);
        std::abort();  // a misaligned address faults on a GPU
    }
    rows[lane] = row;
    syncwarp();
    const int g = (int)lane >> 2, t = (int)lane & 3;
    for (int i = 0; i < 4; ++i)
        r[i] = (unsigned)rows[8 * i + 2 * t][g] | ((unsigned)rows[8 * i + 2 * t + 1][g] << 16);
    syncwarp();  // every lane has read before any lane publishes its next address
}

void mma_bf16_16816(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
    const unsigned lane = cur->lane, warp = cur->warp;
    MmaSlot* w = &mma_slots[warp * 32];
    std::memcpy(w[lane].a, a, sizeof w[lane].a);
    std::memcpy(w[lane].b, b, sizeof w[lane].b);
    syncwarp();
    // Rebuild A (16×16) and B (16×8) from every lane's registers (layouts in kernels/mma.cuh).
    float A[16][16], B[16][8];
    for (int l = 0; l < 32; ++l) {
        const int g = l >> 2, t = l & 3;
        const unsigned* ra = w[l].a;
        A[g][2 * t] = bf_lo(ra[0]), A[g][2 * t + 1] = bf_hi(ra[0]);
        A[g + 8][2 * t] = bf_lo(ra[1]), A[g + 8][2 * t + 1] = bf_hi(ra[1]);
        A[g][2 * t + 8] = bf_lo(ra[2]), A[g][2 * t + 9] = bf_hi(ra[2]);
        A[g + 8][2 * t + 8] = bf_lo(ra[3]), A[g + 8][2 * t + 9] = bf_hi(ra[3]);
        const unsigned* rb = w[l].b;
        B[2 * t][g] = bf_lo(rb[0]), B[2 * t + 1][g] = bf_hi(rb[0]);
        B[2 * t + 8][g] = bf_lo(rb[1]), B[2 * t + 9][g] = bf_hi(rb[1]);
    }
    syncwarp();  // every lane has read the slots before any lane's next mma overwrites them
    const int g = (int)lane >> 2, t = (int)lane & 3;
    for (int i = 0; i < 4; ++i) {
        const int r = g + 8 * (i >> 1), c = 2 * t + (i & 1);
        float acc = 0.f;
        for (int k = 0; k < 16; ++k) acc += A[r][k] * B[k][c];
        d[i] += acc;
    }
}

// Runs one launch; returns an error message or "".
std::string run_grid(void (*kernel)(void**), void** params, dim3 grid, dim3 block, size_t smem, const char* name) {
    const unsigned n = block.x * block.y * block.z;
    if (fibers.size() < n) fibers.resize(n);
    // Which thread runs first after each barrier (TZ_EMU_ORDER): forward (default), reverse,
    // or shuffle (seeded by TZ_EMU_SEED). Threads run one at a time between barriers, so a
    // missing barrier shows up as an order-dependent result: run the suites in more than
    // one order to catch it.
    static const int order_mode = [] {
        const char* e = std::getenv("TZ_EMU_ORDER");
        return !e ? 0 : std::strcmp(e, "reverse") == 0 ? 1 : std::strcmp(e, "shuffle") == 0 ? 2 : 0;
    }();
    static const unsigned long long seed = [] {
        const char* e = std::getenv("TZ_EMU_SEED");
        return e ? std::strtoull(e, nullptr, 10) | 1 : 0x2545f4914f6cdd1dull;
    }();
    std::vector<unsigned> order(n);
    for (Fiber& f : fibers)
        if (!f.stack) f.stack = (char*)std::malloc(kStack);
    warps.assign((n + 31) / 32, Warp{});
    dyn.assign(smem ? smem : 16, 0xff);
    cur_kernel = kernel;
    cur_params = params;
    grid_dim = grid;
    block_dim = block;
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                block_idx = dim3{bx, by, bz};
                std::fill(dyn.begin(), dyn.end(), 0xff);
                block_gen = 0;
                block_arrived = 0;
                block_alive = (int)n;
                for (Warp& w : warps) w = Warp{};
                for (unsigned i = 0; i < n; ++i) {
                    Fiber& f = fibers[i];
                    f.t.tid = dim3{i % block.x, (i / block.x) % block.y, i / (block.x * block.y)};
                    f.t.lane = i % 32;
                    f.t.warp = i / 32;
                    ++warps[f.t.warp].alive;
                    f.done = false;
                    f.wait = 0;
                    fiber_init(f.ctx, f.stack, kStack, fiber_main);
                }
                unsigned finished = 0;
                for (unsigned i = 0; i < n; ++i) order[i] = order_mode == 1 ? n - 1 - i : i;
                unsigned long long rng = seed ^ (0x9e3779b97f4a7c15ull * (1 + bx + grid.x * (by + grid.y * (unsigned long long)bz)));
                while (finished < n) {
                    bool ran = false;
                    if (order_mode == 2)  // a fresh permutation for every sweep
                        for (unsigned i = n - 1; i > 0; --i) {
                            rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
                            std::swap(order[i], order[rng % (i + 1)]);
                        }
                    for (unsigned oi = 0; oi < n; ++oi) {
                        const unsigned i = order[oi];
                        Fiber& f = fibers[i];
                        if (f.done) continue;
                        if (f.wait == 1 && f.wait_gen == block_gen) continue;
                        if (f.wait == 2 && f.wait_gen == warps[f.t.warp].gen) continue;
                        f.wait = 0;
                        cur_idx = (int)i;
                        cur = &f.t;
                        fiber_switch(sched_ctx, f.ctx);
                        ran = true;
                        if (f.done) ++finished;
                    }
                    if (!ran) {
                        char msg[256];
                        std::snprintf(msg, sizeof msg,
                                      "barrier deadlock in kernel %s, block (%u,%u,%u): %u of %u threads finished, the rest wait on "
                                      "barriers that can never complete",
                                      name, bx, by, bz, finished, n);
                        return msg;
                    }
                }
            }
    return "";
}
}  // namespace tz_emu

// ---- the driver API ------------------------------------------------------------------------
typedef int CUresult;
typedef unsigned long long CUdeviceptr;
enum {
    OK = 0,
    ERR_INVALID_VALUE = 1,
    ERR_OUT_OF_MEMORY = 2,
    ERR_INVALID_HANDLE = 400,
    ERR_NOT_FOUND = 500,
    ERR_LAUNCH_FAILED = 719,
    ERR_INVALID_CONFIGURATION = 9,
};

namespace {
std::recursive_mutex api_lock;
std::map<CUdeviceptr, size_t> allocations;
size_t allocated = 0;
// The emulated device's memory: 16 GiB, or TZ_EMU_MEM_BYTES (tests of the trainer's refusal
// to start a run whose plan exceeds free memory).
size_t total_mem() {
    static const size_t total = [] {
        const char* e = std::getenv("TZ_EMU_MEM_BYTES");
        return e ? (size_t)std::strtoull(e, nullptr, 10) : (16ull << 30);
    }();
    return total;
}
std::string sticky_error;  // a failed launch poisons the context, as on a GPU
unsigned long long launches = 0;

struct EmuFunc {
    const tz_emu::KernelEntry* entry;
    int max_dyn_smem = 48 << 10;
};
struct EmuEvent {
    double ms = 0;
};
int dummy_ctx, dummy_stream, dummy_module;

double now_ms() {
    using namespace std::chrono;
    return duration<double, std::milli>(steady_clock::now().time_since_epoch()).count();
}
#define LOCK std::lock_guard<std::recursive_mutex> guard(api_lock)
}  // namespace

extern "C" {
CUresult cuInit(unsigned) { return OK; }
CUresult cuDriverGetVersion(int* v) {
    *v = 13000;
    return OK;
}
CUresult cuDeviceGetCount(int* n) {
    *n = 1;
    return OK;
}
CUresult cuDeviceGet(int* dev, int ordinal) {
    if (ordinal != 0) return ERR_INVALID_VALUE;
    *dev = 0;
    return OK;
}
CUresult cuDeviceGetAttribute(int* v, int attr, int) {
    switch (attr) {
        case 1: *v = 1024; break;            // max threads per block
        case 2: *v = 1024; break;            // max block dim x
        case 3: case 4: *v = 1024; break;    // max block dim y/z (z is 64 on GPUs; unused)
        case 5: *v = 2147483647; break;      // max grid x
        case 6: case 7: *v = 65535; break;   // max grid y/z
        case 8: *v = 48 << 10; break;        // shared memory per block
        case 10: *v = 32; break;             // warp size
        case 16: *v = 4; break;              // multiprocessors (small: grid-stride kernels stay cheap)
        case 75: *v = 9; break;              // compute capability 9.0
        case 76: *v = 0; break;
        case 97: *v = 227 << 10; break;      // opt-in shared memory per block
        case 115: *v = 0; break;             // no memory pools: plain cuMemAlloc
        default: *v = 0;
    }
    return OK;
}
CUresult cuDeviceGetName(char* name, int len, int) {
    std::snprintf(name, (size_t)len, "tz-engine CPU emulator (not a GPU)");
    return OK;
}
CUresult cuDeviceTotalMem_v2(size_t* bytes, int) {
    *bytes = total_mem();
    return OK;
}
CUresult cuDevicePrimaryCtxRetain(void** ctx, int) {
    *ctx = &dummy_ctx;
    return OK;
}
CUresult cuDevicePrimaryCtxRelease_v2(int) { return OK; }
CUresult cuCtxSetCurrent(void*) { return OK; }
CUresult cuCtxGetCurrent(void** ctx) {
    *ctx = &dummy_ctx;
    return OK;
}
CUresult cuCtxSynchronize() {
    LOCK;
    return sticky_error.empty() ? OK : ERR_LAUNCH_FAILED;
}
CUresult cuCtxSetFlags(unsigned) { return OK; }
CUresult cuStreamCreate(void** s, unsigned) {
    *s = &dummy_stream;
    return OK;
}
CUresult cuStreamCreateWithPriority(void** s, unsigned, int) {
    *s = &dummy_stream;
    return OK;
}
CUresult cuStreamDestroy_v2(void*) { return OK; }
CUresult cuStreamSynchronize(void*) { return cuCtxSynchronize(); }
// Launches run to completion when enqueued: a stream is always done (or has failed).
CUresult cuStreamQuery(void*) { return cuCtxSynchronize(); }
CUresult cuStreamWaitEvent(void*, void*, unsigned) { return OK; }
CUresult cuStreamIsCapturing(void*, int* status) {
    *status = 0;
    return OK;
}

CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t bytes) {
    LOCK;
    if (allocated + bytes > total_mem()) return ERR_OUT_OF_MEMORY;
    // Exactly `bytes` (256-byte aligned like cudaMalloc): under AddressSanitizer
    // (TZ_EMU_ASAN=1) the first byte past the allocation is already an error.
    void* mem = nullptr;
    if (posix_memalign(&mem, 256, bytes ? bytes : 1) != 0) return ERR_OUT_OF_MEMORY;
    std::memset(mem, 0xff, bytes);  // fresh device memory is garbage: NaN-poison it
    *p = (CUdeviceptr)mem;
    allocations[*p] = bytes;
    allocated += bytes;
    // TZ_EMU_TRACE_ALLOC=1: one stderr line per allocation, with the number of kernel
    // launches so far (to see whether a loop allocates after its first iteration).
    static const bool trace = std::getenv("TZ_EMU_TRACE_ALLOC") != nullptr;
    if (trace) std::fprintf(stderr, "cuda-emu: alloc %zu bytes (live %zu) after %llu launches\n", bytes, allocated, launches);
    return OK;
}
CUresult cuMemAllocAsync(CUdeviceptr* p, size_t bytes, void*) { return cuMemAlloc_v2(p, bytes); }
CUresult cuMemFree_v2(CUdeviceptr p) {
    LOCK;
    auto it = allocations.find(p);
    if (it == allocations.end()) return ERR_INVALID_VALUE;
    allocated -= it->second;
    allocations.erase(it);
    std::free((void*)p);
    return OK;
}
CUresult cuMemFreeAsync(CUdeviceptr p, void*) { return cuMemFree_v2(p); }
CUresult cuMemGetInfo_v2(size_t* free_b, size_t* total) {
    LOCK;
    *free_b = total_mem() - allocated;
    *total = total_mem();
    return OK;
}
CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t n) {
    LOCK;
    std::memcpy((void*)dst, src, n);
    return OK;
}
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t n, void*) { return cuMemcpyHtoD_v2(dst, src, n); }
CUresult cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t n) {
    LOCK;
    std::memcpy(dst, (const void*)src, n);
    return OK;
}
CUresult cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t n, void*) { return cuMemcpyDtoH_v2(dst, src, n); }
CUresult cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t n) {
    LOCK;
    std::memmove((void*)dst, (const void*)src, n);
    return OK;
}
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, void*) { return cuMemcpyDtoD_v2(dst, src, n); }
CUresult cuMemsetD8_v2(CUdeviceptr dst, unsigned char v, size_t n) {
    LOCK;
    std::memset((void*)dst, v, n);
    return OK;
}
CUresult cuMemsetD8Async(CUdeviceptr dst, unsigned char v, size_t n, void*) { return cuMemsetD8_v2(dst, v, n); }
CUresult cuMemsetD32_v2(CUdeviceptr dst, unsigned v, size_t n) {
    LOCK;
    for (size_t i = 0; i < n; ++i) ((unsigned*)dst)[i] = v;
    return OK;
}
CUresult cuMemsetD32Async(CUdeviceptr dst, unsigned v, size_t n, void*) { return cuMemsetD32_v2(dst, v, n); }

CUresult cuModuleLoadData(void** module, const void*) {
    *module = &dummy_module;
    return OK;
}
CUresult cuModuleUnload(void*) { return OK; }
CUresult cuModuleGetFunction(void** f, void*, const char* name) {
    LOCK;
    static std::map<std::string, EmuFunc*> funcs;
    auto it = funcs.find(name);
    if (it != funcs.end()) {
        *f = it->second;
        return OK;
    }
    for (size_t i = 0; i < tz_emu::kernel_count; ++i)
        if (std::strcmp(tz_emu::kernels[i].name, name) == 0) {
            EmuFunc* ef = new EmuFunc{&tz_emu::kernels[i]};
            funcs[name] = ef;
            *f = ef;
            return OK;
        }
    return ERR_NOT_FOUND;
}
CUresult cuFuncGetAttribute(int* v, int attr, void* f) {
    *v = attr == 8 ? ((EmuFunc*)f)->max_dyn_smem : 0;  // 8: max dynamic shared size
    return OK;
}
CUresult cuFuncSetAttribute(void* f, int attr, int v) {
    if (attr == 8) ((EmuFunc*)f)->max_dyn_smem = v;
    return OK;
}
CUresult cuFuncSetCacheConfig(void*, int) { return OK; }

CUresult cuLaunchKernel(void* fp, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz, unsigned smem,
                        void*, void** params, void** extra) {
    LOCK;
    EmuFunc* f = (EmuFunc*)fp;
    if (!f) return ERR_INVALID_HANDLE;
    const unsigned long long threads = (unsigned long long)bx * by * bz;
    if (gx == 0 || gy == 0 || gz == 0 || threads == 0 || threads > 1024 || gy > 65535 || gz > 65535 || bz > 64 ||
        (int)smem > f->max_dyn_smem || extra) {
        std::fprintf(stderr, "cuda-emu: invalid launch of %s: grid (%u,%u,%u) block (%u,%u,%u) dynamic smem %u\n", f->entry->name,
                     gx, gy, gz, bx, by, bz, smem);
        return ERR_INVALID_CONFIGURATION;
    }
    if (!sticky_error.empty()) return ERR_LAUNCH_FAILED;
    ++launches;
    const std::string err = tz_emu::run_grid(f->entry->invoke, params, dim3{gx, gy, gz}, dim3{bx, by, bz}, smem, f->entry->name);
    if (!err.empty()) {
        std::fprintf(stderr, "cuda-emu: %s\n", err.c_str());
        sticky_error = err;
        return ERR_LAUNCH_FAILED;
    }
    return OK;
}

CUresult cuEventCreate(void** e, unsigned) {
    *e = new EmuEvent;
    return OK;
}
CUresult cuEventDestroy_v2(void* e) {
    delete (EmuEvent*)e;
    return OK;
}
CUresult cuEventRecord(void* e, void*) {
    ((EmuEvent*)e)->ms = now_ms();
    return OK;
}
CUresult cuEventSynchronize(void*) { return OK; }
CUresult cuEventQuery(void*) { return OK; }
CUresult cuEventElapsedTime(float* ms, void* a, void* b) {
    *ms = (float)(((EmuEvent*)b)->ms - ((EmuEvent*)a)->ms);
    return OK;
}
CUresult cuEventElapsedTime_v2(float* ms, void* a, void* b) { return cuEventElapsedTime(ms, a, b); }

CUresult cuGetErrorName(CUresult e, const char** s) {
    switch (e) {
        case OK: *s = "CUDA_SUCCESS"; break;
        case ERR_INVALID_VALUE: *s = "CUDA_ERROR_INVALID_VALUE"; break;
        case ERR_OUT_OF_MEMORY: *s = "CUDA_ERROR_OUT_OF_MEMORY"; break;
        case ERR_INVALID_CONFIGURATION: *s = "CUDA_ERROR_INVALID_CONFIGURATION"; break;
        case ERR_INVALID_HANDLE: *s = "CUDA_ERROR_INVALID_HANDLE"; break;
        case ERR_NOT_FOUND: *s = "CUDA_ERROR_NOT_FOUND"; break;
        case ERR_LAUNCH_FAILED: *s = "CUDA_ERROR_LAUNCH_FAILED"; break;
        default: *s = "CUDA_ERROR_UNKNOWN";
    }
    return OK;
}
CUresult cuGetErrorString(CUresult e, const char** s) {
    if (e == ERR_LAUNCH_FAILED) {
        LOCK;
        static std::string msg;
        msg = "emulated launch failed: " + sticky_error;
        *s = msg.c_str();
        return OK;
    }
    return cuGetErrorName(e, s);
}
}  // extern "C"
