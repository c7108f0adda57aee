//! Learning curves from `metrics.jsonl`, drawn with `plotters`: `runs/<name>/curves.png` and
//! `curves.svg`, a grid of panels (reward, solve rate, format rate, loss, grad norm, entropy,
//! response length, truncation, step time), each with the per-step series (thin), an EMA of it
//! (thick) and, where the metric has one, the held-out eval points (the step-0 line is the base
//! model). Text uses the bundled DejaVu Sans (assets/fonts/) through ab_glyph: no system fonts.
use crate::util::fs::write_atomic;
use anyhow::{anyhow, bail, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::FontStyle;
// BackendStyle is named by path: in scope, its stroke_width would clash with Color's.
use plotters_backend::{BackendColor, BackendCoord, BackendTextStyle, DrawingErrorKind};
use std::path::{Path, PathBuf};

/// Size of the figure in pixels (PNG) and user units (SVG).
pub const SIZE: (u32, u32) = (1800, 1340);
const HEADER_H: u32 = 56;
const GRID: (usize, usize) = (3, 3);
/// The name the bundled font is registered under; the SVG names it as its font-family too, so a
/// viewer uses DejaVu Sans where it has it (the layout was measured with it) and any sans-serif else.
const FONT: &str = "DejaVu Sans, sans-serif";
/// Above this many points a series is thinned for drawing (keeping each bucket's extremes).
const MAX_DRAWN: usize = 4000;
const FONT_BYTES: &[u8] = include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/fonts/DejaVuSans.ttf"));

const TRAIN: RGBColor = RGBColor(31, 119, 180);
const EVAL: RGBColor = RGBColor(214, 39, 40);
const INK: RGBColor = RGBColor(40, 40, 40);

/// One panel: title, y-axis title, the per-step metric, its held-out eval counterpart, and
/// whether it is a rate in [0, 1] (then the y axis starts at 0).
struct Panel {
    title: &'static str,
    y_desc: &'static str,
    train: &'static str,
    eval: Option<&'static str>,
    rate: bool,
}

const PANELS: [Panel; 9] = [
    Panel { title: "Reward", y_desc: "mean reward", train: "reward_mean", eval: Some("eval_reward_mean"), rate: false },
    Panel { title: "Solve rate", y_desc: "fraction solved", train: "solve_rate", eval: Some("eval_solve_rate"), rate: true },
    Panel { title: "Format rate", y_desc: "fraction well-formed", train: "format_rate", eval: Some("eval_format_rate"), rate: true },
    Panel { title: "Loss", y_desc: "loss", train: "loss", eval: None, rate: false },
    Panel { title: "Gradient norm", y_desc: "grad norm", train: "grad_norm", eval: None, rate: false },
    Panel { title: "Entropy", y_desc: "mean entropy (nats/token)", train: "entropy_mean", eval: None, rate: false },
    Panel { title: "Response length", y_desc: "mean tokens", train: "resp_len_mean", eval: None, rate: false },
    Panel { title: "Truncated responses", y_desc: "fraction at max length", train: "truncated_frac", eval: None, rate: true },
    Panel { title: "Step time", y_desc: "seconds", train: "step_time_s", eval: None, rate: false },
];

/// `metrics.jsonl`, parsed: one object per line, kept as JSON so unknown fields cost nothing.
pub struct Metrics {
    rows: Vec<serde_json::Map<String, serde_json::Value>>,
    /// Lines that were not a JSON object with a numeric `step` (1-based line number, reason).
    pub malformed: Vec<(usize, String)>,
}

impl Metrics {
    /// Reads `path`; malformed lines are recorded and skipped, not fatal.
    pub fn read(path: &Path) -> Result<Metrics> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        Ok(Metrics::parse(&text))
    }

    pub fn parse(text: &str) -> Metrics {
        let (mut rows, mut malformed) = (vec![], vec![]);
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<serde_json::Value>(line) {
                Ok(serde_json::Value::Object(m)) if m.get("step").and_then(|s| s.as_f64()).is_some_and(plottable) => rows.push(m),
                Ok(_) => malformed.push((i + 1, "not an object with a numeric \"step\"".into())),
                Err(e) => malformed.push((i + 1, e.to_string())),
            }
        }
        Metrics { rows, malformed }
    }

    /// The plottable (step, value) points of one field, in step order.
    pub fn series(&self, name: &str) -> Vec<(f64, f64)> {
        let mut out: Vec<(f64, f64)> = self
            .rows
            .iter()
            .filter_map(|r| Some((r.get("step")?.as_f64()?, r.get(name)?.as_f64()?)))
            .filter(|&(x, y)| plottable(x) && plottable(y))
            .collect();
        out.sort_by(|a, b| a.0.total_cmp(&b.0));
        out
    }

    /// Training steps: lines without `"kind": "eval"` (the base-model line is one).
    fn train_steps(&self) -> usize {
        self.rows.iter().filter(|r| r.get("kind").and_then(|k| k.as_str()) != Some("eval")).count()
    }
}

