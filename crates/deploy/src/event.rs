//! Progress events of the cluster pipeline; the CLI draws them.

pub use kubemark_contract::CancellationToken;

/// One thing worth telling the user.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A stage begins (`preflight`, `apply`, `wait`, `destroy`) and what it does.
    Stage { stage: &'static str, what: String },
    /// A finding worth a line.
    Note(String),
    /// Something to look at; the run goes on.
    Warning(String),
    /// An object was applied; `changed` is false when the server kept it as it was.
    Applied {
        kind: String,
        name: String,
        changed: bool,
    },
    /// Progress of the wait.
    Progress {
        running: usize,
        ready: usize,
        wanted: usize,
    },
    /// Progress stalled; why, grouped with counts.
    Stalled {
        seconds: u64,
        diagnosis: Vec<String>,
    },
    /// Objects deleted by destroy (or by the scale-down clean-up).
    Deleted { kind: String, count: usize },
}

/// Where the cluster pipeline's events go.
pub type Events = kubemark_contract::Sink<Event>;

pub(crate) trait Say {
    fn note(&self, text: impl Into<String>);
    fn warn(&self, text: impl Into<String>);
    fn stage(&self, stage: &'static str, what: impl Into<String>);
}

impl Say for Events {
    fn note(&self, text: impl Into<String>) {
        self.emit(Event::Note(text.into()))
    }

    fn warn(&self, text: impl Into<String>) {
        self.emit(Event::Warning(text.into()))
    }

    fn stage(&self, stage: &'static str, what: impl Into<String>) {
        self.emit(Event::Stage {
            stage,
            what: what.into(),
        })
    }
}
