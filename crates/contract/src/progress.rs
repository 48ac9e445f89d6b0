//! Where a pipeline's events go: the libraries never print; they emit events
//! into a [`Sink`] and the CLI (or a test) draws or records them.

use std::fmt;
use std::sync::Arc;

/// A callback shared by every stage of a pipeline.
pub struct Sink<E>(Arc<dyn Fn(E) + Send + Sync>);

impl<E> Clone for Sink<E> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<E> Sink<E> {
    pub fn new(f: impl Fn(E) + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    /// A sink that drops everything.
    pub fn discard() -> Self {
        Self::new(|_| {})
    }

    pub fn emit(&self, event: E) {
        (self.0)(event)
    }
}

impl<E> fmt::Debug for Sink<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sink")
    }
}
