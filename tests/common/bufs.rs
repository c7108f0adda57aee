//! Host ↔ backend buffers for tests, generic over `Backend`.
use tz_engine::backend::{Backend, Buffer, DType, View};

/// A buffer holding `data` (F32 or BF16, rounded on upload); at least one element long.
pub fn up<B: Backend>(be: &B, dt: DType, data: &[f32]) -> B::Buf {
    let b = be.alloc(dt, data.len().max(1)).unwrap();
    be.upload_f32(View::all(&b).slice(0, data.len()), data).unwrap();
    b
}

pub fn up_u32<B: Backend>(be: &B, data: &[u32]) -> B::Buf {
    let b = be.alloc(DType::U32, data.len().max(1)).unwrap();
    be.upload_u32(View::all(&b).slice(0, data.len()), data).unwrap();
    b
}

/// An output buffer an op must overwrite: NaN, or `u32::MAX` for ids, so unwritten elements
/// cannot pass.
pub fn poisoned<B: Backend>(be: &B, dt: DType, n: usize) -> B::Buf {
    let b = be.alloc(dt, n).unwrap();
    match dt {
        DType::U32 => be.upload_u32(View::all(&b), &vec![u32::MAX; n]).unwrap(),
        _ => be.fill(View::all(&b), f32::NAN).unwrap(),
    }
    b
}

pub fn down<B: Backend>(be: &B, b: &B::Buf) -> Vec<f32> {
    let mut v = vec![0f32; b.len()];
    be.download_f32(View::all(b), &mut v).unwrap();
    v
}

pub fn down_u32<B: Backend>(be: &B, b: &B::Buf) -> Vec<u32> {
    let mut v = vec![0u32; b.len()];
    be.download_u32(View::all(b), &mut v).unwrap();
    v
}
