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
use super::lora::Lora;
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
    /// Low-rank adapters added to the base's projections (`super::lora`). With adapters the
    /// base is frozen: a backward pass computes no base gradient, and the `grads` it is given
    /// are the adapters' (in `LoraLayout` order).
    fn adapters(&self) -> Option<&Lora<B>> {
        None
    }
}

/// Another source's parameters with adapters added: the graph of a LoRA model. The same
/// source without the wrapper is the base model (a LoRA run's reference policy).
pub struct WithAdapters<'a, B: Backend> {
    pub base: Box<dyn ParamSource<B> + 'a>,
    pub lora: &'a Lora<B>,
}

impl<'a, B: Backend> WithAdapters<'a, B> {
    /// `model` (every parameter resident) with `lora` added.
    pub fn resident(model: &'a Qwen2<B>, lora: &'a Lora<B>) -> Self {
        WithAdapters { base: Box::new(Resident(model)), lora }
    }
}

impl<B: Backend> ParamSource<B> for WithAdapters<'_, B> {
    fn fetch(&self, be: &B, unit: Unit) -> Result<Weights<'_, B>> {
        self.base.fetch(be, unit)
    }
    fn grads_ready(&self, be: &B, unit: Unit, grads: &Grads<B>) -> Result<()> {
        self.base.grads_ready(be, unit, grads)
    }
    fn adapters(&self) -> Option<&Lora<B>> {
        Some(self.lora)
    }
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

/// The calls `Qwen2::forward_logprobs_from` makes to its source, without computing: a rank
/// with no sequences for a pass that other ranks run still joins a sharded source's
/// collectives, in the same order.
pub fn idle_forward_logprobs<B: Backend>(be: &B, layout: &super::ParamLayout, src: &dyn ParamSource<B>) -> Result<()> {
    src.fetch(be, Unit::Embed)?;
    for l in 0..layout.layers.len() {
        src.fetch(be, Unit::Layer(l))?;
    }
    src.fetch(be, Unit::Head)?;
    src.fetch(be, layout.lm_unit())?;
    Ok(())
}

/// The calls `Qwen2::backward_logprobs_from` makes (`idle_forward_logprobs`'s counterpart):
/// this rank adds nothing to the gradients (its buckets stay zero) but takes part in every
/// reduce-scatter.
pub fn idle_backward_logprobs<B: Backend>(be: &B, layout: &super::ParamLayout, grads: &Grads<B>, src: &dyn ParamSource<B>) -> Result<()> {
    src.fetch(be, layout.lm_unit())?;
    src.fetch(be, Unit::Head)?;
    src.grads_ready(be, Unit::Head, grads)?;
    for l in (0..layout.layers.len()).rev() {
        src.fetch(be, Unit::Layer(l))?;
        src.grads_ready(be, Unit::Layer(l), grads)?;
    }
    src.grads_ready(be, Unit::Embed, grads)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::model::{Keep, LogprobWorkspace, PackedBatch, ParamLayout};
    use std::cell::RefCell;

    /// A resident source that records what it is asked.
    struct Recording<'a>(Resident<'a, CpuBackend>, RefCell<Vec<(bool, Unit)>>);

    impl ParamSource<CpuBackend> for Recording<'_> {
        fn fetch(&self, be: &CpuBackend, unit: Unit) -> Result<Weights<'_, CpuBackend>> {
            self.1.borrow_mut().push((false, unit));
            self.0.fetch(be, unit)
        }
        fn grads_ready(&self, be: &CpuBackend, unit: Unit, grads: &Grads<CpuBackend>) -> Result<()> {
            self.1.borrow_mut().push((true, unit));
            self.0.grads_ready(be, unit, grads)
        }
    }

    #[test]
    fn idle_passes_make_the_calls_of_real_passes() {
        let be = CpuBackend::new();
        for (preset, keep) in [("tiny-2l", Keep::LayerInputs), ("tiny-2l", Keep::AllLayers)] {
            let mut cfg = crate::model::presets::preset(preset).unwrap().cfg;
            for tied in [true, false] {
                cfg.tie_word_embeddings = tied;
                let layout = ParamLayout::new(&cfg);
                let model = Qwen2::from_host(&be, cfg.clone(), &crate::model::presets::init_params(&cfg, 1)).unwrap();
                let b = PackedBatch::from_pairs(&[(vec![1u32, 2, 3], vec![4u32, 5])]).unwrap();
                let mut ws = LogprobWorkspace::new(&be, &cfg, b.n_rows(), b.n_seqs(), b.n_targets(), keep).unwrap();
                ws.load(&be, &cfg, &b).unwrap();
                let grads = Grads::new(&be, &layout, crate::model::GradDtype::F32).unwrap();
                let (real, idle) = (Recording(Resident(&model), RefCell::default()), Recording(Resident(&model), RefCell::default()));
                model.forward_logprobs_from(&be, &ws, true, &real).unwrap();
                idle_forward_logprobs(&be, &layout, &idle).unwrap();
                assert_eq!(real.1.borrow().clone(), idle.1.borrow().clone(), "forward, tied {tied}");
                real.1.borrow_mut().clear();
                idle.1.borrow_mut().clear();
                model.backward_logprobs_from(&be, &ws, &grads, true, &real).unwrap();
                idle_backward_logprobs(&be, &layout, &grads, &idle).unwrap();
                assert_eq!(real.1.borrow().clone(), idle.1.borrow().clone(), "backward, tied {tied}");
                // Every unit's gradients are handed back once per backward.
                assert_eq!(real.1.borrow().iter().filter(|c| c.0).count(), layout.units().len());
            }
        }
    }
}
