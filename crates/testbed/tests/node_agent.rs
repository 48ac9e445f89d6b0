//! The node agent against a real control plane: its Nodes become and stay
//! Ready, the real scheduler binds pods to them and the agent runs them as
//! Docker containers, reports their status, restarts what crashes and
//! finalises what is deleted; nothing it started outlives it.

#![allow(clippy::unwrap_used)]

use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use kubemark_testbed::Registry;
use kubemark_testbed::k8s::{Binaries, Config, ControlPlane};
use kubemark_testbed::node::{self, NodeAgent};
use serde_json::Value;

fn required() -> bool {
    std::env::var_os("KUBEMARK_REQUIRE_REAL").is_some()
}

/// The components, a Docker engine, docker-registry and busybox, or a SKIPPED line.
fn prerequisites() -> Option<Binaries> {
    let bin = Binaries::for_tests()?;
    let engine = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !engine {
        assert!(
            !required(),
            "the real tier is required but no Docker engine answers"
        );
        eprintln!("SKIPPED: no Docker engine answers");
        return None;
    }
    for program in ["docker-registry", "busybox"] {
        if !kubemark_testbed::installed(program) {
            assert!(
                !required(),
                "the real tier is required but {program} is not installed"
            );
            eprintln!("SKIPPED: {program} is not installed (`cargo xtask ci --provision-only`)");
            return None;
        }
    }
    Some(bin)
}

/// An address of this host that is not loopback (the containers reach it).
fn host_ip() -> IpAddr {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    socket.connect("10.255.255.255:1").unwrap();
    socket.local_addr().unwrap().ip()
}

fn docker(args: &[&str]) -> String {
    kubemark_testbed::run("docker", args, None).unwrap()
}

/// A busybox image built FROM scratch (Debian's static busybox and a few
/// applets), pushed to `registry` and removed locally so the agent pulls it.
fn busybox_in(registry: &Registry) -> String {
    let name = format!("{}/testbed/busybox:1", registry.addr);
    kubemark_testbed::import_busybox(&name, &["sh", "cat", "echo", "sleep", "nc", "ls"]).unwrap();
    docker(&["push", &name]);
    docker(&["rmi", &name]);
    name
}

/// Removes an image when dropped.
struct RemoveImage(String);

impl Drop for RemoveImage {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rmi", "-f", &self.0]).output();
    }
}

fn json(plane: &ControlPlane, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&plane.kubectl(&all).unwrap()).unwrap()
}

/// Poll `check` every 500 ms until it returns something, or fail after `limit`.
fn wait<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn condition(object: &Value, kind: &str) -> Option<String> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
        .and_then(|c| c["status"].as_str().map(str::to_owned))
}

/// Both nodes Ready, with no taint left (the not-ready taint removed by the
/// node lifecycle controller); their Leases' renew times.
fn nodes_ready(plane: &ControlPlane, names: &[&str]) -> Option<Vec<String>> {
    let mut renewals = Vec::new();
    for name in names {
        let node = json(plane, &["get", "node", name]);
        if condition(&node, "Ready").as_deref() != Some("True") {
            return None;
        }
        if node["spec"]["taints"]
            .as_array()
            .is_some_and(|t| !t.is_empty())
        {
            return None;
        }
        let lease = json(plane, &["-n", "kube-node-lease", "get", "lease", name]);
        renewals.push(lease["spec"]["renewTime"].as_str()?.to_owned());
    }
    Some(renewals)
}

