//! The daemonless builder (`--builder oci`): the kubemark Dockerfile carried out
//! in this process (reproducible layers compressed on every core, labels as
//! config), images kept in an OCI layout and pushed through the registry API;
//! and (`import`) the engine's images taken into that layout for the same push.

pub mod base;
pub mod build;
pub mod compress;
pub mod dockerfile;
pub mod import;
pub mod layer;
pub mod layout;

pub use build::{Image, Options};
pub use compress::Compression;
pub use layout::{Layout, Platform};
