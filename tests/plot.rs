//! `plot_run` on synthetic metrics.jsonl files: the PNG decodes at the figure's size with content
//! in the run's colors, the SVG carries the panel and axis labels, and empty, missing, malformed
//! and degenerate (one point, constant, non-finite) metrics are handled.
use std::path::Path;
use tz_engine::train::plot::{plot_run, SIZE};

/// A run of `steps` training steps: the base eval line at step 0, evals every 25 steps, a field
/// the plot does not know, and smooth trends with noise.
fn synthetic_run(steps: usize) -> String {
    let mut lines = vec![r#"{"step":0,"kind":"eval","eval_solve_rate":0.12,"eval_reward_mean":0.2,"eval_format_rate":0.3}"#.to_string()];
    let mut noise = 0x2545_f491_4f6c_dd1du64;
    let mut rand = move || {
        noise ^= noise << 13;
        noise ^= noise >> 7;
        noise ^= noise << 17;
        (noise % 10_000) as f64 / 10_000.0 - 0.5
    };
    for s in 1..=steps {
        let t = s as f64 / steps as f64;
        let solve = (0.12 + 0.5 * (1.0 - (-4.0 * t).exp()) + 0.1 * rand()).clamp(0.0, 1.0);
        let mut v = serde_json::json!({
            "step": s, "reward_mean": solve + 0.05 * rand(), "solve_rate": solve, "format_rate": (0.4 + 0.6 * t).min(1.0),
            "loss": 0.05 * (-2.0 * t).exp() + 0.02 * rand(), "grad_norm": 1.0 + 0.3 * rand(), "lr": 1e-6,
            "entropy_mean": 0.9 - 0.4 * t, "resp_len_mean": 180.0 + 120.0 * t + 20.0 * rand(), "resp_len_max": 512,
            "truncated_frac": 0.05 * t, "step_time_s": 12.0 + rand(), "skipped": false, "some_future_field": {"x": 1},
        });
        if s % 25 == 0 {
            v["eval_solve_rate"] = serde_json::json!(0.12 + 0.45 * (1.0 - (-4.0 * t).exp()));
            v["eval_reward_mean"] = serde_json::json!(0.2 + 0.5 * t);
        }
        lines.push(v.to_string());
    }
    lines.join("\n") + "\n"
}

fn run_dir(metrics: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("metrics.jsonl"), metrics).unwrap();
    dir
}

/// Decodes an 8-bit RGB PNG: (width, height, pixels).
fn decode_png(path: &Path) -> (u32, u32, Vec<u8>) {
    let decoder = png::Decoder::new(std::fs::File::open(path).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.color_type, info.bit_depth), (png::ColorType::Rgb, png::BitDepth::Eight));
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

/// Pixels within `tol` of `rgb` in each channel.
fn count_color(px: &[u8], rgb: [u8; 3], tol: u8) -> usize {
    px.chunks(3).filter(|p| p.iter().zip(rgb).all(|(a, b)| a.abs_diff(b) <= tol)).count()
}

#[test]
fn plots_a_run_as_png_and_svg() {
    let dir = run_dir(&synthetic_run(300));
    let paths = plot_run(dir.path()).unwrap();
    assert_eq!(paths, vec![dir.path().join("curves.png"), dir.path().join("curves.svg")]);

    let (w, h, px) = decode_png(&paths[0]);
    assert_eq!((w, h), SIZE);
    let n = (w * h) as usize;
    let non_white = px.chunks(3).filter(|p| p != &[255, 255, 255]).count();
    assert!(non_white > n / 50 && non_white < n / 2, "{non_white} of {n} pixels drawn");
    assert!(count_color(&px, [31, 119, 180], 8) > 5_000, "too few pixels of the train series");
    assert!(count_color(&px, [214, 39, 40], 8) > 300, "too few pixels of the eval markers");
    assert!(count_color(&px, [40, 40, 40], 10) > 2_000, "too little text");

    let svg = std::fs::read_to_string(&paths[1]).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    for label in [
        "Reward",
        "Solve rate",
        "Format rate",
        "Loss",
        "Gradient norm",
        "Entropy",
        "Response length",
        "Step time",
        "fraction solved",
        "mean tokens",
        "seconds",
        "step",
        "EMA (20 steps)",
        "per step",
        "held-out eval",
        "300 training steps",
    ] {
        assert!(svg.contains(label), "the SVG lacks {label:?}");
    }
    // Tick labels: step ticks and rate ticks.
    for tick in ["\n100\n", "\n250\n", "\n0.4\n"] {
        assert!(svg.contains(tick), "the SVG lacks the tick label {tick:?}");
    }
    // Replotting overwrites in place.
    assert_eq!(plot_run(dir.path()).unwrap(), paths);
}

