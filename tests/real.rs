//! The real tier: `cargo xtask deploy` against real control planes (etcd,
//! kube-apiserver, kube-controller-manager, kube-scheduler of Kubernetes
//! v1.37.2, built from Kubernetes' own Go modules by `cargo xtask ci`), one as
//! the external cluster and one as the kubemark master. What only a real
//! server shows: RBAC, PodSecurity, LimitRange and ResourceQuota admission, the
//! real ReplicationController, namespace and garbage collectors, real
//! server-side apply and discovery.
//!
//! These control planes have no nodes: the hollow-node pods stay Pending, so
//! the tests here use `--no-wait` and `--skip-capacity-check` where deploy goes
//! as far as the pods.

#![allow(clippy::unwrap_used)]

mod support;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kubemark_testbed::k8s::{Binaries, Config, ControlPlane};
use support::{Args, Env, Run};

/// The version of the real control planes, and the image deploy is given.
const IMAGE: &str = "127.0.0.1:5000/kubemark:v1.37.2";

/// An address of this host that is not loopback, as the hollow-node pods reach the master.
fn host_ip() -> IpAddr {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    socket.connect("10.255.255.255:1").unwrap();
    let ip = socket.local_addr().unwrap().ip();
    if ip.is_loopback() || ip.is_unspecified() {
        IpAddr::from([127, 0, 0, 1])
    } else {
        ip
    }
}

struct Real {
    external: ControlPlane,
    master: ControlPlane,
    env: Env,
}

impl Real {
    fn start() -> Option<Self> {
        let bin = Binaries::for_tests()?;
        let address = host_ip();
        let start = |name: &str| {
            ControlPlane::start(
                &bin,
                Config {
                    name: name.into(),
                    address,
                    controllers: true,
                },
            )
            .unwrap()
        };
        Some(Self {
            external: start("external"),
            master: start("master"),
            env: Env::new(),
        })
    }

    /// `deploy [sub] --external-kubeconfig E --master-kubeconfig M`, E the
    /// admin's unless `external` is given.
    fn args(&self, sub: &[&str], external: Option<&Path>) -> Args {
        let args = Args::new(&["deploy"])
            .flags(sub)
            .opt(
                "--external-kubeconfig",
                external.unwrap_or(&self.external.admin_kubeconfig),
            )
            .opt("--master-kubeconfig", &self.master.admin_kubeconfig);
        if host_ip().is_loopback() && sub.is_empty() {
            args.flags(&["--allow-loopback-master"])
        } else {
            args
        }
    }

    /// `deploy [sub] --external-kubeconfig E --master-kubeconfig M extra...`
    fn xtask(&self, sub: &[&str], external: Option<&Path>, extra: &[&str]) -> Run {
        self.env.xtask(&self.args(sub, external).flags(extra))
    }

    fn deploy(&self, extra: &[&str]) -> Run {
        let args = [&["--image", IMAGE, "--skip-capacity-check"][..], extra].concat();
        self.xtask(&[], None, &args)
    }

    fn get(&self, args: &[&str]) -> Option<String> {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        self.external.kubectl(&all).ok()
    }
}

fn eventually(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("not within {limit:?}: {what}");
}

