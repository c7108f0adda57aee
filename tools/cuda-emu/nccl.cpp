// A stand-in libnccl.so.2 for the emulated GPU: the NCCL functions tz-engine binds
// (src/dist/nccl.rs), between processes on one machine, each with its own emulated device
// (whose device pointers are host pointers). Lets CI run the CUDA backend's multi-process
// path — `tz-engine launch`, the rendezvous handing out the unique id, every collective of
// the sharded optimizer — without GPUs.
//
// Design: the unique id names a POSIX shared-memory segment: a header (a barrier, each
// rank's pid, an abort flag) and one slot per rank. Every collective is the same three
// steps, run synchronously when called (the emulator's streams are synchronous too):
// each rank copies its input into its slot, all meet at a barrier, each computes its output
// from the slots in rank order (sums in float, bf16 rounded once), all meet again so no slot
// is overwritten while read. Groups (ncclGroupStart/End) need nothing: every rank issues the
// same calls in the same order. A barrier gives up when a peer process has died, when a rank
// called ncclCommAbort, or after TZ_EMU_NCCL_TIMEOUT_S seconds (default 120), returning an
// error the caller reports; it never hangs.
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <signal.h>
#include <string>
#include <sys/mman.h>
#include <thread>
#include <unistd.h>

namespace {

enum Result { Success = 0, SystemError = 2, InvalidArgument = 4, InvalidUsage = 5, RemoteError = 6 };
enum DataType { Float32 = 7, Bfloat16 = 9 };
constexpr int kMaxRanks = 64;
constexpr size_t kSlotBytes = size_t(1) << 30;  // per rank; the segment is sparse (tmpfs)
constexpr uint64_t kMagic = 0x747a656d756e636cull;  // "tzemuncl"

struct Header {
    std::atomic<uint64_t> arrived;
    std::atomic<uint64_t> generation;
    std::atomic<int> joined;
    std::atomic<int> aborted;
    std::atomic<int> pids[kMaxRanks];
};

struct Comm {
    Header* h;
    unsigned char* slots;
    size_t map_bytes;
    int rank, nranks;
    int error;
};

struct UniqueId {
    uint64_t magic;
    char name[120];
};

thread_local const char* last_error = "";

double timeout_s() {
    const char* v = std::getenv("TZ_EMU_NCCL_TIMEOUT_S");
    return v ? std::atof(v) : 120.0;
}

// Waits for every rank; an error if a peer died, aborted, or the deadline passed.
int barrier(Comm* c) {
    Header* h = c->h;
    const uint64_t gen = h->generation.load();
    if (h->arrived.fetch_add(1) + 1 == uint64_t(c->nranks)) {
        h->arrived.store(0);
        h->generation.fetch_add(1);
        return Success;
    }
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s());
    unsigned spins = 0;
    while (h->generation.load() == gen) {
        if (h->aborted.load()) {
            last_error = "a rank aborted the communicator";
            return RemoteError;
        }
        if (++spins % 1024 == 0) {
            for (int r = 0; r < c->nranks; r++) {
                const int pid = h->pids[r].load();
                if (pid > 0 && kill(pid, 0) != 0 && errno == ESRCH) {
                    last_error = "a peer process died";
                    return RemoteError;
                }
            }
            if (std::chrono::steady_clock::now() > deadline) {
                last_error = "timed out waiting for the other ranks (TZ_EMU_NCCL_TIMEOUT_S)";
                return SystemError;
            }
        }
        std::this_thread::yield();
    }
    return Success;
}

size_t elem_size(int dt) { return dt == Float32 ? 4 : dt == Bfloat16 ? 2 : 0; }

float load(const unsigned char* p, size_t i, int dt) {
    if (dt == Float32) {
        float f;
        std::memcpy(&f, p + 4 * i, 4);
        return f;
    }
    uint16_t b;
    std::memcpy(&b, p + 2 * i, 2);
    const uint32_t u = uint32_t(b) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

void store(unsigned char* p, size_t i, int dt, float f) {
    if (dt == Float32) {
        std::memcpy(p + 4 * i, &f, 4);
        return;
    }
    uint32_t u;
    std::memcpy(&u, &f, 4);
    uint16_t b;
    if (std::isnan(f)) {
        b = uint16_t((u >> 16) | 0x40);
    } else {
        u += 0x7fff + ((u >> 16) & 1);  // round to nearest even
        b = uint16_t(u >> 16);
    }
    std::memcpy(p + 2 * i, &b, 2);
}

unsigned char* slot(Comm* c, int r) { return c->slots + size_t(r) * kSlotBytes; }

// Step 1 of every collective: this rank's input into its slot, then the first barrier.
int deposit(Comm* c, const void* src, size_t bytes) {
    if (c->error) return c->error;
    if (bytes > kSlotBytes) {
        last_error = "message larger than the emulator's slot";
        return InvalidArgument;
    }
    if (bytes) std::memcpy(slot(c, c->rank), src, bytes);
    return barrier(c);
}

int check(Comm* c, int dt) {
    if (!c) return InvalidArgument;
    if (!elem_size(dt)) {
        last_error = "only float32 and bfloat16 are emulated";
        return InvalidArgument;
    }
    return c->error;
}

// out[i] = sum over ranks of slot_r[off + i], in rank order.
void sum_slots(Comm* c, void* out, size_t off, size_t count, int dt) {
    for (size_t i = 0; i < count; i++) {
        float s = 0;
        for (int r = 0; r < c->nranks; r++) s += load(slot(c, r), off + i, dt);
        store((unsigned char*)out, i, dt, s);
    }
}

int fail(Comm* c, int e) {
    if (e) c->error = e;
    return e;
}

}  // namespace

