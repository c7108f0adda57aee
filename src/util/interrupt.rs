//! Ctrl-C (SIGINT) for long commands. The first press asks the running phase to stop at its
//! next batch boundary — a training step, an SFT step, a generator-full of V* or evaluation
//! prompts — where the trainer writes a checkpoint if one makes sense, and the command exits
//! 130. A second press exits at once (130), for when even a batch is too long to wait for.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;

static REQUESTED: AtomicBool = AtomicBool::new(false);
static INSTALL: Once = Once::new();

/// Installs the handler (once per process; later calls do nothing).
pub fn install() {
    INSTALL.call_once(|| {
        let _ = ctrlc::set_handler(|| {
            if REQUESTED.swap(true, Ordering::SeqCst) {
                eprintln!("\nsecond interrupt: exiting now");
                std::process::exit(130);
            }
            eprintln!("\ninterrupt: stopping at the end of the current batch (press Ctrl-C again to exit now)");
        });
    });
}

pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// The error a phase returns when it stopped for an interrupt; `cli::main` turns it into exit
/// code 130.
#[derive(Debug)]
pub struct Interrupted(pub String);

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "interrupted during {}", self.0)
    }
}

impl std::error::Error for Interrupted {}

/// `Err(Interrupted(phase))` once Ctrl-C was pressed.
pub fn check(phase: &str) -> anyhow::Result<()> {
    if requested() {
        return Err(anyhow::Error::new(Interrupted(phase.to_string())));
    }
    Ok(())
}

pub fn is_interrupt(e: &anyhow::Error) -> bool {
    e.downcast_ref::<Interrupted>().is_some()
}
