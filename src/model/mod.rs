//! Qwen2: Hugging Face config and weights, the flat parameter layout, the activation arena,
//! and the forward/backward graph as an explicit sequence of backend calls.
pub mod arena;
pub mod config;
pub mod grads;
pub mod layout;
pub mod load;
pub mod logprob;
pub mod lora;
pub mod peft;
pub mod presets;
pub mod qwen2;
pub mod source;
pub mod value;
pub mod weights;

pub use config::Qwen2Config;
pub use grads::{GradDtype, Grads};
pub use layout::ParamLayout;
pub use layout::Unit;
pub use logprob::{agent_tokens, LogprobWorkspace, PackedBatch, SeqPair, Trajectory};
pub use lora::{Lora, LoraConfig, LoraLayout};
pub use qwen2::{Keep, Qwen2};
pub use source::{ParamSource, Resident, Weights, WithAdapters};
