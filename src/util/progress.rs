//! Progress of a long phase (training steps, SFT steps, evaluation batches). On a terminal: an
//! indicatif bar. Otherwise (`2>log`, a batch scheduler) the bar would be hidden and drop every
//! line printed through it, so the same facts go out as plain lines: one every `every`
//! units and one at the end, with rate and ETA. Notices (`println`) are always printed.
use std::io::IsTerminal;
use std::time::Instant;

pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    what: &'static str,
    len: u64,
    pos: u64,
    start_pos: u64,
    every: u64,
    msg: String,
    started: Instant,
}

impl Progress {
    /// `len` units called `what` ("steps"), starting at `pos` (a resumed run), a plain line
    /// every `every` units when stderr is not a terminal.
    pub fn new(what: &'static str, len: u64, pos: u64, every: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new(len);
            let template = format!("{{elapsed_precise}} [{{bar:30}}] {{pos}}/{{len}} {what}, eta {{eta}} {{msg}}");
            b.set_style(indicatif::ProgressStyle::with_template(&template).unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()));
            b.set_position(pos);
            b
        });
        Progress { bar, what, len, pos, start_pos: pos, every: every.max(1), msg: String::new(), started: Instant::now() }
    }

    pub fn set_message(&mut self, msg: String) {
        match &self.bar {
            Some(b) => b.set_message(msg),
            None => self.msg = msg,
        }
    }

    pub fn inc(&mut self) {
        self.pos += 1;
        match &self.bar {
            Some(b) => b.inc(1),
            None if self.pos.is_multiple_of(self.every) || self.pos == self.len => eprintln!("{}", self.line()),
            None => {}
        }
    }

    /// A notice that must reach the log whatever stderr is.
    pub fn println(&self, line: String) {
        match &self.bar {
            Some(b) => b.println(line),
            None => eprintln!("{line}"),
        }
    }

    pub fn finish(self) {
        if let Some(b) = self.bar {
            b.finish_and_clear();
        }
    }

    fn line(&self) -> String {
        let secs = self.started.elapsed().as_secs_f64();
        let done = (self.pos - self.start_pos) as f64;
        let rate = done / secs.max(1e-9);
        let eta = if rate > 0.0 { (self.len.saturating_sub(self.pos)) as f64 / rate } else { 0.0 };
        format!("{}/{} {} ({:.2}/s, {:.0}s elapsed, eta {:.0}s) {}", self.pos, self.len, self.what, rate, secs, eta, self.msg)
    }
}
