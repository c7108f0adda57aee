//! Shared by the loader fuzz targets: the input either is the file (first byte 0) or edits a
//! valid file — (position, byte) triples, and for first bytes ≡ 1 (mod 4) a truncation — so
//! the fuzzer reaches deep into the format instead of failing at its magic bytes.
pub fn file_from_input(valid: &[u8], data: &[u8]) -> Option<Vec<u8>> {
    match data.split_first() {
        Some((0, rest)) => Some(rest.to_vec()),
        Some((mode, rest)) => {
            let mut b = valid.to_vec();
            for e in rest.chunks_exact(3) {
                let at = u16::from_le_bytes([e[0], e[1]]) as usize % b.len();
                b[at] = e[2];
            }
            if mode % 4 == 1 {
                b.truncate(b.len() * (*mode as usize) / 256);
            }
            Some(b)
        }
        None => None,
    }
}
