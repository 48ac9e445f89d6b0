//! `cargo xtask bench sim`: one simulator instance with 10,000 nodes and
//! 10,000 running pods, measured over real HTTPS: memory, p50/p99 latency of
//! get, paginated list, a 5,000-node list and server-side apply, and watch
//! events delivered per second.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kubemark_sim::meta::idx;
use kubemark_sim::{Sim, SimConfig};
use serde_json::{Value, json};

use super::{quantile, rss_mib, verdict};
use crate::Global;
use crate::report::Failure;

#[derive(Debug, clap::Args)]
pub struct SimBench {
    /// Nodes in the instance.
    #[arg(long, default_value_t = 10_000)]
    nodes: usize,
    /// Pods in the instance (scheduled and running).
    #[arg(long, default_value_t = 10_000)]
    pods: usize,
    /// Requests per latency measurement.
    #[arg(long, default_value_t = 200)]
    samples: usize,
    /// Watch events to deliver for the throughput measurement.
    #[arg(long, default_value_t = 100_000)]
    watch_events: usize,
}

fn node(i: usize) -> Value {
    let name = format!("hollow-node-{i:05}");
    let now = kubemark_sim::meta::now_rfc3339();
    json!({
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
            kubemark_sim::cluster::WORKER_LABEL: "true"}},
        "spec": {},
        "status": {
            "capacity": {"cpu": "1", "memory": "3840Mi", "pods": "110"},
            "allocatable": {"cpu": "1", "memory": "3840Mi", "pods": "110"},
            "conditions": [
                {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory", "lastHeartbeatTime": now, "lastTransitionTime": now},
                {"type": "DiskPressure", "status": "False", "reason": "KubeletHasNoDiskPressure", "lastHeartbeatTime": now, "lastTransitionTime": now},
                {"type": "PIDPressure", "status": "False", "reason": "KubeletHasSufficientPID", "lastHeartbeatTime": now, "lastTransitionTime": now},
                {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status", "lastHeartbeatTime": now, "lastTransitionTime": now},
            ],
            "addresses": [{"type": "InternalIP", "address": format!("10.1.{}.{}", i / 250, i % 250)}, {"type": "Hostname", "address": name}],
            "nodeInfo": {"kubeletVersion": "v1.33.0", "kubeProxyVersion": "v1.33.0", "osImage": "Debian GNU/Linux 12 (bookworm)",
                         "kernelVersion": "6.1.0", "containerRuntimeVersion": "containerd://1.7.24", "operatingSystem": "linux", "architecture": "amd64"},
        },
    })
}

fn pod(i: usize) -> Value {
    json!({
        "metadata": {"name": format!("pod-{i:05}"), "namespace": "bench", "labels": {"name": "bench", "shard": (i % 10).to_string()}},
        "spec": {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10",
                                 "resources": {"requests": {"cpu": "1m", "memory": "1Mi"}}}]},
    })
}

fn summary(name: &str, ms: Vec<f64>) -> (String, f64) {
    let (p50, p99) = (quantile(ms.clone(), 0.5), quantile(ms, 0.99));
    (
        format!("    {name:<34} p50 {p50:7.2} ms   p99 {p99:7.2} ms"),
        p50,
    )
}

pub fn run(bench: SimBench, _global: &Global) -> Result<(), Failure> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(measure(bench))
}

