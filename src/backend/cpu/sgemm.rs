//! f32 GEMM for the CPU backend: matrixmultiply's single-threaded kernel on blocks of C, the
//! blocks spread over rayon's pool; products with a few rows of A (decoding) by the streaming
//! kernel of `gemm_few_rows`.
//!
//! Why not matrixmultiply's own threading: it keeps a second thread pool beside rayon's, and on
//! small decode-shaped products (M = 8–64 rows) the two pools' idle threads spin against each
//! other between calls (a quarter of 0.5B-shape generation time was `sched_yield`, issue #20).
//! One pool, and a GEMM called inside a parallel region (attention's per-sequence products)
//! simply runs on the calling worker.
//!
//! Blocks split C along its longer side, rows or columns, so the shared operand (B for a row
//! split, A for a column split) is packed once per block and the split one is read once. Each
//! element of C is still one k-ordered sum computed by one call, so the result does not depend
//! on the number of threads.
use rayon::prelude::*;

/// Below this many multiply-adds one call on the calling thread is cheaper than a fork.
const PARALLEL_MIN_MACS: usize = 1 << 18;
/// Rows or columns per block at least (a multiple of the kernels' 8- and 16-wide tiles).
const BLOCK_MIN: usize = 32;

/// A matrix operand: its base pointer and (row, column) strides in elements.
#[derive(Clone, Copy)]
pub struct Operand {
    pub ptr: *const f32,
    pub rs: isize,
    pub cs: isize,
}

/// C[m×n] = alpha · A[m×k] · B[k×n] + beta · C, every matrix given by pointer and strides.
///
/// # Safety
/// Every element the strides address inside the three shapes lies in its allocation; C does
/// not overlap A or B.
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm(m: usize, k: usize, n: usize, alpha: f32, a: Operand, b: Operand, beta: f32, c: *mut f32, rsc: isize, csc: isize) {
    if m == 0 || n == 0 {
        return;
    }
    if k > 0 && super::gemm_few_rows::applies(m, k, a, b) {
        // SAFETY: the caller's contract.
        return unsafe { super::gemm_few_rows::gemm(m, k, n, alpha, a, b, beta, c, rsc, csc) };
    }
    let threads = rayon::current_num_threads();
    let long = m.max(n);
    if threads == 1 || m * n * k < PARALLEL_MIN_MACS || long < 2 * BLOCK_MIN {
        // SAFETY: the caller's contract.
        unsafe { matrixmultiply::sgemm(m, k, n, alpha, a.ptr, a.rs, a.cs, b.ptr, b.rs, b.cs, beta, c, rsc, csc) };
        return;
    }
    let block = long.div_ceil(threads).next_multiple_of(BLOCK_MIN).max(BLOCK_MIN);
    // Raw pointers are not Send; the blocks carry addresses.
    let (a_addr, b_addr, c_addr) = (a.ptr as usize, b.ptr as usize, c as usize);
    let (rsa, csa, rsb, csb) = (a.rs, a.cs, b.rs, b.cs);
    (0..long.div_ceil(block)).into_par_iter().for_each(|i| {
        let (start, len) = (i * block, block.min(long - i * block));
        let (pa, pb, pc) = (a_addr as *const f32, b_addr as *const f32, c_addr as *mut f32);
        // SAFETY: block i addresses rows (or columns) start..start + len of A and C (or B and
        // C), inside the caller's shapes; blocks write disjoint elements of C.
        unsafe {
            if m >= n {
                let (pa, pc) = (pa.offset(start as isize * rsa), pc.offset(start as isize * rsc));
                matrixmultiply::sgemm(len, k, n, alpha, pa, rsa, csa, pb, rsb, csb, beta, pc, rsc, csc);
            } else {
                let (pb, pc) = (pb.offset(start as isize * csb), pc.offset(start as isize * csc));
                matrixmultiply::sgemm(m, k, len, alpha, pa, rsa, csa, pb, rsb, csb, beta, pc, rsc, csc);
            }
        }
    });
}
