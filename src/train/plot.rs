//! Learning curves as PNG, drawn directly (no plotting dependency): `runs/<name>/curves.png`,
//! one panel per metric, from `metrics.jsonl`.
use super::checkpoint::write_atomic;
use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};

const W: usize = 1200;
const H: usize = 800;
const PANELS: [(&str, &[&str]); 6] = [
    ("reward", &["reward_mean", "eval_reward_mean"]),
    ("solve rate", &["solve_rate", "eval_solve_rate"]),
    ("loss", &["loss"]),
    ("grad norm", &["grad_norm"]),
    ("response length", &["resp_len_mean"]),
    ("step time (s)", &["step_time_s"]),
];
const COLORS: [[u8; 3]; 2] = [[31, 119, 180], [214, 39, 40]];

/// (step, value) series per metric name, read from `metrics.jsonl`.
pub fn read_series(path: &Path, names: &[&str]) -> Result<Vec<Vec<(f64, f64)>>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = vec![vec![]; names.len()];
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| anyhow!("{}:{}: {e}", path.display(), i + 1))?;
        let Some(step) = v.get("step").and_then(|s| s.as_f64()) else { continue };
        for (k, name) in names.iter().enumerate() {
            if let Some(y) = v.get(*name).and_then(|y| y.as_f64()).filter(|y| y.is_finite()) {
                out[k].push((step, y));
            }
        }
    }
    Ok(out)
}

struct Canvas {
    px: Vec<u8>,
}

impl Canvas {
    fn set(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if (0..W as i64).contains(&x) && (0..H as i64).contains(&y) {
            let i = (y as usize * W + x as usize) * 3;
            self.px[i..i + 3].copy_from_slice(&c);
        }
    }
    /// Bresenham line, 2 px thick.
    fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), c: [u8; 3]) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        loop {
            self.set(x, y, c);
            self.set(x, y + 1, c);
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }
    fn rect(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: [u8; 3]) {
        self.line((x0, y0), (x1, y0), c);
        self.line((x0, y1), (x1, y1), c);
        self.line((x0, y0), (x0, y1), c);
        self.line((x1, y0), (x1, y1), c);
    }
}

/// Draws `runs/<name>/curves.png`: each panel's series scaled to its own range, framed, with
/// a light zero/mid grid. Returns the written paths.
pub fn plot_run(run_dir: &Path) -> Result<Vec<PathBuf>> {
    let path = run_dir.join("metrics.jsonl");
    let mut canvas = Canvas { px: vec![255; W * H * 3] };
    let mut any = false;
    for (p, (_title, names)) in PANELS.iter().enumerate() {
        let series = read_series(&path, names)?;
        let (col, row) = (p % 3, p / 3);
        let (x0, y0) = ((col * W / 3 + 30) as i64, (row * H / 2 + 20) as i64);
        let (x1, y1) = (((col + 1) * W / 3 - 10) as i64, ((row + 1) * H / 2 - 20) as i64);
        canvas.rect(x0, y0, x1, y1, [120, 120, 120]);
        canvas.line((x0, (y0 + y1) / 2), (x1, (y0 + y1) / 2), [225, 225, 225]);
        let pts: Vec<&(f64, f64)> = series.iter().flatten().collect();
        if pts.is_empty() {
            continue;
        }
        any = true;
        let (xmin, xmax) = pts.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
        let (ymin, ymax) = pts.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
        let sx = |x: f64| x0 + 4 + ((x - xmin) / (xmax - xmin).max(1e-12) * (x1 - x0 - 8) as f64) as i64;
        let sy = |y: f64| y1 - 4 - ((y - ymin) / (ymax - ymin).max(1e-12) * (y1 - y0 - 8) as f64) as i64;
        for (k, s) in series.iter().enumerate() {
            for w in s.windows(2) {
                canvas.line((sx(w[0].0), sy(w[0].1)), (sx(w[1].0), sy(w[1].1)), COLORS[k % 2]);
            }
            if let [only] = s.as_slice() {
                canvas.rect(sx(only.0) - 2, sy(only.1) - 2, sx(only.0) + 2, sy(only.1) + 2, COLORS[k % 2]);
            }
        }
    }
    if !any {
        bail!("{}: no metrics yet", path.display());
    }
    let mut png_bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut png_bytes, W as u32, H as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().map_err(|e| anyhow!("png: {e}"))?;
        w.write_image_data(&canvas.px).map_err(|e| anyhow!("png: {e}"))?;
    }
    let out = run_dir.join("curves.png");
    write_atomic(&out, &png_bytes)?;
    Ok(vec![out])
}
