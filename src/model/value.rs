//! A critic's per-token values and their backward (PPO, `crate::train::critic`): the decoder
//! of a model whose layout has a value head (`ParamLayout::with_value_head`), read out at the
//! rows that predict each response token — the state before the token is generated, as veRL's
//! critic reads `values[:, -response_length - 1 : -1]`:
//!
//!   V[j] = lnf[target_row[j]] · w_score + b_score
//!
//! The values go to the host (the value loss is a few elementwise terms per token), and the
//! backward starts from ∂loss/∂V given on the host. Rows are handled in the logits chunks of
//! the log-prob path, and the value column lives in the logits slot.
use super::grads::Grads;
use super::logprob::LogprobWorkspace;
use super::qwen2::Qwen2;
use crate::backend::Backend;
use anyhow::{anyhow, Result};

impl<B: Backend> Qwen2<B> {
    fn head(&self) -> Result<usize> {
        self.layout.value_head().ok_or_else(|| anyhow!("this model has no value head"))
    }

    /// Values of the loaded batch's targets into `out` (length `ws.n_targets`).
    pub fn forward_values(&self, be: &B, ws: &LogprobWorkspace<B>, out: &mut [f32]) -> Result<()> {
        let head = self.head()?;
        anyhow::ensure!(out.len() == ws.n_targets, "{} values for {} targets", out.len(), ws.n_targets);
        let c = self.cfg.hidden_size;
        let mode = super::qwen2::AttnMode::Packed { seqs: ws.seqs(), store: None };
        self.forward_layers(be, &ws.arena, &ws.plan.fwd, ws.n_rows, &mode)?;
        let (a, p) = (&ws.arena, &ws.plan);
        self.for_each_chunk(ws, |j0, nc| {
            let hsel = a.prefix(p.hsel, nc * c);
            be.gather_rows(hsel, a.prefix(p.fwd.lnf, ws.n_rows * c), a.view(p.target_row).slice(j0, nc), nc, c)?;
            let v = a.prefix(p.logits, nc);
            be.gemm(v, hsel, self.w(head, c), Some(self.w(head + c, 1)), nc, 1, c, false, true, 1.0, 0.0)?;
            be.download_f32(v, &mut out[j0..j0 + nc])
        })
    }

    /// Backward from `dvalues` (∂loss/∂V per target) after `forward_values` on the same batch;
    /// parameter gradients accumulate into `grads`.
    pub fn backward_values(&self, be: &B, ws: &LogprobWorkspace<B>, grads: &Grads<B>, dvalues: &[f32]) -> Result<()> {
        let head = self.head()?;
        anyhow::ensure!(dvalues.len() == ws.n_targets, "{} value gradients for {} targets", dvalues.len(), ws.n_targets);
        let (a, p) = (&ws.arena, &ws.plan);
        let Some(d) = &p.bwd else { anyhow::bail!("this workspace was planned for inference only") };
        let c = self.cfg.hidden_size;
        let dln = a.prefix(d.dln, ws.n_rows * c);
        be.fill(dln, 0.0)?;
        self.for_each_chunk(ws, |j0, nc| {
            let hsel = a.prefix(p.hsel, nc * c);
            be.gather_rows(hsel, a.prefix(p.fwd.lnf, ws.n_rows * c), a.view(p.target_row).slice(j0, nc), nc, c)?;
            let dv = a.prefix(p.logits, nc);
            be.upload_f32(dv, &dvalues[j0..j0 + nc])?;
            // dw += dV^T · h, db += Σ dV, then dh = dV · w, scattered back to the rows.
            be.gemm(grads.view(head, c)?, dv, hsel, None, 1, c, nc, true, false, 1.0, 1.0)?;
            be.bias_bwd(grads.view(head + c, 1)?, dv, nc, 1)?;
            be.gemm(hsel, dv, self.w(head, c), None, nc, c, 1, false, false, 1.0, 0.0)?;
            be.scatter_add_rows(dln, hsel, a.view(p.target_row).slice(j0, nc), nc, c)
        })?;
        self.backward_layers(be, a, &p.fwd, d, grads, ws.n_rows, ws.seqs())
    }
}

#[cfg(test)]
mod tests {
    use crate::backend::cpu::CpuBackend;
    use crate::model::{Grads, Keep, LogprobWorkspace, PackedBatch, ParamLayout, Qwen2};

    /// ∂(Σ_j c_j V_j)/∂θ against central differences, for the head and a trunk weight.
    #[test]
    fn value_gradients_match_finite_differences() {
        let be = CpuBackend::new();
        let cfg = crate::model::presets::preset("tiny-2l").unwrap().cfg;
        let layout = ParamLayout::with_value_head(&cfg);
        let mut host = crate::model::presets::init_params(&cfg, 3);
        let mut rng = crate::rng::Rng::new(9);
        host.extend((0..cfg.hidden_size + 1).map(|_| (rng.normal() * 0.1) as f32));
        let pairs = [(vec![1u32, 5, 9], vec![4u32, 7]), (vec![2u32, 3], vec![8u32, 6, 11])];
        let batch = PackedBatch::from_pairs(&pairs).unwrap();
        let coef: Vec<f32> = (0..batch.n_targets()).map(|j| 0.5 - 0.3 * j as f32).collect();
        let objective = |h: &[f32]| -> f64 {
            let m = Qwen2::from_host_in(&be, cfg.clone(), layout.clone(), h).unwrap();
            let mut ws = LogprobWorkspace::new(&be, &cfg, batch.n_rows(), batch.n_seqs(), batch.n_targets(), Keep::AllLayers).unwrap();
            ws.load(&be, &cfg, &batch).unwrap();
            let mut v = vec![0f32; batch.n_targets()];
            m.forward_values(&be, &ws, &mut v).unwrap();
            v.iter().zip(&coef).map(|(a, b)| (*a as f64) * (*b as f64)).sum()
        };
        let m = Qwen2::from_host_in(&be, cfg.clone(), layout.clone(), &host).unwrap();
        let mut ws = LogprobWorkspace::new(&be, &cfg, batch.n_rows(), batch.n_seqs(), batch.n_targets(), Keep::AllLayers).unwrap();
        ws.load(&be, &cfg, &batch).unwrap();
        let mut v = vec![0f32; batch.n_targets()];
        m.forward_values(&be, &ws, &mut v).unwrap();
        let grads = Grads::new(&be, &layout, crate::model::GradDtype::F32).unwrap();
        grads.zero(&be).unwrap();
        m.backward_values(&be, &ws, &grads, &coef).unwrap();
        let g = grads.to_host(&be).unwrap();
        let head = layout.value_head().unwrap();
        let probe = [
            layout.embed + 4 * cfg.hidden_size + 1,
            head,
            head + 3,
            head + cfg.hidden_size,
            layout.layers[1].down_w + 5,
            layout.layers[0].qkv_w + 17,
            layout.embed + 4 * cfg.hidden_size + 1,
        ];
        for &i in &probe {
            let eps = 1e-3f32;
            let (mut hp, mut hm) = (host.clone(), host.clone());
            hp[i] += eps;
            hm[i] -= eps;
            let fd = (objective(&hp) - objective(&hm)) / (2.0 * eps as f64);
            let err = (g[i] as f64 - fd).abs();
            // An f32 forward differenced at ε = 1e-3 carries ~1e-4 of rounding noise.
            assert!(err <= 2e-3 * fd.abs() + 3e-4, "parameter {i}: analytic {} vs finite difference {fd}", g[i]);
        }
    }
}
