//! The composition root: the one place that starts the planes and wires
//! them together. The control plane (the controller: first routing table,
//! probes, DNS) comes first, then the fleet sync when configured, the
//! access log, the data plane's listeners, the authoritative DNS server
//! when configured (fed the fleet's live edges) and, when asked for, the
//! admin API. `run`, `demo` and `drill`
//! all start through [`App::start`]; nothing below this module starts
//! another plane.
//!
//! Shutdown runs the other way: the admin API stops taking commands, the
//! listeners stop accepting and drain within `proxy.shutdown_grace`, and
//! only then does the controller stop, so drain cuts and probes keep
//! working for the requests still in flight.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::admin::health_port::{self, HealthPort, HealthPortError, HealthState};
use crate::admin::{self, AdminHandle, AdminStartError, Tokens};
use crate::config::Config;
use crate::controller::{Controller, ControllerError, ControllerHandle};
use crate::dns_server::{self, DnsServerError, DnsServerHandle, EdgeInfo, LiveEdges};
use crate::fleet::{FleetError, FleetHandle, LivePeer};
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
    /// The DNS server could not start.
    #[error(transparent)]
    Dns(#[from] DnsServerError),
    /// The fleet refused this edge (its name is taken by a live edge).
    #[error(transparent)]
    Fleet(#[from] FleetError),
    /// The load balancer's readiness listener could not start.
    #[error(transparent)]
    HealthPort(#[from] HealthPortError),
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
    /// The authoritative DNS server, when `[dns_server]` is configured.
    pub dns: Option<DnsServerHandle>,
    /// The fleet sync, when `[fleet]` is configured.
    pub fleet: Option<FleetHandle>,
    /// Proxy-wide counters (what `/metrics` shows of the proxy itself).
    pub stats: Arc<ProxyStats>,
    access_log: Reopen,
    proxy: ProxyHandle,
    stop_controller: CancellationToken,
    stop_admin: CancellationToken,
    stop_dns: CancellationToken,
    /// The load balancer's `/ready` and `/live` listener, when configured.
    pub health: Option<HealthPort>,
    stop_health: CancellationToken,
    shutting_down: Arc<AtomicBool>,
    shutdown_delay: Duration,
}

impl App {
    /// Start the controller, the access log and the listeners of `config`,
    /// and the admin API on `admin.listen` when `admin_tokens` is given.
    /// On an error, whatever had started is stopped again.
    pub async fn start(config: &Config, admin_tokens: Option<Tokens>) -> Result<App, StartError> {
        let stats = Arc::new(ProxyStats::default());
        let stop_controller = CancellationToken::new();
        let controller = Controller::start(config.clone(), stats.clone(), stop_controller.clone())?;
        // The fleet sync stops with the controller (after the listeners
        // drained); it joins before the listeners open so an edge whose
        // name is taken never serves.
        let fleet = match config.fleet.as_ref().filter(|f| f.is_shared()) {
            None => None,
            Some(settings) => {
                let started = FleetHandle::start(
                    config,
                    settings.clone(),
                    controller.clone(),
                    stop_controller.child_token(),
                );
                match started.await {
                    Ok(f) => Some(f),
                    Err(e) => {
                        stop_controller.cancel();
                        return Err(e.into());
                    }
                }
            }
        };
        let started = async {
            let access_log = AccessLog::start(&config.access_log, stats.clone())?;
            let reopen = access_log.reopener();
            let wiring = Wiring {
                routing: controller.routing.clone(),
                signals: controller.signals.clone(),
                access_log,
                stats: stats.clone(),
                certificates: controller.certificates.clone(),
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
        let stop_dns = CancellationToken::new();
        let dns = match start_dns_server(config, &controller, fleet.as_ref(), &stop_dns).await {
            Ok(dns) => dns,
            Err(e) => {
                proxy.shutdown().await;
                stop_controller.cancel();
                return Err(e.into());
            }
        };
        let shutting_down = controller.shutting_down.clone();
        let stop_health = CancellationToken::new();
        let health = match config.health.listen {
            None => None,
            Some(listen) => {
                let state = HealthState {
                    routing: controller.routing.clone(),
                    shutting_down: shutting_down.clone(),
                };
                match health_port::start(listen, state, stop_health.clone()).await {
                    Ok(h) => Some(h),
                    Err(e) => {
                        stop_dns.cancel();
                        proxy.shutdown().await;
                        stop_controller.cancel();
                        return Err(e.into());
                    }
                }
            }
        };
        let stop_admin = CancellationToken::new();
        let admin = match admin_tokens {
            None => None,
            Some(tokens) => {
                let listen = config.admin.listen;
                let api = admin::start_with_fleet(
                    listen,
                    tokens,
                    controller.clone(),
                    fleet.clone(),
                    stop_admin.clone(),
                );
                match api.await {
                    Ok(a) => Some(a),
                    Err(e) => {
                        stop_dns.cancel();
                        stop_health.cancel();
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
            dns,
            fleet,
            stats,
            access_log,
            proxy,
            stop_controller,
            stop_admin,
            stop_dns,
            health,
            stop_health,
            shutting_down,
            shutdown_delay: config.proxy.shutdown_delay,
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

    /// The readiness listener's bound address, when it runs.
    pub fn health_addr(&self) -> Option<SocketAddr> {
        self.health.as_ref().map(|h| h.addr)
    }

    /// Stop gracefully: `/ready` fails first, for `proxy.shutdown_delay`
    /// while everything still serves (the balancer's time to stop sending
    /// us traffic); then admin commands stop, then new connections; let
    /// in-flight requests finish within the grace period; then stop the
    /// controller and wait (bounded) for admin connections.
    pub async fn shutdown(self) -> ShutdownOutcome {
        self.shutting_down.store(true, Ordering::Relaxed);
        if !self.shutdown_delay.is_zero() {
            tracing::info!(delay = ?self.shutdown_delay, "shutting down: /ready fails, still serving");
            tokio::time::sleep(self.shutdown_delay).await;
        }
        self.stop_admin.cancel();
        self.stop_dns.cancel();
        let outcome = self.proxy.shutdown().await;
        self.stop_health.cancel();
        if let Some(h) = self.health {
            h.closed().await;
        }
        self.stop_controller.cancel();
        if let Some(dns) = self.dns {
            dns.stopped().await;
        }
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

/// Start the authoritative DNS server when `[dns_server]` is configured,
/// answering from the controller's routing table. Answers of kind "edges"
/// hold this edge (`fleet.advertise`) and, in a fleet, the live peers.
async fn start_dns_server(
    config: &Config,
    controller: &ControllerHandle,
    fleet: Option<&FleetHandle>,
    stop: &CancellationToken,
) -> Result<Option<DnsServerHandle>, DnsServerError> {
    let Some(settings) = &config.dns_server else {
        return Ok(None);
    };
    let edges = match &config.fleet {
        Some(fleet) => LiveEdges::local(&fleet.name, &fleet.advertise),
        None => LiveEdges::local("this-edge", &[]),
    };
    let inputs = dns_server::Inputs {
        resolved: controller.dns.clone(),
        edges: edges.clone(),
        events: controller.events.clone(),
        stats: controller.stats.clone(),
    };
    let server =
        dns_server::start(settings, controller.routing.clone(), inputs, stop.clone()).await?;
    if let Some(fleet) = fleet {
        tokio::spawn(feed_live_edges(fleet.live_peers(), edges, stop.clone()));
    }
    Ok(Some(server))
}

/// The seam between the fleet and the DNS server, which know nothing of
/// each other: every change of the fleet's live peers becomes the DNS
/// server's list of other edges. Runs until the DNS server stops or the
/// fleet is gone.
async fn feed_live_edges(
    mut peers: watch::Receiver<Vec<LivePeer>>,
    edges: LiveEdges,
    stop: CancellationToken,
) {
    loop {
        let list: Vec<EdgeInfo> = peers
            .borrow_and_update()
            .iter()
            .map(|p| EdgeInfo {
                name: p.name.as_str().into(),
                addresses: p.advertise.clone(),
                pools: Some(p.pools.iter().map(|s| s.as_str().into()).collect()),
            })
            .collect();
        edges.set_peers(list);
        tokio::select! {
            changed = peers.changed() => if changed.is_err() { return },
            () = stop.cancelled() => return,
        }
    }
}
