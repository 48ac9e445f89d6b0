//! Real Kubernetes control planes for tests: etcd, kube-apiserver,
//! kube-controller-manager and kube-scheduler of Kubernetes v1.37.2, built from
//! Kubernetes' own Go modules (`crates/testbed/k8s`; `cargo xtask ci` builds
//! them into `target/k8s/bin`, or `KUBEMARK_K8S_BIN` names another directory).
//!
//! Each [`ControlPlane`] has its own PKI (a CA, the API server's serving
//! certificate for the address given, a service-account key, client
//! certificates for the admin, the controller-manager, the scheduler and any
//! user a test asks for), serves on that address with
//! `--authorization-mode=Node,RBAC` and admission including PodSecurity,
//! NodeRestriction, ResourceQuota and LimitRanger, keeps each component's log,
//! prints the logs' tails when a test panics, and stops everything when dropped.

mod binaries;
mod checkout;
mod control_plane;
mod pki;

pub use self::binaries::{Binaries, COMPONENTS};
pub use self::checkout::real_kubemark_checkout;
pub use self::control_plane::{Config, ControlPlane};
pub use self::pki::{Authority, Pem, kubeconfig};
