//! The composition root: the one place that starts the planes and wires
//! them together. The control plane (the controller: first routing table,
//! probes, DNS) comes first, then the access log, the data plane's
//! listeners and, when asked for, the admin API. `run`, `demo` and `drill`
//! all start through [`App::start`]; nothing below this module starts
//! another plane.
//!
//! Shutdown runs the other way: the admin API stops taking commands, the
//! listeners stop accepting and drain within `proxy.shutdown_grace`, and
//! only then does the controller stop, so drain cuts and probes keep
//! working for the requests still in flight.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminHandle, AdminStartError, Tokens};
use crate::config::Config;
use crate::controller::{Controller, ControllerError, ControllerHandle};
use crate::metrics::ProxyStats;
use crate::proxy::access_log::{AccessLog, AccessLogError, Reopen};
use crate::proxy::{self, ProxyHandle, ShutdownOutcome, Wiring};
use crate::routing::RoutingTable;

/// After the listeners drained, admin connections get this long to finish
/// (their answers are quick; event streams end on shutdown).
const ADMIN_CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Why stampgate could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The control plane could not start (upstream clients, DNS, state
    /// file).
    #[error(transparent)]
    Controller(#[from] ControllerError),
    /// The access log destination cannot be opened.
    #[error(transparent)]
    AccessLog(#[from] AccessLogError),
    /// A client listener could not be bound, or its TLS set up.
    #[error(transparent)]
    Proxy(#[from] proxy::StartError),
    /// The admin API could not start.
    #[error(transparent)]
    Admin(#[from] AdminStartError),
}

/// A running stampgate: both planes and the admin API.
#[derive(Debug)]
pub struct App {
    /// Bound plaintext listener addresses (port 0 resolved).
    pub listen: Vec<SocketAddr>,
    /// Bound TLS listener addresses.
    pub tls_listen: Vec<SocketAddr>,
    /// The routing table the request path reads.
    pub routing: Arc<ArcSwap<RoutingTable>>,
    /// The control plane (events, commands).
    pub controller: ControllerHandle,
    /// The admin API, when started with tokens.
    pub admin: Option<AdminHandle>,
    /// Proxy-wide counters (what `/metrics` shows of the proxy itself).
    pub stats: Arc<ProxyStats>,
    access_log: Reopen,
    proxy: ProxyHandle,
    stop_controller: CancellationToken,
    stop_admin: CancellationToken,
}

impl App {
    /// Start the controller, the access log and the listeners of `config`,
    /// and the admin API on `admin.listen` when `admin_tokens` is given.
    /// On an error, whatever had started is stopped again.
    pub async fn start(config: &Config, admin_tokens: Option<Tokens>) -> Result<App, StartError> {
        let stats = Arc::new(ProxyStats::default());
        let stop_controller = CancellationToken::new();
        let controller = Controller::start(config.clone(), stats.clone(), stop_controller.clone())?;
        let started = async {
            let access_log = AccessLog::start(&config.access_log, stats.clone())?;
            let reopen = access_log.reopener();
            let wiring = Wiring {
                routing: controller.routing.clone(),
                signals: controller.signals.clone(),
                access_log,
                stats: stats.clone(),
            };
            Ok::<_, StartError>((proxy::start(config, wiring).await?, reopen))
        };
        let (proxy, access_log) = match started.await {
            Ok(p) => p,
            Err(e) => {
                stop_controller.cancel();
                return Err(e);
            }
        };
        let stop_admin = CancellationToken::new();
        let admin = match admin_tokens {
            None => None,
            Some(tokens) => {
                let listen = config.admin.listen;
                let api = admin::start_with_tokens(
                    listen,
                    tokens,
                    controller.clone(),
                    stop_admin.clone(),
                );
                match api.await {
                    Ok(a) => Some(a),
                    Err(e) => {
                        proxy.shutdown().await;
                        stop_controller.cancel();
                        return Err(e.into());
                    }
                }
            }
        };
        Ok(App {
            listen: proxy.listen.clone(),
            tls_listen: proxy.tls_listen.clone(),
            routing: controller.routing.clone(),
            controller,
            admin,
            stats,
            access_log,
            proxy,
            stop_controller,
            stop_admin,
        })
    }

    /// What opens the access log file again by name before its next line
    /// (log rotation; `stampgate run` asks on SIGUSR1).
    pub fn access_log_reopener(&self) -> Reopen {
        self.access_log.clone()
    }

    /// The admin API's bound address, when it runs.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|a| a.addr)
    }

    /// Stop gracefully: admin commands first, then new connections; let
    /// in-flight requests finish within the grace period; then stop the
    /// controller and wait (bounded) for admin connections.
    pub async fn shutdown(self) -> ShutdownOutcome {
        self.stop_admin.cancel();
        let outcome = self.proxy.shutdown().await;
        self.stop_controller.cancel();
        if let Some(admin) = self.admin
            && tokio::time::timeout(ADMIN_CLOSE_GRACE, admin.closed())
                .await
                .is_err()
        {
            tracing::warn!("admin connections still open after shutdown; dropping them");
        }
        outcome
    }
}
