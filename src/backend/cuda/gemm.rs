//! GEMM through cuBLASLt: bf16 A/B, fp32 accumulation and scaling, C/D bf16 or fp32, bias
//! fused as an epilogue where cuBLASLt supports it (else a separate bias kernel).
//!
//! Row-major to column-major: a row-major `[r, c]` matrix is a column-major `[c, r]` one, so
//! the row-major `C[m,n] = op(A)·op(B)` is computed as the column-major
//! `Cᵀ[n,m] = op(B)ᵀ·op(A)ᵀ`: cuBLASLt's "A" is our B and its "B" is our A, with the same
//! transpose flags, and our bias over C's columns is cuBLASLt's bias over D's rows.
//!
//! Descriptors, layouts and the heuristic's algorithm are cached per shape (the shapes of a
//! training run are few). Pointer alignment is part of the key and is told to the heuristic,
//! since views into flat buffers need not be 256-byte aligned.

use std::collections::HashMap;
use std::ffi::c_void;
use std::mem::size_of;
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, Result};
use cudarc::cublaslt::result as lt;
use cudarc::cublaslt::sys;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct Key {
    m: usize,
    n: usize,
    k: usize,
    trans_a: bool,
    trans_b: bool,
    c_f32: bool,
    bias: bool,
    align_a: u32,
    align_b: u32,
    align_c: u32,
}

struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    layout_a: sys::cublasLtMatrixLayout_t,
    layout_b: sys::cublasLtMatrixLayout_t,
    layout_c: sys::cublasLtMatrixLayout_t,
    algo: sys::cublasLtMatmulAlgo_t,
    /// Whether the bias is applied by the epilogue (else the caller adds it).
    bias_fused: bool,
}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: created by this module, destroyed once.
        unsafe {
            let _ = lt::destroy_matrix_layout(self.layout_a);
            let _ = lt::destroy_matrix_layout(self.layout_b);
            let _ = lt::destroy_matrix_layout(self.layout_c);
            let _ = lt::destroy_matmul_desc(self.desc);
        }
    }
}

pub(crate) struct Gemm {
    handle: sys::cublasLtHandle_t,
    stream: Arc<CudaStream>,
    _workspace: CudaSlice<u8>,
    ws_ptr: u64,
    ws_size: usize,
    plans: Mutex<HashMap<Key, Plan>>,
}

// SAFETY: the raw handles are only used under the `plans` mutex or read-only; cuBLASLt
// handles may be used from any thread (one at a time here).
unsafe impl Send for Gemm {}
unsafe impl Sync for Gemm {}
unsafe impl Send for Plan {}

impl Drop for Gemm {
    fn drop(&mut self) {
        self.plans.lock().unwrap().clear();
        // SAFETY: created in `new`, destroyed once.
        unsafe {
            let _ = lt::destroy_handle(self.handle);
        }
    }
}

/// What the caller must do after `matmul`.
pub(crate) enum BiasDone {
    Fused,
    /// Add the bias with a kernel (the epilogue was unavailable for this shape).
    NeedsKernel,
}

fn alignment(ptr: u64) -> u32 {
    let mut a = 256u32;
    while a > 1 && !ptr.is_multiple_of(a as u64) {
        a /= 2;
    }
    a
}

fn cu(e: lt::CublasError) -> anyhow::Error {
    anyhow!("cuBLASLt: {e:?}")
}

impl Gemm {
    pub(crate) fn new(stream: Arc<CudaStream>, hopper: bool) -> Result<Self> {
        // SAFETY: dlopen probe only.
        if !unsafe { sys::is_culib_present() } {
            return Err(anyhow!(
                "the cuBLASLt library (libcublasLt.so) was not found: install the CUDA toolkit's cuBLAS or put its lib directory on LD_LIBRARY_PATH"
            ));
        }
        let handle = lt::create_handle().map_err(cu)?;
        let ws_size = crate::backend::workspace::cublaslt_workspace_bytes(hopper);
        let workspace = stream.alloc_zeros::<u8>(ws_size).map_err(|e| anyhow!("cuda: cuBLASLt workspace: {e:?}"))?;
        let ws_ptr = {
            let (p, _s) = workspace.device_ptr(&stream);
            p
        };
        Ok(Gemm { handle, stream, _workspace: workspace, ws_ptr, ws_size, plans: Mutex::new(HashMap::new()) })
    }

