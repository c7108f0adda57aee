//! AdamW over the flat parameter buffer: one F32 allocation each for gradients and both
//! moments (and, where the backend computes in bf16, the F32 master weights). Weight decay
//! applies to matrices only (`ParamLayout`'s `decay` flags): norms and biases are not decayed,
//! as in the usual AdamW recipes (veRL/transformers' no-decay groups).
use crate::backend::{AdamWParams, Backend, Buffer, DType, View};
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
        let n = model.layout.total;
        let grads = Grads::new(be, &model.layout, grad_dtype)?;
        let master = if be.needs_master_weights() {
            let mw = be.alloc(DType::F32, n)?;
            be.copy(View::all(&mw), View::all(&model.params))?;
            Some(mw)
        } else {
            None
        };
        Ok(Optimizer {
            cfg,
            m: be.alloc(DType::F32, n)?,
            v: be.alloc(DType::F32, n)?,
            master,
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
            anyhow::ensure!(host.len() == mw.len(), "master weights: {} values for {} parameters", host.len(), mw.len());
            be.upload_f32(View::all(mw), host)?;
        }
        Ok(())
    }

    /// The parameters at full precision on the host: the master copy where there is one.
    pub fn params_to_host(&self, be: &B, model: &Qwen2<B>) -> Result<Vec<f32>> {
        match &self.master {
            Some(mw) => {
                let mut h = vec![0f32; mw.len()];
                be.download_f32(View::all(mw), &mut h)?;
                Ok(h)
            }
            None => model.to_host(be),
        }
    }

    pub fn zero_grad(&self, be: &B) -> Result<()> {
        self.grads.zero(be)
    }

    /// Clips by global norm and applies one AdamW update with learning rate `lr`, unless the
    /// gradients are not finite, in which case they are dropped and the step is skipped.
    pub fn step(&mut self, be: &B, model: &Qwen2<B>, lr: f32) -> Result<StepOutcome> {
        let grad_norm = self.grads.sum_squares(be)?.sqrt();
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
            let p = AdamWParams { weight_decay: if decays { self.cfg.weight_decay } else { 0.0 }, ..p };
            be.adamw(
                part(&model.params, off, len),
                self.master.as_ref().map(|m| part(m, off, len)),
                self.grads.view(off, len)?,
                part(&self.m, off, len),
                part(&self.v, off, len),
                &p,
            )?;
        }
        Ok(StepOutcome { grad_norm, skipped: false })
    }

    /// (m, v, master) on the host, for checkpoints.
    pub fn state_to_host(&self, be: &B) -> Result<OptimizerState> {
        let n = self.m.len();
        let mut m = vec![0f32; n];
        let mut v = vec![0f32; n];
        be.download_f32(View::all(&self.m), &mut m)?;
        be.download_f32(View::all(&self.v), &mut v)?;
        let master = match &self.master {
            Some(mw) => {
                let mut h = vec![0f32; n];
                be.download_f32(View::all(mw), &mut h)?;
                Some(h)
            }
            None => None,
        };
        Ok(OptimizerState { step: self.step, m, v, master })
    }

    pub fn load_state(&mut self, be: &B, s: &OptimizerState) -> Result<()> {
        anyhow::ensure!(
            s.m.len() == self.m.len() && s.v.len() == self.v.len(),
            "optimizer state does not match the model's parameter count"
        );
        be.upload_f32(View::all(&self.m), &s.m)?;
        be.upload_f32(View::all(&self.v), &s.v)?;
        if let (Some(mw), Some(h)) = (&self.master, &s.master) {
            be.upload_f32(View::all(mw), h)?;
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
