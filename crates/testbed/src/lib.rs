//! Real parts for the end-to-end tests and the benchmarks: Debian's
//! `docker-registry` on a loopback port (optionally behind htpasswd), `git
//! daemon`, git over https (`lighttpd` running `git http-backend`, with a
//! certificate from a throw-away CA) and over ssh (`sshd` with generated host
//! and client keys), and generated fixture "kubernetes" repositories (a Makefile that
//! honours `WHAT=cmd/kubemark` and builds a static `_output/bin/kubemark`, and
//! `cluster/images/kubemark/Dockerfile`). `cargo xtask ci` installs what these
//! need. Test code, not product code: nothing in `crates/image` uses it.

#![deny(clippy::print_stdout, clippy::print_stderr)]

mod fixture;
mod git;
mod images;
pub mod k8s;
pub mod node;
mod process;
mod programs;
mod registry;
mod ssh;

pub use self::fixture::{Fixture, XorShift};
pub use self::git::{GitDaemon, GitHttps};
pub use self::images::import_busybox;
pub use self::process::{Proc, free_port, is_alive, kill_tree, process_tree, processes};
pub use self::programs::{installed, run};
pub use self::registry::Registry;
pub use self::ssh::{GitSsh, SshAgent, known_hosts_line, ssh_keygen};
