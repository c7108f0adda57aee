//! `View`: a window of a buffer that never exceeds it.
//!
//! The fields are private to this module, so the only ways to make a view are the
//! constructors below, and each of them checks `off + len <= buf.len()` (without overflow).
//! Backends therefore address `[off(), off() + len())` of the buffer without checking it
//! again; what they do check (`check.rs`) is that a view is large enough for an op's shape.

use anyhow::{bail, Result};

use super::{Backend, Buffer, DType};

/// The elements `[off, off + len)` of a buffer.
pub struct View<'a, B: Backend + ?Sized> {
    buf: &'a B::Buf,
    off: usize,
    len: usize,
}

impl<B: Backend + ?Sized> Clone for View<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B: Backend + ?Sized> Copy for View<'_, B> {}

/// `off + len` if that is within `size`.
fn end(off: usize, len: usize, size: usize) -> Option<usize> {
    off.checked_add(len).filter(|&e| e <= size)
}

impl<'a, B: Backend + ?Sized> View<'a, B> {
    /// The whole buffer.
    pub fn all(buf: &'a B::Buf) -> Self {
        View { buf, off: 0, len: buf.len() }
    }
    /// The elements `[off, off + len)` of `buf`; an error if they are not all inside it.
    pub fn new(buf: &'a B::Buf, off: usize, len: usize) -> Result<Self> {
        if end(off, len, buf.len()).is_none() {
            bail!("view {off}+{len} out of a buffer of {} elements", buf.len());
        }
        Ok(View { buf, off, len })
    }
    /// A sub-window `[off, off + len)` relative to this view. Panics if out of range: views are
    /// cut by memory plans (arena slots, parameter layouts), so an out-of-range slice is a bug
    /// in the plan, never a consequence of user input; `View::new` is the fallible form.
    #[track_caller]
    pub fn slice(&self, off: usize, len: usize) -> Self {
        if end(off, len, self.len).is_none() {
            panic!("view slice {off}+{len} out of a view of {} elements", self.len);
        }
        View { buf: self.buf, off: self.off + off, len }
    }
    /// The first `len` elements (`slice(0, len)`; panics likewise).
    #[track_caller]
    pub fn prefix(&self, len: usize) -> Self {
        self.slice(0, len)
    }
    pub fn buf(&self) -> &'a B::Buf {
        self.buf
    }
    /// Offset of the first element in the buffer, in elements.
    pub fn off(&self) -> usize {
        self.off
    }
    /// Length in elements.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn dtype(&self) -> DType {
        self.buf.dtype()
    }
}
