//! The A*PO and GRPO losses and fused AdamW on the CPU.
use super::{f, fm, CpuBackend};
use crate::backend::{AdamWParams, Seqs, View};
use anyhow::{bail, Result};
use rayon::prelude::*;

type V<'a> = View<'a, CpuBackend>;

#[allow(clippy::too_many_arguments)]
pub fn apo_loss(loss: V, dlogp: V, logp: V, ref_logp: V, target: V, seqs: Seqs<CpuBackend>, beta2: f32, grad_scale: f32) -> Result<()> {
    let (ns, nt) = (seqs.count(), seqs.tokens());
    let (lp, rl, tg) = (f(logp, nt, "apo_loss logp")?, f(ref_logp, nt, "apo_loss ref_logp")?, f(target, ns, "apo_loss target")?);
    let (l, dl) = (fm(loss, ns, "apo_loss loss")?, fm(dlogp, nt, "apo_loss dlogp")?);
    for (s, w) in seqs.cu_host.windows(2).enumerate() {
        let (a, b) = (w[0] as usize, w[1] as usize);
        if b < a || b > nt {
            bail!("apo_loss: bad sequence offsets");
        }
        let ratio: f64 = (a..b).map(|t| lp[t] as f64 - rl[t] as f64).sum();
        let d = beta2 as f64 * ratio - tg[s] as f64;
        l[s] = (d * d) as f32;
        let g = (2.0 * beta2 as f64 * d * grad_scale as f64) as f32;
        dl[a..b].iter_mut().for_each(|x| *x = g);
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub fn grpo_loss(
    loss: V,
    dlogp: V,
    logp: V,
    old_logp: V,
    ref_logp: V,
    adv: V,
    weight: V,
    n: usize,
    clip_eps: f32,
    kl_coef: f32,
    kl: crate::backend::KlEstimator,
) -> Result<()> {
    let (lp, old, rl, ad, wt) = (
        f(logp, n, "grpo logp")?,
        f(old_logp, n, "grpo old")?,
        f(ref_logp, n, "grpo ref")?,
        f(adv, n, "grpo adv")?,
        f(weight, n, "grpo weight")?,
    );
    let (l, dl) = (fm(loss, n, "grpo loss")?, fm(dlogp, n, "grpo dlogp")?);
    for t in 0..n {
        let ratio = (lp[t] - old[t]).exp();
        let a = ad[t];
        let unclipped = -a * ratio;
        let clipped = -a * ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps);
        // max of the two losses; the clipped branch has zero gradient where it binds.
        let (pg, dpg) = if unclipped >= clipped { (unclipped, -a * ratio) } else { (clipped, 0.0) };
        let x = rl[t] - lp[t];
        let (k, dk) = match kl {
            crate::backend::KlEstimator::K3 => (x.exp() - x - 1.0, 1.0 - x.exp()),
            crate::backend::KlEstimator::K1 => (-x, 1.0),
        };
        l[t] = wt[t] * (pg + kl_coef * k);
        dl[t] = wt[t] * (dpg + kl_coef * dk);
    }
    Ok(())
}

pub fn adamw(params: V, master: Option<V>, grads: V, m: V, v: V, p: &AdamWParams) -> Result<()> {
    let n = params.len();
    let (g, ms, vs) = (f(grads, n, "adamw grads")?, fm(m, n, "adamw m")?, fm(v, n, "adamw v")?);
    if p.step == 0 {
        bail!("adamw: step counts from 1");
    }
    let bc1 = 1.0 - (p.beta1 as f64).powi(p.step as i32);
    let bc2 = 1.0 - (p.beta2 as f64).powi(p.step as i32);
    let (lr, b1, b2, eps, wd, gs) = (p.lr as f64, p.beta1 as f64, p.beta2 as f64, p.eps as f64, p.weight_decay as f64, p.grad_scale as f64);
    let target = match master {
        Some(mw) => fm(mw, n, "adamw master")?,
        None => fm(params, n, "adamw params")?,
    };
    const CHUNK: usize = 1 << 14;
    target.par_chunks_mut(CHUNK).zip(ms.par_chunks_mut(CHUNK)).zip(vs.par_chunks_mut(CHUNK)).enumerate().for_each(|(c, ((w, m), v))| {
        for i in 0..w.len() {
            let gi = g[c * CHUNK + i] as f64 * gs;
            let mi = b1 * m[i] as f64 + (1.0 - b1) * gi;
            let vi = b2 * v[i] as f64 + (1.0 - b2) * gi * gi;
            m[i] = mi as f32;
            v[i] = vi as f32;
            let wi = w[i] as f64 * (1.0 - lr * wd);
            w[i] = (wi - lr * (mi / bc1) / ((vi / bc2).sqrt() + eps)) as f32;
        }
    });
    if let Some(mw) = master {
        fm(params, n, "adamw params")?.copy_from_slice(f(mw, n, "adamw master")?);
    }
    Ok(())
}
