//! The data plane: listeners, TLS, the request handler, upstream connection
//! pools and the header rules. [`start`] binds everything and returns a
//! [`ProxyHandle`]; the request path itself lives in [`forward`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::controller::{Controller, ControllerError, ControllerHandle};
use crate::routing::RoutingTable;

pub mod access_log;
pub mod body;
pub mod budget;
pub mod forward;
pub mod h1;
pub mod h1_server;
pub mod headers;
pub mod pool;
pub mod server;
pub mod tls;
pub mod tripwire;
pub mod upstream;

use forward::Gateway;
use server::{Acceptor, ConnLimits};

/// Box the future `make` returns, built in its box: the allocation comes
/// first, so the compiler writes the future there instead of building it
/// on the stack and copying it in, as `Box::pin(make())` does (a copy of
/// 1 to 4 KiB per request on the request path).
#[inline(always)]
pub(crate) fn boxed_in_place<F>(make: impl FnOnce() -> F) -> std::pin::Pin<Box<F>> {
    Box::into_pin(Box::write(Box::new_uninit(), make()))
}

/// Why the proxy could not start.
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
    /// The access log destination cannot be opened.
    #[error(transparent)]
    AccessLog(#[from] access_log::AccessLogError),
    /// The control plane could not start (upstream clients, DNS).
    #[error(transparent)]
    Controller(#[from] ControllerError),
}

/// A running proxy.
#[derive(Debug)]
pub struct ProxyHandle {
    /// Bound plaintext listener addresses (port 0 resolved).
    pub listen: Vec<SocketAddr>,
    /// Bound TLS listener addresses.
    pub tls_listen: Vec<SocketAddr>,
    /// The routing table the request path reads.
    pub routing: Arc<ArcSwap<RoutingTable>>,
    /// The control plane (events, signals).
    pub controller: ControllerHandle,
    shutdown: CancellationToken,
    /// The data path's view of `shutdown`, read on every request.
    closing: Arc<tripwire::Tripwire>,
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
        self.shutdown.cancel();
        self.closing.trip();
        self.tracker.close();
        match tokio::time::timeout(self.grace, self.tracker.wait()).await {
            Ok(()) => ShutdownOutcome::Drained,
            Err(_) => ShutdownOutcome::GraceExpired,
        }
    }
}

/// Start the controller (first routing table, probes), bind the listeners
/// and start serving `config`.
pub async fn start(config: &Config) -> Result<ProxyHandle, StartError> {
    let tls = if config.proxy.tls_listen.is_empty() {
        None
    } else {
        Some(TlsAcceptor::from(tls::server_config(
            &config.proxy.certificates,
        )?))
    };
    let plain = bind_all(&config.proxy.listen).await?;
    let secure = bind_all(&config.proxy.tls_listen).await?;

    let stats = Arc::new(crate::metrics::ProxyStats::default());
    let access_log = access_log::AccessLog::start(&config.access_log, stats.clone())?;
    let shutdown = CancellationToken::new();
    let controller = Controller::start(config.clone(), stats, shutdown.child_token())?;
    let limits = ConnLimits {
        header_read_timeout: config.proxy.header_read_timeout,
        idle_timeout: config.proxy.idle_timeout,
    };
    let acceptor = Acceptor {
        gateway: Arc::new(Gateway {
            routing: controller.routing.clone(),
            signals: controller.signals.clone(),
            access_log,
            stats: controller.stats.clone(),
        }),
        limits,
        http: Arc::new(server::http_builder()),
        shutdown: Arc::new(tripwire::Tripwire::new()),
        tracker: TaskTracker::new(),
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
        routing: controller.routing.clone(),
        controller,
        shutdown,
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
