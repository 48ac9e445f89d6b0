//! What `image` prints on stdout: the plan of a dry run, and the outcome (text,
//! or JSON with `--output json`).

use kubemark_image::{Builder, Outcome, Plan, Status};

use crate::run::print_json;

pub(super) fn print_plan(plan: &Plan, json: bool) {
    if json {
        return print_json(plan);
    }
    let s = &plan.source;
    println!("plan (dry run, nothing was changed):");
    println!("  image:   {}", plan.image);
    println!("  builder: {}", plan.builder.as_str());
    println!("  engine:  {}", plan.engine);
    let what = match &s.git_ref {
        Some(r) => format!(
            "{} ({} at {})",
            r.asked,
            r.refname.as_deref().unwrap_or("commit"),
            r.commit.as_deref().unwrap_or("?")
        ),
        None => "what is checked out".into(),
    };
    println!(
        "  source:  {} {} of {} into {} (depth {})",
        s.action,
        what,
        s.repository,
        s.dir.display(),
        s.depth
    );
    for change in &s.changes {
        println!("           local change: {change}");
    }
    println!(
        "  build:   {} (log: {})",
        plan.build.command,
        plan.build.log.display()
    );
    println!(
        "  image:   {}{}",
        plan.build.dockerfile.display(),
        plan.build
            .base_image
            .as_ref()
            .map(|b| format!(" with FROM {b}"))
            .unwrap_or_default()
    );
    if !plan.build.platforms.is_empty() {
        println!(
            "  platforms: {} (one image each, under one index)",
            plan.build.platforms.join(", ")
        );
    }
    if plan.builder == Builder::Oci {
        println!("  layers:  {}", plan.build.compression);
    }
    match &plan.push {
        Some(p) => println!("  push:    to {} {}", p.registry, p.auth),
        None => println!("  push:    no (--no-push)"),
    }
    println!("  record:  {}", plan.record.display());
}

pub(super) fn print_outcome(outcome: &Outcome, json: bool) {
    if json {
        return print_json(outcome);
    }
    let r = &outcome.record;
    match outcome.status {
        Status::UpToDate => println!(
            "up to date: {} (nothing changed since the last run)",
            r.image
        ),
        Status::Pushed => println!("pushed {}", r.image),
        Status::Built => println!("built {} (not pushed)", r.image),
    }
    println!(
        "  commit {} version {}{}",
        r.commit,
        r.version,
        if r.dirty { " (dirty)" } else { "" }
    );
    if r.platforms.len() > 1 {
        for p in &r.platforms {
            println!(
                "  {} {}",
                p.platform,
                p.digest.as_deref().unwrap_or(&p.image_id)
            );
        }
    }
    println!("  record {}", outcome.record_path.display());
}
