//! AdamW over the flat parameter buffer: one F32 allocation each for gradients and both
//! moments (and, where the backend computes in bf16, the F32 master weights). Weight decay
//! applies to matrices only (`ParamLayout`'s `decay` flags): norms and biases are not decayed,
//! as in the usual AdamW recipes (veRL/transformers' no-decay groups).
//!
//! The moments and master weights are stored in gradient-buffer order (the F32 buffer's
//! parameters, then the act-dtype buffer's, `crate::model::grads`): with all-F32 gradients
//! that is layout order. Checkpoints hold them in layout order.
//!
//! Data parallel (ZeRO-2 style, `crate::dist`): each gradient buffer is split evenly over the
//! N ranks, and a rank's moments and master weights hold only its contiguous part of each.
//! Each update reduce-scatters the gradient buffers (summed in rank order), takes the global
//! norm from the all-reduced per-shard squared norms (so clipping and NaN-skip agree on every
//! rank), updates the parameters of its parts (decay runs intersected with them) and
//! all-gathers the parameters: in place when the gradients are one buffer in layout order,
//! else through the (then unused) gradient buffers, which have the shards' shape. With one
//! rank every collective is a no-op and the update is the single-device one, bit for bit.
//!
//! Sharded per unit (`dist.shard_params`, `crate::train::zero3`): the state is the rank's
//! chunk of each unit, the gradients arrive already reduce-scattered in an accumulator of the
//! same shape, and the parameters the update writes are the rank's bf16 chunks: no collective
//! moves parameters after the update (the next pass gathers what it uses).
use super::zero3::{ShardedParams, UnitShards};
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

/// What an optimizer of whole parameters updates in place: a flat act-dtype buffer of
/// `n_params` parameters in layout order from element 0 (a model's, or a LoRA run's adapters').
pub trait Trainable<B: Backend> {
    fn param_buf(&self) -> &B::Buf;
    fn n_params(&self) -> usize;
    /// The parameters on the host as f32 (where there is no master copy).
    fn params_host(&self, be: &B) -> Result<Vec<f32>>;
}

impl<B: Backend> Trainable<B> for Qwen2<B> {
    fn param_buf(&self) -> &B::Buf {
        debug_assert_eq!(self.all_params().off(), 0, "an optimizer updates a model that owns its buffer");
        &self.params
    }
    fn n_params(&self) -> usize {
        self.layout.total
    }
    fn params_host(&self, be: &B) -> Result<Vec<f32>> {
        self.to_host(be)
    }
}

impl<B: Backend> Trainable<B> for crate::model::Lora<B> {
    fn param_buf(&self) -> &B::Buf {
        &self.params
    }
    fn n_params(&self) -> usize {
        self.layout.total
    }
    fn params_host(&self, be: &B) -> Result<Vec<f32>> {
        self.to_host(be)
    }
}

pub struct Optimizer<B: Backend> {
    pub cfg: AdamWConfig,
    pub grads: Grads<B>,
    /// This rank's part of the Adam moments and master weights (`parts`).
    pub m: B::Buf,
    pub v: B::Buf,
    pub master: Option<B::Buf>,
    /// Updates applied so far (AdamW's bias-correction step count).
    pub step: u32,
    world: usize,
    rank: usize,
    /// Per gradient buffer (F32, then act-dtype): its split over the ranks and where this
    /// rank's part starts in `m`/`v`/`master`.
    parts: Vec<Part>,
    /// Runs of parameters with one decay flag whose gradients share a buffer, and the runs
    /// ignoring decay (used when weight decay is off).
    decay_segments: Vec<Segment>,
    segments: Vec<Segment>,
    /// Parameters of the model.
    n_params: usize,
    /// Sharded per unit: the state's layout, the parameter chunks it updates and the
    /// gradient accumulator (`parts` and the segments are then unused).
    units: Option<UnitState<B>>,
}

struct UnitState<B: Backend> {
    shards: UnitShards,
    params: B::Buf,
    acc: B::Buf,
    /// The layout's (offset, len, decays) runs.
    decay_runs: Vec<(usize, usize, bool)>,
}

#[derive(Clone, Copy, Debug)]
struct Part {
    low: bool,
    shard: ShardLayout,
    base: usize,
}

