//! What the pipelines share besides an image reference: a sink for their
//! progress events (the libraries never print; the CLI draws what they emit)
//! and a cancellation flag that interrupts blocking work.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Where a pipeline's events go: a callback shared by every stage.
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
