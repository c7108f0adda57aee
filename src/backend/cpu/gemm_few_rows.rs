//! C[m×n] = alpha · A[m×k] · B[k×n] + beta · C for a few rows of A (decoding: m is the batch of
//! sequences being generated), when A's rows and B's columns are both contiguous along k — the
//! layout of every linear layer's forward, X · Wᵀ with W stored [out, in].
//!
//! Why not the packing GEMM: it copies all of B (the weight, up to 545 MB for the 0.5B shape's
//! vocabulary projection) into its panel layout on every call and then reads the copy — three
//! passes over the weight for work that one streaming pass does. Packing was 44% of 0.5B-shape
//! generation at m = 8 (perf, issue #20). Here each weight row is read once, straight from the
//! model's buffer, and dotted with every row of A (a few KB, it stays in L1/L2).
//!
//! Each element of C is one fixed-order sum — 16 lanes over k ≡ l (mod 16), the lanes then added
//! in a fixed tree — independent of the thread count and of how n is split among threads.
use super::sgemm::Operand;
use rayon::prelude::*;

/// The most rows of A this path always takes, and the most it takes when k is long enough to
/// amortize each tile's final lane sums. Measured on the 2-core AVX-512 machine (`bench phases`,
/// issue #20): at the 0.5B shape (k = 896..4864) 32-row decoding ran 1.3× faster here than in
/// the packing GEMM; at the tiny preset's k = 128..384, 8 rows ran as fast as there and 16 rows
/// 7% slower. Above 64 rows the packing GEMM's cache blocking wins (0.5B score, m = 512: 155 vs
/// 189 tok/s).
const MAX_ROWS: usize = 8;
const MAX_ROWS_LONG_K: usize = 64;
const LONG_K: usize = 512;
/// Rows of A per register tile (with four columns of B: 16 vector accumulators).
const TILE_ROWS: usize = 4;
/// Columns of B (weight rows) per register tile.
const TILE_COLS: usize = 4;
/// Below this many multiply-adds one call on the calling thread is cheaper than a fork.
const PARALLEL_MIN_MACS: usize = 1 << 16;
/// Columns of C per parallel task: each task streams this many weight rows (a multiple of
/// `TILE_COLS`, so only the last task has a narrow tile).
const TASK_COLS: usize = 64;

/// Whether `gemm` computes this product: few rows, both operands contiguous along k.
pub fn applies(m: usize, k: usize, a: Operand, b: Operand) -> bool {
    (m <= MAX_ROWS || (m <= MAX_ROWS_LONG_K && k >= LONG_K)) && a.cs == 1 && b.rs == 1
}

/// C = alpha · A · B + beta · C for a product `applies` accepted (beta = 0: C is not read).
///
/// # Safety
/// As `sgemm::sgemm`: every element the strides address inside the three shapes lies in its
/// allocation; C does not overlap A or B.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm(m: usize, k: usize, n: usize, alpha: f32, a: Operand, b: Operand, beta: f32, c: *mut f32, rsc: isize, csc: isize) {
    debug_assert!(applies(m, k, a, b));
    // Raw pointers are not Send; the tasks carry addresses.
    let (a_addr, b_addr, c_addr, rsa, csb) = (a.ptr as usize, b.ptr as usize, c as usize, a.rs, b.cs);
    let task = move |cols: std::ops::Range<usize>| {
        let (a, b, c) = (a_addr as *const f32, b_addr as *const f32, c_addr as *mut f32);
        let mut j = cols.start;
        while j < cols.end {
            let nr = TILE_COLS.min(cols.end - j);
            let mut i = 0;
            while i < m {
                let mr = TILE_ROWS.min(m - i);
                // SAFETY: rows i..i + mr of A and columns j..j + nr of B and C lie inside the
                // caller's shapes.
                unsafe {
                    let (pa, pb) = (a.offset(i as isize * rsa), b.offset(j as isize * csb));
                    let pc = c.offset(i as isize * rsc + j as isize * csc);
                    tile(mr, nr, k, alpha, (pa, rsa), (pb, csb), beta, (pc, rsc, csc));
                }
                i += mr;
            }
            j += nr;
        }
    };
    if m * n * k < PARALLEL_MIN_MACS || rayon::current_num_threads() == 1 {
        task(0..n);
    } else {
        (0..n.div_ceil(TASK_COLS)).into_par_iter().for_each(|t| task(t * TASK_COLS..((t + 1) * TASK_COLS).min(n)));
    }
}

