//! End-to-end tests of `cargo xtask deploy` (and `status`, `destroy`,
//! `render`) against two simulator instances over HTTPS: the external
//! cluster and the kubemark master, started in this test process.

#![allow(clippy::unwrap_used)]

mod support;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use std::path::Path;

use kubemark_sim::meta::idx;
use kubemark_sim::{Sim, SimConfig, Timing};
use support::{Args, Env, Run};

/// The image deploy is given unless a test says otherwise.
const IMAGE: &str = "127.0.0.1:5000/kubemark:v1.33.0";

/// An address of this host that is not loopback, so that the master kubeconfig
/// passes deploy's loopback check as a real master's would.
fn routable_ip() -> Option<IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("10.255.255.255:1").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

fn timing() -> Timing {
    Timing {
        kubelet_delay: Duration::from_millis(100),
        backoff: Duration::from_millis(500),
        backoff_max: Duration::from_secs(2),
        lease_renew: Duration::from_secs(2),
        status_report: Duration::from_secs(60),
        node_grace: Duration::from_secs(20),
        retry: Duration::from_millis(300),
    }
}

/// Two clusters and an isolated environment for the xtask binary.
struct Clusters {
    external: Sim,
    master: Sim,
    env: Arc<Env>,
    /// `--allow-loopback-master` when this host has no other address.
    loopback: bool,
}

impl Clusters {
    async fn start(
        external: impl FnOnce(&mut SimConfig),
        master: impl FnOnce(&mut SimConfig),
    ) -> Self {
        let env = Arc::new(Env::new());
        let ip = routable_ip();
        let base = SimConfig {
            listen: ip.unwrap_or(IpAddr::from([127, 0, 0, 1])),
            timing: timing(),
            kubeconfig_dir: Some(env.path("kubeconfigs")),
            ..SimConfig::default()
        };
        let mut e = SimConfig {
            name: "external".into(),
            workers: 3,
            worker_cpu: "8".into(),
            worker_memory: "32Gi".into(),
            ..base.clone()
        };
        external(&mut e);
        let mut m = SimConfig {
            name: "master".into(),
            workers: 0,
            ..base
        };
        master(&mut m);
        Self {
            external: Sim::start(e).await.unwrap(),
            master: Sim::start(m).await.unwrap(),
            env,
            loopback: ip.is_none(),
        }
    }

    async fn default() -> Self {
        Self::start(|_| {}, |_| {}).await
    }

    /// `deploy <sub>` with both kubeconfigs.
    fn args(&self, sub: &[&str]) -> Args {
        self.args_against(&self.external.kubeconfig, sub)
    }

    /// `deploy <sub>` with `external` as the external cluster's kubeconfig and
    /// the master's.
    fn args_against(&self, external: &Path, sub: &[&str]) -> Args {
        let args = Args::new(&["deploy"])
            .flags(sub)
            .opt("--external-kubeconfig", external)
            .opt("--master-kubeconfig", &self.master.kubeconfig);
        if self.loopback && sub.is_empty() {
            args.flags(&["--allow-loopback-master"])
        } else {
            args
        }
    }

    /// The binary with `args`, off the runtime's threads (the clusters answer on them).
    async fn xtask(&self, args: Args) -> Run {
        let env = Arc::clone(&self.env);
        tokio::task::spawn_blocking(move || env.xtask(&args))
            .await
            .unwrap()
    }

    async fn run(&self, sub: &[&str], extra: &[&str]) -> Run {
        self.xtask(self.args(sub).flags(extra)).await
    }

    async fn deploy(&self, extra: &[&str]) -> Run {
        self.run(&[], &[&["--image", IMAGE][..], extra].concat())
            .await
    }

    /// Whether the external cluster holds `name` of resource `res` in namespace `ns`.
    fn has(&self, res: usize, ns: &str, name: &str) -> bool {
        self.external.store().get(res, ns, name).is_some()
    }

    fn master_has_node(&self, name: &str) -> bool {
        self.master.store().get(idx::NODES, "", name).is_some()
    }

    /// Hollow nodes of namespace `kubemark` on the master, and how many are Ready.
    fn master_nodes(&self) -> (usize, usize) {
        let (nodes, _) = self.master.store().list(idx::NODES, None);
        let ours: Vec<_> = nodes
            .iter()
            .filter(|n| {
                n.value
                    .pointer("/metadata/labels/kubemark.dev~1hollow-node")
                    .and_then(|v| v.as_str())
                    == Some("kubemark")
            })
            .collect();
        let ready = ours
            .iter()
            .filter(|n| {
                n.value["status"]["conditions"].as_array().is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
            })
            .count();
        (ours.len(), ready)
    }