/// Finite and at most 1e300 in magnitude: the metrics are f32 (at most 3.4e38), anything larger is
/// garbage, and an axis spanning ±1e308 overflows plotters' tick arithmetic (it loops forever).
fn plottable(v: f64) -> bool {
    v.is_finite() && v.abs() <= 1e300
}

/// Bias-corrected exponential moving average (as TensorBoard's smoothing), span ≈ `span` points.
fn ema(points: &[(f64, f64)], span: usize) -> Vec<(f64, f64)> {
    let beta = 1.0 - 2.0 / (span as f64 + 1.0);
    let (mut m, mut w) = (0.0, 0.0);
    points
        .iter()
        .map(|&(x, y)| {
            m = beta * m + (1.0 - beta) * y;
            w = beta * w + (1.0 - beta);
            (x, m / w)
        })
        .collect()
}

/// At most about `max` of `points`, for drawing: per bucket of consecutive points, its lowest and
/// highest (in step order), so spikes survive.
fn thin(points: &[(f64, f64)], max: usize) -> Vec<(f64, f64)> {
    if points.len() <= max {
        return points.to_vec();
    }
    let bucket = points.len().div_ceil(max / 2);
    let mut out = Vec::with_capacity(max + 2);
    for b in points.chunks(bucket) {
        let lo = b.iter().enumerate().min_by(|x, y| x.1 .1.total_cmp(&y.1 .1)).map_or(0, |(i, _)| i);
        let hi = b.iter().enumerate().max_by(|x, y| x.1 .1.total_cmp(&y.1 .1)).map_or(0, |(i, _)| i);
        out.push(b[lo.min(hi)]);
        if lo != hi {
            out.push(b[lo.max(hi)]);
        }
    }
    out
}

/// Smoothing span for a run of `n` points: about a fifteenth of the run, 1 (none) for short runs.
fn ema_span(n: usize) -> usize {
    if n < 10 {
        1
    } else {
        (n / 15).clamp(3, 500)
    }
}

/// A tick label with a precision fit for ticks about `step` apart, trailing zeros trimmed
/// (ticks are multiples of 1, 2 or 5 × 10^k); scientific notation for very small or large axes.
fn tick_label(v: f64, step: f64, magnitude: f64) -> String {
    if v.abs() < step * 1e-6 {
        return "0".into();
    }
    let trim = |s: String| if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s };
    if magnitude != 0.0 && !(1e-3..1e6).contains(&magnitude) {
        let s = format!("{v:.2e}");
        let (mant, exp) = s.split_once('e').unwrap_or((&s, "0"));
        return format!("{}e{exp}", trim(mant.to_string()));
    }
    let decimals = if step > 0.0 { (-step.log10()).ceil().clamp(0.0, 9.0) as usize + 1 } else { 3 };
    trim(format!("{v:.decimals$}"))
}

/// Axis range of the values in `ys`, padded. A range narrower than f32 resolution (1e-6 of the
/// values) counts as constant and is widened to ±10 %, so it can be drawn with short tick labels.
fn value_range(ys: impl Iterator<Item = f64>, rate: bool) -> (f64, f64) {
    let (lo, hi) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| (a.min(y), b.max(y)));
    if rate && lo >= 0.0 && hi <= 1.0 {
        let top = (hi * 1.1).clamp(0.05, 1.0);
        return (-0.03 * top, top + 0.03 * top);
    }
    let span = hi - lo;
    let pad = if span <= 1e-6 * hi.abs().max(lo.abs()) { (hi.abs().max(lo.abs()) * 0.1).max(0.1) } else { 0.06 * span };
    (lo - pad, hi + pad)
}

