//! Parameter gradients, addressed by parameter offset (`ParamLayout`), in one or two buffers.
//!
//! By default every gradient is F32, in one buffer in layout order. With `GradDtype::Bf16` the
//! decoder layers' weight matrices (q/k/v, o, gate/up, down: about 90% of a Qwen2.5 model's
//! parameters) get a buffer in the backend's act dtype instead — bf16 on CUDA, which halves
//! their 4 bytes per parameter. Those gradients are only ever written by GEMMs with β = 1,
//! which add the new product to the stored value in fp32 in their epilogue and round once per
//! micro-batch; the embedding (and a tied lm_head), norms and biases, whose gradients are
//! accumulated by atomics and reductions, stay F32. On the CPU the act dtype is F32, so the
//! option changes nothing there.
//!
//! The buffers are allocations of their own (`Grads::new`) or slots of the activation arena's
//! training phase (`Grads::in_arena`): gradients exist only between a mini-batch's first
//! backward and its optimizer update, never while the rollout phase uses the same memory.
use super::arena::{Arena, ArenaPlan, Slot};
use super::layout::ParamLayout;
use crate::backend::{Backend, DType, View};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// `train.grad_dtype`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GradDtype {
    #[default]
    F32,
    /// The decoder layers' weight matrices in the act dtype (bf16 on CUDA).
    Bf16,
}

/// Where one layout entry's gradient lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Place {
    /// Parameter offset and length.
    off: usize,
    len: usize,
    /// In the second buffer (the act-dtype one; a sharded model's shared unit bucket).
    low: bool,
    /// Offset in its buffer.
    at: usize,
    decay: bool,
}

/// A range of one buffer (a whole allocation or an arena slot).
struct Region<B: Backend> {
    buf: B::Buf,
    off: usize,
    len: usize,
}

impl<B: Backend> Region<B> {
    fn view(&self) -> View<'_, B> {
        View::all(&self.buf).slice(self.off, self.len)
    }
}

/// Where `Grads::in_arena` places its buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GradSlots {
    full: Slot,
    low: Option<Slot>,
    dtype: GradDtype,
    world: usize,
}

pub struct Grads<B: Backend> {
    /// F32 gradients of every parameter not in `low`, packed in layout order.
    full: Region<B>,
    /// Act-dtype gradients of the layers' weight matrices (`GradDtype::Bf16`), packed.
    low: Option<Region<B>>,
    places: Vec<Place>,
    total: usize,
    /// Gradient elements in (`full`, `low`), without padding.
    lens: (usize, usize),
}

/// A run of parameters whose gradients are contiguous in one buffer, with one decay flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub off: usize,
    pub len: usize,
    pub decays: bool,
    /// In the act-dtype buffer (`Grads::low`), at element `at` of its buffer.
    pub low: bool,
    pub at: usize,
}

fn places(layout: &ParamLayout, dtype: GradDtype) -> Vec<Place> {
    places_of(&layout.entries, dtype)
}

fn places_of(entries: &[super::layout::Entry], dtype: GradDtype) -> Vec<Place> {
    let (mut full, mut low) = (0, 0);
    let mut out = Vec::with_capacity(entries.len());
    let mut entries: Vec<_> = entries.iter().collect();
    entries.sort_by_key(|e| e.offset);
    for e in entries {
        let is_low = dtype == GradDtype::Bf16 && e.decay && e.name.starts_with("model.layers.");
        let counter = if is_low { &mut low } else { &mut full };
        out.push(Place { off: e.offset, len: e.numel(), low: is_low, at: *counter, decay: e.decay });
        *counter += e.numel();
    }
    out
}

/// Plans the buffers `Grads::in_arena` places as slots of phase plan `p`, padded for `world`.
pub fn plan_slots(p: &mut ArenaPlan, layout: &ParamLayout, dtype: GradDtype, world: usize) -> GradSlots {
    let (f, l) = grad_elements(layout, dtype);
    let full = p.f32("gradients", padded_len(f, world));
    let low = (l > 0).then(|| p.act("gradients", padded_len(l, world)));
    GradSlots { full, low, dtype, world }
}

fn padded_len(n: usize, world: usize) -> usize {
    n.div_ceil(world.max(1)) * world.max(1)
}

