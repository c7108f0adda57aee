//! AdamW over the flat parameter buffer: one F32 allocation each for gradients and both
//! moments (and, where the backend computes in bf16, the F32 master weights). Weight decay
//! applies to matrices only (`ParamLayout`'s `decay` flags): norms and biases are not decayed,
//! as in the usual AdamW recipes (veRL/transformers' no-decay groups).
//!
//! Data parallel (ZeRO-2 style, `crate::dist`): with a shard layout over N ranks, the moments
//! and master weights hold only this rank's contiguous shard of the flat parameters; each
//! update reduce-scatters the gradients (summed in rank order), takes the global norm from the
//! all-reduced per-shard squared norms (so clipping and NaN-skip agree on every rank), updates
//! the local shard (decay runs intersected with it) and all-gathers the parameters. With one
//! rank every collective is a no-op and the update is the single-device one, bit for bit.
use crate::backend::{AdamWParams, Backend, DType, View};
use crate::dist::{Comm, HostComm, ShardLayout, Single};
use crate::model::grads::{GradDtype, Grads, Segment};
use crate::model::Qwen2;
use anyhow::Result;

#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// Global gradient-norm clip (0 = off).
    pub clip: f32,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        // veRL's actor defaults: betas (0.9, 0.999), eps 1e-8, weight decay 0.01, clip 1.0.
        AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01, clip: 1.0 }
    }
}

pub struct Optimizer<B: Backend> {
    pub cfg: AdamWConfig,
    pub grads: Grads<B>,
    pub m: B::Buf,
    pub v: B::Buf,
    pub master: Option<B::Buf>,
    /// Which part of the flat parameters `m`, `v` and `master` hold.
    pub shard: ShardLayout,
    /// Updates applied so far (AdamW's bias-correction step count).
    pub step: u32,
    /// Runs of parameters with one decay flag whose gradients share a buffer, and the runs
    /// ignoring decay (used when weight decay is off).
    decay_segments: Vec<Segment>,
    segments: Vec<Segment>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepOutcome {
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
    /// The gradients were NaN/Inf: nothing was updated.
    pub skipped: bool,
}

impl<B: Backend> Optimizer<B> {
    pub fn new(be: &B, model: &Qwen2<B>, cfg: AdamWConfig) -> Result<Self> {
        Self::with_grad_dtype(be, model, cfg, GradDtype::F32)
    }

    /// `grad_dtype`: where the layers' matrix gradients accumulate (`crate::model::grads`).
    pub fn with_grad_dtype(be: &B, model: &Qwen2<B>, cfg: AdamWConfig, grad_dtype: GradDtype) -> Result<Self> {
        Self::sharded(be, model, cfg, grad_dtype, ShardLayout::whole(model.layout.total))
    }

    /// The optimizer of one rank of a data-parallel run: state for `shard`'s part only, and
    /// the gradient buffer padded to the layout's even split.
    pub fn sharded(be: &B, model: &Qwen2<B>, cfg: AdamWConfig, grad_dtype: GradDtype, shard: ShardLayout) -> Result<Self> {
        anyhow::ensure!(
            shard.total == model.layout.total,
            "shard layout of {} parameters for a model of {}",
            shard.total,
            model.layout.total
        );
        let grad_dtype = if shard.world > 1 && grad_dtype == GradDtype::Bf16 {
            if be.act_dtype() != DType::F32 {
                anyhow::bail!("train.grad_dtype = \"bf16\" is not supported with more than one rank yet: use \"f32\"");
            }
            // No effect on an f32 backend; one gradient buffer keeps the shards contiguous.
            GradDtype::F32
        } else {
            grad_dtype
        };
        let grads = Grads::padded(be, &model.layout, grad_dtype, shard.padded())?;
        let n = shard.len().max(1);
        let master = if be.needs_master_weights() {
            let mw = be.alloc(DType::F32, n)?;
            if !shard.is_empty() {
                be.copy(View::all(&mw).slice(0, shard.len()), View::all(&model.params).slice(shard.off(), shard.len()))?;
            }
            Some(mw)
        } else {
            None
        };
        Ok(Optimizer {
            cfg,
            m: be.alloc(DType::F32, n)?,
            v: be.alloc(DType::F32, n)?,
            master,
            shard,
            step: 0,
            decay_segments: grads.segments(true),
            segments: grads.segments(false),
            grads,
        })
    }