/// The corner of the plot with the fewest data points in it, for the legend.
fn legend_corner(points: &[(f64, f64)], (x0, x1): (f64, f64), (y0, y1): (f64, f64)) -> SeriesLabelPosition {
    let corners = [
        (SeriesLabelPosition::UpperRight, true, true),
        (SeriesLabelPosition::UpperLeft, false, true),
        (SeriesLabelPosition::LowerRight, true, false),
        (SeriesLabelPosition::LowerLeft, false, false),
    ];
    let count = |right: bool, upper: bool| {
        points
            .iter()
            .filter(|&&(x, y)| {
                let (u, v) = ((x - x0) / (x1 - x0), (y - y0) / (y1 - y0));
                (if right { u > 0.55 } else { u < 0.45 }) && (if upper { v > 0.6 } else { v < 0.4 })
            })
            .count()
    };
    let best = corners.into_iter().min_by_key(|&(_, r, u)| count(r, u)).map(|c| c.0);
    best.unwrap_or(SeriesLabelPosition::UpperRight)
}

/// The bitmap backend with its own glyph rasterizer: plotters 0.3.7's ab_glyph text drawing
/// places each glyph's bitmap at the pen position without the glyph's side bearing, so letters
/// come out unevenly spaced ("hel d-out"). Layout (the text's box, and so where plotters puts it)
/// is still plotters', from the same font; only the pixels are drawn here.
struct Raster<'a> {
    inner: BitMapBackend<'a>,
    font: ab_glyph::FontRef<'static>,
}

impl DrawingBackend for Raster<'_> {
    type ErrorType = <BitMapBackend<'static> as DrawingBackend>::ErrorType;

    fn get_size(&self) -> (u32, u32) {
        self.inner.get_size()
    }
    fn ensure_prepared(&mut self) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.ensure_prepared()
    }
    fn present(&mut self) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.present()
    }
    fn draw_pixel(&mut self, point: BackendCoord, color: BackendColor) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.draw_pixel(point, color)
    }
    fn draw_line<S: plotters_backend::BackendStyle>(
        &mut self,
        from: BackendCoord,
        to: BackendCoord,
        style: &S,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.draw_line(from, to, style)
    }
    fn draw_rect<S: plotters_backend::BackendStyle>(
        &mut self,
        upper_left: BackendCoord,
        bottom_right: BackendCoord,
        style: &S,
        fill: bool,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.draw_rect(upper_left, bottom_right, style, fill)
    }
    fn draw_path<S: plotters_backend::BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        path: I,
        style: &S,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.draw_path(path, style)
    }
    fn draw_circle<S: plotters_backend::BackendStyle>(
        &mut self,
        center: BackendCoord,
        radius: u32,
        style: &S,
        fill: bool,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.draw_circle(center, radius, style, fill)
    }
    fn fill_polygon<S: plotters_backend::BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        vert: I,
        style: &S,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.fill_polygon(vert, style)
    }
    fn blit_bitmap(&mut self, pos: BackendCoord, size: (u32, u32), src: &[u8]) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.blit_bitmap(pos, size, src)
    }

    fn draw_text<S: BackendTextStyle>(
        &mut self,
        text: &str,
        style: &S,
        pos: BackendCoord,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        use ab_glyph::{Font, ScaleFont};
        let color = style.color();
        if color.alpha == 0.0 {
            return Ok(());
        }
        // The anchor arithmetic of plotters-backend's default draw_text, on plotters' layout box
        // (advance widths and kerning; height size / 1.24).
        let ((x0, y0), (x1, y1)) = style.layout_box(text).map_err(|e| DrawingErrorKind::FontError(Box::new(e)))?;
        let (w, h) = (x1 - x0, y1 - y0);
        let dx = match style.anchor().h_pos {
            HPos::Left => 0,
            HPos::Right => -w,
            HPos::Center => -w / 2,
        };
        let dy = match style.anchor().v_pos {
            VPos::Top => 0,
            VPos::Center => -h / 2,
            VPos::Bottom => -h,
        };
        let trans = style.transform();
        let size = style.size() as f32;
        let font = self.font.as_scaled(size);
        // Ascent to descent spans `size` px; scaled into the box, the baseline sits at ascent / 1.24.
        let baseline = font.ascent() / 1.24;
        let (mut caret, mut prev) = (0.0f32, None);
        for c in text.chars() {
            let id = font.glyph_id(c);
            if let Some(p) = prev {
                caret += font.kern(p, id);
            }
            prev = Some(id);
            let glyph = id.with_scale_and_position(size, ab_glyph::point(caret, baseline));
            caret += font.h_advance(id);
            let Some(outline) = self.font.outline_glyph(glyph) else { continue };
            let b = outline.px_bounds();
            let mut result = Ok(());
            outline.draw(|gx, gy, coverage| {
                let (x, y) = trans.transform(b.min.x as i32 + gx as i32 - x0 + dx, b.min.y as i32 + gy as i32 - y0 + dy);
                let c = BackendColor { alpha: color.alpha * f64::from(coverage.min(1.0)), rgb: color.rgb };
                if result.is_ok() && c.alpha > 0.0 {
                    result = self.inner.draw_pixel((pos.0 + x, pos.1 + y), c);
                }
            });
            result?;
        }
        Ok(())
    }
}

