//! Qwen2: Hugging Face config and weights, the flat parameter layout, and the forward/backward
//! graph as an explicit sequence of backend calls.
pub mod config;
pub mod weights;
pub mod layout;

pub use config::Qwen2Config;
pub use layout::ParamLayout;
