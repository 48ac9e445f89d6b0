//! The control plane fixture itself: it serves with the PKI, authorization and
//! admission it promises, and leaves nothing running when dropped.

#![allow(clippy::unwrap_used)]

use std::net::IpAddr;

use kubemark_testbed::k8s::{Binaries, Config, ControlPlane};

#[test]
fn a_control_plane_serves_authorizes_and_stops() {
    let Some(bin) = Binaries::for_tests() else {
        return;
    };
    let plane = ControlPlane::start(
        &bin,
        Config {
            name: "fixture".into(),
            address: IpAddr::from([127, 0, 0, 1]),
            controllers: true,
        },
    )
    .unwrap();
    let version = plane.curl("/version").unwrap();
    assert!(version.contains("\"gitVersion\": \"v1.37.2\""), "{version}");
    // The admin is system:masters; a user nobody bound may do nothing.
    assert!(
        plane
            .kubectl(&["auth", "can-i", "create", "pods"])
            .unwrap()
            .contains("yes")
    );
    let nobody = plane.kubeconfig_for("nobody", None).unwrap();
    let out = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&nobody)
        .args(["get", "namespaces"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("forbidden"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // PodSecurity admission is on: a privileged pod in a `restricted` namespace is refused.
    plane.kubectl(&["create", "namespace", "locked"]).unwrap();
    plane
        .kubectl(&[
            "label",
            "namespace",
            "locked",
            "pod-security.kubernetes.io/enforce=restricted",
        ])
        .unwrap();
    let refused = plane
        .apply("apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  namespace: locked\nspec:\n  containers:\n  - name: c\n    image: busybox\n    securityContext:\n      privileged: true\n")
        .unwrap_err();
    assert!(
        refused.to_string().contains("violates PodSecurity"),
        "{refused}"
    );
    // Everything it started is gone once it is dropped.
    let dir = plane.dir.display().to_string();
    let pids: Vec<u32> = kubemark_testbed::processes()
        .into_iter()
        .map(|p| p.pid)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&dir))
        })
        .collect();
    assert!(
        pids.len() >= 4,
        "etcd, apiserver, controller-manager, scheduler: {pids:?}"
    );
    drop(plane);
    let alive: Vec<u32> = pids
        .into_iter()
        .filter(|p| kubemark_testbed::is_alive(*p))
        .collect();
    assert!(alive.is_empty(), "still running: {alive:?}");
}
