//! `stampgate drill`: the failover rehearsal. Drives a constant open-loop
//! load through the proxy while a timeline injects faults into stamps (or
//! drains, enables and reloads through the admin API), measures what the
//! clients saw and how fast traffic moved, writes `report.json` and
//! `report.html`, and exits non-zero when an expectation fails.
//!
//! ```text
//!  scenario (TOML, scenario) ──▶ setup: stamps + proxy + admin (spawned or existing)
//!                                   │
//!     load::open_loop ──requests──▶ proxy ──▶ stamps        timeline::run ──▶ stamp /fault,
//!          │ samples                                                          admin API
//!          ▼                                    admin /admin/events ──▶ admin::follow_events
//!     measure::collect (per second, per 100 ms, HDR)                 │
//!          └──────────────▶ measure::figures ◀────────────────────────┘
//!                                   │
//!                           report (json, console) + report_html
//! ```

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub mod admin;
pub mod builtin;
pub mod etcd;
pub mod fleet;
pub mod junit;
pub mod load;
pub mod measure;
pub mod report;
pub mod report_html;
pub mod scenario;
pub mod setup;
pub mod timeline;

pub use report::Report;
pub use scenario::{Scenario, ScenarioError};

/// Exit code when every expectation holds.
pub const EXIT_PASSED: u8 = 0;
/// Exit code when an expectation failed (as `stampgate ctl` when refused).
pub const EXIT_FAILED: u8 = 1;
/// Exit code for a usage or scenario error, or a drill that could not run
/// (as `stampgate ctl` for usage and unreachable).
pub const EXIT_USAGE: u8 = 2;

/// The report directory when `--out` is not given.
pub const DEFAULT_OUT: &str = "drill-report";

/// The load starts this long after everything is ready, so that the first
/// requests are not due before the generator runs.
const START_LEAD: Duration = Duration::from_millis(50);

/// After the load, events still in flight on the stream get this long.
const EVENT_SETTLE: Duration = Duration::from_millis(100);

/// Connections the load opens before its schedule starts: one per 100
/// req/s (about what a few milliseconds of latency keeps busy, with room
/// for bursts), at most this many.
const MAX_WARM_CONNECTIONS: u32 = 256;

/// How often the progress line is redrawn.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// A generator lag above this is shown on the progress line.
const LAG_WARNING: Duration = Duration::from_millis(50);

/// Why a drill did not produce a verdict.
#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    /// The command line cannot work.
    #[error("{0}")]
    Usage(String),
    /// The scenario is refused.
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    /// The stamps, the proxy or its admin API could not be started or
    /// reached.
    #[error("{0}")]
    Setup(String),
    /// The report could not be written.
    #[error("cannot write {}: {source}", .path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// `stampgate drill`'s arguments.
#[derive(Debug, clap::Args)]
pub struct DrillArgs {
    /// A built-in scenario (see --list) or a scenario file.
    pub name: Option<String>,
    /// A scenario file.
    #[arg(long, conflicts_with = "name")]
    pub scenario: Option<PathBuf>,
    /// List the built-in scenarios.
    #[arg(long)]
    pub list: bool,
    /// Override the scenario's request rate (requests per second).
    #[arg(long)]
    pub rate: Option<u32>,
    /// Override the scenario's duration, e.g. "20s" (timeline steps must
    /// still fall inside it).
    #[arg(long)]
    pub duration: Option<String>,
    /// Where report.json and report.html go.
    #[arg(long, visible_alias = "report", default_value = DEFAULT_OUT)]
    pub out: PathBuf,
    /// Also write the expectations as JUnit XML to this file (one test
    /// case each), for CI systems that show test results.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
}

