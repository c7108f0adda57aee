//! Device buffers: one allocation, shared by clones, addressed through raw device pointers
//! (Views are `(buffer, element offset, length)` windows, so every kernel argument is the
//! base pointer plus `off · dtype size`).

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};

use super::CudaBackend;
use crate::backend::{Buffer, DType, View};

/// A handle to a device allocation of `len` elements of `dtype`. Cloning shares it; the
/// memory is freed (stream-ordered) when the last clone drops.
#[derive(Clone)]
pub struct CudaBuf {
    /// The allocation, held (never read) so that it lives as long as the last clone; `None`
    /// for zero-length buffers (no allocation, pointer 0).
    _mem: Option<Arc<CudaSlice<u8>>>,
    ptr: u64,
    dtype: DType,
    len: usize,
}

impl std::fmt::Debug for CudaBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaBuf({:?}, len {}, ptr {:#x})", self.dtype, self.len, self.ptr)
    }
}

impl CudaBuf {
    /// A zero-filled allocation on `stream`.
    pub(crate) fn zeros(stream: &Arc<CudaStream>, dtype: DType, len: usize) -> anyhow::Result<Self> {
        let bytes = len.checked_mul(dtype.size_bytes()).ok_or_else(|| anyhow::anyhow!("allocation size overflows"))?;
        if bytes == 0 {
            return Ok(CudaBuf { _mem: None, ptr: 0, dtype, len });
        }
        let slice =
            stream.alloc_zeros::<u8>(bytes).map_err(|e| anyhow::anyhow!("cuda: allocating {bytes} bytes ({len} × {dtype:?}): {e:?}"))?;
        let ptr = {
            let (p, _sync) = slice.device_ptr(stream);
            p
        };
        Ok(CudaBuf { _mem: Some(Arc::new(slice)), ptr, dtype, len })
    }

    /// The device address of element 0.
    pub fn device_ptr(&self) -> u64 {
        self.ptr
    }

    /// Size in bytes.
    pub fn num_bytes(&self) -> usize {
        self.len * self.dtype.size_bytes()
    }
}

impl Buffer for CudaBuf {
    fn len(&self) -> usize {
        self.len
    }
    fn dtype(&self) -> DType {
        self.dtype
    }
}

/// Device address of the first element of a view (inside the allocation: a view never
/// exceeds its buffer).
pub(crate) fn vptr(v: &View<'_, CudaBackend>) -> u64 {
    v.buf().ptr + (v.off() * v.buf().dtype.size_bytes()) as u64
}