#[test]
fn deploy_status_and_destroy_against_real_control_planes() {
    let Some(r) = Real::start() else { return };
    // A kubemark newer than the real master is warned about (kubelets must not
    // be newer than their API server); --dry-run writes nothing.
    r.xtask(
        &[],
        None,
        &[
            "--image",
            "127.0.0.1:5000/kubemark:v1.38.0",
            "--replicas",
            "3",
            "--dry-run",
            "--skip-capacity-check",
        ],
    )
    .assert_code(0)
    .stderr_has(&["the kubemark image is v1.38.0, newer than the master's v1.37.2"]);
    assert!(r.get(&["namespace", "kubemark"]).is_none(), "dry run");
    r.deploy(&["--replicas", "3", "--no-wait"])
        .assert_code(0)
        .stderr_has(&["created namespace kubemark", "v1.37.2"]);
    // The real ReplicationController controller makes the pods (Pending: no nodes).
    eventually("3 hollow-node pods", Duration::from_secs(60), || {
        r.get(&["pods", "-n", "kubemark", "-o", "name"])
            .is_some_and(|out| out.lines().count() == 3)
    });
    // Real server-side apply: the same deploy again changes nothing.
    r.deploy(&["--replicas", "3", "--no-wait"])
        .assert_code(0)
        .stderr_has(&[
            "Namespace kubemark unchanged",
            "Secret kubeconfig unchanged",
            "ReplicationController hollow-node unchanged",
        ]);
    let run = r.xtask(&["status"], None, &["--output", "json"]);
    run.assert_code(0);
    let status = run.json();
    assert_eq!(status["wanted"].as_i64(), Some(3), "{status}");
    assert_eq!(status["pods"].as_i64(), Some(3), "{status}");

    // destroy on a real namespace controller and garbage collector: the
    // namespace holds only what the cluster puts in every namespace (the
    // default ServiceAccount, kube-root-ca.crt) besides ours, so it goes.
    r.xtask(&["destroy"], None, &["--timeout", "120s"])
        .assert_code(0)
        .stdout_has(&[
            "destroyed: 1 ReplicationController(s) with 3 pod(s), 1 secret(s), 0 configmap(s), the namespace",
        ]);
    assert!(
        r.get(&["namespace", "kubemark"]).is_none(),
        "the namespace is gone"
    );
    r.xtask(&["destroy"], None, &[])
        .assert_code(0)
        .stdout_has(&["nothing to destroy"]);
}

#[test]
fn a_namespace_that_existed_keeps_what_is_not_ours_on_a_real_server() {
    let Some(r) = Real::start() else { return };
    r.external.kubectl(&["create", "namespace", "pre"]).unwrap();
    r.external
        .kubectl(&[
            "-n",
            "pre",
            "create",
            "secret",
            "generic",
            "user-secret",
            "--from-literal=pw=x",
        ])
        .unwrap();
    r.deploy(&["--namespace", "pre", "--replicas", "2", "--no-wait"])
        .assert_code(0);
    r.xtask(
        &["destroy"],
        None,
        &["--namespace", "pre", "--timeout", "120s"],
    )
    .assert_code(0)
    .stdout_has(&[
        "left: namespace pre: kept, deploy did not create it",
        "left: Secret pre/user-secret",
    ]);
    assert!(r.get(&["-n", "pre", "secret", "user-secret"]).is_some());
    assert!(r.get(&["-n", "pre", "rc", "hollow-node"]).is_none());
}