fn register_font() -> Result<()> {
    static REGISTERED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *REGISTERED.get_or_init(|| plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES).is_ok()) {
        Ok(())
    } else {
        bail!("the bundled font assets/fonts/DejaVuSans.ttf did not load")
    }
}

fn draw_err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("drawing the learning curves: {e}")
}

/// Draws the whole figure onto `root`.
fn draw_figure<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, m: &Metrics, title: &str) -> Result<()> {
    root.fill(&WHITE).map_err(draw_err)?;
    let (header, body) = root.split_vertically(HEADER_H);
    let steps: Vec<f64> = m.rows.iter().filter_map(|r| r.get("step")?.as_f64()).collect();
    let (smin, smax) = steps.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &s| (a.min(s), b.max(s)));
    // Padded a little, so the step-0 base eval is not drawn on the y axis.
    let x_range = match smax - smin {
        d if d > 0.0 => (smin - d * 0.015, smax + d * 0.015),
        _ if smin >= 1.0 => (smin - 1.0, smin + 1.0),
        _ => (smin - 0.05, smin + 1.0),
    };
    let n = m.train_steps();
    let span = ema_span(n);
    let mut note = format!("{n} training step{} (last step {smax})", if n == 1 { "" } else { "s" });
    if span > 1 {
        note += &format!("  ·  thin: per step, thick: EMA over ~{span} steps");
    }
    if PANELS.iter().filter_map(|p| p.eval).any(|e| !m.series(e).is_empty()) {
        note += "  ·  dots: held-out eval (step 0 = base model)";
    }
    if !m.malformed.is_empty() {
        note += &format!("  ·  {} malformed line(s) skipped", m.malformed.len());
    }
    header.draw_text(title, &(FONT, 24).into_font().color(&INK), (24, 8)).map_err(draw_err)?;
    header.draw_text(&note, &(FONT, 15).into_font().color(&RGBColor(100, 100, 100)), (24, 36)).map_err(draw_err)?;
    for (area, panel) in body.split_evenly(GRID).iter().zip(&PANELS) {
        draw_panel(area, m, panel, x_range, span)?;
    }
    root.present().map_err(draw_err)
}