fn labelled_containers(label: &str) -> Vec<String> {
    docker(&["ps", "-aq", "--filter", &format!("label={label}")])
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_node_agent_runs_pods_of_a_real_control_plane() {
    let Some(bin) = prerequisites() else { return };
    let started = Instant::now();
    let address = host_ip();
    let plane = ControlPlane::start(
        &bin,
        Config {
            name: "nodes".into(),
            address,
            controllers: true,
        },
    )
    .unwrap();
    let scratch_dir = tempfile::Builder::new()
        .prefix("kubemark-node-agent-test-")
        .tempdir()
        .unwrap();
    let scratch = scratch_dir.path();
    let registry = Registry::start(&scratch.join("registry"), None).unwrap();
    let image = busybox_in(&registry);
    let _image = RemoveImage(image.clone());
    eprintln!("control plane and image: {:?}", started.elapsed());

    let names = ["agent-a", "agent-b"];
    let mut config = node::Config::new(&names, address);
    config.backoff = Duration::from_secs(2);
    let agent = NodeAgent::start(&plane, config).unwrap();
    let id = agent.id().to_owned();
    let first_renewals = wait(
        "the nodes Ready and untainted",
        Duration::from_secs(90),
        || nodes_ready(&plane, &names),
    );
    let ready_at = Instant::now();
    eprintln!("nodes Ready: {:?}", started.elapsed());
    let node = json(&plane, &["get", "node", "agent-a"]);
    assert_eq!(node["status"]["nodeInfo"]["kubeletVersion"], "v1.37.2");
    assert!(
        node["status"]["nodeInfo"]["containerRuntimeVersion"]
            .as_str()
            .unwrap()
            .starts_with("docker://"),
        "{node}"
    );
    assert_eq!(node["status"]["allocatable"]["pods"], "110");

    plane.kubectl(&["create", "namespace", "work"]).unwrap();
    plane
        .kubectl(&[
            "-n",
            "work",
            "create",
            "secret",
            "generic",
            "greeting",
            "--from-literal=message=hello",
        ])
        .unwrap();
    // `$(NODE_NAME)` and `$(POD_NAME)` are expanded by the agent as Kubernetes
    // does; `$(cat ...)` names no variable, is left as written and runs in the
    // shell. The API server is reached at this host's address (busybox's nc
    // has no -z: it connects, reads EOF from /dev/null and exits 0).
    let script = "echo \"node=$(NODE_NAME) pod=$(POD_NAME) ip=$(POD_IP) secret=$(cat /etc/greeting/message) init=$(cat /work/ready)\" > /out/$(POD_NAME).txt; \
        if nc -w 5 $KUBERNETES_SERVICE_HOST $KUBERNETES_SERVICE_PORT </dev/null; then echo api=reached; else echo api=unreachable; fi >> /out/$(POD_NAME).txt; \
        exec sleep 3600";
    plane
        .apply(&format!(
            r#"
apiVersion: v1
kind: ReplicationController
metadata: {{name: greeter, namespace: work}}
spec:
  replicas: 2
  selector: {{app: greeter}}
  template:
    metadata: {{labels: {{app: greeter}}}}
    spec:
      terminationGracePeriodSeconds: 2
      initContainers:
      - name: prepare
        image: {image}
        command: [sh, -c, "echo prepared > /work/ready"]
        volumeMounts: [{{name: work, mountPath: /work}}]
      containers:
      - name: main
        image: {image}
        command: [sh, -c]
        args: [{script:?}]
        env:
        - {{name: NODE_NAME, valueFrom: {{fieldRef: {{fieldPath: spec.nodeName}}}}}}
        - {{name: POD_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}
        - {{name: POD_IP, valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}}}
        volumeMounts:
        - {{name: work, mountPath: /work}}
        - {{name: greeting, mountPath: /etc/greeting}}
        - {{name: out, mountPath: /out}}
      volumes:
      - {{name: work, emptyDir: {{}}}}
      - {{name: greeting, secret: {{secretName: greeting}}}}
      - {{name: out, hostPath: {{path: /var/lib/greeter, type: DirectoryOrCreate}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: crasher, namespace: work}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: crash
    image: {image}
    command: [sh, -c, "echo bye > /dev/termination-log; exit 1"]
---
apiVersion: v1
kind: Pod
metadata: {{name: once, namespace: work}}
spec:
  restartPolicy: Never
  containers:
  - name: once
    image: {image}
    command: [sh, -c, "exit 0"]
---
apiVersion: v1
kind: Pod
metadata: {{name: missing, namespace: work}}
spec:
  containers:
  - name: missing
    image: {}/testbed/missing:1
"#,
            registry.addr
        ))
        .unwrap();

    // Both replicas Running and Ready, having seen what they should.
    let pods = wait(
        "both replicas Running and Ready",
        Duration::from_secs(120),
        || {
            let list = json(&plane, &["-n", "work", "get", "pods", "-l", "app=greeter"]);
            let items = list["items"].as_array()?.clone();
            (items.len() == 2
                && items.iter().all(|p| {
                    p["status"]["phase"] == "Running"
                        && condition(p, "Ready").as_deref() == Some("True")
                }))
            .then_some(items)
        },
    );
    eprintln!("replicas Running and Ready: {:?}", started.elapsed());
    let mut uids = Vec::new();
    for pod in &pods {
        let name = pod["metadata"]["name"].as_str().unwrap();
        let node_name = pod["spec"]["nodeName"].as_str().unwrap();
        let status = &pod["status"];
        assert_eq!(status["hostIP"], address.to_string(), "{pod}");
        let pod_ip = status["podIP"].as_str().unwrap();
        assert!(!pod_ip.is_empty());
        let init = &status["initContainerStatuses"][0];
        assert_eq!(init["state"]["terminated"]["exitCode"], 0, "{pod}");
        assert_eq!(init["state"]["terminated"]["reason"], "Completed", "{pod}");
        let main = &status["containerStatuses"][0];
        assert!(main["state"]["running"]["startedAt"].is_string(), "{pod}");
        assert!(
            main["containerID"]
                .as_str()
                .unwrap()
                .starts_with("docker://")
        );
        for kind in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
            assert_eq!(
                condition(pod, kind).as_deref(),
                Some("True"),
                "{kind}: {pod}"
            );
        }
        let file = agent
            .host_path(node_name, "/var/lib/greeter")
            .join(format!("{name}.txt"));
        let seen = wait("the container's report", Duration::from_secs(20), || {
            std::fs::read_to_string(&file)
                .ok()
                .filter(|t| t.lines().count() >= 2)
        });
        assert_eq!(
            seen,
            format!(
                "node={node_name} pod={name} ip={pod_ip} secret=hello init=prepared\napi=reached\n"
            ),
            "{}",
            agent.log_tail(30)
        );
        uids.push(pod["metadata"]["uid"].as_str().unwrap().to_owned());
    }

    // A container that exits 1 is restarted with back-off: CrashLoopBackOff.
    let crasher = wait("CrashLoopBackOff", Duration::from_secs(60), || {
        let pod = json(&plane, &["-n", "work", "get", "pod", "crasher"]);
        let status = &pod["status"]["containerStatuses"][0];
        (status["state"]["waiting"]["reason"] == "CrashLoopBackOff"
            && status["restartCount"].as_i64()? > 0)
            .then_some(pod)
    });
    let last = &crasher["status"]["containerStatuses"][0]["lastState"]["terminated"];
    assert_eq!(last["exitCode"], 1, "{crasher}");
    assert_eq!(last["reason"], "Error", "{crasher}");
    assert_eq!(last["message"], "bye\n", "{crasher}");
    // restartPolicy Never and exit 0: Succeeded.
    wait("the one-off pod Succeeded", Duration::from_secs(60), || {
        let pod = json(&plane, &["-n", "work", "get", "pod", "once"]);
        (pod["status"]["phase"] == "Succeeded").then_some(())
    });
    // An image the registry does not have.
    wait("ErrImagePull", Duration::from_secs(60), || {
        let pod = json(&plane, &["-n", "work", "get", "pod", "missing"]);
        let reason = pod["status"]["containerStatuses"][0]["state"]["waiting"]["reason"].clone();
        (reason == "ErrImagePull" || reason == "ImagePullBackOff").then_some(())
    });
    eprintln!(
        "crash loop, completion, image pull failure: {:?}",
        started.elapsed()
    );

    // The nodes stay Ready past the lifecycle controller's grace period, leases renewed.
    let hold = Duration::from_secs(50);
    if let Some(rest) = hold.checked_sub(ready_at.elapsed()) {
        std::thread::sleep(rest);
    }
    let renewals = nodes_ready(&plane, &names).expect("the nodes are still Ready and untainted");
    for (before, after) in first_renewals.iter().zip(&renewals) {
        assert!(after > before, "lease not renewed: {before} then {after}");
    }
    eprintln!(
        "nodes still Ready after {:?}: {:?}",
        ready_at.elapsed(),
        started.elapsed()
    );

    // Deleting the RC: the garbage collector deletes the pods gracefully, the
    // agent removes their containers and deletes them for good.
    plane
        .kubectl(&["-n", "work", "delete", "rc", "greeter"])
        .unwrap();
    wait("the replicas gone", Duration::from_secs(60), || {
        let list = json(&plane, &["-n", "work", "get", "pods", "-l", "app=greeter"]);
        list["items"].as_array()?.is_empty().then_some(())
    });
    for uid in &uids {
        assert!(
            labelled_containers(&format!("{}={uid}", node::POD_UID_LABEL)).is_empty(),
            "containers of pod {uid} remain"
        );
    }
    eprintln!("replicas deleted: {:?}", started.elapsed());

    // Dropping the agent removes every container it started and its network.
    let network = agent.network().to_owned();
    assert!(!labelled_containers(&format!("{}={id}", node::LABEL)).is_empty());
    drop(agent);
    assert!(
        labelled_containers(&format!("{}={id}", node::LABEL)).is_empty(),
        "containers of the agent remain"
    );
    assert!(
        docker(&[
            "network",
            "ls",
            "-q",
            "--filter",
            &format!("name={network}")
        ])
        .is_empty(),
        "the agent's network remains"
    );
    eprintln!("total: {:?}", started.elapsed());
}
