//! Progress events. The library never prints: it reports what it does through
//! these, and the CLI (or a test) decides how to show them.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// The stages of the image pipeline, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    Preflight,
    Source,
    Make,
    Image,
    Push,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Preflight => "preflight",
            Stage::Source => "source",
            Stage::Make => "make",
            Stage::Image => "image",
            Stage::Push => "push",
        })
    }
}

/// One thing worth telling the user.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A stage begins; `what` says what it will do.
    Stage { stage: Stage, what: String },
    /// A stage ended; `what` says what came of it.
    StageDone { stage: Stage, what: String },
    /// A finding worth a line (versions, choices made).
    Note(String),
    /// Something the user should look at; the run goes on.
    Warning(String),
    /// git objects arriving.
    Transfer {
        received_objects: usize,
        total_objects: usize,
        indexed_deltas: usize,
        total_deltas: usize,
        received_bytes: usize,
    },
    /// Message from the git server (`Counting objects: ...`).
    Remote(String),
    /// Files written by a checkout.
    Checkout { done: usize, total: usize },
    /// A line of make's output (also written to the build log).
    MakeOutput(String),
    /// The engine started a Dockerfile instruction.
    BuildStep {
        step: usize,
        total: usize,
        instruction: String,
    },
    /// Other output of the image build.
    BuildOutput(String),
    /// Bytes of the build context streamed to the engine so far.
    ContextSent { bytes: u64 },
    /// A layer's push state; `current`/`total` are bytes when known.
    PushLayer {
        layer: String,
        status: String,
        current: u64,
        total: u64,
    },
}

/// Where events go: a callback shared by every stage.
#[derive(Clone)]
pub struct Events(Arc<dyn Fn(Event) + Send + Sync>);

impl Events {
    pub fn new(f: impl Fn(Event) + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    /// Events that go nowhere.
    pub fn discard() -> Self {
        Self::new(|_| {})
    }

    pub fn emit(&self, event: Event) {
        (self.0)(event)
    }

    pub(crate) fn note(&self, text: impl Into<String>) {
        self.emit(Event::Note(text.into()))
    }

    pub(crate) fn warn(&self, text: impl Into<String>) {
        self.emit(Event::Warning(text.into()))
    }
}

impl fmt::Debug for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Events")
    }
}

/// A flag the caller raises to stop the pipeline at the next safe point
/// (between git packets, between lines of make output, between stream items).
/// Work that blocks (a running `make`) registers a callback to be interrupted.
#[derive(Clone, Default)]
pub struct Cancel(Arc<CancelInner>);

type Callback = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct CancelInner {
    cancelled: AtomicBool,
    next_id: Mutex<u64>,
    callbacks: Mutex<Vec<(u64, Callback)>>,
}

impl Cancel {
    pub fn new() -> Self {
        Self::default()
    }

    /// Raise the flag and run every registered callback.
    pub fn cancel(&self) {
        self.0.cancelled.store(true, Ordering::SeqCst);
        let callbacks = std::mem::take(&mut *lock(&self.0.callbacks));
        for (_, f) in callbacks {
            f();
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.cancelled.load(Ordering::SeqCst)
    }

    /// Run `f` on cancellation (at once if already cancelled) until the guard drops.
    pub fn on_cancel(&self, f: impl FnOnce() + Send + 'static) -> CancelGuard {
        let id = {
            let mut next = lock(&self.0.next_id);
            *next += 1;
            *next
        };
        lock(&self.0.callbacks).push((id, Box::new(f)));
        if self.is_cancelled() {
            self.cancel();
        }
        CancelGuard {
            cancel: self.clone(),
            id,
        }
    }
}

impl fmt::Debug for Cancel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Cancel").field(&self.is_cancelled()).finish()
    }
}

/// Unregisters an [`Cancel::on_cancel`] callback when dropped.
#[derive(Debug)]
pub struct CancelGuard {
    cancel: Cancel,
    id: u64,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        lock(&self.cancel.0.callbacks).retain(|(id, _)| *id != self.id);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
