//! Choosing a backend at run time. Model code is generic over `Backend`; commands pick one
//! with `with_backend!`, which monomorphizes the body once per backend.

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    #[default]
    Cpu,
    Cuda,
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
        })
    }
}

/// `with_backend!(device, be => body)`: runs `body` with `be` bound to the chosen backend.
/// Evaluates to the body's value; the body must return `anyhow::Result<_>`.
#[macro_export]
macro_rules! with_backend {
    ($device:expr, $be:ident => $body:expr) => {
        match $device {
            $crate::backend::Device::Cpu => {
                let $be = $crate::backend::cpu::CpuBackend::new();
                $body
            }
            $crate::backend::Device::Cuda => $crate::with_cuda!($be => $body),
        }
    };
}

#[cfg(feature = "cuda")]
#[macro_export]
#[doc(hidden)]
macro_rules! with_cuda {
    ($be:ident => $body:expr) => {{
        let $be = $crate::backend::cuda::CudaBackend::new(0)?;
        $body
    }};
}

#[cfg(not(feature = "cuda"))]
#[macro_export]
#[doc(hidden)]
macro_rules! with_cuda {
    ($be:ident => $body:expr) => {
        Err(anyhow::anyhow!("--device cuda: this build has no CUDA support (rebuild with the `cuda` feature)"))
    };
}
