//! Connections to stamps: one connection pool per stamp pool ([`ConnPool`],
//! keyed by stamp), plain or TLS, HTTP/1.1 or HTTP/2, connected through
//! hyper-rustls over the DNS cache. Failures are classified here into
//! [`ProxyError`]s that say whether the stamp acted.

use std::error::Error as StdError;
use std::fs;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tower_service::Service;

use super::body::{BodyError, UpstreamBody};
use super::pool::{ConnPool, Http1Sender, Http2Sender};
use crate::config::PoolConfig;
use crate::discovery::{CacheResolver, DnsCache};
use crate::error::ProxyError;

/// Idle upstream connections are closed after this long: shorter than the
/// common 60–120 s server keep-alive, so we close first and never send a
/// request on a connection the stamp is closing.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(50);

/// Why a pool's upstream client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamSetupError {
    /// `ca_file` could not be read or holds no certificate.
    #[error("pools.{pool}.ca_file ({path}): {reason}")]
    CaFile {
        /// Pool name.
        pool: String,
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The TLS client configuration was rejected.
    #[error("pools.{pool}: TLS setup failed: {source}")]
    Tls {
        /// Pool name.
        pool: String,
        /// The rustls error.
        #[source]
        source: rustls::Error,
    },
}

/// The connector: TCP (connect timeout, `TCP_NODELAY`, DNS cache), then TLS
/// with SNI from the URI's host when the scheme is `https`.
type Connector = HttpsConnector<HttpConnector<CacheResolver>>;

/// The client for one pool's stamps. Replaced as a whole (with its
/// connections) when the pool's addresses change or a stamp is drained.
#[derive(Debug)]
pub struct Upstream {
    connector: Connector,
    conns: ConnPool,
    scheme: Scheme,
    version: http::Version,
}

impl Upstream {
    /// Build the client for `pool`: connect timeout, TLS roots, protocol.
    /// Host names are resolved from `dns` (the controller keeps it fresh),
    /// so the URI keeps the name for SNI while connects use its addresses.
    pub fn new(pool: &PoolConfig, dns: &DnsCache) -> Result<Upstream, UpstreamSetupError> {
        let mut http = HttpConnector::new_with_resolver(CacheResolver::new(dns.clone()));
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(pool.connect_timeout));
        let tls = client_tls(pool)?;
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http();
        let connector = if pool.upstream_http2 {
            builder.enable_http2().wrap_connector(http)
        } else {
            builder.enable_http1().wrap_connector(http)
        };
        Ok(Upstream {
            connector,
            conns: ConnPool::new(POOL_IDLE_TIMEOUT),
            scheme: if pool.upstream_tls {
                Scheme::HTTPS
            } else {
                Scheme::HTTP
            },
            version: if pool.upstream_http2 {
                http::Version::HTTP_2
            } else {
                http::Version::HTTP_11
            },
        })
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &Scheme {
        &self.scheme
    }

    /// The HTTP version spoken to stamps.
    pub fn version(&self) -> http::Version {
        self.version
    }

    /// Send one request (its URI is absolute and names the stamp) and wait
    /// for the response head. The body streams afterwards.
    ///
    /// A pooled connection that turns out closed before the request was
    /// written is replaced by a new one, once: the stamp saw nothing.
    pub async fn send(
        &self,
        stamp: &str,
        req: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let Some(key) = req.uri().authority().cloned() else {
            return Err(ProxyError::ConnectFailed {
                stamp: stamp.to_owned(),
                detail: format!("request URI {} names no stamp", req.uri()),
            });
        };
        if self.version == http::Version::HTTP_2 {
            self.send_h2(stamp, key, req).await
        } else {
            self.send_h1(stamp, key, req).await
        }
    }

    async fn send_h1(
        &self,
        stamp: &str,
        key: Authority,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let target = std::mem::take(req.uri_mut());
        *req.uri_mut() = request_target(req.method(), &target);
        if let Some(mut tx) = self.conns.checkout_h1(&key) {
            match tx.try_send_request(req).await {
                Ok(resp) => {
                    self.conns.checkin_h1(&key, tx);
                    return Ok(resp);
                }
                Err(e) => req = unsent(stamp, e)?,
            }
        }
        // Boxed: connecting is rare, and its future (connector, TLS,
        // handshake) would otherwise size every request's future, which
        // hyper copies into place per request.
        let mut tx = Box::pin(self.connect_h1(stamp, &target)).await?;
        let resp = tx
            .send_request(req)
            .await
            .map_err(|e| classify(stamp, &e))?;
        self.conns.checkin_h1(&key, tx);
        Ok(resp)
    }