#[test]
fn what_rbac_denies_is_listed_before_anything_is_written() {
    let Some(r) = Real::start() else { return };
    // A user who may read, and create namespaces, but not write secrets or RCs.
    let limited = r
        .external
        .kubeconfig_for("limited-user", Some("testers"))
        .unwrap();
    r.external
        .apply(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: limited\nrules:\n- apiGroups: [\"\"]\n  resources: [namespaces, pods, nodes, events, secrets, configmaps, replicationcontrollers, resourcequotas]\n  verbs: [get, list, watch]\n- apiGroups: [\"\"]\n  resources: [namespaces]\n  verbs: [create, patch]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: limited\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: limited\nsubjects:\n- apiGroup: rbac.authorization.k8s.io\n  kind: User\n  name: limited-user\n",
        )
        .unwrap();
    r.xtask(&[], Some(&limited), &["--image", IMAGE, "--replicas", "2"])
        .assert_code(1)
        .stderr_has(&[
            "the external cluster does not allow what deploy needs: patch secrets in kubemark, patch configmaps in kubemark, patch replicationcontrollers in kubemark, get pods/log in kubemark",
        ]);
    assert!(
        r.get(&["namespace", "kubemark"]).is_none(),
        "nothing written"
    );
}

#[test]
fn pod_security_quota_and_limit_range_are_diagnosed_before_anything_is_written() {
    let Some(r) = Real::start() else { return };
    let refused = |ns: &str, replicas: &str, expect: &[&str]| {
        r.deploy(&["--namespace", ns, "--replicas", replicas])
            .assert_code(1)
            .stderr_has(expect);
        assert!(
            r.get(&["-n", ns, "rc", "hollow-node"]).is_none()
                && r.get(&["-n", ns, "secret", "kubeconfig"]).is_none(),
            "{ns}: nothing written"
        );
    };

    // PodSecurity `baseline` refuses the privileged template.
    r.external
        .kubectl(&["create", "namespace", "baseline"])
        .unwrap();
    r.external
        .kubectl(&[
            "label",
            "namespace",
            "baseline",
            "pod-security.kubernetes.io/enforce=baseline",
        ])
        .unwrap();
    refused(
        "baseline",
        "2",
        &[
            "the external cluster would reject the hollow-node pods in namespace baseline",
            "violates PodSecurity \"baseline:latest\"",
            "pod-security.kubernetes.io/enforce=privileged",
        ],
    );

    // A ResourceQuota with room for 2 pods, 5 wanted.
    r.external
        .kubectl(&["create", "namespace", "quota"])
        .unwrap();
    r.external
        .kubectl(&["-n", "quota", "create", "quota", "small", "--hard=pods=2"])
        .unwrap();
    refused(
        "quota",
        "5",
        &[
            "the ResourceQuota of namespace quota is too small for 5 hollow-node pods",
            "ResourceQuota small: pods has room for 2 more hollow-node pod(s)",
        ],
    );

    // A LimitRange whose maximum is below the hollow kubelet's request.
    r.external
        .kubectl(&["create", "namespace", "limits"])
        .unwrap();
    r.external
        .apply("apiVersion: v1\nkind: LimitRange\nmetadata:\n  name: tiny\n  namespace: limits\nspec:\n  limits:\n  - type: Container\n    max:\n      cpu: 10m\n")
        .unwrap();
    refused(
        "limits",
        "1",
        &[
            "would reject the hollow-node pods in namespace limits",
            // The range's max became the default limit, which the requests exceed.
            "must be less than or equal to cpu limit of 10m",
            "the namespace's LimitRange tiny set limits",
        ],
    );
}

/// The project's template without its init container, which raises inotify
/// limits through a privileged `sysctl`: privileged containers cannot start on
/// this machine, so the node agent could only fail it.
fn template_without_privileged_init(dir: &Path) -> PathBuf {
    let full = kubemark_deploy::template::SIMPLIFIED;
    let start = full.find("      initContainers:").unwrap();
    let end = full.find("      volumes:").unwrap();
    let path = dir.join("hollow-node-unprivileged.yaml");
    std::fs::write(&path, format!("{}{}", &full[..start], &full[end..])).unwrap();
    path
}

/// Hollow nodes of namespace `kubemark` on the master, and how many are Ready.
fn hollow_nodes(master: &ControlPlane) -> (usize, usize) {
    let out = master
        .kubectl(&[
            "get",
            "nodes",
            "-l",
            "kubemark.dev/hollow-node=kubemark",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}",
        ])
        .unwrap();
    let lines: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
    let ready = lines.iter().filter(|l| l.ends_with(" True")).count();
    (lines.len(), ready)
}

