//! Fuzzes the reward parser: any bytes as a response (and as a bare expression) must score
//! one of TinyZero's values without panicking.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tz_engine::task::{self, Problem, RewardKind};

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    let cd = Problem::Countdown { nums: vec![44, 19, 35], target: 98 };
    for kind in [RewardKind::Tinyzero, RewardKind::Binary] {
        let a = task::score(&cd, &s, kind).score;
        assert!(a == 0.0 || a == 0.1 || a == 1.0);
        let wrapped = format!("<answer>{s}</answer>");
        let b = task::score(&cd, &wrapped, kind).score;
        assert!(b == 0.0 || b == 0.1 || b == 1.0);
        let m = task::score(&Problem::Multiply { a: 123, b: 456 }, &s, kind).score;
        assert!(m == 0.0 || m == 0.1 || m == 1.0);
    }
    let _ = task::expr::eval(&s);
});