/// Elements of (the F32 buffer, the act-dtype buffer) for this layout and option.
pub fn grad_elements(layout: &ParamLayout, dtype: GradDtype) -> (usize, usize) {
    places(layout, dtype).iter().fold((0, 0), |(f, l), p| if p.low { (f, l + p.len) } else { (f + p.len, l) })
}

/// The gradient buckets of a model sharded per unit (`crate::train::zero3`), in the training
/// phase of the shared region: F32, one for the embedding unit (a tied lm_head's gradient
/// arrives at the start of a backward, the embedding's at its end) and one that every other
/// unit uses in turn (each is reduce-scattered and cleared right after its backward), each
/// padded to a multiple of `world`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BucketSlots {
    embed: Slot,
    shared: Slot,
}

fn unit_padded(len: usize, world: usize) -> usize {
    padded_len(len, world)
}

/// Plans `Grads::in_buckets`'s slots.
pub fn plan_buckets(p: &mut ArenaPlan, layout: &ParamLayout, world: usize) -> BucketSlots {
    let units = layout.units();
    let embed = p.f32("gradients (one unit at a time)", unit_padded(units[0].2, world));
    let other = units[1..].iter().map(|u| unit_padded(u.2, world)).max().unwrap_or(1);
    BucketSlots { embed, shared: p.f32("gradients (one unit at a time)", other) }
}

/// Bytes of `plan_buckets`'s two buffers.
pub fn bucket_elements(layout: &ParamLayout, world: usize) -> (usize, usize) {
    let units = layout.units();
    (unit_padded(units[0].2, world), units[1..].iter().map(|u| unit_padded(u.2, world)).max().unwrap_or(1))
}

impl<B: Backend> Grads<B> {
    /// Gradient buckets (`BucketSlots`): a parameter's gradient is at its offset within its
    /// unit, in the embedding bucket or the shared one.
    pub fn in_buckets(arena: &Arena<B>, layout: &ParamLayout, slots: BucketSlots) -> Result<Self> {
        let region = |s: Slot| {
            let v = arena.view(s);
            Region { buf: v.buf().clone(), off: v.off(), len: v.len() }
        };
        let units = layout.units();
        let mut entries: Vec<_> = layout.entries.iter().collect();
        entries.sort_by_key(|e| e.offset);
        let mut places = Vec::with_capacity(entries.len());
        for e in entries {
            let (u, start, len) = *units.iter().find(|u| u.1 <= e.offset && e.offset < u.1 + u.2).expect("units tile the layout");
            anyhow::ensure!(e.offset + e.numel() <= start + len, "{} spans two units", e.name);
            let shared = u != crate::model::Unit::Embed;
            let cap = if shared { slots.shared.len } else { slots.embed.len };
            anyhow::ensure!(len <= cap, "gradient buckets planned for another model");
            places.push(Place { off: e.offset, len: e.numel(), low: shared, at: e.offset - start, decay: e.decay });
        }
        Ok(Grads {
            full: region(slots.embed),
            low: Some(region(slots.shared)),
            places,
            total: layout.total,
            lens: (slots.embed.len, slots.shared.len),
        })
    }

