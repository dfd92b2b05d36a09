//! The data plane: client listeners, TLS, the two HTTP server paths, the
//! request handler and the header rules. [`start`] binds the listeners with
//! what the composition root (`app`) hands it ([`Wiring`]) and returns a
//! [`ProxyHandle`]; the request path itself lives in [`handler`], and its
//! way to the stamps in [`crate::upstream`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::metrics::ProxyStats;
use crate::routing::RoutingTable;
use crate::signals::Signal;
use crate::tripwire::Tripwire;

pub mod access_log;
pub mod attempts;
pub mod body;
pub mod conn;
pub mod h1_server;
pub mod handler;
pub mod headers;
pub mod hedge;
pub mod in_flight;
pub mod proxy_protocol;
pub mod redirect;
pub mod request_body;
pub mod server;
pub mod tls;
pub mod upgrade;

use access_log::AccessLog;
use handler::Gateway;
use server::{Acceptor, ConnLimits};

/// Why the listeners could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The TLS listener configuration is unusable.
    #[error(transparent)]
    Tls(#[from] tls::TlsSetupError),
}

/// What the data plane is given by the composition root (`app`): the
/// routing table it reads, the channel its passive signals go to, the
/// access log and the proxy-wide counters. The data plane starts none of
/// them.
#[derive(Debug)]
pub struct Wiring {
    /// The routing table (stored by the controller only).
    pub routing: Arc<ArcSwap<RoutingTable>>,
    /// Passive health signals (`try_send` only).
    pub signals: mpsc::Sender<Signal>,
    /// Where finished requests are logged.
    pub access_log: AccessLog,
    /// Proxy-wide counters.
    pub stats: Arc<ProxyStats>,
    /// The TLS listeners' certificates (swapped by the controller on reload).
    pub certificates: Arc<tls::Certificates>,
}

/// Running client listeners.
#[derive(Debug)]
pub struct ProxyHandle {
    /// Bound plaintext listener addresses (port 0 resolved).
    pub listen: Vec<SocketAddr>,
    /// Bound TLS listener addresses.
    pub tls_listen: Vec<SocketAddr>,
    /// The data path's shutdown signal, read on every request.
    closing: Arc<Tripwire>,
    tracker: TaskTracker,
    grace: Duration,
}

/// How a shutdown ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownOutcome {
    /// Every in-flight request finished within the grace period.
    Drained,
    /// The grace period ran out; remaining connections were dropped.
    GraceExpired,
}

impl ProxyHandle {
    /// Stop accepting, let in-flight requests finish within the grace
    /// period, then return.
    pub async fn shutdown(self) -> ShutdownOutcome {
        self.closing.trip();
        self.tracker.close();
        match tokio::time::timeout(self.grace, self.tracker.wait()).await {
            Ok(()) => ShutdownOutcome::Drained,
            Err(_) => ShutdownOutcome::GraceExpired,
        }
    }
}

/// Bind the listeners of `config.proxy` and serve them with `wiring`.
pub async fn start(config: &Config, wiring: Wiring) -> Result<ProxyHandle, StartError> {
    let tls = if config.proxy.tls_listen.is_empty() {
        None
    } else {
        Some(TlsAcceptor::from(tls::server_config(
            wiring.certificates.clone(),
        )?))
    };
    let plain = bind_all(&config.proxy.listen).await?;
    let secure = bind_all(&config.proxy.tls_listen).await?;
    let limits = ConnLimits {
        header_read_timeout: config.proxy.header_read_timeout,
        idle_timeout: config.proxy.idle_timeout,
        close_grace: config.proxy.shutdown_grace,
        http1_engine: config.proxy.http1_engine,
    };
    let redirect = match (config.proxy.redirect_http_to_https, secure.first()) {
        (true, Some(l)) => Some(redirect::Redirect {
            https_port: l.local_addr().map_or(443, |a| a.port()),
            exempt: config.proxy.redirect_exempt_paths.clone(),
        }),
        _ => None,
    };
    let tracker = TaskTracker::new();
    let acceptor = Acceptor {
        gateway: Arc::new(Gateway {
            routing: wiring.routing,
            signals: wiring.signals,
            access_log: wiring.access_log,
            stats: wiring.stats,
            redirect,
            upgrade_idle: config.proxy.idle_timeout,
            tunnels: tracker.clone(),
        }),
        limits,
        proxy_protocol: config.proxy.proxy_protocol,
        http: Arc::new(server::http_builder()),
        shutdown: Arc::new(Tripwire::new()),
        tracker,
    };

    let listen = local_addrs(&plain);
    let tls_listen = local_addrs(&secure);
    for l in plain {
        acceptor.tracker.spawn(acceptor.clone().run(l, None));
    }
    for l in secure {
        acceptor.tracker.spawn(acceptor.clone().run(l, tls.clone()));
    }
    tracing::info!(
        listen = %crate::logging::list(&listen),
        tls_listen = %crate::logging::list(&tls_listen),
        "proxy listening"
    );
    Ok(ProxyHandle {
        listen,
        tls_listen,
        closing: acceptor.shutdown,
        tracker: acceptor.tracker,
        grace: config.proxy.shutdown_grace,
    })
}
async fn bind_all(addrs: &[SocketAddr]) -> Result<Vec<TcpListener>, StartError> {
    let mut out = Vec::with_capacity(addrs.len());
    for &addr in addrs {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })?;
        out.push(l);
    }
    Ok(out)
}

fn local_addrs(listeners: &[TcpListener]) -> Vec<SocketAddr> {
    listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .collect()
}