/// Real parts for the guide: a registry holding the real kubemark image (built
/// by `cargo xtask image` from a fixture checkout whose `make` builds it with
/// Go), two real control planes, and the node agent with two Ready, untainted
/// workers on the external one.
fn real_parts() -> Option<(support::Registry, Real, kubemark_testbed::node::NodeAgent)> {
    Binaries::for_tests()?;
    let engine = std::process::Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !kubemark_testbed::installed("docker-registry") || !engine {
        assert!(
            std::env::var_os("KUBEMARK_REQUIRE_REAL").is_none(),
            "the real tier is required but docker-registry or the Docker engine is missing"
        );
        eprintln!("SKIPPED: no docker-registry or no Docker engine");
        return None;
    }
    let registry = support::Registry::start();
    let r = Real::start().unwrap();
    let checkout =
        kubemark_testbed::k8s::real_kubemark_checkout(&r.env.path("repos"), "kubernetes").unwrap();

    // Step 1 of the guide: build the real kubemark and its image, push it.
    let source = r.env.path("checkout");
    let run = r.env.xtask(&Args::image(
        &registry.addr,
        "v1.37.2-e2e",
        &checkout.dir,
        &source,
    ));
    run.assert_code(0);
    assert!(
        registry.digest("kubemark", "v1.37.2-e2e").is_some(),
        "pushed: {}",
        run.stderr
    );

    // Nodes for the external cluster: the node agent runs their pods in Docker.
    let agent = kubemark_testbed::node::NodeAgent::start(
        &r.external,
        kubemark_testbed::node::Config::new(&["worker-1", "worker-2"], host_ip()),
    )
    .unwrap();
    // A new Node carries the not-ready taint until the real node lifecycle
    // controller has seen it Ready; until then nothing schedules there (and
    // deploy's capacity check counts no room, rightly).
    eventually(
        "two Ready, untainted workers",
        Duration::from_secs(60),
        || {
            r.get(&[
                "nodes",
                "-o",
                "jsonpath={range .items[*]}{.metadata.name}:{.spec.taints}{\"\\n\"}{end}",
            ])
            .is_some_and(|out| {
                let lines: Vec<&str> = out.lines().filter(|l| !l.is_empty()).collect();
                lines.len() == 2 && lines.iter().all(|l| l.ends_with(':'))
            })
        },
    );
    Some((registry, r, agent))
}

/// `deploy` of `replicas` hollow nodes made from `template`, given four
/// minutes (the real kubelets start in Docker).
fn guide_deploy(r: &Real, template: &Path, replicas: &str) -> Args {
    r.args(&[], None)
        .opt("--replicas", replicas)
        .opt("--template", template)
        .flags(&["--timeout", "240s"])
}

/// The setup guide end to end on real parts: a kubernetes checkout whose `make`
/// builds the real kubemark v1.37.2, `cargo xtask image` pushing it to a real
/// registry, and `cargo xtask deploy` making the real hollow kubelets (run by
/// the node agent as Docker containers on the external cluster) register Ready
/// Nodes on the real master; re-run, scale 5 → 8 → 3, status, destroy twice.
#[test]
fn the_whole_guide_on_real_parts() {
    let Some((_registry, r, agent)) = real_parts() else {
        return;
    };
    let template = template_without_privileged_init(&r.env.path("."));
    let deploy = |replicas: &str| r.env.xtask(&guide_deploy(&r, &template, replicas));

    // Step 2: the image from image.json, 5 hollow nodes Ready on the real master.
    let run = deploy("5");
    if run.code != 0 {
        eprintln!("{}", agent.log_tail(60));
    }
    run.assert_code(0)
        .stdout_has(&["5 hollow nodes Ready in namespace kubemark"]);
    assert_eq!(hollow_nodes(&r.master), (5, 5));
    // The real hollow kubelet registered with the version of the image it runs.
    let versions = r
        .master
        .kubectl(&[
            "get",
            "nodes",
            "-l",
            "kubemark.dev/hollow-node=kubemark",
            "-o",
            "jsonpath={.items[*].status.nodeInfo.kubeletVersion}",
        ])
        .unwrap();
    assert!(
        versions.split_whitespace().all(|v| v == "v1.37.2"),
        "{versions}"
    );

    // The same deploy again changes nothing.
    deploy("5")
        .assert_code(0)
        .stderr_has(&["ReplicationController hollow-node unchanged"]);

    // Scale up, then down: the master's stale Nodes go.
    deploy("8").assert_code(0);
    assert_eq!(hollow_nodes(&r.master), (8, 8));
    deploy("3")
        .assert_code(0)
        .stdout_has(&["deleted 5 stale hollow node(s)"]);
    assert_eq!(hollow_nodes(&r.master), (3, 3));

    let run = r.xtask(&["status"], None, &["--output", "json"]);
    run.assert_code(0);
    let status = run.json();
    assert_eq!(support::status_counts(&status), [Some(3); 3], "{status}");

    // destroy: everything of ours on both sides, twice is fine.
    r.xtask(&["destroy"], None, &["--timeout", "180s"])
        .assert_code(0)
        .stdout_has(&["the namespace, 3 hollow node(s)"]);
    assert_eq!(hollow_nodes(&r.master).0, 0);
    assert!(r.get(&["namespace", "kubemark"]).is_none());
    r.xtask(&["destroy"], None, &[])
        .assert_code(0)
        .stdout_has(&["nothing to destroy"]);
    drop(agent);
}