    /// Sets the f32 master weights (backends that keep them) from full-precision host values:
    /// `new` can only copy the act-dtype (bf16) parameters, which would round an f32
    /// checkpoint's weights before training starts. No-op without master weights.
    pub fn init_master(&self, be: &B, host: &[f32]) -> Result<()> {
        if let Some(mw) = &self.master {
            let s = self.shard;
            anyhow::ensure!(host.len() == s.total, "master weights: {} values for {} parameters", host.len(), s.total);
            if !s.is_empty() {
                be.upload_f32(View::all(mw).slice(0, s.len()), &host[s.off()..s.off() + s.len()])?;
            }
        }
        Ok(())
    }

    /// The parameters at full precision on the host: the master copy where there is one.
    pub fn params_to_host(&self, be: &B, model: &Qwen2<B>) -> Result<Vec<f32>> {
        self.params_to_host_in(be, model, &Single)
    }

    /// `params_to_host` on one rank of `comm` (a collective: every rank calls it).
    pub fn params_to_host_in(&self, be: &B, model: &Qwen2<B>, comm: &dyn HostComm) -> Result<Vec<f32>> {
        match &self.master {
            Some(mw) => self.gather(be, mw, comm),
            None => model.to_host(be),
        }
    }

    /// The full vector of which `buf` holds this rank's shard.
    fn gather(&self, be: &B, buf: &B::Buf, comm: &dyn HostComm) -> Result<Vec<f32>> {
        let mut mine = vec![0f32; self.shard.len()];
        be.download_f32(View::all(buf).slice(0, self.shard.len()), &mut mine)?;
        if self.shard.world == 1 {
            return Ok(mine);
        }
        let full: Vec<f32> = crate::dist::all_gather_f32(comm, &mine)?.concat();
        anyhow::ensure!(full.len() == self.shard.total, "gathered {} of {} optimizer values", full.len(), self.shard.total);
        Ok(full)
    }

    pub fn zero_grad(&self, be: &B) -> Result<()> {
        self.grads.zero(be)
    }

    /// Clips by global norm and applies one AdamW update with learning rate `lr`, unless the
    /// gradients are not finite, in which case they are dropped and the step is skipped.
    pub fn step(&mut self, be: &B, model: &Qwen2<B>, lr: f32) -> Result<StepOutcome> {
        self.step_in(be, model, lr, &Single)
    }

    /// `step` on one rank of `comm`: every rank calls it with its part of the gradients.
    pub fn step_in(&mut self, be: &B, model: &Qwen2<B>, lr: f32, comm: &dyn Comm<B>) -> Result<StepOutcome> {
        let s = self.shard;
        anyhow::ensure!(
            comm.world() == s.world && comm.rank() == s.rank,
            "optimizer shard {}/{} on rank {}/{}",
            s.rank,
            s.world,
            comm.rank(),
            comm.world()
        );
        let sum_squares = if s.world == 1 {
            self.grads.sum_squares(be)?
        } else {
            comm.reduce_scatter(be, View::all(&self.grads.full), s.chunk())?;
            if s.is_empty() {
                0.0
            } else {
                be.sum_squares(self.grads.view(s.off(), s.len())?)?
            }
        };
        let mut total = [sum_squares as f64];
        comm.all_reduce_f64(&mut total)?;
        let grad_norm = (total[0] as f32).sqrt();
        if !grad_norm.is_finite() {
            self.zero_grad(be)?;
            return Ok(StepOutcome { grad_norm, skipped: true });
        }
        let grad_scale = if self.cfg.clip > 0.0 && grad_norm > self.cfg.clip { self.cfg.clip / (grad_norm + 1e-6) } else { 1.0 };
        self.step += 1;
        let p = AdamWParams {
            lr,
            beta1: self.cfg.beta1,
            beta2: self.cfg.beta2,
            eps: self.cfg.eps,
            weight_decay: self.cfg.weight_decay,
            step: self.step,
            grad_scale,
        };
        // AdamW is elementwise, so one call per run of equal decay computes exactly what one
        // call with a per-element decay flag would; without decay, one call per gradient
        // buffer run (one call for all parameters when gradients are all F32).
        let segments = if self.cfg.weight_decay == 0.0 { &self.segments } else { &self.decay_segments };
        for &Segment { off, len, decays } in segments {
            let Some((off, len)) = s.intersect(off, len) else { continue };
            let local = off - s.off();
            let p = AdamWParams { weight_decay: if decays { self.cfg.weight_decay } else { 0.0 }, ..p };
            be.adamw(
                part(&model.params, off, len),
                self.master.as_ref().map(|m| part(m, local, len)),
                self.grads.view(off, len)?,
                part(&self.m, local, len),
                part(&self.v, local, len),
                &p,
            )?;
        }
        comm.all_gather(be, View::all(&model.params), s.chunk())?;
        Ok(StepOutcome { grad_norm, skipped: false })
    }