/// A run of parameters `[param, param + len)` whose state is at `local` of a rank's state,
/// gradients at `at` of buffer `low`, with one decay flag.
#[derive(Clone, Copy, Debug)]
struct Owned {
    param: usize,
    local: usize,
    at: usize,
    len: usize,
    low: bool,
    decays: bool,
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
        Self::sharded(be, model, cfg, grad_dtype, 1, 0)
    }

    /// The optimizer of rank `rank` of `world`: state for its part of each gradient buffer,
    /// the buffers padded to an even split.
    pub fn sharded(be: &B, model: &Qwen2<B>, cfg: AdamWConfig, grad_dtype: GradDtype, world: usize, rank: usize) -> Result<Self> {
        let grads = Grads::padded(be, &model.layout, grad_dtype, world)?;
        Self::with_grads(be, model, cfg, grads, world, rank)
    }

    /// As `sharded`, with gradient buffers placed by the caller (padded for `world`).
    pub fn with_grads(be: &B, model: &dyn Trainable<B>, cfg: AdamWConfig, grads: Grads<B>, world: usize, rank: usize) -> Result<Self> {
        anyhow::ensure!(world > 0 && rank < world, "rank {rank} of a world of {world}");
        let (f, l) = grads.lens();
        let mut parts = vec![Part { low: false, shard: ShardLayout::new(f, world, rank), base: 0 }];
        if l > 0 {
            parts.push(Part { low: true, shard: ShardLayout::new(l, world, rank), base: parts[0].shard.len() });
        }
        let local = parts.iter().map(|p| p.shard.len()).sum::<usize>().max(1);
        let n_params = model.n_params();
        let opt = Optimizer {
            cfg,
            m: be.alloc(DType::F32, local)?,
            v: be.alloc(DType::F32, local)?,
            master: if be.needs_master_weights() { Some(be.alloc(DType::F32, local)?) } else { None },
            step: 0,
            world,
            rank,
            parts,
            decay_segments: grads.segments(true),
            segments: grads.segments(false),
            grads,
            n_params,
            units: None,
        };
        if let Some(mw) = &opt.master {
            for o in opt.owned(rank, false) {
                be.copy(part(mw, o.local, o.len), part(model.param_buf(), o.param, o.len))?;
            }
        }
        Ok(opt)
    }

    /// The optimizer of a model sharded per unit (`crate::train::zero3`): state for this
    /// rank's chunk of each unit, gradients from `grads` (`Grads::in_buckets`) through the
    /// accumulator `accumulator()` that the model's `ShardedSource` adds them to.
    pub fn for_shards(be: &B, model: &ShardedParams<B>, cfg: AdamWConfig, grads: Grads<B>) -> Result<Self> {
        let shards = model.shards.clone();
        let (world, rank) = (shards.world, shards.rank);
        let local = shards.local_len().max(1);
        let f32_buf = || be.alloc(DType::F32, local);
        let units = UnitState { params: model.params.clone(), acc: f32_buf()?, decay_runs: model.layout.decay_ranges(), shards };
        be.fill(View::all(&units.acc), 0.0)?;
        let opt = Optimizer {
            cfg,
            m: f32_buf()?,
            v: f32_buf()?,
            master: if be.needs_master_weights() { Some(f32_buf()?) } else { None },
            step: 0,
            world,
            rank,
            parts: Vec::new(),
            decay_segments: Vec::new(),
            segments: Vec::new(),
            grads,
            n_params: model.layout.total,
            units: Some(units),
        };
        if let (Some(mw), Some(u)) = (&opt.master, &opt.units) {
            be.copy(View::all(mw), View::all(&u.params).slice(0, local))?;
        }
        Ok(opt)
    }

    /// The gradient accumulator of a per-unit sharded optimizer (this rank's chunks).
    pub fn accumulator(&self) -> Option<&B::Buf> {
        self.units.as_ref().map(|u| &u.acc)
    }

    /// The parts of `rank`'s state, by gradient buffer (its parts differ from this rank's only
    /// in where they start).
    fn parts_of(&self, rank: usize) -> Vec<Part> {
        let mut base = 0;
        self.parts
            .iter()
            .map(|p| {
                let shard = ShardLayout::new(p.shard.total, self.world, rank);
                let out = Part { low: p.low, shard, base };
                base += shard.len();
                out
            })
            .collect()
    }

    /// `rank`'s runs of parameters, split by decay flag if `by_decay`.
    fn owned(&self, rank: usize, by_decay: bool) -> Vec<Owned> {
        if let Some(u) = &self.units {
            return owned_of_units(u, rank, by_decay);
        }
        let parts = self.parts_of(rank);
        let segs = if by_decay { &self.decay_segments } else { &self.segments };
        let mut out = Vec::new();
        for s in segs {
            let p = parts.iter().find(|p| p.low == s.low).expect("a part per gradient buffer");
            if let Some((a, len)) = p.shard.intersect(s.at, s.len) {
                out.push(Owned {
                    param: s.off + (a - s.at),
                    local: p.base + (a - p.shard.off()),
                    at: a,
                    len,
                    low: s.low,
                    decays: s.decays,
                });
            }
        }
        out
    }

    fn local_len(&self) -> usize {
        match &self.units {
            Some(u) => u.shards.local_len(),
            None => self.parts.iter().map(|p| p.shard.len()).sum(),
        }
    }

    /// Sets the f32 master weights (backends that keep them) from full-precision host values:
    /// `new` can only copy the act-dtype (bf16) parameters, which would round an f32
    /// checkpoint's weights before training starts. No-op without master weights.
    pub fn init_master(&self, be: &B, host: &[f32]) -> Result<()> {
        if let Some(mw) = &self.master {
            self.upload_state(be, mw, host, "master weights")?;
        }
        Ok(())
    }

    /// This rank's part of a state vector given whole, in layout order.
    fn upload_state(&self, be: &B, buf: &B::Buf, host: &[f32], what: &str) -> Result<()> {
        let total = self.n_params;
        anyhow::ensure!(host.len() == total, "{what}: {} values for {total} parameters", host.len());
        let mut local = vec![0f32; self.local_len()];
        for o in self.owned(self.rank, false) {
            local[o.local..o.local + o.len].copy_from_slice(&host[o.param..o.param + o.len]);
        }
        be.upload_f32(part(buf, 0, local.len()), &local)
    }

    /// The whole state vector of which `buf` holds this rank's part, in layout order (a
    /// collective on more than one rank).
    fn gather(&self, be: &B, buf: &B::Buf, comm: &dyn HostComm) -> Result<Vec<f32>> {
        let mut mine = vec![0f32; self.local_len()];
        be.download_f32(part(buf, 0, mine.len()), &mut mine)?;
        let ranks = if self.world == 1 { vec![mine] } else { crate::dist::all_gather_f32(comm, &mine)? };
        let mut out = vec![0f32; self.n_params];
        for (r, local) in ranks.iter().enumerate() {
            for o in self.owned(r, false) {
                anyhow::ensure!(o.local + o.len <= local.len(), "rank {r} sent {} optimizer values, fewer than its part", local.len());
                out[o.param..o.param + o.len].copy_from_slice(&local[o.local..o.local + o.len]);
            }
        }
        Ok(out)
    }

    /// The parameters at full precision on the host: the master copy where there is one.
    pub fn params_to_host(&self, be: &B, model: &dyn Trainable<B>) -> Result<Vec<f32>> {
        self.params_to_host_in(be, model, &Single)
    }

    /// `params_to_host` on one rank of `comm` (a collective: every rank calls it).
    pub fn params_to_host_in(&self, be: &B, model: &dyn Trainable<B>, comm: &dyn HostComm) -> Result<Vec<f32>> {
        match (&self.master, &self.units) {
            (Some(mw), _) => self.gather(be, mw, comm),
            (None, Some(u)) => self.gather(be, &u.params, comm),
            (None, None) => model.params_host(be),
        }
    }

    pub fn zero_grad(&self, be: &B) -> Result<()> {
        if let Some(u) = &self.units {
            be.fill(View::all(&u.acc), 0.0)?;
        }
        self.grads.zero(be)
    }

    /// Clips by global norm and applies one AdamW update with learning rate `lr`, unless the
    /// gradients are not finite, in which case they are dropped and the step is skipped.
    pub fn step(&mut self, be: &B, model: &dyn Trainable<B>, lr: f32) -> Result<StepOutcome> {
        self.step_in(be, model, lr, &Single)
    }

    /// A gradient buffer (with its padding).
    fn buf(&self, low: bool) -> Result<View<'_, B>> {
        self.grads.buffer(low).ok_or_else(|| anyhow::anyhow!("no act-dtype gradient buffer"))
    }

    /// `step` on one rank of `comm`: every rank calls it with its part of the gradients.
    pub fn step_in(&mut self, be: &B, model: &dyn Trainable<B>, lr: f32, comm: &dyn Comm<B>) -> Result<StepOutcome> {
        self.update(be, Some(model), lr, comm)
    }

    /// `step_in` for a per-unit sharded optimizer, which updates its own parameter chunks.
    pub fn step_shards(&mut self, be: &B, lr: f32, comm: &dyn Comm<B>) -> Result<StepOutcome> {
        anyhow::ensure!(self.units.is_some(), "step_shards on an optimizer of whole parameters");
        self.update(be, None, lr, comm)
    }

    fn update(&mut self, be: &B, model: Option<&dyn Trainable<B>>, lr: f32, comm: &dyn Comm<B>) -> Result<StepOutcome> {
        let whole = || model.ok_or_else(|| anyhow::anyhow!("the optimizer of whole parameters needs the model"));
        anyhow::ensure!(
            comm.world() == self.world && comm.rank() == self.rank,
            "optimizer of rank {}/{} on rank {}/{}",
            self.rank,
            self.world,
            comm.rank(),
            comm.world()
        );
        let sum_squares = if let Some(u) = &self.units {
            // Already reduce-scattered, unit by unit, into the accumulator (padding is zero).
            be.sum_squares(View::all(&u.acc))?
        } else if self.world == 1 {
            self.grads.sum_squares(be)?
        } else {
            let mut s = 0f32;
            for p in &self.parts {
                let buf = self.buf(p.low)?;
                comm.reduce_scatter(be, buf, p.shard.chunk())?;
                if !p.shard.is_empty() {
                    s += be.sum_squares(buf.slice(p.shard.off(), p.shard.len()))?;
                }
            }
            s
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
        for o in self.owned(self.rank, self.cfg.weight_decay != 0.0) {
            let p = AdamWParams { weight_decay: if o.decays { self.cfg.weight_decay } else { 0.0 }, ..p };
            let (params, grad) = match &self.units {
                Some(u) => (part(&u.params, o.local, o.len), part(&u.acc, o.at, o.len)),
                None => (part(whole()?.param_buf(), o.param, o.len), self.buf(o.low)?.slice(o.at, o.len)),
            };
            be.adamw(
                params,
                self.master.as_ref().map(|m| part(m, o.local, o.len)),
                grad,
                part(&self.m, o.local, o.len),
                part(&self.v, o.local, o.len),
                &p,
            )?;
        }
        if self.world > 1 && self.units.is_none() {
            self.gather_params(be, whole()?, comm)?;
        }
        Ok(StepOutcome { grad_norm, skipped: false })
    }

    /// Every rank's updated parameters on every rank.
    fn gather_params(&self, be: &B, model: &dyn Trainable<B>, comm: &dyn Comm<B>) -> Result<()> {
        if self.parts.len() == 1 {
            // One gradient buffer in layout order: the shards are ranges of the parameters.
            return comm.all_gather(be, View::all(model.param_buf()).slice(0, self.grads.lens().0), self.parts[0].shard.chunk());
        }
        // Through the gradient buffers (the gradients are spent): this rank's parameters into
        // its part of each, gather, and every parameter back.
        for p in &self.parts {
            let buf = self.buf(p.low)?;
            for o in self.owned(self.rank, false).iter().filter(|o| o.low == p.low) {
                be.copy(buf.slice(o.at, o.len), part(model.param_buf(), o.param, o.len))?;
            }
            comm.all_gather(be, buf, p.shard.chunk())?;
            for s in self.segments.iter().filter(|s| s.low == p.low) {
                be.copy(part(model.param_buf(), s.off, s.len), buf.slice(s.at, s.len))?;
            }
        }
        Ok(())
    }

    /// (m, v, master) on the host, for checkpoints.
    pub fn state_to_host(&self, be: &B) -> Result<OptimizerState> {
        self.state_to_host_in(be, &Single)
    }

    /// The whole state in layout order, gathered from every rank's part (a collective), so a
    /// checkpoint is the same whatever the world size and resumes at any other.
    pub fn state_to_host_in(&self, be: &B, comm: &dyn HostComm) -> Result<OptimizerState> {
        let m = self.gather(be, &self.m, comm)?;
        let v = self.gather(be, &self.v, comm)?;
        let master = self.master.as_ref().map(|mw| self.gather(be, mw, comm)).transpose()?;
        Ok(OptimizerState { step: self.step, m, v, master })
    }

    /// Loads this rank's part of a whole state.
    pub fn load_state(&mut self, be: &B, s: &OptimizerState) -> Result<()> {
        self.upload_state(be, &self.m, &s.m, "optimizer state (m)")?;
        self.upload_state(be, &self.v, &s.v, "optimizer state (v)")?;
        if let (Some(mw), Some(h)) = (&self.master, &s.master) {
            self.upload_state(be, mw, h, "master weights")?;
        }
        self.step = s.step;
        Ok(())
    }
}

