//! What every op family uses to launch: kernel arguments as raw slots, the checks that keep
//! sizes within the kernels' 32-bit arguments and the grid's limits, and grid-stride ("flat")
//! launches.

use anyhow::{anyhow, bail, Result};

use super::CudaBackend;

/// A kernel argument as the raw 8-byte slot `CudaBackend::launch` passes.
pub(super) trait Arg {
    fn slot(self) -> u64;
}
impl Arg for u64 {
    fn slot(self) -> u64 {
        self
    }
}
impl Arg for u32 {
    fn slot(self) -> u64 {
        self as u64
    }
}
impl Arg for i32 {
    fn slot(self) -> u64 {
        self as u32 as u64
    }
}
impl Arg for f32 {
    fn slot(self) -> u64 {
        self.to_bits() as u64
    }
}

/// `args![a, b, ...]`: the slots of a kernel's argument list, in order.
macro_rules! args {
    ($($a:expr),* $(,)?) => { &[$($crate::backend::cuda::launch::Arg::slot($a)),*] };
}
pub(super) use args;

/// `x` as a kernel's `int` argument.
pub(super) fn int(x: usize, what: &str) -> Result<i32> {
    i32::try_from(x).map_err(|_| anyhow!("cuda {what}: {x} exceeds the kernel's 32-bit range"))
}

pub(super) fn grid_dim(x: usize, what: &str) -> Result<u32> {
    if x == 0 || x > i32::MAX as usize {
        bail!("cuda {what}: grid dimension {x} out of range");
    }
    Ok(x as u32)
}

pub(super) fn grid_yz(x: usize, what: &str) -> Result<u32> {
    if x == 0 || x > 65535 {
        bail!("cuda {what}: grid dimension {x} out of range (1..=65535)");
    }
    Ok(x as u32)
}

pub(super) const FLAT_THREADS: u32 = 256;

impl CudaBackend {
    /// Blocks for a grid-stride loop over n elements.
    fn flat_blocks(&self, n: usize) -> u32 {
        let want = n.div_ceil(FLAT_THREADS as usize);
        want.clamp(1, self.sm_count as usize * 16) as u32
    }

    /// A grid-stride kernel over `n` elements (nothing for `n == 0`).
    pub(super) fn flat(&self, file: &'static str, name: &'static str, n: usize, a: &[u64]) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let f = self.func(file, name)?;
        self.launch(&f, (self.flat_blocks(n), 1, 1), (FLAT_THREADS, 1, 1), 0, a)
    }
}
