//! The `stampgate` command: parses the command line, sets up logging, and
//! runs one subcommand; SIGTERM/SIGINT become a graceful shutdown, SIGHUP a
//! config reload.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use stampgate::admin::{self, Tokens};
use stampgate::app::App;
use stampgate::controller::ControllerHandle;
use stampgate::proxy::access_log::Reopen;
use stampgate::signals::command::Command as AdminCommand;
use stampgate::{config, demo, drill, stamp};
use tokio_util::sync::CancellationToken;

/// The variable the demo takes its admin token from, if set (the same one
/// `stampgate ctl` reads).
const DEMO_TOKEN_ENV: &str = "STAMPGATE_ADMIN_TOKEN";

/// A global traffic manager and failover proxy for multi-region stamps.
#[derive(Debug, Parser)]
#[command(name = "stampgate", version = stampgate::build_info::LONG_VERSION, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log output format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Pretty)]
    log_format: LogFormat,
    /// Log level or filter (overrides RUST_LOG), e.g. `info` or `stampgate=debug`.
    #[arg(long, global = true)]
    log_level: Option<String>,
    /// Runtime shape: worker threads sized by TOKIO_WORKER_THREADS (else
    /// one per core), or everything on the main thread.
    #[arg(long, global = true, value_enum, default_value_t = Runtime::MultiThread)]
    runtime: Runtime,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Runtime {
    MultiThread,
    CurrentThread,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        /// The configuration file.
        #[arg(long, short, env = config::defaults::CONFIG_ENV, default_value = config::defaults::DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Validate a configuration and print what it resolves to.
    Check {
        /// The configuration file.
        #[arg(long, short, env = config::defaults::CONFIG_ENV, default_value = config::defaults::DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Three simulated stamps plus the proxy, on loopback.
    Demo,
    /// A simulated regional stamp (catalog API, health endpoint, fault controls).
    Stamp {
        /// Stamp name (sent as X-Server-Name).
        #[arg(long)]
        name: String,
        /// Region label (sent as X-Server-Location).
        #[arg(long)]
        region: String,
        /// Serving address.
        #[arg(long)]
        listen: SocketAddr,
        /// Fault-control address.
        #[arg(long)]
        control: SocketAddr,
    },
    /// The operator's client for the admin API.
    Ctl(admin::ctl::CtlArgs),
    /// The failover drill: load + scheduled faults + measurements + report.
    Drill(drill::DrillArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `ctl` output is for a person or a script: only problems go to stderr.
    let default_level = match cli.command {
        Command::Ctl(_) | Command::Drill(_) => "warn",
        _ => "info",
    };
    let json = matches!(cli.log_format, LogFormat::Json);
    stampgate::logging::init(json, cli.log_level.as_deref(), default_level);
    let mut builder = match cli.runtime {
        Runtime::MultiThread => tokio::runtime::Builder::new_multi_thread(),
        Runtime::CurrentThread => tokio::runtime::Builder::new_current_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("stampgate: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli.command))
}

async fn run(command: Command) -> ExitCode {
    match command {
        Command::Check { config } => match config::load(&config) {
            Ok(cfg) => {
                // `stampgate check | head` closes the pipe early: that is
                // the reader's choice, not a failure (print! would panic).
                use std::io::Write;
                let text = format!("{}{}: OK\n", config::summary(&cfg), config.display());
                match std::io::stdout().lock().write_all(text.as_bytes()) {
                    Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                        eprintln!("error: cannot write the summary: {e}");
                        ExitCode::FAILURE
                    }
                    _ => ExitCode::SUCCESS,
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config } => {
            let cfg = match config::load(&config) {
                Ok(cfg) => cfg,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            // Token problems are found before any listener is bound.
            let tokens = match admin::tokens_for(&cfg.admin) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            // Watch SIGTERM/SIGINT before anything is bound: a signal that
            // arrives during start-up must still shut down gracefully, not
            // take the default action (the first poll registers the
            // handlers; a signal already seen ends the wait at once).
            let mut stop = Box::pin(shutdown_signal());
            let stopped_early = std::future::poll_fn(|cx| {
                std::task::Poll::Ready(stop.as_mut().poll(cx).is_ready())
            })
            .await;
            // SIGUSR1 too: its default action ends the process, and log
            // rotation sends it as soon as the file is renamed.
            let user1 =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1());
            let app = match App::start(&cfg, Some(tokens)).await {
                Ok(app) => app,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match user1 {
                Ok(user1) => {
                    tokio::spawn(reopen_on_sigusr1(app.access_log_reopener(), user1));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch SIGUSR1; the access log is not reopened on it")
                }
            }
            let stop_reload = CancellationToken::new();
            tokio::spawn(reload_on_sighup(
                app.controller.clone(),
                stop_reload.clone(),
            ));
            stampgate::notify::ready(&format!(
                "serving on {}",
                stampgate::logging::list(&app.listen)
            ));
            if !stopped_early {
                stop.await;
            }
            stampgate::notify::stopping();
            tracing::info!("shutting down: no new connections, finishing in-flight requests");
            stop_reload.cancel();
            let outcome = app.shutdown().await;
            tracing::info!(?outcome, "stopped");
            ExitCode::SUCCESS
        }
        Command::Demo => {
            let (tokens, shown_token) = match demo_tokens() {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let demo = match demo::Demo::start(demo::DemoPorts::Fixed, Some(tokens)).await {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("error: {e} (is another demo running?)");
                    return ExitCode::FAILURE;
                }
            };
            println!("{}", demo.banner());
            if let Some(addr) = demo.app.admin_addr() {
                println!("{}", demo_admin_banner(addr, shown_token.as_deref()));
            }
            shutdown_signal().await;
            demo.shutdown().await;
            ExitCode::SUCCESS
        }
        Command::Stamp {
            name,
            region,
            listen,
            control,
        } => {
            let opts = stamp::StampOptions {
                name,
                region,
                listen,
                control,
            };
            match stamp::run(opts, shutdown_signal()).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Ctl(args) => admin::ctl::run(args).await,
        Command::Drill(args) => drill::run_cli(args).await,
    }
}

/// The demo's admin tokens: those of `STAMPGATE_ADMIN_TOKEN` when set, else
/// a fresh random one, returned also for the banner (the demo should let
/// its user drain a region without setting anything up first).
fn demo_tokens() -> Result<(Tokens, Option<String>), admin::AdminStartError> {
    let tokens = admin::tokens_from_env(Some(DEMO_TOKEN_ENV))?;
    if !tokens.is_empty() {
        return Ok((tokens, None));
    }
    match admin::auth::random_token() {
        Ok(token) => Ok((Tokens::single(token.clone()), Some(token))),
        Err(e) => {
            tracing::warn!(error = %e, "cannot make an admin token; admin changes are disabled");
            Ok((Tokens::none(), None))
        }
    }
}

fn demo_admin_banner(admin: SocketAddr, token: Option<&str>) -> String {
    let url = format!("http://{admin}");
    // `ctl` needs no --admin for the default address.
    let ctl = if url == admin::ctl::DEFAULT_ADMIN_URL {
        "stampgate ctl".to_owned()
    } else {
        format!("stampgate ctl --admin {url}")
    };
    let export = match token {
        Some(t) => format!("  export {DEMO_TOKEN_ENV}={t}\n"),
        None => format!("  ({DEMO_TOKEN_ENV} from your environment is the token)\n"),
    };
    format!(
        "Dashboard: {url}/admin/ui  (open it in a browser)\n\
         Admin API: {url}  (status: curl -s {url}/admin/status)\n\n\
         Operate it with `stampgate ctl` (another terminal):\n{export}  {ctl} status\n  \
         {ctl} drain eastus2-1 --wait\n  {ctl} enable eastus2-1\n  {ctl} events --follow\n"
    )
}

/// SIGUSR1 reopens the access log file by name (log rotation: rename,
/// then signal; the next line goes to a new file at the configured path).
async fn reopen_on_sigusr1(reopen: Reopen, mut user1: tokio::signal::unix::Signal) {
    while user1.recv().await.is_some() {
        tracing::info!("SIGUSR1: reopening the access log");
        reopen.request();
    }
}

/// SIGHUP asks the controller to reload the config file, as
/// `POST /admin/reload` does; the event log records who = `sighup`.
async fn reload_on_sighup(controller: ControllerHandle, stop: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGHUP; reload through the admin API");
            return;
        }
    };
    loop {
        tokio::select! {
            received = hangup.recv() => if received.is_none() { return },
            () = stop.cancelled() => return,
        }
        tracing::info!("SIGHUP: reloading the configuration");
        // systemd's `systemctl reload` waits from RELOADING=1 to READY=1;
        // a refused reload leaves the old config serving, so READY either way.
        stampgate::notify::reloading();
        match controller.command(AdminCommand::Reload, "sighup").await {
            Ok(answer) => {
                tracing::info!(%answer, "SIGHUP: configuration reloaded");
                stampgate::notify::ready("serving; configuration reloaded");
            }
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: reload refused");
                stampgate::notify::ready(&format!(
                    "serving the previous configuration; reload refused: {e}"
                ));
            }
        }
    }
}

/// Resolves on the first SIGTERM or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