fn draw_panel<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, m: &Metrics, p: &Panel, x_range: (f64, f64), span: usize) -> Result<()> {
    let area = area.margin(4, 10, 6, 18);
    let raw = m.series(p.train);
    let eval = p.eval.map(|e| m.series(e)).unwrap_or_default();
    let all: Vec<(f64, f64)> = raw.iter().chain(&eval).copied().collect();
    let mut builder = ChartBuilder::on(&area);
    builder.caption(p.title, (FONT, 19).into_font().color(&INK)).x_label_area_size(44).y_label_area_size(70);
    if all.is_empty() {
        let mut chart = builder.build_cartesian_2d(x_range.0..x_range.1, 0.0..1.0).map_err(draw_err)?;
        let x_step = (x_range.1 - x_range.0) / 7.0;
        let x_fmt = |v: &f64| tick_label(*v, x_step, 1.0);
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(7)
            .x_label_formatter(&x_fmt)
            .y_labels(0)
            .x_desc("step")
            .label_style((FONT, 13).into_font().color(&INK))
            .axis_desc_style((FONT, 14).into_font().color(&INK))
            .axis_style(RGBColor(120, 120, 120))
            .draw()
            .map_err(draw_err)?;
        let msg = format!("no \"{}\" values", p.train);
        let style = (FONT, 15).into_font().color(&RGBColor(130, 130, 130)).pos(Pos::new(HPos::Center, VPos::Center));
        chart.draw_series(std::iter::once(Text::new(msg, ((x_range.0 + x_range.1) / 2.0, 0.5), style))).map_err(draw_err)?;
        return Ok(());
    }
    let y_range = value_range(all.iter().map(|p| p.1), p.rate);
    let mut chart = builder.build_cartesian_2d(x_range.0..x_range.1, y_range.0..y_range.1).map_err(draw_err)?;
    let (n_x, n_y) = (7, 6);
    let x_step = (x_range.1 - x_range.0) / n_x as f64;
    let y_step = (y_range.1 - y_range.0) / n_y as f64;
    let y_mag = y_range.0.abs().max(y_range.1.abs());
    let x_fmt = |v: &f64| tick_label(*v, x_step, 1.0);
    let y_fmt = |v: &f64| tick_label(*v, y_step, y_mag);
    chart
        .configure_mesh()
        .x_labels(n_x)
        .y_labels(n_y)
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt)
        .x_desc("step")
        .y_desc(p.y_desc)
        .label_style((FONT, 13).into_font().color(&INK))
        .axis_desc_style((FONT, 14).into_font().color(&INK))
        .bold_line_style(RGBColor(225, 225, 225))
        .light_line_style(RGBColor(244, 244, 244))
        .max_light_lines(1)
        .axis_style(RGBColor(120, 120, 120))
        .draw()
        .map_err(draw_err)?;

    let mut labelled = 0;
    let smooth = span > 1 && raw.len() >= 10;
    if !raw.is_empty() {
        let (style, label) = if smooth { (TRAIN.mix(0.3).stroke_width(1), "per step") } else { (TRAIN.stroke_width(2), "train") };
        chart
            .draw_series(LineSeries::new(thin(&raw, MAX_DRAWN), style))
            .map_err(draw_err)?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], style));
        labelled += 1;
        if !smooth && raw.len() <= 50 {
            chart.draw_series(raw.iter().map(|&pt| Circle::new(pt, 3, TRAIN.filled()))).map_err(draw_err)?;
        }
    }
    if smooth {
        chart
            .draw_series(LineSeries::new(thin(&ema(&raw, span), MAX_DRAWN), TRAIN.stroke_width(3)))
            .map_err(draw_err)?
            .label(format!("EMA ({span} steps)"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], TRAIN.stroke_width(3)));
        labelled += 1;
    }
    if !eval.is_empty() {
        chart.draw_series(LineSeries::new(eval.iter().copied(), EVAL.mix(0.6).stroke_width(1))).map_err(draw_err)?;
        chart
            .draw_series(eval.iter().map(|&pt| Circle::new(pt, 4, EVAL.filled())))
            .map_err(draw_err)?
            .label("held-out eval")
            .legend(|(x, y)| Circle::new((x + 11, y), 4, EVAL.filled()));
        labelled += 1;
    }
    if labelled > 1 {
        chart
            .configure_series_labels()
            .position(legend_corner(&all, x_range, y_range))
            .margin(8)
            .legend_area_size(30)
            .label_font((FONT, 13).into_font().color(&INK))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(190, 190, 190))
            .draw()
            .map_err(draw_err)?;
    }
    Ok(())
}