/// `rank`'s runs of parameters of a per-unit sharded state: each unit's chunk, split at the
/// layout's decay runs if `by_decay`. Gradients are at the same local offset as the state.
fn owned_of_units<B: Backend>(u: &UnitState<B>, rank: usize, by_decay: bool) -> Vec<Owned> {
    let everything = [(0, usize::MAX, true)];
    let runs: &[(usize, usize, bool)] = if by_decay { &u.decay_runs } else { &everything };
    let mut out = Vec::new();
    for i in 0..u.shards.units.len() {
        let (off, len) = u.shards.owned(i, rank);
        let base = u.shards.base(i);
        for &(ro, rl, decays) in runs {
            let (a, b) = (off.max(ro), (off + len).min(ro.saturating_add(rl)));
            if a < b {
                let local = base + (a - off);
                out.push(Owned { param: a, local, at: local, len: b - a, low: false, decays });
            }
        }
    }
    out
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

    fn updated(world: usize, steps: usize, clip: f32, grad_dtype: GradDtype) -> (Vec<f32>, OptimizerState, Vec<f32>) {
        let cfg = crate::model::presets::preset("tiny-2l").unwrap().cfg;
        let host = crate::model::presets::init_params(&cfg, 5);
        let adam = AdamWConfig { clip, weight_decay: 0.1, ..AdamWConfig::default() };
        let out = run_ranks(world, std::time::Duration::from_secs(60), |comm| {
            let be = CpuBackend::new();
            let model = Qwen2::from_host(&be, cfg.clone(), &host)?;
            let mut opt = Optimizer::sharded(&be, &model, adam, grad_dtype, world, comm.rank())?;
            let n = model.layout.total;
            let mut norms = vec![];
            for _ in 0..steps {
                // One rank computes the whole batch's gradient (the sum over the ranks');
                // with N ranks each holds its own part.
                let g: Vec<f32> =
                    (0..n).map(|i| if world == 1 { (0..3).map(|r| grad(r, i)).sum() } else { grad(comm.rank(), i) }).collect();
                for s in opt.grads.segments(false) {
                    be.upload_f32(opt.grads.view(s.off, s.len)?, &g[s.off..s.off + s.len])?;
                }
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
        // With bf16 gradients on the CPU the layer matrices' gradients are a second buffer
        // (f32 there), sharded on its own.
        for (clip, dtype) in [(0.0, GradDtype::F32), (0.5, GradDtype::F32), (0.5, GradDtype::Bf16)] {
            let (p1, s1, n1) = updated(1, 3, clip, GradDtype::F32);
            let (p3, s3, n3) = updated(3, 3, clip, dtype);
            // Sums of three terms in another order: equal to rounding.
            let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-5 * x.abs().max(1e-2));
            assert!(close(&n1, &n3), "grad norms {n1:?} vs {n3:?}");
            assert!(n1[0] > 0.5 || clip == 0.0, "the clipping case must clip");
            assert!(close(&p1, &p3), "parameters differ");
            assert!(close(&s1.m, &s3.m) && close(&s1.v, &s3.v));
            assert_eq!((s1.step, s3.step), (3, 3));
        }
        // One rank with two gradient buffers: state kept in buffer order, returned in layout order.
        let (p1, s1, _) = updated(1, 3, 0.5, GradDtype::F32);
        let (pb, sb, _) = updated(1, 3, 0.5, GradDtype::Bf16);
        let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-5 * x.abs().max(1e-2));
        assert!(close(&p1, &pb) && close(&s1.m, &sb.m) && close(&s1.v, &sb.v));
    }
}
