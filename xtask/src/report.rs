//! How a task ends badly: one message saying what failed and why, the details,
//! what to do next, and the exit code (2 bad usage, 1 failure, 130 Ctrl-C).

use std::process::ExitCode;

/// A task's failure, ready to show.
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub details: Vec<String>,
    pub hint: Option<String>,
    pub code: u8,
    /// Also print the failure as JSON on stdout (`--output json`).
    pub json: bool,
}

pub const USAGE: u8 = 2;
pub const FAILED: u8 = 1;
pub const INTERRUPTED: u8 = 130;

impl Failure {
    pub fn usage(message: impl Into<String>, hint: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            details: Vec::new(),
            hint: Some(hint.into()),
            code: USAGE,
            json: false,
        }
    }

    pub fn failed(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            details: Vec::new(),
            hint: None,
            code: FAILED,
            json: false,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn json(mut self, json: bool) -> Self {
        self.json = json;
        self
    }

    /// Print to stderr (and stdout as JSON when asked); return the exit code.
    pub fn report(self) -> ExitCode {
        let mut text = format!("error: {}", self.message);
        for detail in &self.details {
            text.push_str("\n  ");
            text.push_str(detail);
        }
        if let Some(hint) = &self.hint {
            text.push_str("\nhint: ");
            text.push_str(hint);
        }
        eprintln!("{text}");
        if self.json {
            let value = serde_json::json!({
                "error": self.message,
                "details": self.details,
                "hint": self.hint,
                "exit_code": self.code,
            });
            println!("{value}");
        }
        ExitCode::from(self.code)
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::failed(e.to_string())
    }
}