/// Draws `runs/<name>/curves.png` and `curves.svg` from `runs/<name>/metrics.jsonl`. Malformed
/// lines are skipped (and counted, on stderr and in the figure); no usable line at all is an
/// error. Returns the written paths.
pub fn plot_run(run_dir: &Path) -> Result<Vec<PathBuf>> {
    let path = run_dir.join("metrics.jsonl");
    let m = Metrics::read(&path)?;
    if m.rows.is_empty() {
        match m.malformed.first() {
            Some((line, why)) => {
                bail!("{}: no usable metrics ({} malformed line(s); line {line}: {why})", path.display(), m.malformed.len())
            }
            None => bail!("{}: no metrics yet", path.display()),
        }
    }
    if let Some((line, why)) = m.malformed.first() {
        eprintln!("warning: {}: skipped {} malformed line(s) (first: line {line}: {why})", path.display(), m.malformed.len());
    }
    register_font()?;
    let name = run_dir.canonicalize().unwrap_or_else(|_| run_dir.to_path_buf());
    let title = format!("Learning curves: {}", name.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());

    let mut rgb = vec![0u8; SIZE.0 as usize * SIZE.1 as usize * 3];
    let font = ab_glyph::FontRef::try_from_slice(FONT_BYTES).map_err(|e| anyhow!("assets/fonts/DejaVuSans.ttf: {e}"))?;
    draw_figure(&Raster { inner: BitMapBackend::with_buffer(&mut rgb, SIZE), font }.into_drawing_area(), &m, &title)?;
    let mut png_bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut png_bytes, SIZE.0, SIZE.1);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_compression(png::Compression::Best);
        enc.set_adaptive_filter(png::AdaptiveFilterType::Adaptive);
        let mut w = enc.write_header().map_err(|e| anyhow!("png: {e}"))?;
        w.write_image_data(&rgb).map_err(|e| anyhow!("png: {e}"))?;
    }
    let mut svg = String::new();
    draw_figure(&SVGBackend::with_string(&mut svg, SIZE).into_drawing_area(), &m, &title)?;

    let (png_path, svg_path) = (run_dir.join("curves.png"), run_dir.join("curves.svg"));
    write_atomic(&png_path, &png_bytes)?;
    write_atomic(&svg_path, svg.as_bytes())?;
    Ok(vec![png_path, svg_path])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_labels_are_short_and_exact() {
        assert_eq!(tick_label(0.30000000000000004, 0.1, 1.0), "0.3");
        assert_eq!(tick_label(0.25, 0.05, 1.0), "0.25");
        assert_eq!(tick_label(-1e-17, 0.1, 1.0), "0");
        assert_eq!(tick_label(1e-15, 5e29, 1e30), "0");
        assert_eq!(tick_label(250.0, 50.0, 300.0), "250");
        assert_eq!(tick_label(1500.0, 500.0, 2000.0), "1500");
        assert_eq!(tick_label(2e-5, 1e-5, 5e-5), "2e-5");
        assert_eq!(tick_label(2.5e6, 1e6, 5e6), "2.5e6");
    }

    #[test]
    fn ranges_are_never_empty() {
        let (lo, hi) = value_range([3.0, 3.0].into_iter(), false);
        assert!(lo < 3.0 && hi > 3.0);
        let (lo, hi) = value_range([100.0, 100.0 + 1e-7].into_iter(), false);
        assert!(lo < 95.0 && hi > 105.0);
        let (lo, hi) = value_range([0.0].into_iter(), false);
        assert!(lo < 0.0 && hi > 0.0);
        let (lo, hi) = value_range([0.0, 0.0].into_iter(), true);
        assert!(lo < 0.0 && hi > 0.0);
        let (lo, hi) = value_range([0.2, 0.6].into_iter(), true);
        assert!(lo < 0.0 && hi > 0.6 && hi < 1.0);
        let (lo, hi) = value_range([1e300, -1e300].into_iter(), false);
        assert!(lo.is_finite() && hi.is_finite() && lo < -1e300 && hi > 1e300);
        assert!(!plottable(1e308) && !plottable(f64::NAN) && plottable(-1e300));
    }

    #[test]
    fn ema_is_unbiased_at_the_start_and_follows_a_constant() {
        let pts: Vec<(f64, f64)> = (0..20).map(|i| (i as f64, 5.0)).collect();
        assert!(ema(&pts, 7).iter().all(|p| (p.1 - 5.0).abs() < 1e-12));
        let step: Vec<(f64, f64)> = (0..40).map(|i| (i as f64, if i < 20 { 0.0 } else { 1.0 })).collect();
        let s = ema(&step, 5);
        assert_eq!(s[0].1, 0.0);
        assert!(s[20].1 > 0.0 && s[20].1 < 1.0 && s[39].1 > 0.99);
    }

    #[test]
    fn thinning_keeps_spikes() {
        let mut pts: Vec<(f64, f64)> = (0..100_000).map(|i| (i as f64, (i % 7) as f64)).collect();
        pts[54_321].1 = 1e3;
        pts[77_777].1 = -1e3;
        let t = thin(&pts, MAX_DRAWN);
        assert!(t.len() <= MAX_DRAWN + 2);
        assert!(t.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(t.iter().any(|p| p.1 == 1e3) && t.iter().any(|p| p.1 == -1e3));
    }

    #[test]
    fn parsing_skips_and_counts_malformed_lines() {
        let m = Metrics::parse("{\"step\":0,\"kind\":\"eval\",\"eval_solve_rate\":0.1}\n\nnot json\n[1,2]\n{\"loss\":1}\n{\"step\":\"x\"}\n{\"step\":2,\"loss\":null,\"reward_mean\":0.5,\"new\":[1]}\n{\"step\":1,\"loss\":0.25}\n");
        assert_eq!(m.malformed.iter().map(|e| e.0).collect::<Vec<_>>(), vec![3, 4, 5, 6]);
        assert_eq!(m.series("loss"), vec![(1.0, 0.25)]);
        assert_eq!(m.series("eval_solve_rate"), vec![(0.0, 0.1)]);
        assert_eq!(m.train_steps(), 2);
    }
}
