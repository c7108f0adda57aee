//! Activation memory planned before the loop: every buffer a step needs is a slot at a fixed
//! offset of one allocation per dtype (act, F32, U32), sized from (tokens, sequences) up
//! front. Nothing is allocated inside a training or decode step.
use crate::backend::{Backend, Buffer, DType, View};
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
        Arena::for_phases(be, &[self])
    }

    /// Elements per allocation (act, F32, U32) as `allocate` sizes them.
    pub fn elements(&self) -> [usize; 3] {
        [self.act.max(1), self.f32.max(1), self.u32.max(1)]
    }

    /// Bytes `allocate` takes: the sum of the three allocations.
    pub fn bytes(&self) -> usize {
        let [a, f, u] = self.elements();
        a * self.act_dtype_size + 4 * (f + u)
    }

    /// Bytes of one arena shared by phases that never run at once: each allocation sized for
    /// the largest phase, not the sum.
    pub fn shared_bytes(plans: &[&ArenaPlan]) -> usize {
        let [a, f, u] = Self::max_elements(plans);
        a * plans.first().map_or(4, |p| p.act_dtype_size) + 4 * (f + u)
    }

    fn max_elements(plans: &[&ArenaPlan]) -> [usize; 3] {
        let mut m = [1usize; 3];
        for p in plans {
            for (m, e) in m.iter_mut().zip(p.elements()) {
                *m = (*m).max(e);
            }
        }
        m
    }
}

/// The three allocations behind a plan. Slots of `DType::BF16` live in `act` whatever the
/// backend's activation dtype is (F32 on CPU). Cloning shares the memory: phases that never
/// run at once (rollout, scoring, the training step) each hold a clone of one arena.
pub struct Arena<B: Backend> {
    pub act: B::Buf,
    pub f32: B::Buf,
    pub u32: B::Buf,
}

// Not derived: a derive would require `B: Clone`; only the buffers (shared handles) are cloned.
impl<B: Backend> Clone for Arena<B> {
    fn clone(&self) -> Self {
        Arena { act: self.act.clone(), f32: self.f32.clone(), u32: self.u32.clone() }
    }
}

impl<B: Backend> Arena<B> {
    /// One arena for phases that run one at a time: each allocation is as large as the
    /// largest phase needs.
    pub fn for_phases(be: &B, plans: &[&ArenaPlan]) -> Result<Self> {
        let [a, f, u] = ArenaPlan::max_elements(plans);
        Ok(Arena { act: be.alloc(be.act_dtype(), a)?, f32: be.alloc(DType::F32, f)?, u32: be.alloc(DType::U32, u)? })
    }

    /// Whether `plan`'s slots all lie inside this arena (a phase placed in an arena planned
    /// for others must fit it).
    pub fn holds(&self, plan: &ArenaPlan) -> Result<()> {
        let [a, f, u] = plan.elements();
        if a > self.act.len() || f > self.f32.len() || u > self.u32.len() {
            anyhow::bail!(
                "a phase needs {a} / {f} / {u} arena elements (act / f32 / u32) but the shared arena holds {} / {} / {}",
                self.act.len(),
                self.f32.len(),
                self.u32.len()
            );
        }
        Ok(())
    }

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
