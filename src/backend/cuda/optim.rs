//! The A*PO and GRPO losses (kernels/loss.cu) and fused AdamW (kernels/adamw.cu) on CUDA.
//! The views were checked against the op's shape by the caller (`backend::check`); what is
//! left here is choosing the kernel and the launch.

use anyhow::{bail, Result};

use super::buffer::vptr;
use super::launch::{args, grid_dim};
use super::CudaBackend;
use crate::backend::{AdamWParams, DType, Seqs, View};

type V<'a> = View<'a, CudaBackend>;

#[allow(clippy::too_many_arguments)]
pub(super) fn apo_loss(
    be: &CudaBackend,
    loss: V,
    dlogp: V,
    logp: V,
    ref_logp: V,
    target: V,
    seqs: Seqs<CudaBackend>,
    beta2: f32,
    grad_scale: f32,
) -> Result<()> {
    let s = seqs.count();
    if s == 0 {
        return Ok(());
    }
    let f = be.func("loss", "apo_loss")?;
    be.launch(
        &f,
        (grid_dim(s, "apo_loss")?, 1, 1),
        (256, 1, 1),
        0,
        args![vptr(&loss), vptr(&dlogp), vptr(&logp), vptr(&ref_logp), vptr(&target), vptr(&seqs.cu_dev), beta2, grad_scale],
    )
}

#[allow(clippy::too_many_arguments)]
pub(super) fn grpo_loss(
    be: &CudaBackend,
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
    let k1 = u32::from(kl == crate::backend::KlEstimator::K1);
    be.flat(
        "loss",
        "grpo_loss",
        n,
        args![
            vptr(&loss),
            vptr(&dlogp),
            vptr(&logp),
            vptr(&old_logp),
            vptr(&ref_logp),
            vptr(&adv),
            vptr(&weight),
            n as u64,
            clip_eps,
            kl_coef,
            k1
        ],
    )
}

pub(super) fn adamw(be: &CudaBackend, params: V, master: Option<V>, grads: V, m: V, v: V, p: &AdamWParams) -> Result<()> {
    let n = params.len();
    let (name, mptr) = match (&master, params.dtype()) {
        (Some(mv), DType::BF16) if grads.dtype() == DType::BF16 => ("adamw_master_bf16_gbf16", vptr(mv)),
        (_, _) if grads.dtype() == DType::BF16 => bail!("cuda adamw: BF16 gradients need BF16 params with an F32 master copy"),
        (Some(mv), DType::BF16) => ("adamw_master_bf16", vptr(mv)),
        (Some(mv), DType::F32) => ("adamw_master_f32", vptr(mv)),
        (None, DType::F32) => ("adamw_f32", 0),
        (None, DType::BF16) => bail!("cuda adamw: BF16 params need an F32 master copy"),
        (_, DType::U32) => bail!("cuda adamw: params are U32"),
    };
    let bc1 = (1.0 - (p.beta1 as f64).powi(p.step as i32)) as f32;
    let bc2_sqrt = (1.0 - (p.beta2 as f64).powi(p.step as i32)).sqrt() as f32;
    be.flat(
        "adamw",
        name,
        n,
        args![
            vptr(&params),
            mptr,
            vptr(&grads),
            vptr(&m),
            vptr(&v),
            n as u64,
            p.lr,
            p.beta1,
            p.beta2,
            p.eps,
            p.weight_decay,
            bc1,
            bc2_sqrt,
            p.grad_scale
        ],
    )
}