extern "C" {

int ncclGetVersion(int* v) {
    *v = 21900;  // claims 2.19.0: the API tz-engine binds
    return Success;
}

const char* ncclGetErrorString(int r) {
    switch (r) {
        case Success: return "no error";
        case SystemError: return *last_error ? last_error : "system error (emulated NCCL)";
        case InvalidArgument: return *last_error ? last_error : "invalid argument (emulated NCCL)";
        case InvalidUsage: return "invalid usage (emulated NCCL)";
        case RemoteError: return *last_error ? last_error : "remote process failed (emulated NCCL)";
        default: return "unknown error (emulated NCCL)";
    }
}

int ncclGetUniqueId(UniqueId* id) {
    std::memset(id, 0, sizeof(UniqueId));
    id->magic = kMagic;
    const auto t = std::chrono::steady_clock::now().time_since_epoch().count();
    std::snprintf(id->name, sizeof(id->name), "/tz-emu-nccl-%d-%llx", int(getpid()), (unsigned long long)t);
    return Success;
}

int ncclCommInitRank(Comm** out, int nranks, UniqueId id, int rank) {
    if (id.magic != kMagic || nranks < 1 || nranks > kMaxRanks || rank < 0 || rank >= nranks) return InvalidArgument;
    const size_t bytes = sizeof(Header) + 4096 + size_t(nranks) * kSlotBytes;
    const int fd = shm_open(id.name, O_CREAT | O_RDWR, 0600);
    if (fd < 0) return SystemError;
    if (ftruncate(fd, off_t(bytes)) != 0) {
        close(fd);
        return SystemError;
    }
    void* m = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (m == MAP_FAILED) return SystemError;
    auto* c = new Comm{(Header*)m, (unsigned char*)m + sizeof(Header) + 4096, bytes, rank, nranks, 0};
    c->h->pids[rank].store(int(getpid()));
    c->h->joined.fetch_add(1);
    const int e = barrier(c);
    if (e) {
        munmap(m, bytes);
        delete c;
        return e;
    }
    // Everyone has it mapped: the name can go (the memory lives until the last unmap).
    if (rank == 0) shm_unlink(id.name);
    *out = c;
    return Success;
}

int ncclCommDestroy(Comm* c) {
    if (!c) return InvalidArgument;
    munmap(c->h, c->map_bytes);
    delete c;
    return Success;
}

int ncclCommAbort(Comm* c) {
    if (!c) return InvalidArgument;
    c->h->aborted.store(1);
    c->error = RemoteError;
    return Success;
}

int ncclCommGetAsyncError(Comm* c, int* state) {
    if (!c) return InvalidArgument;
    *state = c->error;
    return Success;
}

int ncclGroupStart() { return Success; }
int ncclGroupEnd() { return Success; }

int ncclAllReduce(const void* send, void* recv, size_t count, int dt, int op, Comm* c, void*) {
    if (int e = check(c, dt)) return e;
    if (op != 0) return InvalidArgument;
    if (int e = deposit(c, send, count * elem_size(dt))) return fail(c, e);
    sum_slots(c, recv, 0, count, dt);
    return fail(c, barrier(c));
}

int ncclReduceScatter(const void* send, void* recv, size_t recvcount, int dt, int op, Comm* c, void*) {
    if (int e = check(c, dt)) return e;
    if (op != 0) return InvalidArgument;
    if (int e = deposit(c, send, size_t(c->nranks) * recvcount * elem_size(dt))) return fail(c, e);
    sum_slots(c, recv, size_t(c->rank) * recvcount, recvcount, dt);
    return fail(c, barrier(c));
}

int ncclReduce(const void* send, void* recv, size_t count, int dt, int op, int root, Comm* c, void*) {
    if (int e = check(c, dt)) return e;
    if (op != 0 || root < 0 || root >= c->nranks) return InvalidArgument;
    if (int e = deposit(c, send, count * elem_size(dt))) return fail(c, e);
    if (c->rank == root) sum_slots(c, recv, 0, count, dt);
    return fail(c, barrier(c));
}

int ncclAllGather(const void* send, void* recv, size_t sendcount, int dt, Comm* c, void*) {
    if (int e = check(c, dt)) return e;
    const size_t bytes = sendcount * elem_size(dt);
    if (int e = deposit(c, send, bytes)) return fail(c, e);
    for (int r = 0; r < c->nranks; r++) std::memcpy((unsigned char*)recv + size_t(r) * bytes, slot(c, r), bytes);
    return fail(c, barrier(c));
}

int ncclBroadcast(const void* send, void* recv, size_t count, int dt, int root, Comm* c, void*) {
    if (int e = check(c, dt)) return e;
    if (root < 0 || root >= c->nranks) return InvalidArgument;
    const size_t bytes = count * elem_size(dt);
    if (int e = deposit(c, c->rank == root ? send : nullptr, c->rank == root ? bytes : 0)) return fail(c, e);
    if (c->rank != root) std::memcpy(recv, slot(c, root), bytes);
    return fail(c, barrier(c));
}

}  // extern "C"
