//! The `stampgate` command: parses the command line, sets up logging, and
//! runs one subcommand; SIGTERM/SIGINT become a graceful shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use stampgate::{config, demo, proxy, stamp};

/// A global traffic manager and failover proxy for multi-region stamps.
#[derive(Debug, Parser)]
#[command(name = "stampgate", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log output format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Pretty)]
    log_format: LogFormat,
    /// Log level or filter (overrides RUST_LOG), e.g. `info` or `stampgate=debug`.
    #[arg(long, global = true)]
    log_level: Option<String>,
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
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration and print what it resolves to.
    Check {
        /// The configuration file.
        #[arg(long, short)]
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format, cli.log_level.as_deref());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
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
                print!("{}", config::summary(&cfg));
                println!("{}: OK", config.display());
                ExitCode::SUCCESS
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
            let handle = match proxy::start(&cfg).await {
                Ok(h) => h,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            shutdown_signal().await;
            tracing::info!("shutting down: no new connections, finishing in-flight requests");
            let outcome = handle.shutdown().await;
            tracing::info!(?outcome, "stopped");
            ExitCode::SUCCESS
        }
        Command::Demo => {
            let demo = match demo::Demo::start(demo::DemoPorts::Fixed).await {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            println!("{}", demo.banner());
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
    }
}

fn init_logging(format: LogFormat, level: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = match level {
        Some(l) => EnvFilter::new(l),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
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
