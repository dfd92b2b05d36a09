//! The operator's side door: a small HTTP/1.1 listener, separate from
//! client traffic, where people and scripts read the status and event log
//! and ask the controller to drain, enable, disable, re-weight or reload.
//!
//! ```text
//!  operator / stampgate ctl ──▶ admin listener (this module)
//!                                 │ route(method, path)        (route)
//!                                 │ bearer token → label       (auth)
//!                                 │ query/body → Command       (api)
//!                                 ▼
//!                        ControllerHandle::command(cmd, who) ──▶ controller
//!                                 │                              (applies, persists,
//!                                 ▼                               publishes a table)
//!                        JSON answer, or the refusal's status
//! ```
//!
//! The listener never touches routing state: reads come from the
//! controller (`Command::Status`), the event log and one `load()` of the
//! routing table (`/ready`); every change is a command.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::AdminSettings;
use crate::controller::ControllerHandle;
use crate::fleet::FleetHandle;

mod api;
pub mod auth;
pub mod client;
pub mod ctl;
pub mod health_port;
mod route;
mod sse;

pub use auth::{TokenError, Tokens};

/// A client must send a request head within this time; the admin
/// listener serves people and scripts, not slow mobile links.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// After an accept error (out of file descriptors, mostly) wait this long
/// before accepting again, so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// Why the admin listener did not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminStartError {
    /// An admin port open to the network that no operator can use (and
    /// whose status anyone can read) is almost always a forgotten token;
    /// refuse to start rather than guess that it was meant.
    #[error(
        "admin.listen is {listen}, which is not a loopback address, but {why}; put the token in \
         the environment variable named by admin.token_env, or listen on 127.0.0.1"
    )]
    Unprotected {
        /// The listener address.
        listen: SocketAddr,
        /// What is missing, in words.
        why: String,
    },
    /// The token variable's value cannot be used.
    #[error("admin.token_env: the value of {var}: {source}")]
    Tokens {
        /// The variable name.
        var: String,
        /// What is wrong with it (never the token itself).
        #[source]
        source: TokenError,
    },
    /// The token variable is set but not UTF-8.
    #[error("admin.token_env: the value of {var} is not valid UTF-8")]
    NotUnicode {
        /// The variable name.
        var: String,
    },
    /// The address could not be bound.
    #[error("admin.listen: cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// A running admin listener. It stops when the `shutdown` token given to
/// [`start`] is cancelled.
#[derive(Debug)]
pub struct AdminHandle {
    /// The bound address (port 0 resolved).
    pub addr: SocketAddr,
    tasks: TaskTracker,
}

impl AdminHandle {
    /// After shutdown was cancelled: wait until the accept loop and every
    /// connection (event streams included) have ended.
    pub async fn closed(self) {
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// The tokens named by `admin.token_env`: unset (key or variable) or blank
/// means none.
pub fn tokens_from_env(token_env: Option<&str>) -> Result<Tokens, AdminStartError> {
    let Some(var) = token_env else {
        return Ok(Tokens::none());
    };
    match std::env::var(var) {
        Ok(value) => Tokens::parse(&value).map_err(|source| AdminStartError::Tokens {
            var: var.to_owned(),
            source,
        }),
        Err(std::env::VarError::NotPresent) => Ok(Tokens::none()),
        Err(std::env::VarError::NotUnicode(_)) => Err(AdminStartError::NotUnicode {
            var: var.to_owned(),
        }),
    }
}

/// The tokens for `settings`, checked before anything is bound: a
/// non-loopback listener without a token is refused here, so `run` fails
/// before it opens the client listeners.
pub fn tokens_for(settings: &AdminSettings) -> Result<Tokens, AdminStartError> {
    let tokens = tokens_from_env(settings.token_env.as_deref())?;
    if tokens.is_empty() && !settings.listen.ip().is_loopback() {
        let why = match &settings.token_env {
            None => "admin.token_env is not set".to_owned(),
            Some(var) => format!("the variable {var} named by admin.token_env is unset or empty"),
        };
        return Err(AdminStartError::Unprotected {
            listen: settings.listen,
            why,
        });
    }
    Ok(tokens)
}

/// Start the admin listener of `settings`, with the tokens from the
/// variable named by `admin.token_env`.
pub async fn start(
    settings: &AdminSettings,
    controller: ControllerHandle,
    shutdown: CancellationToken,
) -> Result<AdminHandle, AdminStartError> {
    let tokens = tokens_for(settings)?;
    start_with_tokens(settings.listen, tokens, controller, shutdown).await
}

/// Start the admin listener on `listen` with `tokens` given directly (tests,
/// the demo's generated token). Refuses a non-loopback address without a
/// token, like [`start`].
pub async fn start_with_tokens(
    listen: SocketAddr,
    tokens: Tokens,
    controller: ControllerHandle,
    shutdown: CancellationToken,
) -> Result<AdminHandle, AdminStartError> {
    start_with_fleet(listen, tokens, controller, None, shutdown).await
}

/// Like [`start_with_tokens`], for an edge of a fleet: operator decisions
/// go through `fleet` to every edge, and `/admin/fleet` shows the fleet.
pub async fn start_with_fleet(
    listen: SocketAddr,
    tokens: Tokens,
    controller: ControllerHandle,
    fleet: Option<FleetHandle>,
    shutdown: CancellationToken,
) -> Result<AdminHandle, AdminStartError> {
    if tokens.is_empty() && !listen.ip().is_loopback() {
        return Err(AdminStartError::Unprotected {
            listen,
            why: "no admin token is configured".to_owned(),
        });
    }
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| AdminStartError::Bind {
            addr: listen,
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| AdminStartError::Bind {
            addr: listen,
            source,
        })?;
    if tokens.is_empty() {
        tracing::warn!(%addr, "admin API listening without a token: changes are refused");
    } else {
        let operators: Vec<&str> = tokens.labels().collect();
        tracing::info!(%addr, ?operators, "admin API listening");
    }
    let mut metrics =
        crate::metrics::registry(controller.routing.clone(), controller.stats.clone());
    if let Some(f) = &fleet {
        f.register_metrics(&mut metrics);
    }
    let admin = Arc::new(api::Admin {
        metrics,
        fleet,
        controller,
        tokens,
        shutdown,
    });
    let tasks = TaskTracker::new();
    tasks.spawn(accept_loop(listener, admin, tasks.clone()));
    Ok(AdminHandle { addr, tasks })
}

async fn accept_loop(listener: TcpListener, admin: Arc<api::Admin>, tasks: TaskTracker) {
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = admin.shutdown.cancelled() => break,
        };
        match accepted {
            Ok((stream, _remote)) => {
                tasks.spawn(serve(admin.clone(), stream));
            }
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
            }
        }
    }
}

async fn serve(admin: Arc<api::Admin>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let handler = admin.clone();
    let service = service_fn(move |request| {
        let handler = handler.clone();
        async move { Ok::<_, std::convert::Infallible>(handler.handle(request).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
            return;
        }
        () = admin.shutdown.cancelled() => conn.as_mut().graceful_shutdown(),
    }
    // In-flight answers finish; event streams end on the same token.
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "admin connection ended with an error");
    }
}
