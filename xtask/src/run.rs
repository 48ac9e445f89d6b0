//! What every task shares when it runs a pipeline: the result format on
//! stdout, and the runtime whose first Ctrl-C cancels the work at its next
//! safe point (exit 130) and whose second quits at once.

use std::future::Future;
use std::pin::Pin;

use kubemark_contract::CancellationToken;

use crate::progress::Renderer;
use crate::report::{self, Failure};

/// `--output`: the result format on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Output {
    #[default]
    Text,
    Json,
}

impl Output {
    pub fn json(self) -> bool {
        self == Output::Json
    }
}

/// Print `value` as pretty JSON on stdout.
pub fn print_json(value: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

/// Where the work runs. The cluster commands are I/O-bound client code: one
/// thread is enough, and spares the cross-thread wake-ups (a quarter of the
/// wait's CPU at 5,000 nodes, `cargo xtask bench deploy`). The image pipeline
/// hashes and streams a build context beside its blocking git and make work,
/// and the demo serves two simulators in the same process: they get every core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    One,
    All,
}

/// Run `work`; the first Ctrl-C (or SIGTERM, SIGHUP) cancels it (exit 130), a second quits at once.
pub fn with_interrupt<'a, T>(
    renderer: &Renderer,
    threads: Threads,
    work: impl FnOnce(CancellationToken) -> Pin<Box<dyn Future<Output = T> + 'a>>,
) -> Result<T, Failure> {
    let cancel = CancellationToken::new();
    let mut builder = match threads {
        Threads::One => tokio::runtime::Builder::new_current_thread(),
        Threads::All => tokio::runtime::Builder::new_multi_thread(),
    };
    let rt = builder.enable_all().build()?;
    let result = rt.block_on(async {
        let watcher = {
            let (cancel, renderer) = (cancel.clone(), renderer.clone());
            tokio::spawn(async move {
                // SIGTERM (a CI job cancelled, `timeout`) and SIGHUP (the terminal
                // closed) stop the run as Ctrl-C does: make's process group is
                // killed, partial files removed, the locks let go.
                use tokio::signal::unix::{SignalKind, signal};
                let (Ok(mut term), Ok(mut hup)) = (
                    signal(SignalKind::terminate()),
                    signal(SignalKind::hangup()),
                ) else {
                    return;
                };
                let first = tokio::select! {
                    r = tokio::signal::ctrl_c() => r.is_ok(),
                    _ = term.recv() => true,
                    _ = hup.recv() => true,
                };
                if first {
                    cancel.cancel();
                    renderer.line(
                        "interrupted: stopping at the next safe point (Ctrl-C again to quit now)",
                    );
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = term.recv() => {}
                        _ = hup.recv() => {}
                    }
                    std::process::exit(i32::from(report::INTERRUPTED));
                }
            })
        };
        let out = work(cancel.clone()).await;
        watcher.abort();
        out
    });
    renderer.finish();
    Ok(result)
}