#[test]
fn a_namespace_admin_deploys_and_destroys_without_cluster_wide_rights() {
    let Some(r) = Real::start() else { return };
    r.external
        .kubectl(&["create", "namespace", "team"])
        .unwrap();
    // Kubernetes' own `admin` role, bound in one namespace only.
    r.external
        .kubectl(&[
            "-n",
            "team",
            "create",
            "rolebinding",
            "team-admin",
            "--clusterrole=admin",
            "--user=team-admin",
        ])
        .unwrap();
    let admin = r.external.kubeconfig_for("team-admin", None).unwrap();
    r.xtask(
        &[],
        Some(&admin),
        &[
            "--namespace",
            "team",
            "--image",
            IMAGE,
            "--replicas",
            "2",
            "--no-wait",
            "--skip-capacity-check",
        ],
    )
    .assert_code(0)
    .stderr_has(&["capacity not checked (--skip-capacity-check)"]);
    r.xtask(
        &["destroy"],
        Some(&admin),
        &["--namespace", "team", "--timeout", "120s"],
    )
    .assert_code(0)
    .stdout_has(&[
        "destroyed: 1 ReplicationController(s) with 2 pod(s), 1 secret(s)",
        "left: namespace team: kept, deploy did not create it",
    ]);
    assert!(r.get(&["namespace", "team"]).is_some());
}

/// kube-apiserver restarted on both clusters in the middle of the wait: the
/// watches resume (and the real hollow kubelets reconnect), the deploy finishes.
#[test]
fn the_wait_survives_both_api_servers_restarting() {
    let Some((_registry, mut r, agent)) = real_parts() else {
        return;
    };
    let template = template_without_privileged_init(&r.env.path("."));
    let mut child = r.env.spawn(&guide_deploy(&r, &template, "4"));
    // Once the wait has begun (the RC exists), cut both API servers.
    eventually("the RC applied", Duration::from_secs(60), || {
        r.get(&["-n", "kubemark", "rc", "hollow-node"]).is_some()
    });
    assert!(
        child.try_wait().unwrap().is_none(),
        "deploy is still waiting when the API servers go down"
    );
    r.external.restart_apiserver().unwrap();
    r.master.restart_apiserver().unwrap();
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    if !out.status.success() {
        eprintln!("{}", agent.log_tail(40));
    }
    assert!(
        out.status.success(),
        "deploy through the restarts: {stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("4 hollow nodes Ready in namespace kubemark"),
        "{stdout}"
    );
    assert_eq!(hollow_nodes(&r.master), (4, 4));
    drop(agent);
}

