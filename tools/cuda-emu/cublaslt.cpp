// cublaslt.cpp — a stand-in libcublasLt.so for the emulated GPU: the descriptor calls
// tz-engine's src/backend/cuda/gemm.rs makes and a reference matmul with cuBLASLt's
// documented semantics (column-major, element (i, j) at p[i + j·ld]):
//   D[m×n] = alpha · op(A)[m×k] · op(B)[k×n] + beta · C (+ bias[m] broadcast over columns
//   with CUBLASLT_EPILOGUE_BIAS), op = transpose when TRANSA/TRANSB = CUBLAS_OP_T,
// fp32 accumulation, bf16 or fp32 C/D (bf16 rounded to nearest even). Shapes that do not
// agree fail with CUBLAS_STATUS_INVALID_VALUE in the heuristic and in the matmul, as the
// real library does, so a wrong row/column-major mapping in gemm.rs shows up as an error
// or as a wrong result against the CPU oracle.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

namespace {
enum Status { SUCCESS = 0, INVALID_VALUE = 7, NOT_SUPPORTED = 15 };
enum DType { R_32F = 0, R_16BF = 14 };

struct Layout {
    int type;
    uint64_t rows, cols;
    int64_t ld;
};
struct Desc {
    int compute, scale;
    int transa = 0, transb = 0, epilogue = 1;
    const void* bias = nullptr;
    int bias_type = -1;
};
struct Algo {
    uint64_t data[8];
};
struct Heuristic {
    Algo algo;
    size_t workspace;
    int state;
    float waves;
    int reserved[4];
};

float bf2f(uint16_t b) {
    uint32_t u = (uint32_t)b << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
uint16_t f2bf(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
float load(const void* p, int type, size_t i) { return type == R_16BF ? bf2f(((const uint16_t*)p)[i]) : ((const float*)p)[i]; }

// m, n, k of a problem, or an error.
int shape(const Desc* d, const Layout* a, const Layout* b, const Layout* c, const Layout* dd, uint64_t* m, uint64_t* n,
          uint64_t* k) {
    if (!d || !a || !b || !c || !dd) return INVALID_VALUE;
    if (d->compute != 68 || d->scale != R_32F) return NOT_SUPPORTED;  // CUBLAS_COMPUTE_32F, fp32 scale
    if (a->type != R_16BF || b->type != R_16BF) return NOT_SUPPORTED;
    if ((c->type != R_16BF && c->type != R_32F) || c->type != dd->type) return NOT_SUPPORTED;
    *m = d->transa ? a->cols : a->rows;
    *k = d->transa ? a->rows : a->cols;
    const uint64_t kb = d->transb ? b->cols : b->rows;
    *n = d->transb ? b->rows : b->cols;
    if (kb != *k || c->rows != *m || c->cols != *n || dd->rows != *m || dd->cols != *n) return INVALID_VALUE;
    for (const Layout* l : {a, b, c, dd})
        if (l->ld < (int64_t)l->rows || l->ld < 1) return INVALID_VALUE;
    if (d->epilogue != 1 && d->epilogue != 4) return NOT_SUPPORTED;  // DEFAULT, BIAS
    if (d->epilogue == 4 && d->bias_type != R_16BF && d->bias_type != -1) return NOT_SUPPORTED;
    return SUCCESS;
}
}  // namespace

extern "C" {
int cublasLtCreate(void** h) {
    *h = new int(0);
    return SUCCESS;
}
int cublasLtDestroy(void* h) {
    delete (int*)h;
    return SUCCESS;
}
size_t cublasLtGetVersion() { return 130000; }
int cublasLtMatrixLayoutCreate(void** l, int type, uint64_t rows, uint64_t cols, int64_t ld) {
    *l = new Layout{type, rows, cols, ld};
    return SUCCESS;
}
int cublasLtMatrixLayoutDestroy(void* l) {
    delete (Layout*)l;
    return SUCCESS;
}
int cublasLtMatrixLayoutSetAttribute(void*, int attr, const void*, size_t) {
    std::fprintf(stderr, "cuda-emu cuBLASLt: matrix layout attribute %d is not emulated\n", attr);
    return NOT_SUPPORTED;
}
int cublasLtMatmulDescCreate(void** d, int compute, int scale) {
    *d = new Desc{compute, scale};
    return SUCCESS;
}
int cublasLtMatmulDescDestroy(void* d) {
    delete (Desc*)d;
    return SUCCESS;
}
int cublasLtMatmulDescSetAttribute(void* dp, int attr, const void* buf, size_t size) {
    Desc* d = (Desc*)dp;
    auto i32 = [&](int* dst) -> int {
        if (size != 4) return INVALID_VALUE;
        std::memcpy(dst, buf, 4);
        return (int)SUCCESS;
    };
    switch (attr) {
        case 3: return i32(&d->transa);
        case 4: return i32(&d->transb);
        case 7: return i32(&d->epilogue);
        case 26: return i32(&d->bias_type);
        case 8:
            if (size != 8) return INVALID_VALUE;
            std::memcpy(&d->bias, buf, 8);
            return SUCCESS;
        default:
            std::fprintf(stderr, "cuda-emu cuBLASLt: matmul descriptor attribute %d is not emulated\n", attr);
            return NOT_SUPPORTED;
    }
}
int cublasLtMatmulPreferenceCreate(void** p) {
    *p = new int(0);
    return SUCCESS;
}
int cublasLtMatmulPreferenceDestroy(void* p) {
    delete (int*)p;
    return SUCCESS;
}
int cublasLtMatmulPreferenceSetAttribute(void*, int, const void*, size_t) { return SUCCESS; }
int cublasLtMatmulAlgoGetHeuristic(void*, void* desc, void* a, void* b, void* c, void* d, void*, int requested, Heuristic* results,
                                   int* count) {
    uint64_t m, n, k;
    const int st = shape((Desc*)desc, (Layout*)a, (Layout*)b, (Layout*)c, (Layout*)d, &m, &n, &k);
    *count = 0;
    if (st != SUCCESS) return st;
    if (requested < 1) return INVALID_VALUE;
    std::memset(&results[0], 0, sizeof(Heuristic));
    results[0].waves = 1.f;
    *count = 1;
    return SUCCESS;
}
int cublasLtMatmul(void*, void* descp, const void* alpha_p, const void* A, void* al, const void* B, void* bl, const void* beta_p,
                   const void* C, void* cl, void* D, void* dl, const void*, void*, size_t, void*) {
    const Desc* desc = (const Desc*)descp;
    const Layout *a = (Layout*)al, *b = (Layout*)bl, *c = (Layout*)cl, *d = (Layout*)dl;
    uint64_t m, n, k;
    const int st = shape(desc, a, b, c, d, &m, &n, &k);
    if (st != SUCCESS) return st;
    const float alpha = *(const float*)alpha_p, beta = *(const float*)beta_p;
    const bool bias = desc->epilogue == 4;
    if (bias && !desc->bias) return INVALID_VALUE;
    std::vector<float> col(m);
    for (uint64_t j = 0; j < n; ++j) {
        for (uint64_t i = 0; i < m; ++i) {
            float acc = 0.f;
            for (uint64_t p = 0; p < k; ++p) {
                const size_t ai = desc->transa ? p + i * a->ld : i + p * a->ld;
                const size_t bi = desc->transb ? j + p * b->ld : p + j * b->ld;
                acc += load(A, R_16BF, ai) * load(B, R_16BF, bi);
            }
            float v = alpha * acc;
            if (beta != 0.f) v += beta * load(C, c->type, i + j * c->ld);
            if (bias) v += bf2f(((const uint16_t*)desc->bias)[i]);
            col[i] = v;
        }
        for (uint64_t i = 0; i < m; ++i) {
            const size_t di = i + j * d->ld;
            if (d->type == R_16BF)
                ((uint16_t*)D)[di] = f2bf(col[i]);
            else
                ((float*)D)[di] = col[i];
        }
    }
    return SUCCESS;
}
}  // extern "C"