    fn external_pods(&self) -> usize {
        self.external
            .store()
            .list(idx::PODS, Some("kubemark"))
            .0
            .len()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deploy_rerun_scale_status_and_destroy() {
    let c = Clusters::default().await;
    // A real node of the master that nothing may touch.
    c.master
        .store()
        .create(idx::NODES, serde_json::json!({"metadata": {"name": "real-node-1", "labels": {"kubernetes.io/hostname": "real-node-1"}}}))
        .unwrap();

    c.deploy(&["--replicas", "50"])
        .await
        .assert_code(0)
        .stdout_has(&[
            "50 hollow nodes Ready in namespace kubemark",
            "registration latency",
        ])
        .stderr_has(&["room for"]);
    assert_eq!(c.master_nodes(), (50, 50));
    assert_eq!(c.external_pods(), 50);
    // What deploy writes (spec and its managed fields), not the status the RC
    // controller keeps updating after the wait returned.
    let rc_written = || {
        let rc = c
            .external
            .store()
            .get(idx::RCS, "kubemark", "hollow-node")
            .unwrap()
            .value
            .clone();
        let ours: Vec<serde_json::Value> = rc["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["manager"] == "kubemark-deploy")
            .cloned()
            .collect();
        (
            rc["spec"].clone(),
            rc["metadata"]["generation"].clone(),
            ours,
        )
    };
    let rc_before = rc_written();

    // The same deploy again changes nothing.
    c.deploy(&["--replicas", "50"])
        .await
        .assert_code(0)
        .stderr_has(&[
            "Namespace kubemark unchanged",
            "Secret kubeconfig unchanged",
            "ReplicationController hollow-node unchanged",
        ]);
    assert_eq!(rc_written(), rc_before);

    // status: counts and the map hollow node ↔ pod ↔ external node.
    let run = c.run(&["status"], &["--output", "json"]).await;
    run.assert_code(0);
    let status = run.json();
    assert_eq!(support::status_counts(&status), [Some(50); 3]);
    let row = &status["rows"][0];
    assert_eq!(row["hollow_node"], row["pod"]);
    assert!(
        row["external_node"]
            .as_str()
            .unwrap()
            .starts_with("worker-"),
        "{row}"
    );

    // Scale up, then down: the master's stale nodes go.
    c.deploy(&["--replicas", "80"]).await.assert_code(0);
    assert_eq!(c.master_nodes(), (80, 80));
    c.deploy(&["--replicas", "20"])
        .await
        .assert_code(0)
        .stdout_has(&["deleted 60 stale hollow node(s)"]);
    assert_eq!(c.master_nodes(), (20, 20));
    assert_eq!(c.external_pods(), 20);

    // destroy leaves nothing of ours on either side, and the real node.
    c.run(&["destroy"], &[])
        .await
        .assert_code(0)
        .stdout_has(&[
            "destroyed: 1 ReplicationController(s) with 20 pod(s), 1 secret(s), 0 configmap(s), the namespace, 20 hollow node(s)",
        ]);
    assert!(!c.has(idx::NAMESPACES, "", "kubemark"));
    assert_eq!(c.external_pods(), 0);
    assert_eq!(c.master_nodes(), (0, 0));
    assert!(c.master_has_node("real-node-1"));
    c.run(&["destroy"], &[])
        .await
        .assert_code(0)
        .stdout_has(&["nothing to destroy"]);
}

const MASTER_KUBECONFIG: &str = "apiVersion: v1\nkind: Config\ncurrent-context: master\nclusters:\n- name: master\n  cluster:\n    server: https://10.1.2.3:6443\n    certificate-authority-data: Q0E=\nusers:\n- name: admin\n  user:\n    token: not-a-real-token\ncontexts:\n- name: master\n  context: {cluster: master, user: admin}\n";

fn snapshot(name: &str, actual: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/snapshots")
        .join(name);
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{} is missing; run with UPDATE_SNAPSHOTS=1", path.display()));
    assert_eq!(
        actual,
        expected,
        "the output differs from {} (UPDATE_SNAPSHOTS=1 rewrites it)",
        path.display()
    );
}

#[test]
fn render_prints_the_manifests_and_touches_nothing() {
    let env = Env::new();
    let args = [
        "--replicas",
        "3",
        "--image",
        IMAGE,
        "--node-labels",
        "zone=a",
        "--max-pods",
        "30",
    ];
    let run = render(&env, &args);
    run.assert_code(0);
    snapshot("render-simplified.yaml", &run.stdout);
    // Secret data is redacted.
    run.stdout_has(&["<redacted"])
        .stdout_lacks(&["not-a-real-token", "bm90LWEtcmVhbC10b2tlbg"]);
    let shown = render(&env, &[&args[..], &["--show-secrets"]].concat());
    shown.assert_code(0);
    let docs: Vec<serde_json::Value> = serde_yaml::Deserializer::from_str(&shown.stdout)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    let secret = docs.iter().find(|d| d["kind"] == "Secret").unwrap();
    let decoded = base64_decode(secret["data"]["kubelet.kubeconfig"].as_str().unwrap());
    assert!(
        decoded.contains("server: https://10.1.2.3:6443") && decoded.contains("not-a-real-token"),
        "{decoded}"
    );

    // The manifests pass the API schemas of Kubernetes 1.33, checked offline.
    if let Ok(validator) = std::env::var("KUBEMARK_KUBERNETES_VALIDATE") {
        let file = env.path("rendered.yaml");
        std::fs::write(&file, &shown.stdout).unwrap();
        let out = std::process::Command::new(validator)
            .args(["--strict", "-k", "1.33.0"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kubernetes-validate: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn base64_decode(s: &str) -> String {
    let out = std::process::Command::new("base64")
        .arg("-d")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(s.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An upstream-style template: go-runner command lines with the parameters
/// spliced in, node-problem-detector reading a configmap and its own kubeconfig.
const UPSTREAM_STYLE: &str = r#"apiVersion: v1
kind: ReplicationController
metadata:
  name: hollow-node
  labels:
    name: hollow-node
    {{kubemark_mig_config}}
spec:
  replicas: {{numreplicas}}
  selector:
    name: hollow-node
  template:
    metadata:
      labels:
        name: hollow-node
        {{kubemark_mig_config}}
    spec:
      volumes:
      - name: kubeconfig-volume
        secret:
          secretName: kubeconfig
      - name: kernelmonitorconfig-volume
        configMap:
          name: node-configmap
      - name: logs-volume
        hostPath:
          path: /var/log
      containers:
      - name: hollow-kubelet
        image: {{kubemark_image_registry}}/kubemark:{{kubemark_image_tag}}
        env:
        - name: NODE_NAME
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
        command: [
          "/go-runner",
          "-log-file=/var/log/kubelet-$(NODE_NAME).log",
          "/kubemark",
          "--morph=kubelet",
          "--name=$(NODE_NAME)",
          "--kubeconfig=/kubeconfig/kubelet.kubeconfig",
          "--node-labels={{hollow_node_labels}}",
          {{hollow_kubelet_params}}
        ]
        volumeMounts:
        - name: kubeconfig-volume
          mountPath: /kubeconfig
          readOnly: true
        - name: logs-volume
          mountPath: /var/log
        resources:
          requests:
            cpu: {{hollow_kubelet_millicpu}}m
            memory: {{hollow_kubelet_mem_Ki}}Ki
      - name: hollow-proxy
        image: {{kubemark_image_registry}}/kubemark:{{kubemark_image_tag}}
        env:
        - name: NODE_NAME
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
        command: [
          "/go-runner",
          "/kubemark",
          "--morph=proxy",
          "--name=$(NODE_NAME)",
          "--kubeconfig=/kubeconfig/kubeproxy.kubeconfig",
          {{hollow_proxy_params}}
        ]
        volumeMounts:
        - name: kubeconfig-volume
          mountPath: /kubeconfig
          readOnly: true
        resources:
          requests:
            cpu: {{hollow_proxy_millicpu}}m
            memory: {{hollow_proxy_mem_Ki}}Ki
      - name: hollow-node-problem-detector
        image: registry.k8s.io/node-problem-detector/node-problem-detector:v0.8.21
        env:
        - name: NODE_NAME
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
        command:
        - /bin/sh
        - -c
        - /node-problem-detector --system-log-monitors=/config/kernel.monitor --apiserver-override="https://{{master_ip}}:443?inClusterConfig=false&auth=/kubeconfig/npd.kubeconfig" --alsologtostderr 1>>/var/log/npd-$(NODE_NAME).log 2>&1
        volumeMounts:
        - name: kubeconfig-volume
          mountPath: /kubeconfig
          readOnly: true
        - name: kernelmonitorconfig-volume
          mountPath: /config
          readOnly: true
        resources:
          requests:
            cpu: {{npd_millicpu}}m
            memory: {{npd_mem_Ki}}Ki
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_upstream_template_renders_and_deploys() {
    let c = Clusters::default().await;
    let checkout = c.env.path("kubernetes");
    let template = checkout.join("test/kubemark/resources/hollow-node_template.yaml");
    std::fs::create_dir_all(template.parent().unwrap()).unwrap();
    std::fs::write(&template, UPSTREAM_STYLE).unwrap();
    let source = checkout.to_str().unwrap();
    c.deploy(&[
        "--replicas",
        "5",
        "--template",
        "upstream",
        "--source-dir",
        source,
        "--max-pods",
        "40",
    ])
    .await
    .assert_code(0)
    .stderr_has(&["ConfigMap node-configmap applied"]);
    assert_eq!(c.master_nodes(), (5, 5));
    let cm = c
        .external
        .store()
        .get(idx::CONFIGMAPS, "kubemark", "node-configmap")
        .unwrap();
    assert!(
        cm.value["data"]["kernel.monitor"]
            .as_str()
            .unwrap()
            .contains("kmsg")
    );
    let secret = c
        .external
        .store()
        .get(idx::SECRETS, "kubemark", "kubeconfig")
        .unwrap();
    for key in [
        "kubelet.kubeconfig",
        "kubeproxy.kubeconfig",
        "npd.kubeconfig",
    ] {
        assert!(secret.value["data"][key].is_string(), "{key}");
    }
    let (nodes, _) = c.master.store().list(idx::NODES, None);
    assert!(
        nodes
            .iter()
            .all(|n| n.value["status"]["capacity"]["pods"] == "40"),
        "--max-pods reached the hollow kubelets"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn too_little_capacity_is_refused_before_anything_is_created() {
    let c = Clusters::start(
        |e| {
            e.workers = 1;
            e.worker_cpu = "500m".into();
        },
        |_| {},
    )
    .await;
    c.deploy(&["--replicas", "50"])
        .await
        .assert_code(1)
        .stderr_has(&[
            "the external cluster has room for 8 hollow-node pod(s), 50 needed",
            "each hollow-node pod requests 60m CPU",
            "--skip-capacity-check",
        ]);
    assert!(
        !c.has(idx::NAMESPACES, "", "kubemark"),
        "nothing was created"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_image_that_does_not_pull_is_diagnosed() {
    let c = Clusters::start(
        |e| e.images.known = Some(vec!["busybox:1.32".into()]),
        |_| {},
    )
    .await;
    c.deploy(&["--replicas", "3", "--timeout", "8s"])
        .await
        .assert_code(1)
        .stderr_has(&[
            "0/3 hollow nodes Ready after 8s",
            "3 pods ImagePullBackOff: image 127.0.0.1:5000/kubemark:v1.33.0 cannot be pulled",
            "deploy again",
        ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_master_the_pods_cannot_reach_is_diagnosed() {
    let master_port = kubemark_testbed::free_port().unwrap();
    let ip = routable_ip().unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let c = Clusters::start(
        |e| e.unreachable = vec![format!("{ip}:{master_port}")],
        |m| m.port = master_port,
    )
    .await;
    // With the hollow kubelet's own words.
    c.deploy(&["--replicas", "2", "--timeout", "8s"])
        .await
        .assert_code(1)
        .stderr_has(&[
            "2 pods CrashLoopBackOff (container hollow-kubelet keeps exiting)",
            "i/o timeout",
        ]);
}

fn custom_template(c: &Clusters, name: &str, edit: impl FnOnce(String) -> String) -> String {
    let path = c.env.path(name);
    std::fs::write(
        &path,
        edit(kubemark_deploy::template::SIMPLIFIED.to_owned()),
    )
    .unwrap();
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wrong_secret_key_and_a_missing_configmap_are_diagnosed() {
    let c = Clusters::default().await;
    let wrong_key = custom_template(&c, "wrong-key.yaml", |t| {
        t.replace("/kubeconfig/kubelet.kubeconfig", "/kubeconfig/kubelet.conf")
    });
    c.deploy(&[
        "--replicas",
        "2",
        "--timeout",
        "8s",
        "--template",
        &wrong_key,
    ])
    .await
    .assert_code(1)
    .stderr_has(&[
        "2 pods CrashLoopBackOff (container hollow-kubelet keeps exiting)",
        "open /kubeconfig/kubelet.conf: no such file or directory",
    ]);
    c.run(&["destroy"], &[]).await.assert_code(0);

    let extra_volume = custom_template(&c, "configmap.yaml", |t| {
        t.replace(
            "      - name: logs-volume\n        hostPath:",
            "      - name: extra\n        configMap:\n          name: hollow-extra\n      - name: logs-volume\n        hostPath:",
        )
    });
    c.deploy(&["--replicas", "2", "--timeout", "8s", "--template", &extra_volume])
        .await
        .assert_code(1)
        .stderr_has(&[
            "the template mounts the configmap `hollow-extra`, which deploy does not create",
            "2 pods FailedMount: MountVolume.SetUp failed for volume \"extra\" : configmap \"hollow-extra\" not found",
        ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubeconfigs_a_pod_cannot_use_are_refused() {
    let c = Clusters::default().await;
    let text = std::fs::read_to_string(&c.master.kubeconfig).unwrap();
    let port = c.master.url.rsplit(':').next().unwrap();
    let loopback = c.env.path("loopback.kubeconfig");
    let host = c
        .master
        .url
        .split("://")
        .nth(1)
        .unwrap()
        .rsplit_once(':')
        .unwrap()
        .0
        .to_owned();
    std::fs::write(
        &loopback,
        text.replace(
            &format!("https://{host}:{port}"),
            &format!("https://127.0.0.1:{port}"),
        ),
    )
    .unwrap();
    let exec = c.env.path("exec.kubeconfig");
    std::fs::write(
        &exec,
        text.replace(&format!("    token: {}\n", c.master.token), "    exec:\n      apiVersion: client.authentication.k8s.io/v1beta1\n      command: gke-gcloud-auth-plugin\n"),
    )
    .unwrap();
    for (file, expect) in [
        (&loopback, "is this machine: 127.0.0.1 (a loopback address)"),
        (&exec, "the exec plugin `gke-gcloud-auth-plugin`"),
    ] {
        // Without --allow-loopback-master, whatever this host's addresses.
        let args = Args::new(&["deploy"])
            .opt("--external-kubeconfig", &c.external.kubeconfig)
            .opt("--master-kubeconfig", file)
            .flags(&["--replicas", "2", "--image", "127.0.0.1:5000/kubemark:v1"]);
        c.xtask(args)
            .await
            .assert_code(2)
            .stderr_has(&[expect, "hint:"]);
        assert!(!c.has(idx::NAMESPACES, "", "kubemark"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn undefined_placeholders_and_bad_flags_are_usage_errors() {
    let c = Clusters::default().await;
    let template = custom_template(&c, "undefined.yaml", |t| {
        t.replace(
            "name: hollow-kubelet",
            "name: hollow-kubelet\n        workingDir: {{ a_missing }}/{{ b_missing }}",
        )
    });
    c.deploy(&["--replicas", "2", "--template", &template])
        .await
        .assert_code(2)
        .stderr_has(&[
            "needs 2 value(s) nobody set: a_missing, b_missing",
            "--set a_missing=... --set b_missing=...",
        ]);
    c.deploy(&[
        "--replicas",
        "2",
        "--template",
        &template,
        "--set",
        "a_missing=/x",
        "--set",
        "b_missing=y",
        "--no-wait",
    ])
    .await
    .assert_code(0);

    for (extra, expect) in [
        (
            vec!["--replicas", "many"],
            "--replicas `many` is not a number of hollow nodes",
        ),
        (
            vec!["--replicas", "-1"],
            "--replicas -1: hollow nodes cannot be negative",
        ),
        (
            vec!["--replicas", "3000000000"],
            "more hollow nodes than a ReplicationController can hold (at most 2147483647)",
        ),
        (
            vec!["--replicas", "2", "--timeout", "0"],
            "--timeout 0: a timeout of zero",
        ),
        (
            vec!["--replicas", "2", "--set", "namespace=elsewhere"],
            "deploy fills `namespace` itself",
        ),
        (
            vec!["--replicas", "2", "--set", "hollow_node_labels=a=b"],
            "deploy fills `hollow_node_labels` itself",
        ),
        (
            vec![
                "--replicas",
                "2",
                "--node-labels",
                "kubemark.dev/hollow-node=prod",
            ],
            "`kubemark.dev/hollow-node` is deploy's own label",
        ),
        (
            vec!["--replicas", "2", "--timeout", "10000000000000000000h"],
            "longer than a week",
        ),
        (
            vec!["--replicas", "2", "--node-labels", "zone"],
            "is not key=value",
        ),
        (
            vec!["--replicas", "2", "--register-with-taints", "a=b"],
            "key=value:Effect",
        ),
        (
            vec!["--replicas", "2", "--timeout", "soon"],
            "is not a duration",
        ),
        (
            vec!["--replicas", "2", "--kubelet-cpu", "fast"],
            "is not a CPU quantity",
        ),
        (
            vec!["--replicas", "2", "--namespace", "Not_Valid"],
            "not a valid namespace",
        ),
        (vec!["--replicas", "2", "--set", "x"], "is not key=value"),
        (vec![], "no --replicas given"),
    ] {
        c.deploy(&extra).await.assert_code(2).stderr_has(&[expect]);
    }
    c.run(&[], &["--replicas", "2", "--image", "r.io/other:v1"])
        .await
        .assert_code(2)
        .stderr_has(&["is in the repository `other`, not `kubemark`"]);
    c.xtask(Args::new(&["deploy", "--replicas", "2"]))
        .await
        .assert_code(2)
        .stderr_has(&["no kubeconfig for the kubemark master"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn missing_permissions_are_listed_before_anything_is_created() {
    let c = Clusters::start(
        |e| e.deny = vec![("patch".into(), "replicationcontrollers".into())],
        |_| {},
    )
    .await;
    c.deploy(&["--replicas", "2"])
        .await
        .assert_code(1)
        .stderr_has(&[
            "the external cluster does not allow what deploy needs: patch replicationcontrollers in kubemark",
        ]);
    assert!(!c.has(idx::NAMESPACES, "", "kubemark"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_hundred_nodes_converge_under_faults() {
    let faulty = |s: &mut SimConfig| {
        s.faults.errors = kubemark_sim::Faults::parse_errors("*:*:500:0.05,*:*:429:0.05").unwrap();
        s.faults.watch_max_duration = Some(Duration::from_secs(3));
        s.faults.seed = 42;
    };
    let c = Clusters::start(
        |e| {
            e.workers = 6;
            faulty(e);
        },
        faulty,
    )
    .await;
    c.deploy(&["--replicas", "500"])
        .await
        .assert_code(0)
        .stdout_has(&["500 hollow nodes Ready"]);
    assert_eq!(
        c.master_nodes(),
        (500, 500),
        "exactly 500 nodes on the master"
    );
    assert_eq!(
        c.external_pods(),
        500,
        "exactly 500 pods on the external cluster"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ctrl_c_mid_wait_leaves_everything_and_a_rerun_finishes() {
    let c = Clusters::start(|e| e.timing.kubelet_delay = Duration::from_secs(4), |_| {}).await;
    let args = c.args(&[]).flags(&["--replicas", "5", "--image", IMAGE]);
    let env = Arc::clone(&c.env);
    let (code, stderr) = tokio::task::spawn_blocking(move || {
        let mut child = env.spawn(&args);
        let (waiting, reader) = support::watch_stderr(&mut child, "==> wait");
        waiting
            .recv_timeout(Duration::from_secs(30))
            .expect("the wait starts");
        std::thread::sleep(Duration::from_millis(500));
        support::interrupt(&child);
        let status = child.wait().unwrap();
        (status.code(), reader.join().unwrap())
    })
    .await
    .unwrap();
    assert_eq!(code, Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(
        c.has(idx::RCS, "kubemark", "hollow-node"),
        "everything stays as it is"
    );
    c.deploy(&["--replicas", "5"])
        .await
        .assert_code(0)
        .stderr_has(&["ReplicationController hollow-node unchanged"]);
    assert_eq!(c.master_nodes(), (5, 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn destroy_that_cannot_list_what_it_made_fails_without_claiming_success() {
    let c = Clusters::start(
        |e| {
            e.faults.errors = kubemark_sim::Faults::parse_errors("list:secrets:500:1").unwrap();
        },
        |_| {},
    )
    .await;
    c.deploy(&["--replicas", "2"]).await.assert_code(0);
    let run = c.run(&["destroy"], &[]).await;
    // The failed step is named, and there is no success line.
    run.assert_code(1)
        .stderr_has(&["listing secrets"])
        .never_prints(&["destroyed"]);
    assert!(
        c.has(idx::SECRETS, "kubemark", "kubeconfig"),
        "the secret it could not see is not reported deleted, and is still there"
    );
}

// ---------------------------------------------------------------------------
// Safety on a shared cluster (issue 12): destroy deletes only what deploy made.

/// kubectl, as a user of the external cluster would run it.
fn kubectl(c: &Clusters, args: &[&str]) -> String {
    let out = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&c.external.kubeconfig)
        .arg("--cache-dir")
        .arg(c.env.path("kubectl-cache"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_namespace_that_existed_is_used_but_never_taken_over_or_deleted() {
    let c = Clusters::default().await;
    kubectl(&c, &["create", "namespace", "pre"]);
    kubectl(
        &c,
        &[
            "-n",
            "pre",
            "create",
            "secret",
            "generic",
            "user-secret",
            "--from-literal=pw=x",
        ],
    );
    kubectl(
        &c,
        &[
            "-n",
            "pre",
            "create",
            "configmap",
            "user-notes",
            "--from-literal=a=b",
        ],
    );
    c.deploy(&["--namespace", "pre", "--replicas", "3"])
        .await
        .assert_code(0)
        .stderr_has(&["namespace pre exists and deploy did not create it"]);
    let ns = c.external.store().get(idx::NAMESPACES, "", "pre").unwrap();
    assert!(
        ns.value
            .pointer("/metadata/labels/app.kubernetes.io~1managed-by")
            .is_none()
            && ns
                .value
                .pointer("/metadata/annotations/kubemark.dev~1created-by")
                .is_none(),
        "an existing namespace is not marked as deploy's: {}",
        ns.value["metadata"]
    );

    c.run(&["destroy"], &["--namespace", "pre"])
        .await
        .assert_code(0)
        .stdout_has(&[
            "destroyed: 1 ReplicationController(s) with 3 pod(s), 1 secret(s)",
            "left: namespace pre: kept, deploy did not create it",
            "left: ConfigMap pre/user-notes (managed by kubectl-create): not deploy's",
            "left: Secret pre/user-secret (managed by kubectl-create): not deploy's",
        ]);
    assert!(c.has(idx::NAMESPACES, "", "pre"));
    assert!(c.has(idx::SECRETS, "pre", "user-secret"));
    assert!(c.has(idx::CONFIGMAPS, "pre", "user-notes"));
    assert!(!c.has(idx::SECRETS, "pre", "kubeconfig"));
    assert!(!c.has(idx::RCS, "pre", "hollow-node"));
    assert_eq!(c.external.store().list(idx::PODS, Some("pre")).0.len(), 0);

    // The cluster's own namespaces are never a target, for deploy or destroy.
    for ns in ["kube-system", "default", "kube-public", "kube-node-lease"] {
        c.deploy(&["--namespace", ns, "--replicas", "1"])
            .await
            .assert_code(2)
            .stderr_has(&["one of the cluster's own namespaces"]);
        c.run(&["destroy"], &["--namespace", ns])
            .await
            .assert_code(2);
    }
    assert!(!c.has(idx::RCS, "kube-system", "hollow-node"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_namespace_deploy_created_is_kept_while_it_holds_what_deploy_did_not_make() {
    let c = Clusters::default().await;
    c.deploy(&["--replicas", "2"])
        .await
        .assert_code(0)
        .stderr_has(&["created namespace kubemark"]);
    // Somebody else puts something in it.
    kubectl(
        &c,
        &[
            "-n",
            "kubemark",
            "create",
            "configmap",
            "notes",
            "--from-literal=a=b",
        ],
    );
    c.run(&["destroy"], &[]).await.assert_code(0).stdout_has(&[
        "left: namespace kubemark: kept, deploy created it, but it holds what deploy did not make",
        "left: ConfigMap kubemark/notes",
    ]);
    assert!(c.has(idx::CONFIGMAPS, "kubemark", "notes"));
    assert!(c.has(idx::NAMESPACES, "", "kubemark"));
    assert!(!c.has(idx::RCS, "kubemark", "hollow-node"));
    assert_eq!(c.master_nodes(), (0, 0));
    // Once it holds only what the cluster puts in every namespace, it goes.
    kubectl(&c, &["-n", "kubemark", "delete", "configmap", "notes"]);
    // Only the namespace was left to delete.
    c.run(&["destroy"], &[])
        .await
        .assert_code(0)
        .stdout_has(&["0 secret(s), 0 configmap(s), the namespace, 0 hollow node(s)"]);
    assert!(!c.has(idx::NAMESPACES, "", "kubemark"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn objects_with_our_names_that_are_not_ours_are_refused_unless_adopted() {
    let c = Clusters::default().await;
    kubectl(&c, &["create", "namespace", "shared"]);
    kubectl(
        &c,
        &[
            "-n",
            "shared",
            "create",
            "secret",
            "generic",
            "kubeconfig",
            "--from-literal=pw=mine",
        ],
    );
    let before = c
        .external
        .store()
        .get(idx::SECRETS, "shared", "kubeconfig")
        .unwrap();
    c.deploy(&["--namespace", "shared", "--replicas", "2"])
        .await
        .assert_code(1)
        .stderr_has(&[
            "already exist in namespace shared and are not deploy's",
            "Secret shared/kubeconfig (managed by kubectl-create)",
            "--adopt",
        ]);
    let after = c
        .external
        .store()
        .get(idx::SECRETS, "shared", "kubeconfig")
        .unwrap();
    assert_eq!(before.rv, after.rv, "the user's secret is untouched");
    assert!(!c.has(idx::RCS, "shared", "hollow-node"), "nothing written");

    c.deploy(&["--namespace", "shared", "--replicas", "2", "--adopt"])
        .await
        .assert_code(0)
        .stderr_has(&["taking over Secret shared/kubeconfig"]);
    c.run(&["destroy"], &["--namespace", "shared"])
        .await
        .assert_code(0);
    assert!(
        !c.has(idx::SECRETS, "shared", "kubeconfig"),
        "adopted: deploy's now"
    );
    assert!(
        c.has(idx::NAMESPACES, "", "shared"),
        "the namespace was not deploy's"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn destroy_retries_broken_watches_and_names_the_side_when_time_runs_out() {
    let c = Clusters::start(|_| {}, |m| m.faults.watch_max_events = Some(1)).await;
    c.deploy(&["--replicas", "2"]).await.assert_code(0);
    // One hollow node cannot go yet (a finalizer of somebody's), and every
    // watch of nodes on the master fails.
    let (nodes, _) = c.master.store().list(idx::NODES, None);
    let held = kubemark_sim::meta::name(&nodes[0].value).to_owned();
    c.master
        .store()
        .modify(idx::NODES, "", &held, None, |v| {
            v["metadata"]["finalizers"] = serde_json::json!(["example.com/hold"]);
            Ok(())
        })
        .unwrap();
    let watch_fails = kubemark_sim::Faults::parse_errors("watch:nodes:500:1").unwrap();
    c.master.shared().injector.set_errors(watch_fails);
    c.run(&["destroy"], &["--timeout", "6s"]).await.assert_code(1)
        .stderr_has(&[
            "the kubemark master failed while waiting for the hollow nodes of namespace kubemark to go",
            &held,
            "the last watch error",
            "(500)",
        ])
        .stdout_lacks(&["destroyed"]);

    // Watches that fail half the time and streams cut after every event: the
    // wait goes on through them and ends when the node is really gone.
    // (Both sides: the namespace's watch on the external cluster, the nodes' on the master.)
    let flaky = |resource: &str| {
        kubemark_sim::Faults::parse_errors(&format!("watch:{resource}:500:0.5")).unwrap()
    };
    c.master.shared().injector.set_errors(flaky("nodes"));
    c.external.shared().injector.set_errors(flaky("namespaces"));
    let shared = Arc::clone(c.master.shared());
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        shared
            .store
            .modify(idx::NODES, "", &held, None, |v| {
                v["metadata"]["finalizers"] = serde_json::json!([]);
                Ok(())
            })
            .unwrap();
    });
    let run = c.run(&["destroy"], &["--timeout", "60s"]).await;
    release.await.unwrap();
    run.assert_code(0);
    assert_eq!(c.master_nodes(), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn destroy_deletes_nothing_unless_both_clusters_answer_and_allow_it() {
    // The external cluster does not let this user delete namespaces.
    let mut c = Clusters::start(
        |e| e.deny = vec![("delete".into(), "namespaces".into())],
        |_| {},
    )
    .await;
    c.deploy(&["--replicas", "2"]).await.assert_code(0);
    c.run(&["destroy"], &[])
        .await
        .assert_code(1)
        .stderr_has(&["the external cluster does not allow what deploy needs: delete namespaces"]);
    assert!(c.has(idx::RCS, "kubemark", "hollow-node"));
    assert!(c.has(idx::SECRETS, "kubemark", "kubeconfig"));

    // The master is down: nothing on the external side is touched either.
    c.master.shutdown();
    c.run(&["destroy"], &[])
        .await
        .assert_code(1)
        .stderr_has(&["cannot reach the kubemark master"]);
    assert!(c.has(idx::RCS, "kubemark", "hollow-node"));
    assert!(c.has(idx::SECRETS, "kubemark", "kubeconfig"));
    assert!(c.has(idx::NAMESPACES, "", "kubemark"));
    assert_eq!(c.external_pods(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dry_run_checks_both_clusters_and_writes_nothing() {
    let c = Clusters::default().await;
    let run = c.deploy(&["--replicas", "3", "--dry-run"]).await;
    // Secrets redacted.
    run.assert_code(0)
        .stdout_has(&[
            "kind: ReplicationController",
            "dry run: both clusters checked, nothing written",
        ])
        .stdout_lacks(&["certificate-authority-data"])
        .stderr_has(&["room for"]);
    assert!(!c.has(idx::NAMESPACES, "", "kubemark"));
    // It checks for real: a cluster that refuses is an error, as in deploy.
    let c = Clusters::start(
        |e| e.deny = vec![("patch".into(), "secrets".into())],
        |_| {},
    )
    .await;
    c.deploy(&["--replicas", "3", "--dry-run"])
        .await
        .assert_code(1)
        .stderr_has(&["patch secrets in kubemark"]);
}

/// What `deploy render` needs besides the master's kubeconfig: one hollow
/// node of a valid image.
const ONE_NODE: [&str; 4] = ["--replicas", "1", "--image", "r.io/kubemark:v1"];

/// `deploy render` with the master kubeconfig `MASTER_KUBECONFIG` and `extra`:
/// checks everything, touches no cluster.
fn render(env: &Env, extra: &[&str]) -> Run {
    render_master(env, MASTER_KUBECONFIG, extra)
}

/// `render` with the server of `MASTER_KUBECONFIG` replaced by `server`.
fn render_with(env: &Env, server: &str, extra: &[&str]) -> Run {
    render_master(
        env,
        &MASTER_KUBECONFIG.replace("https://10.1.2.3:6443", server),
        extra,
    )
}

/// `deploy render` with `kubeconfig` as the master's kubeconfig and `extra`.
fn render_master(env: &Env, kubeconfig: &str, extra: &[&str]) -> Run {
    let master = env.path("master.kubeconfig");
    std::fs::write(&master, kubeconfig).unwrap();
    let mut args = vec![
        "deploy",
        "render",
        "--master-kubeconfig",
        master.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    env.xtask(&args)
}

#[test]
fn every_image_reference_is_checked_by_the_one_grammar_and_kept_as_given() {
    let env = Env::new();
    let digest = format!("sha256:{}", "a".repeat(64));
    let long_tag = format!("r.io/kubemark:{}", "a".repeat(200));
    for (image, expect) in [
        ("Reg Istry/UP/kubemark:v1", "contains ' '"),
        (
            "r.io/UP/kubemark:v1",
            "`UP` must start and end with a lowercase letter",
        ),
        ("http://r.io/kubemark:v1", "it is a URL"),
        ("r.io:99999/kubemark:v1", "port `99999`"),
        ("r.io/kubemark:-bad", "the tag `-bad` starts with `-`"),
        (long_tag.as_str(), "is 200 characters long"),
        (
            "r.io/kubemark@sha256:abc",
            "is not `sha256:` followed by 64",
        ),
    ] {
        let run = render(&env, &["--replicas", "1", "--image", image]);
        run.assert_code(2)
            .stderr_has(&["--image: invalid image reference", expect]);
        assert!(run.stdout.is_empty(), "{image}: nothing rendered");
    }
    // The registry and tag flags go through the same grammar.
    render(
        &env,
        &["--replicas", "1", "--registry", "http://x", "--tag", "v1"],
    )
    .assert_code(2)
    .stderr_has(&["give it without the scheme (`http://`), e.g. `x`"]);
    // A digest-only reference stays as given; a tag and digest too.
    for image in [
        format!("r.io/kubemark@{digest}"),
        format!("r.io/p/kubemark:v1.33.0@{digest}"),
    ] {
        render(&env, &["--replicas", "1", "--image", &image])
            .assert_code(0)
            .stdout_has(&[&format!("image: {image}\n")])
            .stdout_lacks(&["latest@"]);
    }
}

#[test]
fn every_spelling_of_a_loopback_master_is_refused_with_the_address_it_stands_for() {
    let env = Env::new();
    for (host, means) in [
        ("LOCALHOST", "127.0.0.1"),
        ("localhost.", "127.0.0.1"),
        ("0.0.0.0", "0.0.0.0"),
        ("[::]", "::"),
        ("[::ffff:127.0.0.1]", "::ffff:127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
    ] {
        let run = render_with(&env, &format!("https://{host}:6443"), &ONE_NODE);
        assert_eq!(run.code, 2, "{host}: {}", run.stderr);
        run.stderr_has(&[
            &format!(
                "is this machine: {}",
                host.trim_start_matches('[').trim_end_matches(']')
            ),
            means,
        ]);
        // Allowed on purpose, it renders (pods on the host network).
        let run = render_with(
            &env,
            &format!("https://{host}:6443"),
            &[&ONE_NODE[..], &["--allow-loopback-master"]].concat(),
        );
        assert_eq!(run.code, 0, "{host}: {}", run.stderr);
    }
}

#[test]
fn a_master_kubeconfig_of_the_wrong_shape_is_said_as_such() {
    let env = Env::new();
    render_master(
        &env,
        "apiVersion: v1\nkind: Config\nclusters: 42\n",
        &ONE_NODE,
    )
    .assert_code(2)
    .stderr_has(&["`clusters` is a number, not a list"]);
}

#[test]
fn a_malformed_users_entry_is_named_without_printing_its_token() {
    let env = Env::new();
    render_master(
        &env,
        "apiVersion: v1\nkind: Config\nusers:\n  name: admin\n  user: {token: s3cr3t-t0ken}\n",
        &ONE_NODE,
    )
    .assert_code(2)
    .stderr_has(&["`users` is a mapping, not a list"])
    .never_prints(&["s3cr3t"]);
}

#[test]
fn flags_in_the_environment_are_named_as_the_environment() {
    let mut env = Env::new();
    env.set("KUBEMARK_REPLICAS", "abc");
    render(&env, &["--image", "r.io/kubemark:v1"])
        .assert_code(2)
        .stderr_has(&["KUBEMARK_REPLICAS `abc` is not a number of hollow nodes"]);
    let mut env = Env::new();
    env.set("KUBEMARK_IMAGE", "r.io/kubemark:-x");
    env.set("KUBEMARK_REPLICAS", "2");
    render(&env, &[])
        .assert_code(2)
        .stderr_has(&["KUBEMARK_IMAGE: invalid image reference"]);
    let mut env = Env::new();
    env.set("KUBEMARK_NODE_LABELS", "zone");
    render(&env, &ONE_NODE)
        .assert_code(2)
        .stderr_has(&["KUBEMARK_NODE_LABELS: `zone` is not key=value"]);
    let env = Env::new();
    std::fs::write(
        env.path("kubemark.toml"),
        "[deploy]\nkubelet-cpu = \"fast\"\n",
    )
    .unwrap();
    render(&env, &ONE_NODE).assert_code(2).stderr_has(&[
        "kubelet-cpu under [deploy] in",
        "`fast` is not a CPU quantity",
    ]);
    let env = Env::new();
    std::fs::write(env.path("kubemark.toml"), "[deploy]\ntimeout = \"0\"\n").unwrap();
    render(&env, &ONE_NODE)
        .assert_code(2)
        .stderr_has(&["timeout under [deploy] in", "a timeout of zero"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_huge_replica_count_grows_in_bursts_while_the_simulator_keeps_serving() {
    let c = Clusters::start(|e| e.workers = 1, |_| {}).await;
    c.deploy(&[
        "--replicas",
        "100000000",
        "--skip-capacity-check",
        "--no-wait",
    ])
    .await
    .assert_code(0);
    // The controller starts, and works through the replicas in bursts...
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while c.external_pods() < 2 * 500 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ...while the API answers.
    let started = std::time::Instant::now();
    let status = c.run(&["status"], &["--output", "json"]).await;
    status.assert_code(0);
    assert_eq!(status.json()["wanted"].as_i64(), Some(100_000_000));
    let answered = started.elapsed();
    let made = c.external_pods();
    assert!(
        (1000..100_000_000).contains(&made),
        "pods are made in bursts, not all at once: {made}"
    );
    // destroy stops it, and everything goes.
    let run = c.run(&["destroy"], &["--timeout", "120s"]).await;
    run.assert_code(0);
    assert_eq!(c.external_pods(), 0, "{}", run.stdout);
    eprintln!("status answered after {answered:?} with {made} pods made");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_that_does_not_answer_says_why_and_what_to_do() {
    let c = Clusters::default().await;
    let text = std::fs::read_to_string(&c.external.kubeconfig).unwrap();
    let url = c.external.url.clone();
    let closed = format!(
        "https://127.0.0.1:{}",
        kubemark_testbed::free_port().unwrap()
    );
    let other_ca = |t: &str| {
        let ours = t
            .lines()
            .find(|l| l.trim_start().starts_with("certificate-authority-data:"))
            .unwrap()
            .to_owned();
        let theirs = std::fs::read_to_string(&c.master.kubeconfig)
            .unwrap()
            .lines()
            .find(|l| l.trim_start().starts_with("certificate-authority-data:"))
            .unwrap()
            .to_owned();
        t.replace(&ours, &theirs)
    };
    let cases: Vec<(&str, String, &str, &str)> = vec![
        (
            "closed port",
            text.replace(&url, &closed),
            "cannot reach the external cluster",
            "nothing answers there",
        ),
        (
            "another CA",
            other_ca(&text),
            "cannot reach the external cluster",
            "not signed by the certificate-authority in its kubeconfig",
        ),
        (
            "wrong token",
            text.replace(&c.external.token, "not-the-token"),
            "(401)",
            "refused the credentials (401)",
        ),
        (
            "clusters: 42",
            "apiVersion: v1\nkind: Config\nclusters: 42\n".to_owned(),
            "the external cluster's kubeconfig",
            "`clusters` is a number, not a list",
        ),
    ];
    for (name, kubeconfig, message, hint) in cases {
        let file = c
            .env
            .path(&format!("{}.kubeconfig", name.replace([' ', ':'], "-")));
        std::fs::write(&file, kubeconfig).unwrap();
        let args =
            c.args_against(&file, &[])
                .flags(&["--replicas", "2", "--image", "r.io/kubemark:v1"]);
        let started = std::time::Instant::now();
        let run = c.xtask(args).await;
        let took = started.elapsed();
        assert_ne!(run.code, 0, "{name}");
        // No raw log lines, no colour off a terminal.
        run.stderr_has(&[message, hint])
            .stderr_lacks(&["ERROR", "\u{1b}"]);
        assert!(
            took < Duration::from_secs(10),
            "{name}: a refusal is not retried for seconds ({took:?})"
        );
        assert!(!c.has(idx::NAMESPACES, "", "kubemark"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_ready_hollow_node_no_pod_of_ours_runs_is_left_by_scale_down_and_destroy() {
    let c = Clusters::default().await;
    c.deploy(&["--replicas", "3"]).await.assert_code(0);
    // Another external cluster's live hollow node, deployed into a namespace of
    // the same name against this master: same label, Ready, not ours.
    let now = kubemark_sim::meta::now_rfc3339();
    c.master
        .store()
        .create(
            idx::NODES,
            serde_json::json!({
                "metadata": {"name": "hollow-node-other", "labels": {"kubemark.dev/hollow-node": "kubemark"}},
                "status": {"conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": now, "lastTransitionTime": now}]},
            }),
        )
        .unwrap();
    // A scale-down deletes the Node of the pod that went, not the other one.
    c.deploy(&["--replicas", "2"])
        .await
        .assert_code(0)
        .stdout_has(&["deleted 1 stale hollow node(s)"]);
    assert!(c.master_has_node("hollow-node-other"));
    c.run(&["destroy"], &[])
        .await
        .assert_code(0)
        .stdout_has(&[
            "left: Node hollow-node-other on the master: labelled for namespace kubemark and Ready, but no pod of this deploy runs it",
            "2 hollow node(s) on the master",
        ]);
    assert!(c.master_has_node("hollow-node-other"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_max_deploys_as_many_as_fit_and_render_refuses_it() {
    let c = Clusters::default().await;
    // Three workers of 8 CPUs, 32Gi and 110 pods: at 60m and ~216Mi a pod,
    // the pod slots bind first.
    c.deploy(&["--replicas", "max", "--dry-run"])
        .await
        .assert_code(0)
        .stderr_has(&[
            "330 hollow nodes fit on the external cluster (--replicas max): deploying 330",
            "3 schedulable node(s) of 3 have 24.00 CPU, 98304Mi memory and 330 pod slots free",
        ])
        .stdout_has(&["# dry run: both clusters checked, nothing written"]);
    assert!(
        !c.has(idx::NAMESPACES, "", "kubemark"),
        "a dry run writes nothing"
    );
    c.run(&["render"], &["--replicas", "max", "--image", IMAGE])
        .await
        .assert_code(2)
        .stderr_has(&["--replicas max: render touches no cluster"]);
    c.deploy(&["--replicas", "lots"])
        .await
        .assert_code(2)
        .stderr_has(&["or `max` for as many as fit"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deploy_and_status_leave_what_clusterloader2_needs() {
    let c = Clusters::default().await;
    let master = c.master.kubeconfig.canonicalize().unwrap();
    let external = c.external.kubeconfig.canonicalize().unwrap();
    c.deploy(&["--replicas", "2"]).await.assert_code(0).stdout_has(&[
        &format!(
            "clusterloader2: --provider=kubemark --kubeconfig={} --provider-configs=ROOT_KUBECONFIG={} --nodes=2 --masterip=",
            master.display(),
            external.display()
        ),
        "(as shell variables in ",
    ]);
    let env_file = c.env.state().join("clusterloader2.env");
    let text = std::fs::read_to_string(&env_file).unwrap();
    assert!(text.contains("CL2_NODES='2'\n"), "{text}");
    assert!(
        text.contains(&format!("CL2_KUBECONFIG='{}'\n", master.display())),
        "{text}"
    );
    // The shell reads it as written.
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            ". '{}' && printf %s \"$CL2_PROVIDER $CL2_NODES\"",
            env_file.display()
        ))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "kubemark 2");
    std::fs::remove_file(&env_file).unwrap();
    let status = c.run(&["status"], &["--output", "json"]).await;
    status.assert_code(0);
    let json = status.json();
    assert_eq!(json["clusterloader2"]["nodes"], 2);
    assert_eq!(json["clusterloader2"]["schedulable_nodes"], 2);
    assert!(env_file.exists(), "status writes it too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn doctor_says_ok_warns_and_fails_on_a_problem() {
    let c = Clusters::default().await;
    c.deploy(&["--replicas", "2"]).await.assert_code(0);
    c.run(&["doctor"], &[]).await.assert_code(0).stdout_has(&[
        "doctor: namespace kubemark",
        "  ok       daemonsets",
        "  ok       stuck",
    ]);
    // A DaemonSet that would land on the hollow nodes: a warning, exit 0.
    c.master
        .store()
        .create(
            idx::DAEMONSETS,
            serde_json::json!({
                "apiVersion": "apps/v1", "kind": "DaemonSet",
                "metadata": {"name": "agent", "namespace": "default"},
                "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {
                    "metadata": {"labels": {"a": "b"}},
                    "spec": {"containers": [{"name": "c", "image": "agent"}]}}},
            }),
        )
        .unwrap();
    c.run(&["doctor"], &[]).await.assert_code(0).stdout_has(&[
        "  warning  daemonsets: DaemonSet default/agent on the master places a pod on every hollow node",
        "           fix: keep it off them: add to its pod template's nodeAffinity",
    ]);
    // The namespace now enforces `baseline`: a problem, exit 1, in JSON too.
    c.external
        .store()
        .modify(idx::NAMESPACES, "", "kubemark", None, |ns| {
            ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] = "baseline".into();
            Ok(())
        })
        .unwrap();
    c.run(&["doctor"], &[])
        .await
        .assert_code(1)
        .stdout_has(&[
            "  problem  pod-security: namespace kubemark enforces the PodSecurity level `baseline`",
        ])
        .stderr_has(&["error: the doctor found 1 problem(s) in namespace kubemark"]);
    let run = c.run(&["doctor"], &["--output", "json"]).await;
    run.assert_code(1);
    let report = run.json();
    assert_eq!(report["findings"][1]["check"], "pod-security", "{report}");
    assert_eq!(report["findings"][1]["severity"], "problem", "{report}");
}
