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
use super::layout::ParamLayout;
use crate::backend::{Backend, Buffer, DType, View};
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
    /// In the act-dtype buffer.
    low: bool,
    /// Offset in its buffer.
    at: usize,
    decay: bool,
}

pub struct Grads<B: Backend> {
    /// F32 gradients of every parameter not in `low`, packed in layout order.
    pub full: B::Buf,
    /// Act-dtype gradients of the layers' weight matrices (`GradDtype::Bf16`), packed.
    pub low: Option<B::Buf>,
    places: Vec<Place>,
    total: usize,
}

/// A run of parameters whose gradients are contiguous in one buffer, with one decay flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub off: usize,
    pub len: usize,
    pub decays: bool,
}

fn places(layout: &ParamLayout, dtype: GradDtype) -> Vec<Place> {
    let (mut full, mut low) = (0, 0);
    let mut out = Vec::with_capacity(layout.entries.len());
    let mut entries: Vec<_> = layout.entries.iter().collect();
    entries.sort_by_key(|e| e.offset);
    for e in entries {
        let is_low = dtype == GradDtype::Bf16 && e.decay && e.name.starts_with("model.layers.");
        let counter = if is_low { &mut low } else { &mut full };
        out.push(Place { off: e.offset, len: e.numel(), low: is_low, at: *counter, decay: e.decay });
        *counter += e.numel();
    }
    out
}

/// Elements of (the F32 buffer, the act-dtype buffer) for this layout and option.
pub fn grad_elements(layout: &ParamLayout, dtype: GradDtype) -> (usize, usize) {
    places(layout, dtype).iter().fold((0, 0), |(f, l), p| if p.low { (f, l + p.len) } else { (f + p.len, l) })
}

impl<B: Backend> Grads<B> {
    pub fn new(be: &B, layout: &ParamLayout, dtype: GradDtype) -> Result<Self> {
        Self::padded(be, layout, dtype, 0)
    }

    /// With the F32 buffer at least `len` elements long when it holds every gradient (the
    /// tail past the layout stays zero): a data-parallel run pads it to an even split over
    /// its ranks for the reduce-scatter (`crate::dist::ShardLayout::padded`).
    pub fn padded(be: &B, layout: &ParamLayout, dtype: GradDtype, len: usize) -> Result<Self> {
        let places = places(layout, dtype);
        let (f, l) = grad_elements(layout, dtype);
        let low = if l > 0 { Some(be.alloc(be.act_dtype(), l)?) } else { None };
        let full = if l == 0 { f.max(len) } else { f };
        Ok(Grads { full: be.alloc(DType::F32, full)?, low, places, total: layout.total })
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
        Ok(View::all(buf).slice(first.at + (off - first.off), len))
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
                _ => out.push((Segment { off: p.off, len: p.len, decays: p.decay }, p.low, p.at + p.len)),
            }
        }
        out.into_iter().map(|(s, _, _)| s).collect()
    }

    pub fn zero(&self, be: &B) -> Result<()> {
        be.fill(View::all(&self.full), 0.0)?;
        if let Some(l) = &self.low {
            be.fill(View::all(l), 0.0)?;
        }
        Ok(())
    }

    /// Σ g² over every parameter (NaN/Inf propagate).
    pub fn sum_squares(&self, be: &B) -> Result<f32> {
        let mut s = be.sum_squares(View::all(&self.full))?;
        if let Some(l) = &self.low {
            s += be.sum_squares(View::all(l))?;
        }
        Ok(s)
    }

    /// Every gradient on the host as f32, in layout order.
    pub fn to_host(&self, be: &B) -> Result<Vec<f32>> {
        let mut full = vec![0f32; self.full.len()];
        be.download_f32(View::all(&self.full), &mut full)?;
        let mut low = vec![0f32; self.low.as_ref().map_or(0, |l| l.len())];
        if let Some(l) = &self.low {
            be.download_f32(View::all(l), &mut low)?;
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
        assert!(std::ptr::eq(g.view(lo.qkv_w, qkvw * c).unwrap().buf(), g.low.as_ref().unwrap()));
        assert!(std::ptr::eq(g.view(lo.qkv_b, qkvw).unwrap().buf(), &g.full));
        assert!(std::ptr::eq(g.view(layout.embed, cfg.vocab_size * c).unwrap().buf(), &g.full));
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
        assert_eq!(f.segments(false), vec![Segment { off: 0, len: layout.total, decays: true }]);
    }
}