    async fn send_h2(
        &self,
        stamp: &str,
        key: Authority,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, ProxyError> {
        if let Some(mut tx) = self.conns.h2(&key) {
            match tx.try_send_request(req).await {
                Ok(resp) => return Ok(resp),
                Err(e) => req = unsent(stamp, e)?,
            }
        }
        // Boxed for the same reason as in `send_h1`.
        let mut tx = Box::pin(self.connect_h2(stamp, req.uri())).await?;
        self.conns.set_h2(&key, &tx);
        tx.send_request(req).await.map_err(|e| classify(stamp, &e))
    }

    async fn connect(
        &self,
        stamp: &str,
        target: &Uri,
    ) -> Result<<Connector as Service<Uri>>::Response, ProxyError> {
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(|e| classify_connect(stamp, &*e))?;
        connector
            .call(target.clone())
            .await
            .map_err(|e| classify_connect(stamp, &*e))
    }

    async fn connect_h1(&self, stamp: &str, target: &Uri) -> Result<Http1Sender, ProxyError> {
        let io = self.connect(stamp, target).await?;
        let (tx, conn) = http1::handshake(io)
            .await
            .map_err(|e| handshake_failed(stamp, &e))?;
        drive(conn);
        Ok(tx)
    }

    async fn connect_h2(&self, stamp: &str, target: &Uri) -> Result<Http2Sender, ProxyError> {
        let io = self.connect(stamp, target).await?;
        let (tx, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(io)
            .await
            .map_err(|e| handshake_failed(stamp, &e))?;
        drive(conn);
        Ok(tx)
    }
}

/// A request that a pooled connection did not write (it was closed by
/// then) comes back for a new connection; any other failure is final.
fn unsent(
    stamp: &str,
    mut err: hyper::client::conn::TrySendError<Request<UpstreamBody>>,
) -> Result<Request<UpstreamBody>, ProxyError> {
    match err.take_message() {
        Some(req) => Ok(req),
        None => Err(classify(stamp, &err.into_error())),
    }
}

/// Run a stamp connection's I/O in its own task until the stamp or the
/// last sender of the pool ends it.
fn drive(conn: impl Future<Output = hyper::Result<()>> + Send + 'static) {
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "stamp connection ended with an error");
        }
    });
}

/// The HTTP/1.1 request target for an absolute URI: origin-form
/// (`/path?query`), or authority-form for `CONNECT` (RFC 9112 §3.2).
fn request_target(method: &Method, uri: &Uri) -> Uri {
    let mut parts = http::uri::Parts::default();
    if method == Method::CONNECT {
        parts.authority = uri.authority().cloned();
    } else {
        parts.path_and_query = Some(
            uri.path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
    }
    Uri::from_parts(parts).unwrap_or_default()
}

fn client_tls(pool: &PoolConfig) -> Result<rustls::ClientConfig, UpstreamSetupError> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(path) = &pool.ca_file {
        let ca_err = |reason: String| UpstreamSetupError::CaFile {
            pool: pool.name.clone(),
            path: path.display().to_string(),
            reason,
        };
        let pem = fs::read(path).map_err(|e| ca_err(e.to_string()))?;
        let certs = rustls_pemfile::certs(&mut pem.as_slice())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ca_err(format!("not PEM: {e}")))?;
        if certs.is_empty() {
            return Err(ca_err("holds no certificate".into()));
        }
        roots.add_parsable_certificates(certs);
    } else if pool.upstream_tls || pool.probe.https {
        // Only TLS pools pay for reading the system store; unreadable
        // entries are skipped, as every TLS client does.
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // ALPN is left empty: the connector builder sets it from the enabled
    // protocols (h2 or http/1.1).
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|source| UpstreamSetupError::Tls {
            pool: pool.name.clone(),
            source,
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// Turn an error of an exchange with a stamp into what happened there. The
/// request body's own errors come back through hyper as the error's
/// source, so they are found by walking the chain.
fn classify(stamp: &str, err: &hyper::Error) -> ProxyError {
    if let Some(body) = find_source::<BodyError>(err) {
        return match body {
            BodyError::TooLarge { limit } => ProxyError::BodyTooLarge { limit: *limit },
            BodyError::Client(e) => ProxyError::ClientBody(e.to_string()),
        };
    }
    ProxyError::UpstreamReset {
        stamp: stamp.to_owned(),
        detail: chain_text(err),
    }
}

/// A failed connect (TCP or TLS): refused and timed out are told apart,
/// because the stamp's metrics count them separately.
fn classify_connect(stamp: &str, err: &(dyn StdError + Send + Sync + 'static)) -> ProxyError {
    let stamp = stamp.to_owned();
    match find_source::<io::Error>(err).map(io::Error::kind) {
        Some(io::ErrorKind::ConnectionRefused) => ProxyError::ConnectRefused { stamp },
        Some(io::ErrorKind::TimedOut) => ProxyError::ConnectTimeout { stamp },
        _ => ProxyError::ConnectFailed {
            stamp,
            detail: chain_text(err),
        },
    }
}

/// The connection was made but the HTTP handshake on it failed (for
/// HTTP/2, the preface or settings exchange): no request was sent.
fn handshake_failed(stamp: &str, err: &hyper::Error) -> ProxyError {
    ProxyError::ConnectFailed {
        stamp: stamp.to_owned(),
        detail: chain_text(err),
    }
}

fn find_source<'a, T: StdError + 'static>(err: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        cur = e.source();
    }
    None
}

fn chain_text(err: &(dyn StdError + 'static)) -> String {
    let mut text = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cur = e.source();
    }
    text
}
