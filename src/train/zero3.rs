//! Parameters sharded per unit over data-parallel ranks (`dist.shard_params`, ZeRO-3 /
//! FSDP style), for models whose whole bf16 parameters, reference and gradients do not fit
//! beside each other on one GPU.
//!
//! Every unit of the layout (`ParamLayout::units`: the embedding, each decoder layer, the
//! head) is padded to a multiple of N and split evenly: rank r keeps chunk r of each unit's
//! bf16 parameters, and its optimizer keeps the f32 master weights, Adam moments and a
//! gradient accumulator for the same elements. A forward or backward pass
//! ([`ShardedSource`]) all-gathers a unit into one staging buffer just before it uses it;
//! after a unit's backward its gradients (in a bucket of the training phase, F32) are
//! reduce-scattered, this rank's chunk is added to the accumulator and the bucket is cleared
//! for the next unit. So whole-model gradients never exist on a GPU, and neither do whole
//! parameters during training. Generation needs every layer at every decoded token, so a
//! rollout first gathers the whole model into the rollout phase's region of the shared
//! arena (as veRL copies its FSDP shards into vLLM before generating), where the KV cache
//! lives; the training phase reuses the same memory.
//!
//! The gathers run on the compute stream, one unit at a time: there is no prefetch of the
//! next unit on a second stream yet.
use crate::backend::{Backend, View};
use crate::dist::{Comm, ShardLayout};
use crate::model::{Grads, ParamLayout, ParamSource, Qwen2Config, Unit, Weights};
use anyhow::{bail, Result};

/// How each unit is split over the ranks, and where a rank's chunk of it starts in its
/// local buffers (every rank's local buffers have the same shape: one padded chunk per unit).
#[derive(Clone, Debug, PartialEq)]
pub struct UnitShards {
    pub units: Vec<(Unit, usize, usize)>,
    pub world: usize,
    pub rank: usize,
    /// Local offset of each unit's chunk.
    bases: Vec<usize>,
    n_layers: usize,
}

impl UnitShards {
    pub fn new(layout: &ParamLayout, world: usize, rank: usize) -> Result<Self> {
        anyhow::ensure!(world > 0 && rank < world, "rank {rank} of a world of {world}");
        let units = layout.units();
        let mut bases = Vec::with_capacity(units.len());
        let mut at = 0;
        for u in &units {
            bases.push(at);
            at += u.2.div_ceil(world);
        }
        bases.push(at);
        Ok(UnitShards { units, world, rank, bases, n_layers: layout.layers.len() })
    }

    /// Elements of each rank's local buffers: one padded chunk per unit.
    pub fn local_len(&self) -> usize {
        *self.bases.last().expect("a base per unit and the end")
    }

    pub fn index(&self, u: Unit) -> usize {
        u.index(self.n_layers)
    }

    pub fn chunk(&self, i: usize) -> usize {
        self.units[i].2.div_ceil(self.world)
    }

    /// The unit's length padded to a multiple of the world size.
    pub fn padded(&self, i: usize) -> usize {
        self.chunk(i) * self.world
    }

    pub fn base(&self, i: usize) -> usize {
        self.bases[i]
    }

    /// Rank r's parameters of unit i: (first parameter offset, count; the last ranks may own
    /// fewer than a chunk, or none).
    pub fn owned(&self, i: usize, r: usize) -> (usize, usize) {
        let (_, start, len) = self.units[i];
        let s = ShardLayout::new(len, self.world, r);
        (start + s.off(), s.len())
    }

    /// The largest padded unit other than the embedding, and the embedding's (staging and
    /// bucket sizes).
    pub fn max_padded(&self) -> usize {
        (0..self.units.len()).map(|i| self.padded(i)).max().unwrap_or(1)
    }
}

/// One model's parameters, sharded: this rank's chunk of each unit, in the act dtype.
pub struct ShardedParams<B: Backend> {
    pub cfg: Qwen2Config,
    pub layout: ParamLayout,
    pub shards: UnitShards,
    pub params: B::Buf,
}

impl<B: Backend> ShardedParams<B> {
    /// This rank's chunks of whole host parameters (in layout order); the padding is zero.
    pub fn from_host(be: &B, cfg: Qwen2Config, layout: ParamLayout, host: &[f32], world: usize, rank: usize) -> Result<Self> {
        if host.len() != layout.total {
            bail!("parameter count {} does not match the config's {}", host.len(), layout.total);
        }
        let shards = UnitShards::new(&layout, world, rank)?;
        let mut local = vec![0f32; shards.local_len().max(1)];
        for i in 0..shards.units.len() {
            let (off, len) = shards.owned(i, rank);
            let b = shards.base(i);
            local[b..b + len].copy_from_slice(&host[off..off + len]);
        }
        let params = be.alloc(be.act_dtype(), local.len())?;
        be.upload_f32(View::all(&params), &local)?;
        Ok(ShardedParams { cfg, layout, shards, params })
    }

