//! Results of the deploy commands on stdout: text for people, JSON for scripts.

use crate::run::print_json;

/// `--dry-run`: what deploy would apply (secrets redacted) and what it found.
pub fn print_dry_run(checked: &kubemark_deploy::Checked, json: bool) {
    let manifests: Vec<String> = checked
        .plan
        .manifests()
        .iter()
        .map(|m| format!("{} {}", m.kind, m.name))
        .collect();
    if json {
        let out = serde_json::json!({
            "dry_run": true,
            "would_apply": manifests,
            "findings": checked.findings,
        });
        return print_json(&out);
    }
    print!("{}", checked.plan.to_yaml(false));
    println!("---");
    println!(
        "# dry run: both clusters checked, nothing written; deploy would apply {}",
        manifests.join(", ")
    );
}

pub fn print_outcome(o: &kubemark_deploy::Outcome, json: bool) {
    if json {
        return print_json(o);
    }
    match &o.summary {
        Some(s) => {
            println!(
                "{} hollow nodes Ready in namespace {}: all pods Running after {:.1}s, all nodes Ready after {:.1}s",
                s.wanted, o.namespace, s.all_running_s, s.all_ready_s
            );
            if let (Some(p50), Some(p99)) = (s.registration_p50_s, s.registration_p99_s) {
                println!(
                    "  registration latency (pod seen → its node Ready): p50 {p50:.1}s, p99 {p99:.1}s"
                );
            }
            if s.stale_nodes_deleted > 0 {
                println!(
                    "  deleted {} stale hollow node(s) of pods that went away",
                    s.stale_nodes_deleted
                );
            }
        }
        None => println!(
            "applied {} hollow nodes in namespace {} (not waiting: --no-wait)",
            o.replicas, o.namespace
        ),
    }
    println!(
        "  image {}, template {}, node identity {}",
        o.image, o.template, o.node_identity
    );
    if let Some(cl2) = &o.clusterloader2 {
        print_clusterloader2(cl2);
    }
}

pub fn print_status(s: &kubemark_deploy::status::Status, json: bool, max_rows: usize) {
    if json {
        return print_json(s);
    }
    match s.wanted {
        Some(w) => println!(
            "namespace {}: {w} hollow nodes wanted, {} pods ({} Running), {} nodes Ready",
            s.namespace, s.pods, s.running, s.ready
        ),
        None => println!(
            "namespace {}: no hollow-node ReplicationController",
            s.namespace
        ),
    }
    for line in &s.diagnosis {
        println!("  {line}");
    }
    print_clusterloader2(&s.clusterloader2);
    if !s.rows.is_empty() {
        let width = s
            .rows
            .iter()
            .map(|r| r.hollow_node.len())
            .max()
            .unwrap_or(11)
            .max(11);
        println!(
            "  {:<width$}  {:<width$}  {:<16}  {:<11}  NODE READY",
            "HOLLOW NODE", "POD", "EXTERNAL NODE", "POD RUNNING"
        );
        for r in s.rows.iter().take(max_rows) {
            println!(
                "  {:<width$}  {:<width$}  {:<16}  {:<11}  {}",
                r.hollow_node,
                r.pod.as_deref().unwrap_or("-"),
                r.external_node.as_deref().unwrap_or("-"),
                if r.pod_running { "yes" } else { "no" },
                match r.node_ready {
                    Some(true) => "Ready",
                    Some(false) => "NotReady",
                    None => "not registered",
                }
            );
        }
        if s.rows.len() > max_rows {
            println!(
                "  ... and {} more (`cargo xtask deploy status` lists them all)",
                s.rows.len() - max_rows
            );
        }
    }
}

pub fn print_destroyed(d: &kubemark_deploy::destroy::Destroyed, json: bool) {
    if json {
        return print_json(d);
    }
    if d.deleted_anything() {
        println!(
            "destroyed: {} ReplicationController(s) with {} pod(s), {} secret(s), {} configmap(s), {} namespace, {} hollow node(s) on the master",
            d.replication_controllers,
            d.pods,
            d.secrets,
            d.configmaps,
            if d.namespace { "the" } else { "no" },
            d.nodes
        );
    } else {
        println!("nothing to destroy");
    }
    if !d.identity.is_empty() {
        println!(
            "  per-node identity on the master: {}",
            d.identity.join(", ")
        );
    }
    for line in &d.left {
        println!("  left: {line}");
    }
}

/// The flags clusterloader2 takes for this cluster.
fn print_clusterloader2(cl2: &kubemark_deploy::clusterloader2::Clusterloader2) {
    println!("  clusterloader2: {}", cl2.command_line());
}

pub fn print_doctor(r: &kubemark_deploy::doctor::Report, json: bool) {
    if json {
        return print_json(r);
    }
    println!("doctor: namespace {}", r.namespace);
    for check in &r.passed {
        println!("  ok       {check}");
    }
    for f in &r.findings {
        let severity = match f.severity {
            kubemark_deploy::doctor::Severity::Problem => "problem",
            kubemark_deploy::doctor::Severity::Warning => "warning",
        };
        println!("  {severity:<8} {}: {}", f.check, f.what);
        println!("           fix: {}", f.fix);
    }
    for s in &r.skipped {
        println!("  skipped  {s}");
    }
    for what in &r.repaired {
        println!("  repaired: deleted {what}");
    }
}
