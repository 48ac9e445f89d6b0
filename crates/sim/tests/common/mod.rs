//! Shared by the simulator's tests: clusters with fast timings, a kubectl
//! runner with its own discovery cache, and waiting helpers.

#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use kubemark_sim::{Sim, SimConfig, Timing};

/// Timings short enough for tests.
pub fn fast() -> Timing {
    Timing {
        kubelet_delay: Duration::from_millis(50),
        backoff: Duration::from_millis(500),
        backoff_max: Duration::from_secs(2),
        lease_renew: Duration::from_millis(300),
        status_report: Duration::from_secs(60),
        node_grace: Duration::from_secs(2),
        retry: Duration::from_millis(300),
    }
}

pub fn config(name: &str, workers: usize, dir: &Path) -> SimConfig {
    SimConfig {
        name: name.into(),
        workers,
        timing: fast(),
        kubeconfig_dir: Some(dir.to_owned()),
        ..SimConfig::default()
    }
}

pub async fn sim(name: &str, workers: usize, dir: &Path) -> Sim {
    Sim::start(config(name, workers, dir)).await.unwrap()
}

/// What kubectl printed.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    #[track_caller]
    pub fn ok(self) -> String {
        assert_eq!(
            self.code, 0,
            "kubectl failed: {}{}",
            self.stdout, self.stderr
        );
        self.stdout
    }
}

/// kubectl against a kubeconfig, with a private discovery cache.
pub struct Kubectl {
    pub kubeconfig: PathBuf,
    cache: tempfile::TempDir,
}

impl Kubectl {
    pub fn new(kubeconfig: &Path) -> Self {
        assert!(
            std::process::Command::new("kubectl")
                .arg("version")
                .arg("--client")
                .output()
                .is_ok(),
            "kubectl is not installed"
        );
        Self {
            kubeconfig: kubeconfig.to_owned(),
            cache: tempfile::tempdir().unwrap(),
        }
    }

    pub async fn run(&self, args: &[&str]) -> Out {
        self.run_stdin(args, None).await
    }

    pub async fn run_stdin(&self, args: &[&str], stdin: Option<&str>) -> Out {
        use tokio::io::AsyncWriteExt;
        let mut command = tokio::process::Command::new("kubectl");
        command
            .args(args)
            .arg("--cache-dir")
            .arg(self.cache.path())
            .env("KUBECONFIG", &self.kubeconfig)
            .env_remove("KUBECTL_EXTERNAL_DIFF")
            .stdin(if stdin.is_some() {
                std::process::Stdio::piped()
            } else {
                std::process::Stdio::null()
            })
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = command.spawn().unwrap();
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().unwrap();
            pipe.write_all(input.as_bytes()).await.unwrap();
        }
        let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .expect("kubectl finished within 60s")
            .unwrap();
        Out {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

/// Poll `check` until it holds (test-side only; the product never polls).
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what} did not happen within {timeout:?}");
}

/// The simplified hollow-node ReplicationController, for `replicas` nodes.
pub fn hollow_rc(namespace: &str, replicas: usize, image: &str, kubeconfig_key: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: ReplicationController
metadata:
  name: hollow-node
  namespace: {namespace}
  labels:
    name: hollow-node
spec:
  replicas: {replicas}
  selector:
    name: hollow-node
  template:
    metadata:
      labels:
        name: hollow-node
    spec:
      volumes:
      - name: kubeconfig-volume
        secret:
          secretName: kubeconfig
      containers:
      - name: hollow-kubelet
        image: {image}
        command: ["/kubemark"]
        args: ["--morph=kubelet", "--name=$(NODE_NAME)", "--kubeconfig=/kubeconfig/{kubeconfig_key}", "--node-labels=kubemark=true"]
        env:
        - name: NODE_NAME
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
        volumeMounts:
        - name: kubeconfig-volume
          mountPath: /kubeconfig
          readOnly: true
        resources:
          requests:
            cpu: 20m
            memory: 50M
"#
    )
}