async fn measure(bench: SimBench) -> Result<(), Failure> {
    let (rss_before, _) = rss_mib();
    let config = SimConfig {
        name: "bench".into(),
        workers: 0,
        ..SimConfig::default()
    };
    let sim = Sim::start(config)
        .await
        .map_err(|e| Failure::failed(format!("starting the simulator: {e}")))?;
    let store = sim.store();
    eprintln!(
        "==> bench sim: loading {} nodes and {} pods",
        bench.nodes, bench.pods
    );
    let started = Instant::now();
    for i in 0..bench.nodes {
        store
            .create(idx::NODES, node(i))
            .map_err(|e| Failure::failed(e.message))?;
    }
    store
        .create(idx::NAMESPACES, json!({"metadata": {"name": "bench"}}))
        .map_err(|e| Failure::failed(e.message))?;
    store
        .create(idx::NAMESPACES, json!({"metadata": {"name": "watch"}}))
        .map_err(|e| Failure::failed(e.message))?;
    for i in 0..bench.pods {
        store
            .create(idx::PODS, pod(i))
            .map_err(|e| Failure::failed(e.message))?;
    }
    // Wait for the scheduler and the kubelets: every pod Running.
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let (pods, _) = store.list(idx::PODS, Some("bench"));
        let running = pods
            .iter()
            .filter(|p| p.value.pointer("/status/phase") == Some(&json!("Running")))
            .count();
        if running == bench.pods {
            break;
        }
        if Instant::now() > deadline {
            return Err(Failure::failed(format!(
                "only {running}/{} pods ran within 600 s",
                bench.pods
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let load_time = started.elapsed().as_secs_f64();
    let (rss_loaded, _) = rss_mib();
    let mut contents = Vec::new();
    let mut json_bytes = 0;
    for (res, resource) in kubemark_sim::meta::RESOURCES.iter().enumerate() {
        let (items, _) = store.list(res, None);
        json_bytes += items.iter().map(|o| o.json.len()).sum::<usize>();
        if !items.is_empty() {
            contents.push(format!("{} {}", items.len(), resource.plural));
        }
    }

    let ca = reqwest::Certificate::from_pem(sim.ca_pem.as_deref().unwrap_or_default().as_bytes())
        .map_err(|e| Failure::failed(e.to_string()))?;
    let http = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .map_err(|e| Failure::failed(e.to_string()))?;
    let url = sim.url.clone();
    let token = sim.token.clone();
    let timed = |path: String| {
        let (http, url, token) = (http.clone(), url.clone(), token.clone());
        async move {
            let started = Instant::now();
            let response = http
                .get(format!("{url}{path}"))
                .bearer_auth(token)
                .send()
                .await
                .map_err(|e| Failure::failed(e.to_string()))?;
            let status = response.status();
            let body = response
                .bytes()
                .await
                .map_err(|e| Failure::failed(e.to_string()))?;
            if !status.is_success() {
                return Err(Failure::failed(format!("GET {path}: {status}")));
            }
            Ok::<_, Failure>((started.elapsed().as_secs_f64() * 1000.0, body))
        }
    };

    let mut lines = Vec::new();
    let mut get = Vec::new();
    for i in 0..bench.samples {
        get.push(
            timed(format!(
                "/api/v1/nodes/hollow-node-{:05}",
                (i * 7919) % bench.nodes
            ))
            .await?
            .0,
        );
    }
    lines.push(summary("get node", get).0);

    let mut pages = Vec::new();
    let mut token_next: Option<String> = None;
    while pages.len() < bench.samples {
        let mut path = "/api/v1/namespaces/bench/pods?limit=500".to_owned();
        if let Some(t) = &token_next {
            path.push_str(&format!("&continue={t}"));
        }
        let (ms, body) = timed(path).await?;
        pages.push(ms);
        let v: Value = serde_json::from_slice(&body).unwrap_or_default();
        token_next = v
            .pointer("/metadata/continue")
            .and_then(Value::as_str)
            .map(str::to_owned);
    }
    lines.push(summary("list pods, pages of 500", pages).0);

    let mut big = Vec::new();
    let mut big_bytes = 0;
    for _ in 0..(bench.samples / 10).max(5) {
        let (ms, body) = timed("/api/v1/nodes?limit=5000".into()).await?;
        big.push(ms);
        big_bytes = body.len();
    }
    let (line, big_p50) = summary("list 5,000 nodes (one request)", big);
    lines.push(format!(
        "{line}   {:.1} MB (target p50 < 100 ms: {})",
        big_bytes as f64 / 1e6,
        verdict(big_p50 < 100.0)
    ));

    let mut apply = Vec::new();
    for i in 0..bench.samples {
        let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "applied", "namespace": "bench"},
                          "data": {"i": i.to_string()}});
        let started = Instant::now();
        let response = http
            .patch(format!(
                "{url}/api/v1/namespaces/bench/configmaps/applied?fieldManager=bench&force=true"
            ))
            .bearer_auth(&token)
            .header("content-type", "application/apply-patch+yaml")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| Failure::failed(e.to_string()))?;
        let ok = response.status().is_success();
        let _ = response.bytes().await;
        if !ok {
            return Err(Failure::failed("server-side apply failed"));
        }
        apply.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    lines.push(summary("server-side apply", apply).0);

    // Watch throughput: one watch, a stream of changes made as fast as the store takes them.
    store
        .create(
            idx::CONFIGMAPS,
            json!({"metadata": {"name": "w", "namespace": "watch"}, "data": {"n": "0"}}),
        )
        .map_err(|e| Failure::failed(e.message))?;
    let rv = store.rv();
    let response = http
        .get(format!(
            "{url}/api/v1/namespaces/watch/configmaps?watch=true&resourceVersion={rv}"
        ))
        .bearer_auth(&token)
        .send()
        .await
        .map_err(|e| Failure::failed(e.to_string()))?;
    let n = bench.watch_events;
    let shared = Arc::clone(sim.shared());
    let producer = std::thread::spawn(move || {
        for i in 1..=n {
            let _ = shared
                .store
                .modify(idx::CONFIGMAPS, "watch", "w", None, |v| {
                    v["data"]["n"] = json!(i.to_string());
                    Ok(())
                });
        }
    });
    let started = Instant::now();
    let mut received = 0usize;
    let mut response = response;
    while received < n {
        match tokio::time::timeout(Duration::from_secs(30), response.chunk()).await {
            Ok(Ok(Some(chunk))) => received += chunk.iter().filter(|&&b| b == b'\n').count(),
            _ => break,
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let _ = producer.join();
    let rate = received as f64 / seconds;
    lines.push(format!(
        "    watch: {received} events delivered in {seconds:.2} s = {rate:.0} events/s (target >= 20,000/s: {})",
        verdict(rate >= 20_000.0 && received == n)
    ));

    let (rss_now, peak) = rss_mib();
    let mem = rss_loaded - rss_before;
    println!(
        "simulator benchmark: {} nodes, {} running pods (loaded and running in {load_time:.1} s), {} samples per latency",
        bench.nodes, bench.pods, bench.samples
    );
    println!(
        "    contents: {} ({:.0} MB as JSON)",
        contents.join(", "),
        json_bytes as f64 / 1e6
    );
    println!(
        "    memory: {mem:.0} MiB for the loaded instance (process RSS {rss_now:.0} MiB, peak {peak:.0} MiB) (target < 1024 MiB: {})",
        verdict(peak < 1024.0)
    );
    for line in lines {
        println!("{line}");
    }
    Ok(())
}