    /// Unit i whole into `dst` (its padded length): this rank's chunk into place, then an
    /// in-place all-gather (a collective).
    pub fn gather_unit(&self, be: &B, comm: &dyn Comm<B>, i: usize, dst: View<B>) -> Result<()> {
        let s = &self.shards;
        let chunk = s.chunk(i);
        anyhow::ensure!(dst.len() == s.padded(i), "a unit of {} padded elements into {}", s.padded(i), dst.len());
        be.copy(dst.slice(s.rank * chunk, chunk), View::all(&self.params).slice(s.base(i), chunk))?;
        comm.all_gather(be, dst, chunk)
    }

    /// The whole model into `dst` in layout order (`layout.total` elements plus room for the
    /// last unit's padding: `full_len`). Units are gathered in order, so each unit's padding,
    /// which runs into the next unit, is overwritten by it.
    pub fn gather_all(&self, be: &B, comm: &dyn Comm<B>, dst: View<B>) -> Result<()> {
        anyhow::ensure!(dst.len() >= full_len(&self.shards), "the gathered model needs {} elements", full_len(&self.shards));
        for i in 0..self.shards.units.len() {
            let start = self.shards.units[i].1;
            self.gather_unit(be, comm, i, dst.slice(start, self.shards.padded(i)))?;
        }
        Ok(())
    }
}

/// Elements a whole gathered model takes (its layout plus the last unit's padding).
pub fn full_len(s: &UnitShards) -> usize {
    let last = s.units.len() - 1;
    s.units[last].1 + s.padded(last)
}

/// A sharded model as a `ParamSource`: each fetched unit is gathered into `staging`; with an
/// accumulator (the policy in training), each finished unit's gradients are reduce-scattered
/// and this rank's chunk is added to it.
pub struct ShardedSource<'a, B: Backend> {
    pub model: &'a ShardedParams<B>,
    pub comm: &'a dyn Comm<B>,
    pub staging: View<'a, B>,
    pub accumulator: Option<&'a B::Buf>,
}

