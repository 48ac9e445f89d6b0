//! The kubemark image pipeline: bring a kubernetes checkout to a ref (git2),
//! run `make all WHAT=cmd/kubemark`, build the kubemark image through the
//! Docker Engine API (bollard) and push it.
//!
//! The library never prints; it reports progress as [`Event`]s. It never
//! depends on kube: the only thing it shares with the cluster side is the
//! image reference in [`Record`].

#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod auth;
pub mod context;
pub mod engine;
pub mod error;
pub mod event;
pub mod make;
pub mod oci;
pub mod pipeline;
pub mod record;
pub use kubemark_contract::reference;
pub mod registry;
pub mod source;

pub use auth::Credentials;
pub use error::{Error, Result};
pub use event::{CancellationToken, Event, Events, Stage};
pub use pipeline::{Outcome, Plan, Prepared, SourceAction, Spec, Status, execute, preflight, run};
pub use record::{Record, Records};
pub use reference::{ImageRef, RefError};
pub use source::SourceSpec;
