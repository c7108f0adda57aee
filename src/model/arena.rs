//! Activation memory planned before the loop: every buffer a step needs is a slot at a fixed
//! offset of one allocation per dtype (act, F32, U32), sized from (tokens, sequences) up
//! front. Nothing is allocated inside a training or decode step.
use crate::backend::{Backend, DType, View};
use anyhow::Result;

/// Slot offsets are aligned to 64 elements (128 bytes in bf16) so kernels may use vector loads.
const ALIGN: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    pub dtype: DType,
    pub off: usize,
    pub len: usize,
}

/// Element counts per dtype, and the named slots handed out so far.
#[derive(Clone, Debug, Default)]
pub struct ArenaPlan {
    act: usize,
    f32: usize,
    u32: usize,
    act_dtype_size: usize,
    /// (category, bytes) for `tz-engine plan`.
    pub categories: Vec<(&'static str, usize)>,
}

impl ArenaPlan {
    pub fn new(act_dtype: DType) -> Self {
        ArenaPlan { act_dtype_size: act_dtype.size_bytes(), ..Default::default() }
    }

    /// `act` slots use the backend's activation dtype.
    pub fn push(&mut self, category: &'static str, dtype: DType, len: usize) -> Slot {
        let counter = match dtype {
            DType::F32 => &mut self.f32,
            DType::U32 => &mut self.u32,
            DType::BF16 => &mut self.act,
        };
        let off = counter.div_ceil(ALIGN) * ALIGN;
        *counter = off + len;
        let bytes = len * if dtype == DType::BF16 { self.act_dtype_size } else { 4 };
        match self.categories.iter_mut().find(|(c, _)| *c == category) {
            Some((_, b)) => *b += bytes,
            None => self.categories.push((category, bytes)),
        }
        Slot { dtype, off, len }
    }

    pub fn act(&mut self, category: &'static str, len: usize) -> Slot {
        self.push(category, DType::BF16, len)
    }
    pub fn f32(&mut self, category: &'static str, len: usize) -> Slot {
        self.push(category, DType::F32, len)
    }
    pub fn u32(&mut self, category: &'static str, len: usize) -> Slot {
        self.push(category, DType::U32, len)
    }

    pub fn allocate<B: Backend>(&self, be: &B) -> Result<Arena<B>> {
        Ok(Arena {
            act: be.alloc(be.act_dtype(), self.act.max(1))?,
            f32: be.alloc(DType::F32, self.f32.max(1))?,
            u32: be.alloc(DType::U32, self.u32.max(1))?,
        })
    }
}

/// The three allocations behind a plan. Slots of `DType::BF16` live in `act` whatever the
/// backend's activation dtype is (F32 on CPU).
pub struct Arena<B: Backend> {
    pub act: B::Buf,
    pub f32: B::Buf,
    pub u32: B::Buf,
}

impl<B: Backend> Arena<B> {
    pub fn view(&self, s: Slot) -> View<'_, B> {
        let buf = match s.dtype {
            DType::F32 => &self.f32,
            DType::U32 => &self.u32,
            DType::BF16 => &self.act,
        };
        View::all(buf).slice(s.off, s.len)
    }
    /// The first `len` elements of a slot.
    pub fn prefix(&self, s: Slot, len: usize) -> View<'_, B> {
        self.view(s).slice(0, len)
    }
}