    fn make_plan(&self, key: &Key, with_bias: bool) -> Result<Plan> {
        let bf = sys::cudaDataType_t::CUDA_R_16BF;
        let ct = if key.c_f32 { sys::cudaDataType_t::CUDA_R_32F } else { bf };
        // cuBLASLt operands (column-major): "A" = our B, "B" = our A.
        // Our B stored row-major [k,n] (no trans) is col-major [n,k] (ld n): op = N.
        // Our B stored row-major [n,k] (trans) is col-major [k,n] (ld k): op = T.
        let (a_rows, a_cols, lda) = if key.trans_b { (key.k, key.n, key.k) } else { (key.n, key.k, key.n) };
        // Our A stored row-major [m,k] is col-major [k,m] (ld k): op = N; stored [k,m] (trans)
        // is col-major [m,k] (ld m): op = T.
        let (b_rows, b_cols, ldb) = if key.trans_a { (key.m, key.k, key.m) } else { (key.k, key.m, key.k) };
        let layout_a = lt::create_matrix_layout(bf, a_rows as u64, a_cols as u64, lda as i64).map_err(cu)?;
        let layout_b = lt::create_matrix_layout(bf, b_rows as u64, b_cols as u64, ldb as i64).map_err(cu)?;
        let layout_c = lt::create_matrix_layout(ct, key.n as u64, key.m as u64, key.n as i64).map_err(cu)?;
        let desc = lt::create_matmul_desc(sys::cublasComputeType_t::CUBLAS_COMPUTE_32F, sys::cudaDataType_t::CUDA_R_32F).map_err(cu)?;
        // From here on, `plan`'s Drop frees everything if a later step fails.
        let mut plan = Plan { desc, layout_a, layout_b, layout_c, algo: sys::cublasLtMatmulAlgo_t { data: [0; 8] }, bias_fused: with_bias };
        // SAFETY: valid descriptors; attribute buffers sized as the attributes require.
        unsafe {
            let ta: i32 = key.trans_b as i32; // cublasOperation_t: 0 = N, 1 = T
            let tb: i32 = key.trans_a as i32;
            lt::set_matmul_desc_attribute(
                desc,
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                &ta as *const i32 as *const c_void,
                size_of::<i32>(),
            )
            .map_err(cu)?;
            lt::set_matmul_desc_attribute(
                desc,
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB,
                &tb as *const i32 as *const c_void,
                size_of::<i32>(),
            )
            .map_err(cu)?;
            if with_bias {
                let epi = sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS;
                lt::set_matmul_desc_attribute(
                    desc,
                    sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_EPILOGUE,
                    &epi as *const _ as *const c_void,
                    size_of::<sys::cublasLtEpilogue_t>(),
                )
                .map_err(cu)?;
                let bt = sys::cudaDataType_t::CUDA_R_16BF;
                lt::set_matmul_desc_attribute(
                    desc,
                    sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
                    &bt as *const _ as *const c_void,
                    size_of::<sys::cudaDataType_t>(),
                )
                .map_err(cu)?;
                // A placeholder pointer for the heuristic (bias vectors are ≥ 2-byte aligned; the real one is set per call).
                let p: u64 = self.ws_ptr;
                lt::set_matmul_desc_attribute(
                    desc,
                    sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                    &p as *const u64 as *const c_void,
                    size_of::<u64>(),
                )
                .map_err(cu)?;
            }
            let pref = lt::create_matmul_pref().map_err(cu)?;
            let set_pref = |attr: sys::cublasLtMatmulPreferenceAttributes_t, v: *const c_void, n: usize| {
                lt::set_matmul_pref_attribute(pref, attr, v, n)
            };
            let ws = self.ws_size as u64;
            let r = (|| {
                set_pref(
                    sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                    &ws as *const u64 as *const c_void,
                    size_of::<u64>(),
                )?;
                // cuBLASLt "A" is our B and vice versa.
                set_pref(
                    sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                    &key.align_b as *const u32 as *const c_void,
                    size_of::<u32>(),
                )?;
                set_pref(
                    sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                    &key.align_a as *const u32 as *const c_void,
                    size_of::<u32>(),
                )?;
                set_pref(
                    sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                    &key.align_c as *const u32 as *const c_void,
                    size_of::<u32>(),
                )?;
                set_pref(
                    sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                    &key.align_c as *const u32 as *const c_void,
                    size_of::<u32>(),
                )?;
                lt::get_matmul_algo_heuristic(self.handle, desc, layout_a, layout_b, layout_c, layout_c, pref)
            })();
            let _ = lt::destroy_matmul_pref(pref);
            plan.algo = r.map_err(cu)?.algo;
        }
        Ok(plan)
    }

