//! One criterion bench per backend op and shape, from the op list `tz-engine bench kernels`
//! runs too (`tz_engine::backend::bench_ops`): the CPU backend always, the CUDA backend when a
//! GPU is present (otherwise it prints why it skipped).
//!
//! Throughput: memory-bound ops report bytes moved (criterion prints GB/s); GEMM and attention
//! report floating-point operations as "elements" (criterion's elem/s is then FLOP/s).
//! Shapes: Qwen2.5-1.5B widths (hidden 1536, intermediate 8960, vocab 151,936; attention at
//! head dim 64 and 128). The CUDA side runs 16,384 tokens, the target shape; the CPU
//! side 512 tokens so `cargo bench` stays minutes, not hours, on two cores: the shapes of
//! `tz-engine bench kernels` with its default arguments.
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tz_engine::backend::bench_ops::{self, Shapes, Work};
use tz_engine::backend::cpu::CpuBackend;
use tz_engine::backend::Backend;

const HIDDEN: usize = 1536;
const INTER: usize = 8960;
const VOCAB: usize = 151_936;

fn bench_ops<B: Backend>(c: &mut Criterion, be: &B, gpu: bool) {
    let shapes = Shapes::new(gpu, Shapes::default_tokens(gpu), HIDDEN, INTER, VOCAB).unwrap();
    let mut g = c.benchmark_group(format!("{}_{}tok", be.name(), shapes.tokens));
    g.sample_size(10);
    for op in bench_ops::ops(be, &shapes) {
        g.throughput(match op.work {
            Work::Bytes(b) => Throughput::Bytes(b),
            Work::Flops(f) => Throughput::Elements(f),
        });
        // Allocation and upload outside the timing; each iteration waits for the device.
        let mut run = (op.setup)().unwrap_or_else(|e| panic!("{} {}: setup: {e:#}", op.op, op.shape));
        g.bench_function(BenchmarkId::new(&op.op, &op.shape), |b| {
            b.iter(|| {
                run().unwrap();
                be.synchronize().unwrap();
            })
        });
    }
    g.finish();
}

fn cpu(c: &mut Criterion) {
    bench_ops(c, &CpuBackend::new(), false);
}

#[cfg(feature = "cuda")]
fn cuda(c: &mut Criterion) {
    match tz_engine::backend::cuda::CudaBackend::new(0) {
        Ok(be) => bench_ops(c, &be, true),
        Err(e) => eprintln!("cuda benches skipped: {e:#}"),
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda(_: &mut Criterion) {
    eprintln!("cuda benches skipped: built without the `cuda` feature");
}

criterion_group!(benches, cpu, cuda);
criterion_main!(benches);