    /// (m, v, master) on the host, for checkpoints.
    pub fn state_to_host(&self, be: &B) -> Result<OptimizerState> {
        self.state_to_host_in(be, &Single)
    }

    /// The whole state, gathered from every rank's shard (a collective), so a checkpoint is
    /// the same whatever the world size and resumes at any other.
    pub fn state_to_host_in(&self, be: &B, comm: &dyn HostComm) -> Result<OptimizerState> {
        let m = self.gather(be, &self.m, comm)?;
        let v = self.gather(be, &self.v, comm)?;
        let master = self.master.as_ref().map(|mw| self.gather(be, mw, comm)).transpose()?;
        Ok(OptimizerState { step: self.step, m, v, master })
    }

    /// Loads this rank's shard of a whole state.
    pub fn load_state(&mut self, be: &B, s: &OptimizerState) -> Result<()> {
        let sh = self.shard;
        anyhow::ensure!(s.m.len() == sh.total && s.v.len() == sh.total, "optimizer state does not match the model's parameter count");
        let r = sh.off()..sh.off() + sh.len();
        if !sh.is_empty() {
            be.upload_f32(part(&self.m, 0, sh.len()), &s.m[r.clone()])?;
            be.upload_f32(part(&self.v, 0, sh.len()), &s.v[r.clone()])?;
            if let (Some(mw), Some(h)) = (&self.master, &s.master) {
                anyhow::ensure!(h.len() == sh.total, "master weights do not match the model's parameter count");
                be.upload_f32(part(mw, 0, sh.len()), &h[r])?;
            }
        }
        self.step = s.step;
        Ok(())
    }
}

fn part<B: Backend>(buf: &B::Buf, off: usize, len: usize) -> View<'_, B> {
    View::all(buf).slice(off, len)
}

#[derive(Clone, Debug, PartialEq)]
pub struct OptimizerState {
    pub step: u32,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    pub master: Option<Vec<f32>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::dist::threads::run_ranks;

    /// Rank r's gradient of parameter i (ranks differ, so the sum matters).
    fn grad(r: usize, i: usize) -> f32 {
        ((i * 7 + r * 13) % 23) as f32 * 0.01 - 0.1
    }

    fn updated(world: usize, steps: usize, clip: f32) -> (Vec<f32>, OptimizerState, Vec<f32>) {
        let cfg = crate::model::presets::preset("tiny-2l").unwrap().cfg;
        let host = crate::model::presets::init_params(&cfg, 5);
        let adam = AdamWConfig { clip, weight_decay: 0.1, ..AdamWConfig::default() };
        let out = run_ranks(world, std::time::Duration::from_secs(60), |comm| {
            let be = CpuBackend::new();
            let model = Qwen2::from_host(&be, cfg.clone(), &host)?;
            let shard = ShardLayout::new(model.layout.total, world, comm.rank());
            let mut opt = Optimizer::sharded(&be, &model, adam, GradDtype::F32, shard)?;
            let n = model.layout.total;
            let mut norms = vec![];
            for _ in 0..steps {
                // One rank computes the whole batch's gradient (the sum over the ranks');
                // with N ranks each holds its own part.
                let g: Vec<f32> =
                    (0..n).map(|i| if world == 1 { (0..3).map(|r| grad(r, i)).sum() } else { grad(comm.rank(), i) }).collect();
                be.upload_f32(opt.grads.view(0, n)?, &g)?;
                let o = opt.step_in(&be, &model, 1e-2, comm)?;
                assert!(!o.skipped);
                norms.push(o.grad_norm);
            }
            Ok((model.to_host(&be)?, opt.state_to_host_in(&be, comm)?, norms))
        })
        .unwrap();
        // Every rank ends with the same parameters and gathered state.
        for o in &out[1..] {
            assert_eq!(o.0, out[0].0);
            assert_eq!(o.1, out[0].1);
        }
        out.into_iter().next().unwrap()
    }

    #[test]
    fn sharded_update_over_three_ranks_is_the_one_rank_update() {
        for clip in [0.0, 0.5] {
            let (p1, s1, n1) = updated(1, 3, clip);
            let (p3, s3, n3) = updated(3, 3, clip);
            // Sums of three terms in another order: equal to rounding.
            let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-5 * x.abs().max(1e-2));
            assert!(close(&n1, &n3), "grad norms {n1:?} vs {n3:?}");
            assert!(n1[0] > 0.5 || clip == 0.0, "the clipping case must clip");
            assert!(close(&p1, &p3), "parameters differ");
            assert!(close(&s1.m, &s3.m) && close(&s1.v, &s3.v));
            assert_eq!((s1.step, s3.step), (3, 3));
        }
    }
}