/// Runs `stampgate drill` and maps the outcome to the exit code.
pub async fn run_cli(args: DrillArgs) -> ExitCode {
    if args.list {
        print!("{}", builtin::list());
        println!(
            "{:<20} three edges, a real etcd: fleet-wide drain, etcd killed and restarted, one edge's path cut",
            "fleet"
        );
        return ExitCode::from(EXIT_PASSED);
    }
    if args.name.as_deref() == Some("fleet") {
        return fleet::run_cli(&args).await;
    }
    let scenario = match resolve(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("stampgate drill: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let progress = std::io::stdout().is_terminal();
    match run(&scenario, &args.out, progress).await {
        Ok(report) => {
            print!("{}", report.summary());
            println!("  report: {}", args.out.join("report.html").display());
            if let Some(path) = &args.junit {
                if let Err(e) = std::fs::write(path, junit::render(&report)) {
                    eprintln!("stampgate drill: cannot write {}: {e}", path.display());
                    return ExitCode::from(EXIT_USAGE);
                }
                println!("  junit:  {}", path.display());
            }
            if report.passed {
                ExitCode::from(EXIT_PASSED)
            } else {
                for failure in report.failures() {
                    eprintln!("stampgate drill: expectation failed: {failure}");
                }
                ExitCode::from(EXIT_FAILED)
            }
        }
        Err(e) => {
            eprintln!("stampgate drill: {e}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// The scenario the arguments name, with the overrides applied.
pub fn resolve(args: &DrillArgs) -> Result<Scenario, DrillError> {
    let mut scenario = match (&args.name, &args.scenario) {
        (_, Some(path)) => Scenario::load(path)?,
        (Some(name), None) => match builtin::find(name) {
            Some(parsed) => parsed?,
            None if Path::new(name).is_file() => Scenario::load(Path::new(name))?,
            None => {
                let names: Vec<&str> = builtin::BUILTIN.iter().map(|(n, _)| *n).collect();
                return Err(DrillError::Usage(format!(
                    "no built-in scenario or file named {name:?}; built-ins: {}",
                    names.join(", ")
                )));
            }
        },
        (None, None) => {
            return Err(DrillError::Usage(
                "name a built-in scenario (see --list) or give --scenario FILE".into(),
            ));
        }
    };
    if let Some(rate) = args.rate {
        if rate == 0 || rate > scenario::MAX_RATE {
            return Err(DrillError::Usage(format!(
                "--rate {rate}: must be 1 to {} requests per second",
                scenario::MAX_RATE
            )));
        }
        scenario.load.rate = rate;
    }
    if let Some(raw) = &args.duration {
        let duration = crate::config::parse_duration(raw)
            .map_err(|rule| DrillError::Usage(format!("--duration {raw:?}: {rule}")))?;
        if duration.is_zero() || duration > scenario::MAX_DURATION {
            return Err(DrillError::Usage(format!(
                "--duration {raw:?}: must be more than 0s and at most 1h"
            )));
        }
        if let Some(late) = scenario.timeline.iter().find(|s| s.at >= duration) {
            return Err(DrillError::Usage(format!(
                "--duration {raw:?}: the step at {:?} ({} {}) would not run; give a longer duration",
                late.at,
                late.action.label(),
                late.target
            )));
        }
        scenario.duration = duration;
    }
    Ok(scenario)
}

/// Runs `scenario` and writes its reports into `out`. `progress` draws the
/// live line on stdout.
pub async fn run(scenario: &Scenario, out: &Path, progress: bool) -> Result<Report, DrillError> {
    std::fs::create_dir_all(out).map_err(|source| DrillError::Write {
        path: out.to_path_buf(),
        source,
    })?;
    let control = load::client(scenario::Protocol::Http1);
    let env = setup::Environment::start(scenario, out, &control).await?;
    let fingerprint = env.config_fingerprint.clone();
    let outcome = drive(scenario, &env, &control, progress).await;
    env.shutdown().await;
    let mut report = outcome?;
    report.config_fingerprint = fingerprint;
    write_reports(scenario, &report, out)?;
    Ok(report)
}

/// The load, the timeline and the event stream, side by side; then the
/// figures.
async fn drive(
    scenario: &Scenario,
    env: &setup::Environment,
    control: &load::HttpClient,
    progress: bool,
) -> Result<Report, DrillError> {
    let mix = load::Mix::new(&env.proxy_url, &scenario.load.requests)
        .map_err(|e| DrillError::Setup(format!("proxy URL {}: {e}", env.proxy_url)))?;
    let load_client = load::client(scenario.load.protocol);
    let warm = (scenario.load.rate / 100).clamp(1, MAX_WARM_CONNECTIONS);
    load::warm_up(&load_client, &mix, warm as usize).await;
    let stop = CancellationToken::new();
    let started_wall = SystemTime::now();
    let since_unix_ms = started_wall
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let start = Instant::now() + START_LEAD;
    let (event_tx, mut event_rx) = mpsc::unbounded_channel();
    let follower =
        admin::follow_events(&env.admin_url, start, since_unix_ms, event_tx, stop.clone())
            .await
            .map_err(|e| DrillError::Setup(format!("cannot follow the proxy's events: {e}")))?;

    let (sample_tx, sample_rx) = mpsc::unbounded_channel();
    let (live_tx, live_rx) = watch::channel(measure::Live::default());
    let collector = tokio::spawn(measure::collect(sample_rx, live_tx));
    let bar = progress.then(|| spawn_progress(scenario, live_rx, start, stop.clone()));
    let load = load::open_loop(
        load_client,
        Arc::new(mix),
        &scenario.load,
        start,
        scenario.duration,
        sample_tx,
        stop.clone(),
    );
    let controls = timeline::Controls {
        stamps: &env.controls,
        admin: &env.admin_url,
        token: env.token.as_deref(),
        config_path: env.config_path.as_ref(),
        addresses: &env.addresses,
    };
    let steps = timeline::run(scenario, controls, control, start);
    let received = measure::sample_received(|| env.received(), start, scenario.duration);
    let (_, applied, received) = tokio::join!(load, steps, received);
    let mut counts = collector
        .await
        .map_err(|e| DrillError::Setup(format!("the measurement task failed: {e}")))?;
    if !received.is_empty() {
        counts.set_received(received);
    }
    tokio::time::sleep(EVENT_SETTLE).await;
    stop.cancel();
    let _ = follower.await;
    if let Some(bar) = bar {
        let _ = bar.await;
    }
    let mut events = Vec::new();
    while let Ok(event) = event_rx.try_recv() {
        events.push(event);
    }
    counts.pad_to(scenario.duration);
    let faults = timeline::episodes(scenario)
        .iter()
        .map(|e| measure::figures(e, &counts.fine, &events))
        .collect();
    let started = humantime::format_rfc3339_seconds(started_wall).to_string();
    Ok(Report::new(
        scenario, started, &counts, faults, applied, events,
    ))
}

/// The live line: elapsed, completion rate, errors, region shares, lag.
fn spawn_progress(
    scenario: &Scenario,
    mut live: watch::Receiver<measure::Live>,
    start: Instant,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let bar =
        indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stdout());
    if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {msg}") {
        bar.set_style(style);
    }
    let total = scenario.duration;
    let name = scenario.name.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PROGRESS_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => break,
            }
            let view = live.borrow_and_update().clone();
            let shares: Vec<String> = view
                .shares
                .iter()
                .map(|(r, s)| format!("{r} {:.0}%", s * 100.0))
                .collect();
            let lag = if view.lag > LAG_WARNING {
                format!("  LAGGING {:.0} ms behind schedule", measure::ms(view.lag))
            } else {
                String::new()
            };
            let elapsed = start.elapsed().min(total);
            bar.set_message(format!(
                "{name} {:.1}/{:.0}s  {:.0} req/s  {} errors  {}{lag}",
                elapsed.as_secs_f64(),
                total.as_secs_f64(),
                view.rate,
                view.errors,
                shares.join("  ")
            ));
            bar.tick();
        }
        bar.finish_and_clear();
    })
}

fn write_reports(scenario: &Scenario, report: &Report, out: &Path) -> Result<(), DrillError> {
    let write = |name: &str, contents: &[u8]| {
        let path = out.join(name);
        std::fs::write(&path, contents).map_err(|source| DrillError::Write { path, source })
    };
    let json = serde_json::to_vec_pretty(report).map_err(|e| DrillError::Write {
        path: out.join("report.json"),
        source: std::io::Error::other(e),
    })?;
    write("report.json", &json)?;
    let regions_of = scenario
        .stamps
        .iter()
        .map(|s| (s.name.clone(), s.region.clone()))
        .collect();
    write(
        "report.html",
        report_html::render(report, &regions_of).as_bytes(),
    )
}