/// One tile: rows `mr` ≤ 4 of A against columns `nr` ≤ 4 of B, written into C.
#[allow(clippy::too_many_arguments)]
unsafe fn tile(
    mr: usize,
    nr: usize,
    k: usize,
    alpha: f32,
    a: (*const f32, isize),
    b: (*const f32, isize),
    beta: f32,
    c: (*mut f32, isize, isize),
) {
    let mut sums = [[0f32; TILE_COLS]; TILE_ROWS];
    macro_rules! dispatch {
        ($($r:literal)*) => {
            match (mr, nr) {
                $(($r, 4) => dots::<$r, 4>(k, a, b, &mut sums), ($r, 3) => dots::<$r, 3>(k, a, b, &mut sums), ($r, 2) => dots::<$r, 2>(k, a, b, &mut sums), ($r, 1) => dots::<$r, 1>(k, a, b, &mut sums),)*
                _ => unreachable!("tile shape {mr}x{nr}"),
            }
        };
    }
    // SAFETY: the caller's contract for A and B.
    unsafe { dispatch!(1 2 3 4) };
    for (i, row) in sums.iter().enumerate().take(mr) {
        for (j, &s) in row.iter().enumerate().take(nr) {
            // SAFETY: element (i, j) of the tile lies inside C.
            unsafe {
                let p = c.0.offset(i as isize * c.1 + j as isize * c.2);
                *p = if beta == 0.0 { alpha * s } else { alpha * s + beta * *p };
            }
        }
    }
}

/// sums[i][j] = Σ_p A[i, p] · B[p, j] for the tile, by the widest code the CPU runs.
unsafe fn dots<const MR: usize, const NR: usize>(
    k: usize,
    a: (*const f32, isize),
    b: (*const f32, isize),
    sums: &mut [[f32; TILE_COLS]; TILE_ROWS],
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F; the caller's contract for A and B.
        return unsafe { avx512::dots::<MR, NR>(k, a, b, sums) };
    }
    // SAFETY: the caller's contract for A and B.
    unsafe { portable_dots::<MR, NR>(k, a, b, sums) }
}

/// The same sums in plain code, for CPUs without AVX-512: the same 16 lanes and tree, but a
/// separate multiply and add where the AVX-512 path fuses them, so the two can differ in the
/// last bit (each is deterministic on its machine).
unsafe fn portable_dots<const MR: usize, const NR: usize>(
    k: usize,
    a: (*const f32, isize),
    b: (*const f32, isize),
    sums: &mut [[f32; TILE_COLS]; TILE_ROWS],
) {
    let mut acc = [[[0f32; 16]; NR]; MR];
    for p in 0..k {
        for (i, acc_i) in acc.iter_mut().enumerate() {
            // SAFETY: p < k and i < MR: inside the caller's rows of A and columns of B.
            let x = unsafe { *a.0.offset(i as isize * a.1).add(p) };
            for (j, lanes) in acc_i.iter_mut().enumerate() {
                lanes[p % 16] += x * unsafe { *b.0.offset(j as isize * b.1).add(p) };
            }
        }
    }
    for i in 0..MR {
        for j in 0..NR {
            sums[i][j] = lane_tree(acc[i][j]);
        }
    }
}

