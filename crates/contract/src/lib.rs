//! What the image and cluster pipelines share, and the only thing they share
//! besides progress events: the image reference (`registry/kubemark:tag`,
//! possibly `@sha256:`) with its one grammar, and the rule for what counts as
//! an address of this machine (a loopback registry, a master that pods cannot
//! reach). Both sides parse with these functions; neither re-implements them.

pub mod address;
pub mod reference;

pub use address::{Local, local_address};
pub use reference::{ImageRef, RefError};