impl<B: Backend> ParamSource<B> for ShardedSource<'_, B> {
    fn fetch(&self, be: &B, unit: Unit) -> Result<Weights<'_, B>> {
        let s = &self.model.shards;
        let i = s.index(unit);
        let dst = self.staging.slice(0, s.padded(i));
        self.model.gather_unit(be, self.comm, i, dst)?;
        Ok(Weights::new(dst, s.units[i].1))
    }

    fn grads_ready(&self, be: &B, unit: Unit, grads: &Grads<B>) -> Result<()> {
        let Some(acc) = self.accumulator else { bail!("gradients of {unit:?} sent to a model without a gradient accumulator") };
        let s = &self.model.shards;
        let i = s.index(unit);
        let chunk = s.chunk(i);
        let bucket = grads.unit_bucket(s.units[i].1, s.padded(i))?;
        self.comm.reduce_scatter(be, bucket, chunk)?;
        be.add_assign(View::all(acc).slice(s.base(i), chunk), bucket.slice(s.rank * chunk, chunk))?;
        be.fill(bucket, 0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::dist::threads::run_ranks;
    use crate::dist::HostComm;

    #[test]
    fn gathering_every_unit_restores_the_model_on_every_rank() {
        let cfg = crate::model::presets::preset("tiny-2l").unwrap().cfg;
        let layout = ParamLayout::new(&cfg);
        let host = crate::model::presets::init_params(&cfg, 3);
        for world in [1, 2, 3] {
            let out = run_ranks(world, std::time::Duration::from_secs(60), |comm| {
                let be = CpuBackend::new();
                let m = ShardedParams::from_host(&be, cfg.clone(), layout.clone(), &host, world, comm.rank())?;
                // Each rank holds about 1/N of the model.
                assert!(m.shards.local_len() <= layout.total / world + m.shards.units.len());
                let buf = be.alloc(be.act_dtype(), full_len(&m.shards) + 5)?;
                be.fill(View::all(&buf), f32::NAN)?;
                m.gather_all(&be, comm, View::all(&buf))?;
                let mut got = vec![0f32; layout.total];
                be.download_f32(View::all(&buf).slice(0, layout.total), &mut got)?;
                // One unit into a staging buffer, through the source.
                let staging = be.alloc(be.act_dtype(), m.shards.max_padded())?;
                let src = ShardedSource { model: &m, comm, staging: View::all(&staging), accumulator: None };
                let lo = layout.layers[1];
                let w = src.fetch(&be, Unit::Layer(1))?;
                let mut norm = vec![0f32; cfg.hidden_size];
                be.download_f32(w.w(lo.post_norm, cfg.hidden_size), &mut norm)?;
                Ok((got, norm))
            })
            .unwrap();
            for (got, norm) in out {
                assert_eq!(got, host, "world {world}");
                let lo = layout.layers[1];
                assert_eq!(norm, host[lo.post_norm..lo.post_norm + cfg.hidden_size]);
            }
        }
    }

    /// Rank r's gradient of parameter i (ranks differ, so the sum matters).
    fn grad(r: usize, i: usize) -> f32 {
        ((i * 7 + r * 13) % 23) as f32 * 0.01 - 0.1
    }

    #[test]
    fn per_unit_sharded_update_is_the_one_rank_update() {
        use crate::model::arena::ArenaPlan;
        use crate::train::optim::{AdamWConfig, Optimizer};
        let cfg = crate::model::presets::preset("tiny-2l").unwrap().cfg;
        let layout = ParamLayout::new(&cfg);
        let host = crate::model::presets::init_params(&cfg, 5);
        let n = layout.total;
        let adam = AdamWConfig { clip: 0.5, weight_decay: 0.1, ..AdamWConfig::default() };
        // One rank, whole parameters, the gradient summed over `ranks` ranks.
        let reference = |ranks: usize| {
            let whole: Vec<f32> = (0..n).map(|i| (0..ranks).map(|r| grad(r, i)).sum()).collect();
            let be = CpuBackend::new();
            let model = crate::model::Qwen2::from_host(&be, cfg.clone(), &host).unwrap();
            let mut flat = Optimizer::new(&be, &model, adam).unwrap();
            for _ in 0..3 {
                be.upload_f32(flat.grads.view(0, n).unwrap(), &whole).unwrap();
                assert!(!flat.step(&be, &model, 1e-2).unwrap().skipped);
            }
            (whole, model.to_host(&be).unwrap(), flat.state_to_host(&be).unwrap())
        };
        for world in [1, 2, 3] {
            // With one rank, that rank adds three ranks' summed gradient.
            let (whole, p1, s1) = reference(if world == 1 { 3 } else { world });
            let out = run_ranks(world, std::time::Duration::from_secs(60), |comm| {
                let be = CpuBackend::new();
                let m = ShardedParams::from_host(&be, cfg.clone(), layout.clone(), &host, world, comm.rank())?;
                let mut plan = ArenaPlan::new(be.act_dtype());
                let slots = crate::model::grads::plan_buckets(&mut plan, &layout, world);
                let arena = plan.allocate(&be)?;
                let grads = Grads::in_buckets(&arena, &layout, slots)?;
                let mut opt = Optimizer::for_shards(&be, &m, adam, grads)?;
                let staging = be.alloc(be.act_dtype(), m.shards.max_padded())?;
                for _ in 0..3 {
                    opt.zero_grad(&be)?;
                    let src = ShardedSource { model: &m, comm, staging: View::all(&staging), accumulator: opt.accumulator() };
                    // Units finish in backward order, each rank adding its own gradient.
                    for &(u, start, len) in m.shards.units.iter().rev() {
                        let g: Vec<f32> = (start..start + len).map(|i| if world == 1 { whole[i] } else { grad(comm.rank(), i) }).collect();
                        be.upload_f32(opt.grads.view(start, len)?, &g)?;
                        src.grads_ready(&be, u, &opt.grads)?;
                    }
                    assert!(!opt.step_shards(&be, 1e-2, comm)?.skipped);
                }
                let unused = crate::model::Qwen2::from_host(&be, cfg.clone(), &host)?;
                Ok((opt.params_to_host_in(&be, &unused, comm)?, opt.state_to_host_in(&be, comm)?))
            })
            .unwrap();
            // Sums of the ranks' terms in another order: equal to rounding.
            let close =
                |a: &[f32], b: &[f32]| a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-5 * x.abs().max(1e-2));
            for (p, st) in &out {
                assert!(close(&p1, p), "world {world}: parameters differ");
                assert!(close(&s1.m, &st.m) && close(&s1.v, &st.v), "world {world}: moments differ");
                assert_eq!(st.step, 3);
            }
            assert!(p1 != host, "the updates moved the parameters");
        }
    }
}