/// Per-node identity on a real master: each real hollow kubelet bootstraps
/// its own `system:node:<name>` certificate (a CSR made with deploy's
/// bootstrap token, approved and signed by the real controller-manager), and
/// NodeRestriction keeps it from changing another hollow node's Node.
#[test]
fn each_hollow_node_its_own_identity_on_a_real_master() {
    let Some((_registry, r, agent)) = real_parts() else {
        return;
    };
    let template = template_without_privileged_init(&r.env.path("."));
    let run = r
        .env
        .xtask(&guide_deploy(&r, &template, "3").flags(&["--node-identity", "per-node"]));
    if run.code != 0 {
        eprintln!("{}", agent.log_tail(60));
    }
    run.assert_code(0).stdout_has(&[
        "3 hollow nodes Ready in namespace kubemark",
        "node identity per-node",
    ]);
    run.stderr_has(&[
        "node identity: per-node: each hollow kubelet bootstraps its own system:node certificate",
    ]);
    assert_eq!(hollow_nodes(&r.master), (3, 3));

    // The token deploy made, and the CSRs made with it: one per hollow node,
    // approved and issued by the real controller-manager.
    let token_id = r
        .master
        .kubectl(&[
            "-n",
            "kube-system",
            "get",
            "secrets",
            "-l",
            "kubemark.dev/hollow-node=kubemark",
            "-o",
            "jsonpath={.items[0].metadata.name}",
        ])
        .unwrap();
    let token_id = token_id
        .trim()
        .strip_prefix("bootstrap-token-")
        .unwrap()
        .to_owned();
    let csrs = r
        .master
        .kubectl(&[
            "get",
            "csr",
            "-o",
            "jsonpath={range .items[*]}{.spec.username} {.spec.signerName} {.status.conditions[0].type} {.status.certificate}{\"\\n\"}{end}",
        ])
        .unwrap();
    let ours: Vec<&str> = csrs
        .lines()
        .filter(|l| l.starts_with(&format!("system:bootstrap:{token_id} ")))
        .collect();
    assert_eq!(ours.len(), 3, "{csrs}");
    for csr in &ours {
        let fields: Vec<&str> = csr.split_whitespace().collect();
        assert_eq!(
            &fields[1..3],
            ["kubernetes.io/kube-apiserver-client-kubelet", "Approved"],
            "{csr}"
        );
        assert!(fields.len() == 4 && !fields[3].is_empty(), "issued: {csr}");
    }

    // One hollow kubelet's own credential, from its container: the master
    // knows it as that node, and NodeRestriction refuses it another's Node.
    let names = r
        .master
        .kubectl(&[
            "get",
            "nodes",
            "-l",
            "kubemark.dev/hollow-node=kubemark",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ])
        .unwrap();
    let names: Vec<&str> = names.split_whitespace().collect();
    let (me, other) = (names[0], names[1]);
    let container = support::sh(
        "docker",
        &[
            "ps",
            "-q",
            "--filter",
            &format!("label=io.kubernetes.pod.name={me}"),
            "--filter",
            "label=io.kubernetes.container.name=hollow-kubelet",
        ],
        None,
    );
    let pem = r.env.path("hollow-kubelet.pem");
    support::sh(
        "docker",
        &[
            "cp",
            "-L",
            &format!(
                "{}:/var/lib/hollow-identity/pki/kubelet-client-current.pem",
                container.trim()
            ),
            pem.to_str().unwrap(),
        ],
        None,
    );
    let as_node = |args: &[&str]| {
        let pem = pem.to_str().unwrap();
        let ca = r.master.dir.join("ca.crt");
        let output = std::process::Command::new("kubectl")
            .args([
                "--server",
                &r.master.server,
                "--certificate-authority",
                ca.to_str().unwrap(),
                "--client-certificate",
                pem,
                "--client-key",
                pem,
                "--kubeconfig",
                "/dev/null",
            ])
            .args(args)
            .output()
            .unwrap();
        (
            output.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        )
    };
    let (ok, who) = as_node(&[
        "auth",
        "whoami",
        "-o",
        "jsonpath={.status.userInfo.username}",
    ]);
    assert!(ok, "{who}");
    assert_eq!(who.trim(), format!("system:node:{me}"));
    let (ok, out) = as_node(&["label", "node", me, "kubemark-test/self=yes"]);
    assert!(ok, "a node may label itself: {out}");
    let (ok, out) = as_node(&["label", "node", other, "kubemark-test/other=yes"]);
    assert!(!ok, "NodeRestriction lets {me} change {other}: {out}");
    assert!(
        out.contains("Forbidden") || out.contains("forbidden"),
        "{out}"
    );

    // destroy takes the token, the bindings and the CSRs with it.
    r.xtask(&["destroy"], None, &["--timeout", "180s"])
        .assert_code(0)
        .stdout_has(&[
            "per-node identity on the master: ",
            &format!("Secret kube-system/bootstrap-token-{token_id}"),
            "ClusterRoleBinding kubemark-deploy:kubemark:node-bootstrapper",
        ]);
    let left = r
        .master
        .kubectl(&["get", "csr,clusterrolebindings", "-o", "name"])
        .unwrap();
    assert!(!left.contains("kubemark-deploy:kubemark"), "{left}");
    assert!(
        r.master
            .kubectl(&["-n", "kube-system", "get", "secrets", "-o", "name"])
            .unwrap()
            .lines()
            .all(|l| !l.contains(&token_id)),
    );
    let csrs_left = r
        .master
        .kubectl(&["get", "csr", "-o", "jsonpath={.items[*].spec.username}"])
        .unwrap();
    assert!(!csrs_left.contains(&token_id), "{csrs_left}");
    drop(agent);
}

