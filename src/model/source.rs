//! Where a forward or backward pass reads its parameters and sends its gradients, one unit
//! (`layout::Unit`: the embedding, a decoder layer, the head) at a time.
//!
//! A model whose parameters are all on the device ([`Resident`]) hands out views of them and
//! has nothing to do when a unit's gradients are complete. A model sharded over data-parallel
//! ranks (`crate::train::zero3`) all-gathers a unit into a staging buffer just before the
//! pass uses it and reduce-scatters the unit's gradients just after its backward, so neither
//! whole parameters nor whole gradients exist on one device. The graph code (`qwen2`,
//! `logprob`) calls `fetch` before each unit and `grads_ready` after each unit's backward,
//! whichever source it is given; with a resident source the calls are free and the
//! arithmetic is the one it has always been.
use super::grads::Grads;
use super::layout::Unit;
use super::qwen2::Qwen2;
use crate::backend::{Backend, View};
use anyhow::Result;

/// The parameters of one unit: a view of a buffer holding parameters `[base, base + len)`.
pub struct Weights<'a, B: Backend> {
    view: View<'a, B>,
    base: usize,
}

impl<'a, B: Backend> Weights<'a, B> {
    pub fn new(view: View<'a, B>, base: usize) -> Self {
        Weights { view, base }
    }

    /// Parameters `[off, off + len)` (layout offsets). Panics outside the unit: a graph
    /// reading a parameter of a unit it did not fetch is a bug.
    #[track_caller]
    pub fn w(&self, off: usize, len: usize) -> View<'a, B> {
        assert!(off >= self.base, "parameter {off} is before the fetched unit (starts at {})", self.base);
        self.view.slice(off - self.base, len)
    }
}

pub trait ParamSource<B: Backend> {
    /// `unit`'s parameters, readable until the next `fetch` (a sharded source reuses one
    /// staging buffer). On a sharded source this is a collective: every rank fetches the same
    /// units in the same order.
    fn fetch(&self, be: &B, unit: Unit) -> Result<Weights<'_, B>>;
    /// This micro-batch's gradients of `unit` are complete in `grads` (a collective on a
    /// sharded source, which reduces them into its shard and clears the unit's buffer).
    fn grads_ready(&self, be: &B, unit: Unit, grads: &Grads<B>) -> Result<()>;
}

/// Every parameter on the device: `model.params`.
pub struct Resident<'a, B: Backend>(pub &'a Qwen2<B>);

impl<B: Backend> ParamSource<B> for Resident<'_, B> {
    fn fetch(&self, _be: &B, _unit: Unit) -> Result<Weights<'_, B>> {
        Ok(Weights::new(self.0.all_params(), 0))
    }
    fn grads_ready(&self, _be: &B, _unit: Unit, _grads: &Grads<B>) -> Result<()> {
        Ok(())
    }
}