    /// The `padded` elements of the bucket that holds the unit starting at parameter `start`
    /// (`in_buckets` gradients): the unit's gradients, then its padding.
    pub fn unit_bucket(&self, start: usize, padded: usize) -> Result<View<'_, B>> {
        let first = self.view(start, 1)?;
        View::new(first.buf(), first.off(), padded)
    }

    pub fn new(be: &B, layout: &ParamLayout, dtype: GradDtype) -> Result<Self> {
        Self::padded(be, layout, dtype, 1)
    }

    /// `for_adapters` in a slot of `arena` (`crate::train::plan`'s adapter gradients).
    pub fn adapters_in_arena(arena: &Arena<B>, lora: &super::lora::LoraLayout, slot: Slot) -> Result<Self> {
        let n = lora.total;
        let view = arena.view(slot);
        if view.len() < n {
            bail!("the adapter gradient slot holds {} elements, fewer than the adapters' {n}", view.len());
        }
        let region = Region { buf: view.buf().clone(), off: view.off(), len: view.len() };
        Ok(Grads { full: region, low: None, places: places_of(&lora.entries, GradDtype::F32), total: n, lens: (n, 0) })
    }

    /// F32 gradients of low-rank adapters (`super::lora`), in their layout's order.
    pub fn for_adapters(be: &B, lora: &super::lora::LoraLayout) -> Result<Self> {
        let places = places_of(&lora.entries, GradDtype::F32);
        let n = lora.total;
        Ok(Grads { full: Region { buf: be.alloc(DType::F32, n.max(1))?, off: 0, len: n }, low: None, places, total: n, lens: (n, 0) })
    }

    /// With each buffer padded to a multiple of `world` elements (the tail stays zero): a
    /// data-parallel run splits each evenly over its ranks for the reduce-scatter
    /// (`crate::dist::ShardLayout::padded`).
    pub fn padded(be: &B, layout: &ParamLayout, dtype: GradDtype, world: usize) -> Result<Self> {
        let places = places(layout, dtype);
        let (f, l) = grad_elements(layout, dtype);
        let own = |dtype: DType, len: usize| -> Result<Region<B>> { Ok(Region { buf: be.alloc(dtype, len)?, off: 0, len }) };
        let low = if l > 0 { Some(own(be.act_dtype(), padded_len(l, world))?) } else { None };
        Ok(Grads { full: own(DType::F32, padded_len(f, world))?, low, places, total: layout.total, lens: (f, l) })
    }

    /// The buffers in `arena`'s slots (planned by `plan_slots` for this layout, or for a
    /// larger one: a PPO critic's gradients use the policy's slots after the policy's update).
    pub fn in_arena(arena: &Arena<B>, layout: &ParamLayout, slots: GradSlots) -> Result<Self> {
        let (f, l) = grad_elements(layout, slots.dtype);
        // Each buffer is this layout's padded length, a prefix of its slot.
        let region = |s: Slot, need: usize| {
            let v = arena.view(s);
            Region { buf: v.buf().clone(), off: v.off(), len: padded_len(need, slots.world).min(v.len()) }
        };
        anyhow::ensure!(slots.full.len >= f && slots.low.map_or(0, |s| s.len) >= l, "gradient slots planned for another model");
        Ok(Grads {
            full: region(slots.full, f),
            low: slots.low.map(|s| region(s, l)),
            places: places(layout, slots.dtype),
            total: layout.total,
            lens: (f, l),
        })
    }

    /// Gradient elements of the F32 buffer and of the act-dtype one (0 if none), unpadded.
    pub fn lens(&self) -> (usize, usize) {
        self.lens
    }

    /// The act-dtype buffer when `low`, else the F32 one, with its padding.
    pub fn buffer(&self, low: bool) -> Option<View<'_, B>> {
        if low {
            self.low.as_ref().map(Region::view)
        } else {
            Some(self.full.view())
        }
    }

    /// The gradient of parameters `[off, off + len)`: a range inside one buffer (one tensor,
    /// or adjacent tensors of the same kind such as the fused q|k|v block).
    pub fn view(&self, off: usize, len: usize) -> Result<View<'_, B>> {
        let i = self.places.partition_point(|p| p.off + p.len <= off);
        let Some(first) = self.places.get(i).filter(|p| p.off <= off) else { bail!("no gradient at parameter offset {off}") };
        let (mut end, mut next_at) = (first.off + first.len, first.at + first.len);
        for p in &self.places[i + 1..] {
            if end >= off + len {
                break;
            }
            if p.low != first.low || p.at != next_at || p.off != end {
                bail!("parameters {off}..{} span gradient buffers", off + len);
            }
            end += p.len;
            next_at += p.len;
        }
        if end < off + len {
            bail!("parameters {off}..{} run past the layout", off + len);
        }
        let buf = if first.low { self.low.as_ref().expect("low places have a buffer") } else { &self.full };
        Ok(buf.view().slice(first.at + (off - first.off), len))
    }

    /// Maximal runs of parameters contiguous in one gradient buffer; with `split_decay`, runs
    /// also end where the weight-decay flag changes.
    pub fn segments(&self, split_decay: bool) -> Vec<Segment> {
        let mut out: Vec<(Segment, bool, usize)> = Vec::new();
        for p in &self.places {
            match out.last_mut() {
                Some((s, low, next_at))
                    if *low == p.low && *next_at == p.at && s.off + s.len == p.off && (!split_decay || s.decays == p.decay) =>
                {
                    s.len += p.len;
                    *next_at += p.len;
                }
                _ => out.push((Segment { off: p.off, len: p.len, decays: p.decay, low: p.low, at: p.at }, p.low, p.at + p.len)),
            }
        }
        out.into_iter().map(|(s, _, _)| s).collect()
    }

    pub fn zero(&self, be: &B) -> Result<()> {
        be.fill(self.full.view(), 0.0)?;
        if let Some(l) = &self.low {
            be.fill(l.view(), 0.0)?;
        }
        Ok(())
    }

    /// Σ g² over every parameter (NaN/Inf propagate).
    pub fn sum_squares(&self, be: &B) -> Result<f32> {
        let mut s = be.sum_squares(self.full.view())?;
        if let Some(l) = &self.low {
            s += be.sum_squares(l.view())?;
        }
        Ok(s)
    }

    /// Every gradient on the host as f32, in layout order.
    pub fn to_host(&self, be: &B) -> Result<Vec<f32>> {
        let mut full = vec![0f32; self.full.len];
        be.download_f32(self.full.view(), &mut full)?;
        let mut low = vec![0f32; self.low.as_ref().map_or(0, |l| l.len)];
        if let Some(l) = &self.low {
            be.download_f32(l.view(), &mut low)?;
        }
        let mut out = vec![0f32; self.total];
        for p in &self.places {
            let src = if p.low { &low } else { &full };
            out[p.off..p.off + p.len].copy_from_slice(&src[p.at..p.at + p.len]);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;

    #[test]
    fn bf16_option_moves_layer_matrices_only() {
        let be = CpuBackend::new();
        let cfg = crate::model::presets::preset("tiny-2l").unwrap().cfg;
        let layout = ParamLayout::new(&cfg);
        let g = Grads::new(&be, &layout, GradDtype::Bf16).unwrap();
        let (full, low) = grad_elements(&layout, GradDtype::Bf16);
        assert_eq!(full + low, layout.total);
        let lo = &layout.layers[0];
        let (c, qkvw) = (cfg.hidden_size, cfg.attn_shape().qkv_width());
        // The fused q|k|v block is one range of the low buffer; its bias and the norms are f32.
        assert_eq!(g.view(lo.qkv_w, qkvw * c).unwrap().dtype(), be.act_dtype());
        assert!(std::ptr::eq(g.view(lo.qkv_w, qkvw * c).unwrap().buf(), g.buffer(true).unwrap().buf()));
        assert!(std::ptr::eq(g.view(lo.qkv_b, qkvw).unwrap().buf(), g.buffer(false).unwrap().buf()));
        assert!(std::ptr::eq(g.view(layout.embed, cfg.vocab_size * c).unwrap().buf(), g.buffer(false).unwrap().buf()));
        // A range across the two buffers is refused, not silently misaddressed.
        assert!(g.view(lo.qkv_w, qkvw * c + 1).is_err());
        // Values written through views come back in layout order.
        for (i, e) in layout.entries.iter().enumerate() {
            be.fill(g.view(e.offset, e.numel()).unwrap(), i as f32).unwrap();
        }
        let host = g.to_host(&be).unwrap();
        for (i, e) in layout.entries.iter().enumerate() {
            assert!(host[e.offset..e.offset + e.numel()].iter().all(|&x| x == i as f32), "{}", e.name);
        }
        // Segments cover every parameter once, each inside one buffer.
        let segs = g.segments(true);
        assert_eq!(segs.iter().map(|s| s.len).sum::<usize>(), layout.total);
        for s in &segs {
            g.view(s.off, s.len).unwrap();
        }
        // All-f32 gradients without decay splitting are one segment.
        let f = Grads::new(&be, &layout, GradDtype::F32).unwrap();
        assert_eq!(f.segments(false), vec![Segment { off: 0, len: layout.total, decays: true, low: false, at: 0 }]);
    }
}