/// Sixteen lanes added in halves: l + (l + 8), then + 4, + 2, + 1.
fn lane_tree(mut v: [f32; 16]) -> f32 {
    let mut w = 8;
    while w > 0 {
        for l in 0..w {
            v[l] += v[l + w];
        }
        w /= 2;
    }
    v[0]
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{lane_tree, TILE_COLS, TILE_ROWS};
    use std::arch::x86_64::*;

    /// How far ahead of the loads along a weight row to prefetch, in floats.
    const PREFETCH: usize = 2048;

    /// Per 16 values of k: NR loads of B, MR loads of A, MR·NR fused multiply-adds into
    /// separate accumulators (16 at the full tile: enough independent chains to cover the FMA
    /// latency); the k tail by masked loads (masked-off lanes read as 0).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn dots<const MR: usize, const NR: usize>(
        k: usize,
        a: (*const f32, isize),
        b: (*const f32, isize),
        sums: &mut [[f32; TILE_COLS]; TILE_ROWS],
    ) {
        let mut acc = [[_mm512_setzero_ps(); NR]; MR];
        let (mut pa, mut pb) = ([std::ptr::null::<f32>(); MR], [std::ptr::null::<f32>(); NR]);
        for (i, p) in pa.iter_mut().enumerate() {
            *p = unsafe { a.0.offset(i as isize * a.1) };
        }
        for (j, p) in pb.iter_mut().enumerate() {
            *p = unsafe { b.0.offset(j as isize * b.1) };
        }
        let mut p = 0;
        while p + 16 <= k {
            let mut bv = [_mm512_setzero_ps(); NR];
            for j in 0..NR {
                bv[j] = unsafe { _mm512_loadu_ps(pb[j].add(p)) };
                _mm_prefetch::<_MM_HINT_T0>(pb[j].wrapping_add(p + PREFETCH) as *const i8);
            }
            for i in 0..MR {
                let av = unsafe { _mm512_loadu_ps(pa[i].add(p)) };
                for j in 0..NR {
                    acc[i][j] = _mm512_fmadd_ps(av, bv[j], acc[i][j]);
                }
            }
            p += 16;
        }
        if p < k {
            let mask: __mmask16 = ((1u32 << (k - p)) - 1) as u16;
            let mut bv = [_mm512_setzero_ps(); NR];
            for j in 0..NR {
                bv[j] = unsafe { _mm512_maskz_loadu_ps(mask, pb[j].add(p)) };
            }
            for i in 0..MR {
                let av = unsafe { _mm512_maskz_loadu_ps(mask, pa[i].add(p)) };
                for j in 0..NR {
                    acc[i][j] = _mm512_fmadd_ps(av, bv[j], acc[i][j]);
                }
            }
        }
        for i in 0..MR {
            for j in 0..NR {
                let mut lanes = [0f32; 16];
                unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), acc[i][j]) };
                sums[i][j] = lane_tree(lanes);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both code paths (the AVX-512 one where the CPU has it, and the portable one every CPU
    /// runs) against an f64 reference, over every tile shape and a k tail.
    #[test]
    #[allow(clippy::needless_range_loop)]
    fn both_paths_match_f64_reference() {
        let (m, n, k) = (7usize, 6usize, 37usize);
        let mut seed = 1u64;
        let mut rnd = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        let a: Vec<f32> = (0..m * k).map(|_| rnd()).collect();
        let b: Vec<f32> = (0..n * k).map(|_| rnd()).collect(); // B[p, j] at j·k + p
        let want = |i: usize, j: usize| (0..k).map(|p| a[i * k + p] as f64 * b[j * k + p] as f64).sum::<f64>();
        for mr in 1..=TILE_ROWS {
            for nr in 1..=TILE_COLS {
                for portable in [false, true] {
                    let mut sums = [[f32::NAN; TILE_COLS]; TILE_ROWS];
                    let (pa, pb) = ((a.as_ptr(), k as isize), (b.as_ptr(), k as isize));
                    macro_rules! call {
                        ($r:literal, $c:literal) => {
                            unsafe {
                                if portable {
                                    portable_dots::<$r, $c>(k, pa, pb, &mut sums)
                                } else {
                                    dots::<$r, $c>(k, pa, pb, &mut sums)
                                }
                            }
                        };
                    }
                    macro_rules! every_shape {
                        ($($r:literal)*) => {
                            match (mr, nr) {
                                $(($r, 1) => call!($r, 1), ($r, 2) => call!($r, 2), ($r, 3) => call!($r, 3), ($r, 4) => call!($r, 4),)*
                                _ => unreachable!(),
                            }
                        };
                    }
                    every_shape!(1 2 3 4);
                    for i in 0..mr {
                        for j in 0..nr {
                            let (got, w) = (sums[i][j] as f64, want(i, j));
                            assert!((got - w).abs() <= 1e-5 * (1.0 + w.abs()), "{mr}x{nr} portable={portable} ({i},{j}): {got} vs {w}");
                        }
                    }
                }
            }
        }
    }
}