/// Per-node identity with master credentials that may write the token and the
/// bindings but not bind the roles: `auto` says why it stays shared, and an
/// explicit `per-node` is refused naming the right, before anything is written.
#[test]
fn per_node_identity_without_the_right_to_bind_is_refused_before_any_write() {
    let Some(r) = Real::start() else { return };
    let limited = r.master.kubeconfig_for("no-bind", None).unwrap();
    r.master
        .apply(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: no-bind\nrules:\n- apiGroups: [\"\"]\n  resources: [nodes, pods]\n  verbs: [get, list, watch, delete]\n- apiGroups: [\"\"]\n  resources: [secrets]\n  verbs: [get, list, create, patch]\n- apiGroups: [rbac.authorization.k8s.io]\n  resources: [clusterrolebindings]\n  verbs: [get, list, create, patch]\n- apiGroups: [certificates.k8s.io]\n  resources: [certificatesigningrequests]\n  verbs: [get, list]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: no-bind\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: no-bind\nsubjects:\n- apiGroup: rbac.authorization.k8s.io\n  kind: User\n  name: no-bind\n",
        )
        .unwrap();
    let deploy = |identity: &str| {
        r.env.xtask(
            &Args::new(&["deploy"])
                .opt("--external-kubeconfig", &r.external.admin_kubeconfig)
                .opt("--master-kubeconfig", &limited)
                .flags(&[
                    "--image",
                    IMAGE,
                    "--replicas",
                    "2",
                    "--node-identity",
                    identity,
                    "--dry-run",
                    "--skip-capacity-check",
                    "--allow-loopback-master",
                ]),
        )
    };
    deploy("auto")
        .assert_code(0)
        .stderr_has(&["node identity: shared, one credential for every hollow node (the master's credentials may not bind clusterroles"]);
    deploy("per-node")
        .assert_code(1)
        .stderr_has(&["the kubemark master does not allow what deploy needs: bind clusterroles"]);
    assert!(
        r.master
            .kubectl(&["-n", "kube-system", "get", "secrets", "-o", "name"])
            .unwrap()
            .lines()
            .all(|l| !l.contains("bootstrap-token-")),
        "no token written"
    );
    assert!(
        r.get(&["namespace", "kubemark"]).is_none(),
        "nothing written"
    );
}