#[test]
fn missing_or_empty_metrics_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let e = format!("{:#}", plot_run(dir.path()).unwrap_err());
    assert!(e.contains("metrics.jsonl"), "{e}");
    std::fs::write(dir.path().join("metrics.jsonl"), "\n\n").unwrap();
    let e = format!("{:#}", plot_run(dir.path()).unwrap_err());
    assert!(e.contains("no metrics yet"), "{e}");
    std::fs::write(dir.path().join("metrics.jsonl"), "garbage\n{\"no_step\":1}\n").unwrap();
    let e = format!("{:#}", plot_run(dir.path()).unwrap_err());
    assert!(e.contains("no usable metrics") && e.contains("2 malformed"), "{e}");
    assert!(!dir.path().join("curves.png").exists());
}

#[test]
fn malformed_lines_are_skipped_and_counted() {
    let mut text = synthetic_run(40);
    text.insert_str(0, "{\"step\": 1, \"loss\": \n");
    text.push_str("NaN\n{\"step\":41,\"loss\":NaN}\n{\"step\":42,\"loss\":0.01,\"reward_mean\":\"high\"}\n");
    let dir = run_dir(&text);
    let paths = plot_run(dir.path()).unwrap();
    let (w, h, _) = decode_png(&paths[0]);
    assert_eq!((w, h), SIZE);
    let svg = std::fs::read_to_string(&paths[1]).unwrap();
    assert!(svg.contains("3 malformed line(s) skipped"));
}

fn plots_without_panicking(text: &str) {
    let dir = run_dir(text);
    let paths = plot_run(dir.path()).unwrap_or_else(|e| panic!("{e:#}\n{text}"));
    let (w, h, px) = decode_png(&paths[0]);
    assert_eq!((w, h), SIZE);
    assert!(px.chunks(3).any(|p| p != [255, 255, 255]));
}

#[test]
fn plots_the_base_eval_alone() {
    plots_without_panicking(r#"{"step":0,"kind":"eval","eval_solve_rate":0.25,"eval_reward_mean":0.3,"eval_format_rate":0.5}"#);
}

#[test]
fn plots_a_single_step() {
    plots_without_panicking(r#"{"step":7,"reward_mean":1.0,"solve_rate":1.0,"loss":-0.5,"grad_norm":0.0}"#);
}

#[test]
fn plots_constant_series_and_nulls() {
    // serde_json writes NaN and infinities as null.
    let text: Vec<String> =
        (1..=30).map(|s| format!(r#"{{"step":{s},"reward_mean":0.0,"solve_rate":0.0,"loss":2.5,"grad_norm":null}}"#)).collect();
    plots_without_panicking(&text.join("\n"));
}

#[test]
fn plots_huge_values() {
    // ±1e308 is left out (its axis span would overflow); ±1e300 is drawn.
    let text: Vec<String> = (1..=30)
        .map(|s| {
            format!(
                r#"{{"step":{s},"entropy_mean":{},"loss":1e300,"grad_norm":{}}}"#,
                ["1e300", "-1e300", "0.5"][s % 3],
                ["1e308", "-1e308", "2"][s % 3]
            )
        })
        .collect();
    plots_without_panicking(&text.join("\n"));
}

#[test]
fn plots_a_run_without_values() {
    // Panels say there is nothing to show; the figure is still drawn.
    plots_without_panicking(r#"{"step":3,"loss":null}"#);
}

/// With TZ_PLOT_SAMPLE=DIR, writes the 300-step sample figure to DIR to look at.
#[test]
fn sample_figure() {
    let Some(out) = std::env::var_os("TZ_PLOT_SAMPLE") else { return };
    let out = Path::new(&out);
    std::fs::create_dir_all(out).unwrap();
    std::fs::write(out.join("metrics.jsonl"), synthetic_run(300)).unwrap();
    for p in plot_run(out).unwrap() {
        println!("{}", p.display());
    }
}
