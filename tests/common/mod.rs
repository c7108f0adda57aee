//! Shared test helpers.
#![allow(dead_code, unused_macros)]

#[cfg(feature = "cuda")]
pub mod cuda;
