//! Small crate-wide helpers that belong to no stage of the data flow: JSON-lines input,
//! atomic file writes, a stable content hash.
pub mod fs;
pub mod interrupt;
pub mod jsonl;
pub mod limits;
pub mod progress;

/// FNV-1a over `bytes`, continuing from `h`: a stable content key for cache and directory
/// names (not cryptographic). Start from [`FNV_OFFSET`].
pub fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
