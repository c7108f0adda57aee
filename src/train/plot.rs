//! Learning curves as PNG, drawn directly (no plotting dependency): `runs/<name>/curves.png`,
//! one panel per metric, from `metrics.jsonl`.
use crate::util::fs::write_atomic;
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


/// A 5×7 bitmap font (rows top to bottom, 5 bits each, MSB left) for titles and tick labels.
fn glyph(c: char) -> [u8; 7] {
    match c.to_ascii_lowercase() {
        '0' => [14, 17, 19, 21, 25, 17, 14],
        '1' => [4, 12, 4, 4, 4, 4, 14],
        '2' => [14, 17, 1, 2, 4, 8, 31],
        '3' => [30, 1, 1, 14, 1, 1, 30],
        '4' => [2, 6, 10, 18, 31, 2, 2],
        '5' => [31, 16, 30, 1, 1, 17, 14],
        '6' => [6, 8, 16, 30, 17, 17, 14],
        '7' => [31, 1, 2, 4, 8, 8, 8],
        '8' => [14, 17, 17, 14, 17, 17, 14],
        '9' => [14, 17, 17, 15, 1, 2, 12],
        '.' => [0, 0, 0, 0, 0, 12, 12],
        '-' => [0, 0, 0, 31, 0, 0, 0],
        '(' => [2, 4, 8, 8, 8, 4, 2],
        ')' => [8, 4, 2, 2, 2, 4, 8],
        ':' => [0, 12, 12, 0, 12, 12, 0],
        'a' => [0, 0, 14, 1, 15, 17, 15],
        'b' => [16, 16, 22, 25, 17, 17, 30],
        'c' => [0, 0, 14, 16, 16, 17, 14],
        'd' => [1, 1, 13, 19, 17, 17, 15],
        'e' => [0, 0, 14, 17, 31, 16, 14],
        'f' => [6, 9, 8, 28, 8, 8, 8],
        'g' => [0, 15, 17, 17, 15, 1, 14],
        'h' => [16, 16, 22, 25, 17, 17, 17],
        'i' => [4, 0, 12, 4, 4, 4, 14],
        'k' => [16, 16, 18, 20, 24, 20, 18],
        'l' => [12, 4, 4, 4, 4, 4, 14],
        'm' => [0, 0, 26, 21, 21, 17, 17],
        'n' => [0, 0, 22, 25, 17, 17, 17],
        'o' => [0, 0, 14, 17, 17, 17, 14],
        'p' => [0, 0, 30, 17, 30, 16, 16],
        'r' => [0, 0, 22, 25, 16, 16, 16],
        's' => [0, 0, 14, 16, 14, 1, 30],
        't' => [8, 8, 28, 8, 8, 9, 6],
        'u' => [0, 0, 17, 17, 17, 19, 13],
        'v' => [0, 0, 17, 17, 17, 10, 4],
        'w' => [0, 0, 17, 17, 21, 21, 10],
        'x' => [0, 0, 17, 10, 4, 10, 17],
        'y' => [0, 0, 17, 17, 15, 1, 14],
        _ => [0; 7],
    }
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
    /// Text at (x, y), 2× scaled glyphs.
    fn text(&mut self, x: i64, y: i64, s: &str, c: [u8; 3]) {
        for (k, ch) in s.chars().enumerate() {
            let g = glyph(ch);
            for (r, bits) in g.iter().enumerate() {
                for col in 0..5 {
                    if bits & (16 >> col) != 0 {
                        let (px, py) = (x + (k as i64) * 12 + col * 2, y + r as i64 * 2);
                        for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                            self.set(px + dx, py + dy, c);
                        }
                    }
                }
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
    for (p, (title, names)) in PANELS.iter().enumerate() {
        let series = read_series(&path, names)?;
        let (col, row) = (p % 3, p / 3);
        let (x0, y0) = ((col * W / 3 + 20) as i64, (row * H / 2 + 40) as i64);
        let (x1, y1) = (((col + 1) * W / 3 - 20) as i64, ((row + 1) * H / 2 - 30) as i64);
        canvas.text(x0, y0 - 24, title, [40, 40, 40]);
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
        let fmt = |v: f64| if v.abs() >= 1000.0 || (v != 0.0 && v.abs() < 0.01) { format!("{v:.1e}") } else { format!("{v:.3}") };
        canvas.text(x0 + 6, y0 + 6, &fmt(ymax), [90, 90, 90]);
        canvas.text(x0 + 6, y1 - 20, &fmt(ymin), [90, 90, 90]);
        canvas.text(x0, y1 + 8, &format!("step {xmin:.0}"), [90, 90, 90]);
        let last = format!("{xmax:.0}");
        canvas.text(x1 - 12 * last.len() as i64, y1 + 8, &last, [90, 90, 90]);
        for (k, s) in series.iter().enumerate() {
            if !s.is_empty() {
                let label = names[k].replace('_', " ");
                canvas.text(x1 - 12 * label.len() as i64 - 4, y0 + 6 + 18 * k as i64, &label, COLORS[k % 2]);
            }
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
