//! What the image and cluster pipelines share, parsed and defined once: the
//! image reference (`registry/kubemark:tag`, possibly `@sha256:`) with its one
//! grammar, the image record the image side writes and the deploy side reads,
//! Kubernetes quantities, the rule for what counts as an address of this
//! machine, and the progress sink and cancellation both pipelines take.
//! Neither pipeline re-implements any of these, and neither imports the other.

#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod address;
pub mod cancel;
pub mod progress;
pub mod quantity;
pub mod record;
pub mod reference;

pub use address::{Local, local_address};
pub use cancel::{CancellationToken, OnCancel, on_cancel};
pub use progress::Sink;
pub use quantity::{Quantity, QuantityError};
pub use record::{Record, RecordError};
pub use reference::{ImageRef, RefError};