    /// `C[m,n] = alpha·op(A)·op(B) + beta·C (+ bias)` on raw device pointers (see the
    /// Backend contract). Returns whether the bias still has to be added.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn matmul(
        &self,
        c: u64,
        c_f32: bool,
        a: u64,
        b: u64,
        bias: Option<u64>,
        m: usize,
        n: usize,
        k: usize,
        trans_a: bool,
        trans_b: bool,
        alpha: f32,
        beta: f32,
    ) -> Result<BiasDone> {
        let mut key = Key {
            m,
            n,
            k,
            trans_a,
            trans_b,
            c_f32,
            bias: bias.is_some(),
            align_a: alignment(a),
            align_b: alignment(b),
            align_c: alignment(c),
        };
        let mut plans = self.plans.lock().unwrap();
        if let std::collections::hash_map::Entry::Vacant(slot) = plans.entry(key) {
            let plan = match self.make_plan(&key, key.bias) {
                Ok(p) => p,
                Err(e) if key.bias => {
                    // No epilogue kernel for this layout: plain GEMM, bias by the caller.
                    let mut p = self.make_plan(&key, false).map_err(|e2| anyhow!("{e2} (with bias epilogue: {e})"))?;
                    p.bias_fused = false;
                    p
                }
                Err(e) => return Err(anyhow!("{e} for gemm m={m} n={n} k={k} trans_a={trans_a} trans_b={trans_b} c_f32={c_f32}")),
            };
            slot.insert(plan);
        }
        let plan = plans.get(&key).expect("inserted above");
        key.bias = plan.bias_fused;
        // SAFETY: pointers are valid device addresses of the sizes the layouts describe
        // (checked by the caller); descriptors are alive while `plans` is locked.
        unsafe {
            if let (true, Some(bp)) = (plan.bias_fused, bias) {
                lt::set_matmul_desc_attribute(
                    plan.desc,
                    sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                    &bp as *const u64 as *const c_void,
                    size_of::<u64>(),
                )
                .map_err(cu)?;
            }
            lt::matmul(
                self.handle,
                plan.desc,
                &alpha as *const f32 as *const c_void,
                &beta as *const f32 as *const c_void,
                b as *const c_void,
                plan.layout_a,
                a as *const c_void,
                plan.layout_b,
                c as *const c_void,
                plan.layout_c,
                c as *mut c_void,
                plan.layout_c,
                &plan.algo,
                self.ws_ptr as *mut c_void,
                self.ws_size,
                self.stream.cu_stream() as sys::cudaStream_t,
            )
            .map_err(|e| anyhow!("cuBLASLt matmul m={m} n={n} k={k}: {e:?}"))?;
        }
        Ok(if bias.is_none() || key.bias { BiasDone::Fused } else { BiasDone::NeedsKernel })
    }
}
