//! `cargo xtask`: the kubemark tool's command line. This file only parses and
//! dispatches; each task lives in its own module with its flags and its `run`.

mod bench;
mod ci;
mod config;
mod demo;
mod deploy;
mod image;
mod k8s;
mod progress;
mod report;
mod run;
mod sim;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use report::Failure;

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Stand up kubemark clusters: build the kubemark image, deploy hollow nodes",
    arg_required_else_help = true
)]
struct Cli {
    /// More output: -v shows make's and the build's output, -vv adds debug logs.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,

    /// Settings file (flags win over KUBEMARK_* variables, which win over this file).
    #[arg(long, global = true, env = "KUBEMARK_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    /// Where records and logs go.
    #[arg(long, global = true, env = "KUBEMARK_STATE_DIR", value_name = "DIR", default_value_os_t = config::default_state_dir())]
    state_dir: PathBuf,

    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Clone or update kubernetes, build cmd/kubemark, build and push the kubemark image.
    Image(image::Args),
    /// Deploy hollow nodes on the external cluster and wait until they are Ready on the master.
    Deploy(deploy::Args),
    /// Start two simulated clusters, deploy hollow nodes, show status, destroy.
    Demo(demo::Args),
    /// Provision what the tests need, then run fmt, clippy and the whole test suite.
    Ci(ci::Args),
    /// Serve a simulated external cluster and kubemark master until Ctrl-C.
    Sim(sim::Args),
    /// Measure against the baselines and print figures and ratios.
    Bench(bench::Args),
}

/// What every task gets besides its own flags.
#[derive(Debug)]
pub struct Global {
    pub verbose: u8,
    pub state_dir: PathBuf,
    pub settings: config::Settings,
    /// How each flag of the task was given, for messages.
    pub given: config::Given,
}

fn main() -> ExitCode {
    // SAFETY: first thing in `main`, before any thread exists, so nothing uses
    // libgit2 concurrently. Failing, it leaves libgit2's defaults: more memory.
    #[allow(unsafe_code)]
    let _ = unsafe { kubemark_image::source::bound_pack_memory() };
    // The settings file first: its values are the flags' defaults.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let settings = config::Settings::load(config::config_path(&args).as_deref());
    let command = match settings.and_then(|s| Ok((s.apply(Cli::command())?, s))) {
        Ok(ok) => ok,
        Err(failure) => return failure.report(),
    };
    let (command, settings) = command;
    let matches = command.get_matches_from(args);
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    init_logging(cli.verbose);
    let global = Global {
        verbose: cli.verbose,
        state_dir: cli.state_dir,
        given: config::Given::new(&matches, &settings),
        settings,
    };
    let result: Result<(), Failure> = match cli.task {
        Task::Image(args) => image::run(args, &global),
        Task::Deploy(args) => deploy::run(args, &global),
        Task::Demo(args) => demo::run(args, &global),
        Task::Ci(args) => ci::run(args, &global),
        Task::Sim(args) => sim::run(args, &global),
        Task::Bench(args) => bench::run(args, &global),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.report(),
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        // kube-rs logs every failed request at ERROR; the tool reports what
        // failed in its own words (with the side and a hint), so its lines
        // would only repeat it, raw. -vv shows them.
        0 | 1 => "warn,kube_client=off,kube_runtime=off",
        2 => "info,kubemark_image=debug,xtask=debug",
        _ => "debug",
    };
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Transport crates may log headers (tokens) at trace level: never below debug.
    let tracing_everything =
        filter.max_level_hint() == Some(tracing_subscriber::filter::LevelFilter::TRACE);
    for quiet in [
        "hyper=debug",
        "hyper_util=debug",
        "h2=debug",
        "rustls=debug",
        "reqwest=debug",
        "tower=debug",
        "kube_client=debug",
    ] {
        if let Ok(directive) = quiet.parse()
            && tracing_everything
        {
            filter = filter.add_directive(directive);
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}
