//! Draws the library's events: progress bars on a terminal, plain log lines
//! (throttled) otherwise. Everything goes to stderr; stdout is for results.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use kubemark_image::{Event, Events};

/// How often plain mode repeats a progress line.
const PLAIN_EVERY: Duration = Duration::from_secs(2);

/// Turns events into output.
#[derive(Clone)]
pub struct Renderer {
    inner: Arc<Mutex<State>>,
}

struct State {
    verbose: u8,
    tty: Option<MultiProgress>,
    /// The bar or spinner of the current stage (terminal mode).
    bar: Option<ProgressBar>,
    layers: HashMap<String, ProgressBar>,
    /// When each kind of progress line was last printed (plain mode).
    last: HashMap<&'static str, Instant>,
    layer_status: HashMap<String, String>,
    make_lines: u64,
    /// The deploy wait's two bars: pods Running, nodes Ready.
    wait_bars: Option<(ProgressBar, ProgressBar)>,
}

impl Renderer {
    pub fn new(verbose: u8) -> Self {
        let tty = std::io::stderr()
            .is_terminal()
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10)));
        Self {
            inner: Arc::new(Mutex::new(State {
                verbose,
                tty,
                bar: None,
                layers: HashMap::new(),
                last: HashMap::new(),
                layer_status: HashMap::new(),
                make_lines: 0,
                wait_bars: None,
            })),
        }
    }

    /// An event sink for the library.
    pub fn events(&self) -> Events {
        let me = self.clone();
        Events::new(move |event| me.handle(event))
    }

    /// An event sink for the cluster pipeline.
    pub fn deploy_events(&self) -> kubemark_deploy::Events {
        let me = self.clone();
        kubemark_deploy::Events::new(move |event| me.lock().handle_deploy(event))
    }

    /// Print a line above the bars.
    pub fn line(&self, text: &str) {
        let state = self.lock();
        state.println(text);
    }

    /// Remove every bar (before printing the result).
    pub fn finish(&self) {
        let mut state = self.lock();
        if let Some(bar) = state.bar.take() {
            bar.finish_and_clear();
        }
        for (_, bar) in state.layers.drain() {
            bar.finish_and_clear();
        }
        if let Some((a, b)) = state.wait_bars.take() {
            a.finish_and_clear();
            b.finish_and_clear();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn handle(&self, event: Event) {
        let mut state = self.lock();
        state.handle(event);
    }
}

impl State {
    fn println(&self, text: &str) {
        match &self.tty {
            Some(multi) => {
                let _ = multi.println(text);
            }
            // A closed stderr must not stop the run.
            None => {
                let _ = writeln!(std::io::stderr(), "{text}");
            }
        }
    }

    /// In plain mode: whether the `kind` line is due again.
    fn due(&mut self, kind: &'static str, last_one: bool) -> bool {
        let now = Instant::now();
        let due = last_one
            || self
                .last
                .get(kind)
                .is_none_or(|t| now.duration_since(*t) >= PLAIN_EVERY);
        if due {
            self.last.insert(kind, now);
        }
        due
    }

    fn stage_bar(&mut self, template: &str) -> Option<ProgressBar> {
        let multi = self.tty.as_ref()?;
        if self.bar.is_none() {
            let bar = multi.add(ProgressBar::new_spinner());
            bar.enable_steady_tick(Duration::from_millis(120));
            self.bar = Some(bar);
        }
        let bar = self.bar.clone()?;
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        Some(bar)
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Stage { stage, what } => {
                if let Some(bar) = self.bar.take() {
                    bar.finish_and_clear();
                }
                self.last.clear();
                self.println(&format!("==> {stage}: {what}"));
                if let Some(bar) = self.stage_bar("{spinner} {msg}") {
                    bar.set_message(stage.to_string());
                }
            }
            Event::StageDone { stage, what } => {
                if let Some(bar) = self.bar.take() {
                    bar.finish_and_clear();
                }
                for (_, bar) in self.layers.drain() {
                    bar.finish_and_clear();
                }
                self.println(&format!("    {stage} done: {what}"));
            }
            Event::Note(text) => self.println(&format!("    {text}")),
            Event::Warning(text) => self.println(&format!("warning: {text}")),
            Event::Remote(text) => {
                if self.verbose > 0 {
                    self.println(&format!("    remote: {text}"));
                }
            }
            Event::Transfer {
                received_objects,
                total_objects,
                indexed_deltas,
                total_deltas,
                received_bytes,
            } => {
                let receiving = received_objects < total_objects;
                let text = if receiving {
                    format!(
                        "receiving objects {received_objects}/{total_objects}, {}",
                        HumanBytes(received_bytes as u64)
                    )
                } else {
                    format!(
                        "received {total_objects} objects, {}; resolving deltas {indexed_deltas}/{total_deltas}",
                        HumanBytes(received_bytes as u64)
                    )
                };
                if let Some(bar) = self.stage_bar("{spinner} [{bar:30}] {pos}/{len} {msg}") {
                    let (pos, len) = if receiving {
                        (received_objects, total_objects)
                    } else {
                        (indexed_deltas, total_deltas)
                    };
                    bar.set_length(len as u64);
                    bar.set_position(pos as u64);
                    bar.set_message(text);
                } else {
                    let done = !receiving && indexed_deltas == total_deltas;
                    if self.due("transfer", done) {
                        self.println(&format!("    {text}"));
                    }
                }
            }
            Event::Checkout { done, total } => {
                if let Some(bar) =
                    self.stage_bar("{spinner} [{bar:30}] {pos}/{len} files checked out")
                {
                    bar.set_length(total as u64);
                    bar.set_position(done as u64);
                } else if self.due("checkout", done == total) {
                    self.println(&format!("    checked out {done}/{total} files"));
                }
            }
            Event::MakeOutput(line) => {
                self.make_lines += 1;
                if self.verbose > 0 {
                    self.println(&format!("    make| {line}"));
                }
                if let Some(bar) = self.stage_bar("{spinner} make ({elapsed}): {wide_msg}") {
                    bar.set_message(line);
                } else if self.verbose == 0 && self.due("make", false) && self.make_lines > 1 {
                    self.println(&format!("    make: {line}"));
                }
            }
            Event::BuildStep {
                step,
                total,
                instruction,
            } => {
                if let Some(bar) =
                    self.stage_bar("{spinner} [{bar:30}] step {pos}/{len}: {wide_msg}")
                {
                    bar.set_length(total as u64);
                    bar.set_position(step as u64);
                    bar.set_message(instruction.clone());
                }
                self.println(&format!("    step {step}/{total}: {instruction}"));
            }
            Event::BuildOutput(line) => {
                if self.verbose > 0 {
                    self.println(&format!("    build| {line}"));
                }
            }
            Event::ContextSent { bytes } => {
                if let Some(bar) = self.stage_bar("{spinner} {msg}") {
                    bar.set_message(format!("sending the build context: {}", HumanBytes(bytes)));
                } else if self.due("context", false) {
                    self.println(&format!("    sent {} of build context", HumanBytes(bytes)));
                }
            }
            Event::PushLayer {
                layer,
                status,
                current,
                total,
            } => self.push_layer(layer, status, current, total),
        }
    }

    fn handle_deploy(&mut self, event: kubemark_deploy::Event) {
        use kubemark_deploy::Event as E;
        match event {
            E::Stage { stage, what } => {
                if let Some((a, b)) = self.wait_bars.take() {
                    a.finish_and_clear();
                    b.finish_and_clear();
                }
                self.last.clear();
                self.println(&format!("==> {stage}: {what}"));
            }
            E::Note(text) => self.println(&format!("    {text}")),
            E::Warning(text) => self.println(&format!("warning: {text}")),
            E::Applied {
                kind,
                name,
                changed,
            } => {
                let what = if changed { "applied" } else { "unchanged" };
                self.println(&format!("    {kind} {name} {what}"));
            }
            E::Progress {
                running,
                ready,
                wanted,
            } => {
                if let Some(multi) = self.tty.clone() {
                    let (pods, nodes) = self.wait_bars.get_or_insert_with(|| {
                        let bar = |label: &str| {
                            let b = multi.add(ProgressBar::new(wanted as u64));
                            if let Ok(style) = ProgressStyle::with_template(&format!(
                                "  {label} [{{bar:40}}] {{pos}}/{{len}} ({{elapsed}})"
                            )) {
                                b.set_style(style.progress_chars("=> "));
                            }
                            b
                        };
                        (bar("pods Running"), bar("nodes Ready "))
                    });
                    pods.set_length(wanted as u64);
                    nodes.set_length(wanted as u64);
                    pods.set_position(running as u64);
                    nodes.set_position(ready as u64);
                } else if self.due("wait", running == wanted && ready == wanted) {
                    self.println(&format!(
                        "    pods Running {running}/{wanted}, nodes Ready {ready}/{wanted}"
                    ));
                }
            }
            E::Stalled { seconds, diagnosis } => {
                self.println(&format!("    no progress for {seconds}s:"));
                for line in diagnosis {
                    self.println(&format!("      {line}"));
                }
            }
            E::Deleted { kind, count } => self.println(&format!("    deleted {count} {kind}(s)")),
        }
    }

    fn push_layer(&mut self, layer: String, status: String, current: u64, total: u64) {
        if let Some(multi) = self.tty.clone() {
            let bar = self.layers.entry(layer.clone()).or_insert_with(|| {
                let bar = multi.add(ProgressBar::new(0));
                if let Ok(style) = ProgressStyle::with_template(
                    "  {prefix} [{bar:30}] {bytes}/{total_bytes} {msg}",
                ) {
                    bar.set_style(style.progress_chars("=> "));
                }
                bar.set_prefix(layer.clone());
                bar
            });
            if total > 0 {
                bar.set_length(total);
                bar.set_position(current);
            }
            bar.set_message(status);
            return;
        }
        let changed = self.layer_status.get(&layer) != Some(&status);
        if changed {
            self.layer_status.insert(layer.clone(), status.clone());
        }
        let key: &'static str = "push";
        if changed || (total > 0 && self.due(key, false)) {
            let bytes = if total > 0 {
                format!(" {}/{}", HumanBytes(current), HumanBytes(total))
            } else {
                String::new()
            };
            self.println(&format!("    layer {layer}: {status}{bytes}"));
        }
    }
}
