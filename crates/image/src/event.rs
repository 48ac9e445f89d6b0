//! Progress events. The library never prints: it reports what it does through
//! these, and the CLI (or a test) decides how to show them.

use std::fmt;

pub use kubemark_contract::{CancellationToken, on_cancel};

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

/// Where the image pipeline's events go.
pub type Events = kubemark_contract::Sink<Event>;

/// Shorthands for the events every stage sends.
pub(crate) trait Say {
    fn note(&self, text: impl Into<String>);
    fn warn(&self, text: impl Into<String>);
}

impl Say for Events {
    fn note(&self, text: impl Into<String>) {
        self.emit(Event::Note(text.into()))
    }

    fn warn(&self, text: impl Into<String>) {
        self.emit(Event::Warning(text.into()))
    }
}
