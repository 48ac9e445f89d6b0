//! A daemonless OCI image builder's parts: the layer's compression.

pub mod compress;
