//! The library-level tests' harness: two in-process simulators (an external
//! cluster with two workers, a master) over HTTPS, a spec for them, and an
//! event log with addresses replaced by names.

#![allow(dead_code, clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kubemark_contract::ImageRef;
use kubemark_deploy::{Event, Events, Source, Spec};
use kubemark_sim::{Sim, SimConfig};

pub struct Clusters {
    pub external: Sim,
    pub master: Sim,
    log: Arc<Mutex<Vec<String>>>,
}

impl Clusters {
    pub async fn start() -> Self {
        Self::with_master_workers(0).await
    }

    /// Clusters with `external` as the external cluster, and a master.
    pub async fn with_external(external: Sim) -> Self {
        Self::of(external, 0).await
    }

    /// A master that also has `workers` ordinary, schedulable nodes.
    pub async fn with_master_workers(workers: usize) -> Self {
        let external = Sim::start(SimConfig {
            name: "external".into(),
            workers: 2,
            ..SimConfig::default()
        })
        .await
        .unwrap();
        Self::of(external, workers).await
    }

    async fn of(external: Sim, master_workers: usize) -> Self {
        let master = Sim::start(SimConfig {
            name: "master".into(),
            workers: master_workers,
            version: "v1.33.2".into(),
            ..SimConfig::default()
        })
        .await
        .unwrap();
        Self {
            external,
            master,
            log: Arc::default(),
        }
    }

    pub fn spec(&self, replicas: u32) -> Spec {
        let source = |sim: &Sim| Source {
            path: Some(sim.kubeconfig.clone()),
            context: None,
        };
        let mut spec = Spec::new(
            source(&self.external),
            source(&self.master),
            replicas,
            ImageRef::parse("127.0.0.1:5000/kubemark:v1.33.2").unwrap(),
        );
        // The simulated hollow nodes share this host's network.
        spec.allow_loopback_master = true;
        spec.timeout = Some(Duration::from_secs(120));
        spec
    }

    /// A sink that keeps every event but progress, as a line, names for addresses.
    pub fn events(&self) -> Events {
        let log = Arc::clone(&self.log);
        let names = [
            (self.external.url.clone(), "<external>"),
            (self.master.url.clone(), "<master>"),
        ];
        Events::new(move |event| {
            let line = match event {
                Event::Progress { .. } | Event::Stalled { .. } => return,
                Event::Stage { stage, what } => format!("== {stage}: {what}"),
                Event::Note(text) => format!("note: {text}"),
                Event::Warning(text) => format!("warning: {text}"),
                Event::Applied {
                    kind,
                    name,
                    changed,
                } => format!(
                    "applied {kind} {name}{}",
                    if changed { "" } else { " (unchanged)" }
                ),
                Event::Deleted { kind, count } => format!("deleted {count} {kind}"),
            };
            let line = names
                .iter()
                .fold(line, |line, (url, name)| line.replace(url.as_str(), name));
            log.lock().unwrap().push(line);
        })
    }

    /// The log so far, emptied.
    pub fn take(&self) -> String {
        let lines = std::mem::take(&mut *self.log.lock().unwrap());
        lines.join("\n") + "\n"
    }

    pub async fn connect(&self) -> (kubemark_deploy::Cluster, kubemark_deploy::Cluster) {
        let spec = self.spec(0);
        kubemark_deploy::connect(&spec.external, &spec.master)
            .await
            .unwrap()
    }
}
