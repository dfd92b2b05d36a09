//! Connections to stamps: one connection pool per stamp pool ([`ConnCache`],
//! keyed by stamp), plain or TLS, HTTP/1.1 (our own client, [`h1_client`])
//! or HTTP/2 (hyper's, connected through hyper-rustls), over the DNS cache.
//! Failures are classified here into [`ProxyError`]s that say whether the
//! stamp acted.

use std::error::Error as StdError;
use std::fs;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use http::uri::{Authority, Scheme};
use http::{Method, Request, Response, Uri};
use hyper::client::conn::http2;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tower_service::Service;

pub mod body;
pub mod conn_cache;
pub mod h1_client;

use crate::config::PoolConfig;
use crate::discovery::{CacheResolver, DnsCache};
use crate::error::ProxyError;
use body::{BodyError, BoxError, UpstreamBody};
use conn_cache::{ConnCache, Http2Sender};
use h1_client::{H1Body, H1Conn, H1Error, Io};

/// A response body as it comes from a stamp: from our own HTTP/1.1 client
/// or from hyper's HTTP/2 one.
#[derive(Debug)]
pub enum StampBody {
    /// Over an HTTP/1.1 connection ([`h1_client`]).
    H1(H1Body),
    /// Over an HTTP/2 connection.
    H2(Incoming),
}

impl Body for StampBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            StampBody::H1(b) => Pin::new(b).poll_frame(cx),
            StampBody::H2(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            StampBody::H1(b) => b.is_end_stream(),
            StampBody::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            StampBody::H1(b) => b.size_hint(),
            StampBody::H2(b) => b.size_hint(),
        }
    }
}

/// Box the future `make` returns, built in its box: the allocation comes
/// first, so the compiler writes the future there instead of building it
/// on the stack and copying it in, as `Box::pin(make())` does (a copy of
/// 1 to 4 KiB per request on the request path).
#[inline(always)]
pub(crate) fn boxed_in_place<F>(make: impl FnOnce() -> F) -> std::pin::Pin<Box<F>> {
    Box::into_pin(Box::write(Box::new_uninit(), make()))
}

/// Methods whose repetition has the effect of one request (RFC 9110 §9.2.2),
/// or a request the client marked with an `Idempotency-Key`.
pub fn is_idempotent(method: &http::Method, headers: &http::HeaderMap) -> bool {
    matches!(
        *method,
        http::Method::GET
            | http::Method::HEAD
            | http::Method::OPTIONS
            | http::Method::PUT
            | http::Method::DELETE
            | http::Method::TRACE
    ) || headers.contains_key("idempotency-key")
}

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
pub struct Upstream {
    /// HTTP/2: hyper's client over hyper-rustls.
    connector: Connector,
    /// HTTP/1.1: TCP from the same connector settings, TLS on top here.
    http: HttpConnector<CacheResolver>,
    tls: tokio_rustls::TlsConnector,
    /// `upstream_tls.server_name`: SNI and verified name instead of the
    /// stamp's host, on both paths.
    server_name: Option<rustls::pki_types::ServerName<'static>>,
    conns: ConnCache,
    scheme: Scheme,
    version: http::Version,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("conns", &self.conns)
            .field("scheme", &self.scheme)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
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
        // ALPN stays empty for HTTP/1.1, as hyper-rustls leaves it.
        let h1_tls = tokio_rustls::TlsConnector::from(Arc::new(tls.clone()));
        let server_name = tls_server_name(pool)?;
        let mut builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http();
        if let Some(name) = &server_name {
            builder = builder.with_server_name_resolver(
                hyper_rustls::FixedServerNameResolver::new(name.clone()),
            );
        }
        let connector = if pool.upstream_http2 {
            builder.enable_http2().wrap_connector(http.clone())
        } else {
            builder.enable_http1().wrap_connector(http.clone())
        };
        Ok(Upstream {
            connector,
            http,
            tls: h1_tls,
            server_name,
            conns: ConnCache::new(POOL_IDLE_TIMEOUT),
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
    /// A pooled connection that turns out closed before the stamp answered
    /// is replaced by a new one, once, when the request can be sent again.
    pub async fn send(
        &self,
        stamp: &str,
        req: Request<UpstreamBody>,
    ) -> Result<Response<StampBody>, ProxyError> {
        let Some(key) = req.uri().authority().cloned() else {
            return Err(ProxyError::ConnectFailed {
                stamp: stamp.to_owned(),
                detail: format!("request URI {} names no stamp", req.uri()),
            });
        };
        if self.version == http::Version::HTTP_2 {
            let resp = self.send_h2(stamp, key, req).await?;
            Ok(resp.map(StampBody::H2))
        } else {
            let resp = self.send_h1(stamp, key, req).await?;
            Ok(resp.map(StampBody::H1))
        }
    }

    async fn send_h1(
        &self,
        stamp: &str,
        key: Authority,
        req: Request<UpstreamBody>,
    ) -> Result<Response<h1_client::H1Body>, ProxyError> {
        let (parts, body) = req.into_parts();
        let target = request_target(&parts.method, &parts.uri);
        let queue = self.conns.h1(&key);
        // A `Full` body can be written again on a new connection.
        let replay = match &body {
            UpstreamBody::Full { data } => Some(data.clone().unwrap_or_default()),
            UpstreamBody::Streaming { .. } => None,
        };
        let mut body = Some(body);
        while let Some(mut conn) = queue.checkout() {
            if !conn.still_open().await {
                continue;
            }
            // Boxed: the exchange's future is about 1 KiB; inline, it
            // would be copied with this future into `timeout` and
            // `select!` on every request, and a box of that size comes
            // from the allocator's thread cache.
            let sent = boxed_in_place(|| {
                conn.send(
                    &parts.method,
                    target,
                    key.as_str(),
                    &parts.headers,
                    body.take()
                        .unwrap_or_else(|| UpstreamBody::full(Default::default())),
                    &queue,
                )
            })
            .await;
            match sent {
                Ok(resp) => return Ok(resp),
                // Closed by the stamp while idle (it raced our check): the
                // stamp answered nothing, so a request that can be sent
                // again goes on a new connection. If part of it was
                // written, only an idempotent one: the stamp may have
                // acted on it before closing.
                Err(e)
                    if e.closed_quietly()
                        && replay.is_some()
                        && (e.unsent() || is_idempotent(&parts.method, &parts.headers)) =>
                {
                    tracing::debug!(stamp, error = %e, "pooled connection was closed; reconnecting");
                    body = replay.clone().map(UpstreamBody::full);
                    break;
                }
                Err(e) => return Err(classify_h1(stamp, e, true)),
            }
        }
        // Boxed: connecting is rare, and its future (connector, TLS) would
        // otherwise size every request's future.
        let conn = Box::pin(self.connect_h1(stamp, &parts.uri)).await?;
        let body = body.unwrap_or_else(|| UpstreamBody::full(Default::default()));
        Box::pin(conn.send(
            &parts.method,
            target,
            key.as_str(),
            &parts.headers,
            body,
            &queue,
        ))
        .await
        .map_err(|e| classify_h1(stamp, e, false))
    }

    async fn send_h2(
        &self,
        stamp: &str,
        key: Authority,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<hyper::body::Incoming>, ProxyError> {
        // The URI names the stamp to connect to; `:authority` must say
        // what `Host` says (RFC 9113, 8.3.1), so the Host header becomes
        // the URI's authority and is not sent twice.
        let target = if let Some(host) = req.headers_mut().remove(http::header::HOST)
            && let Ok(authority) = Authority::try_from(host.as_bytes())
        {
            let mut parts = std::mem::take(req.uri_mut()).into_parts();
            let mut stamp_uri = http::uri::Parts::default();
            stamp_uri.scheme = parts.scheme.clone();
            stamp_uri.authority = parts.authority.replace(authority);
            stamp_uri.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
            *req.uri_mut() = Uri::from_parts(parts).expect("only the authority changed");
            Uri::from_parts(stamp_uri).expect("the stamp's own URI")
        } else {
            req.uri().clone()
        };
        if let Some(mut tx) = self.conns.h2(&key) {
            match tx.try_send_request(req).await {
                Ok(resp) => return Ok(resp),
                Err(e) => req = unsent(stamp, e)?,
            }
        }
        // Boxed for the same reason as in `send_h1`.
        let mut tx = Box::pin(self.connect_h2(stamp, &target)).await?;
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

    /// TCP (with the connector's timeout, `TCP_NODELAY` and DNS cache),
    /// then TLS with SNI from the URI's host for `https`.
    async fn connect_h1(&self, stamp: &str, target: &Uri) -> Result<Box<H1Conn>, ProxyError> {
        let mut http = self.http.clone();
        std::future::poll_fn(|cx| http.poll_ready(cx))
            .await
            .map_err(|e| classify_connect(stamp, &e))?;
        let tcp = http
            .call(target.clone())
            .await
            .map_err(|e| classify_connect(stamp, &e))?
            .into_inner();
        if target.scheme() != Some(&Scheme::HTTPS) {
            return Ok(H1Conn::new(Io::Plain(tcp)));
        }
        let failed = |detail: String| ProxyError::ConnectFailed {
            stamp: stamp.to_owned(),
            detail,
        };
        let name = match &self.server_name {
            Some(name) => name.clone(),
            None => {
                let host = target.host().unwrap_or_default();
                let host = host
                    .strip_prefix('[')
                    .and_then(|h| h.strip_suffix(']'))
                    .unwrap_or(host);
                rustls::pki_types::ServerName::try_from(host.to_owned())
                    .map_err(|e| failed(format!("invalid TLS server name {host:?}: {e}")))?
            }
        };
        let tls = self.tls.connect(name, tcp).await.map_err(|e| {
            tls_rejected(stamp, &e)
                .unwrap_or_else(|| failed(format!("TLS handshake: {}", chain_text(&e))))
        })?;
        Ok(H1Conn::new(Io::Tls(Box::new(tls))))
    }

    async fn connect_h2(&self, stamp: &str, target: &Uri) -> Result<Http2Sender, ProxyError> {
        use hyper_util::client::legacy::connect::Connection as _;
        let io = self.connect(stamp, target).await.map_err(|e| match e {
            // A stamp whose ALPN list lacks h2 refuses the handshake.
            ProxyError::ConnectFailed { stamp, detail } if detail.contains("NoApplicationProtocol") => {
                ProxyError::ConnectFailed {
                    stamp,
                    detail: format!("{detail}: the stamp's TLS ALPN offered no h2 (upstream_http2 = true needs it)"),
                }
            }
            other => other,
        })?;
        // Over TLS, HTTP/2 needs the stamp to pick `h2` by ALPN; one that
        // picks nothing speaks HTTP/1.1 and would answer the HTTP/2
        // preface with garbage, which showed as a vague reset.
        if target.scheme() == Some(&Scheme::HTTPS) && !io.connected().is_negotiated_h2() {
            return Err(ProxyError::ConnectFailed {
                stamp: stamp.to_owned(),
                detail: "the stamp's TLS ALPN offered no h2; upstream_http2 = true needs it \
                         (set upstream_http2 = false for an HTTP/1.1-only stamp)"
                    .to_owned(),
            });
        }
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
fn request_target<'a>(method: &Method, uri: &'a Uri) -> &'a str {
    if method == Method::CONNECT {
        uri.authority().map_or("", Authority::as_str)
    } else {
        uri.path_and_query().map_or("/", |pq| pq.as_str())
    }
}

/// What a failed HTTP/1.1 exchange means. On a new connection, a failure
/// before one byte of the request was written is a failed connection: the
/// stamp saw nothing.
fn classify_h1(stamp: &str, err: H1Error, reused: bool) -> ProxyError {
    if let H1Error::Closed { err: io, .. } = &err
        && let Some(rejected) = tls_rejected(stamp, io)
    {
        return rejected;
    }
    let stamp = stamp.to_owned();
    match err {
        H1Error::Body(BodyError::TooLarge { limit }) => ProxyError::BodyTooLarge { limit },
        H1Error::Body(BodyError::Client(e)) => ProxyError::ClientBody(e.to_string()),
        H1Error::BodyLength => ProxyError::ClientBody(err.to_string()),
        H1Error::Protocol(detail) => ProxyError::UpstreamProtocol { stamp, detail },
        H1Error::Closed { .. } if err.unsent() && !reused => ProxyError::ConnectFailed {
            stamp,
            detail: err.to_string(),
        },
        H1Error::Closed { .. } => ProxyError::UpstreamReset {
            stamp,
            detail: err.to_string(),
        },
    }
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
        .with_root_certificates(roots);
    let config = match &pool.client_cert {
        None => config.with_no_client_auth(),
        Some(c) => config
            .with_client_auth_cert(c.cert_chain.clone(), c.key.clone_key())
            .map_err(|source| UpstreamSetupError::Tls {
                pool: pool.name.clone(),
                source,
            })?,
    };
    Ok(config)
}

/// `upstream_tls.server_name` as rustls takes it (validated with the
/// config; a failure here is reported like any TLS setup error).
fn tls_server_name(
    pool: &PoolConfig,
) -> Result<Option<rustls::pki_types::ServerName<'static>>, UpstreamSetupError> {
    pool.tls_server_name
        .as_ref()
        .map(|n| {
            rustls::pki_types::ServerName::try_from(n.clone()).map_err(|e| {
                UpstreamSetupError::Tls {
                    pool: pool.name.clone(),
                    source: rustls::Error::General(format!("upstream_tls.server_name {n:?}: {e}")),
                }
            })
        })
        .transpose()
}

/// The stamp refused our client certificate (or the lack of one). With
/// TLS 1.2 the alert ends the handshake; with TLS 1.3 the client's side of
/// the handshake is already done, and the alert arrives on the first read:
/// either way it is a rustls `AlertReceived` somewhere in the chain.
fn tls_rejected(stamp: &str, err: &(dyn StdError + 'static)) -> Option<ProxyError> {
    use rustls::AlertDescription as A;
    const REFUSALS: [A; 8] = [
        A::CertificateRequired,
        A::BadCertificate,
        A::UnknownCA,
        A::CertificateUnknown,
        A::CertificateRevoked,
        A::CertificateExpired,
        A::UnsupportedCertificate,
        A::AccessDenied,
    ];
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    let mut alert = None;
    while let Some(e) = cur {
        // An `io::Error` wrapping the rustls error (as tokio-rustls makes
        // them) hides it from `source()`, which skips to the wrapped
        // error's own source: look inside with `get_ref`.
        let inner = e.downcast_ref::<io::Error>().and_then(|io| io.get_ref());
        let typed = e
            .downcast_ref::<rustls::Error>()
            .or_else(|| inner.and_then(|i| i.downcast_ref::<rustls::Error>()));
        if let Some(rustls::Error::AlertReceived(a)) = typed {
            alert = Some(*a);
            break;
        }
        // The h2 crate keeps only the kind and text of an I/O error, so
        // on the HTTP/2 path rustls' message is all that is left.
        if let Some(text) = inner.map(|i| i.to_string())
            && let Some(name) = text.strip_prefix("received fatal alert: ")
            && let Some(a) = REFUSALS.iter().find(|a| format!("{a:?}") == name)
        {
            alert = Some(*a);
            break;
        }
        cur = e.source();
    }
    let alert = alert?;
    REFUSALS
        .contains(&alert)
        .then(|| ProxyError::UpstreamTlsRejected {
            stamp: stamp.to_owned(),
            detail: format!("the stamp refused our client certificate: alert {alert:?}"),
        })
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
    if let Some(rejected) = tls_rejected(stamp, err) {
        return rejected;
    }
    ProxyError::UpstreamReset {
        stamp: stamp.to_owned(),
        detail: chain_text(err),
    }
}

/// A failed connect (TCP or TLS): refused and timed out are told apart,
/// because the stamp's metrics count them separately.
fn classify_connect(stamp: &str, err: &(dyn StdError + Send + Sync + 'static)) -> ProxyError {
    if let Some(rejected) = tls_rejected(stamp, err) {
        return rejected;
    }
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

/// The connection was made but the HTTP/2 handshake on it failed (the
/// preface or settings exchange): no request was sent.
fn handshake_failed(stamp: &str, err: &hyper::Error) -> ProxyError {
    if let Some(rejected) = tls_rejected(stamp, err) {
        return rejected;
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn plain_upstream() -> Upstream {
        let mut tcp = HttpConnector::new_with_resolver(CacheResolver::new(DnsCache::new()));
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls.clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp.clone());
        Upstream {
            connector,
            http: tcp,
            tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
            server_name: None,
            conns: ConnCache::new(POOL_IDLE_TIMEOUT),
            scheme: Scheme::HTTP,
            version: http::Version::HTTP_11,
        }
    }

    /// A stamp on 127.0.0.1 that serves its n-th connection by `plans[n]`:
    /// for each request read, answer it (`true`) or close the connection
    /// without a word (`false`); the connection is closed when its plan
    /// ends. Returns the request lines seen, per connection, once every
    /// plan has run.
    async fn scripted_stamp(
        plans: Vec<Vec<bool>>,
    ) -> (String, tokio::task::JoinHandle<Vec<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut seen = Vec::new();
            for plan in plans {
                let (mut sock, _) = listener.accept().await.unwrap();
                let mut lines = Vec::new();
                for answer in plan {
                    let mut head = Vec::new();
                    while !head.ends_with(b"\r\n\r\n") {
                        let mut byte = [0u8; 1];
                        if sock.read(&mut byte).await.unwrap() == 0 {
                            break;
                        }
                        head.push(byte[0]);
                    }
                    let text = String::from_utf8_lossy(&head).into_owned();
                    lines.push(text.lines().next().unwrap_or_default().to_owned());
                    if !answer {
                        break;
                    }
                    sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await
                        .unwrap();
                }
                seen.push(lines);
                drop(sock);
            }
            seen
        });
        (format!("http://{addr}/x"), task)
    }

    fn request(method: Method, uri: &str) -> Request<UpstreamBody> {
        let mut req = Request::new(UpstreamBody::full(Bytes::new()));
        *req.method_mut() = method;
        *req.uri_mut() = uri.parse().unwrap();
        req
    }

    async fn ok(up: &Upstream, method: Method, uri: &str) -> Result<Bytes, ProxyError> {
        let resp = up.send("a", request(method, uri)).await?;
        Ok(resp.into_body().collect().await.unwrap().to_bytes())
    }

    #[tokio::test]
    async fn keep_alive_connection_is_reused() {
        let (uri, stamp) = scripted_stamp(vec![vec![true, true, true]]).await;
        let up = plain_upstream();
        for _ in 0..3 {
            assert_eq!(ok(&up, Method::GET, &uri).await.unwrap(), "ok");
        }
        drop(up);
        let seen = stamp.await.unwrap();
        assert_eq!(seen, vec![vec!["GET /x HTTP/1.1"; 3]], "one connection");
    }

    /// The stamp closes an idle connection just as the next request goes
    /// out on it (its keep-alive timeout racing our reuse): a GET goes on
    /// a new connection and the client sees no error.
    #[tokio::test]
    async fn get_on_a_connection_the_stamp_closed_is_sent_again() {
        let (uri, stamp) = scripted_stamp(vec![vec![true, false], vec![true]]).await;
        let up = plain_upstream();
        assert_eq!(ok(&up, Method::GET, &uri).await.unwrap(), "ok");
        assert_eq!(ok(&up, Method::GET, &uri).await.unwrap(), "ok");
        let seen = stamp.await.unwrap();
        assert_eq!(seen[0], ["GET /x HTTP/1.1", "GET /x HTTP/1.1"]);
        assert_eq!(seen[1], ["GET /x HTTP/1.1"]);
    }

    /// The same race for a POST: the stamp may have acted on it before
    /// closing, so it is not sent again.
    #[tokio::test]
    async fn post_on_a_connection_the_stamp_closed_is_not_sent_again() {
        let (uri, stamp) = scripted_stamp(vec![vec![true, false]]).await;
        let up = plain_upstream();
        assert_eq!(ok(&up, Method::POST, &uri).await.unwrap(), "ok");
        let err = ok(&up, Method::POST, &uri).await.unwrap_err();
        assert!(matches!(err, ProxyError::UpstreamReset { .. }), "{err:?}");
        assert_eq!(stamp.await.unwrap().len(), 1);
    }

    /// A connection the stamp closed while it sat idle is noticed at
    /// checkout and never written to.
    #[tokio::test]
    async fn connection_closed_while_idle_is_skipped() {
        let (uri, stamp) = scripted_stamp(vec![vec![true], vec![true]]).await;
        let up = plain_upstream();
        assert_eq!(ok(&up, Method::POST, &uri).await.unwrap(), "ok");
        // The first plan ends after one request: the stamp closes it.
        // Wait for the close to reach us before the next request.
        let key: Authority = uri.parse::<Uri>().unwrap().authority().unwrap().clone();
        let mut conn = up.conns.h1(&key).checkout().unwrap();
        let mut polls = 0;
        while conn.still_open().await {
            polls += 1;
            assert!(polls < 10_000, "the stamp's close was never seen");
            tokio::task::yield_now().await;
        }
        up.conns.h1(&key).checkin(conn);
        // Even a POST is fine: nothing was written on the closed one.
        assert_eq!(ok(&up, Method::POST, &uri).await.unwrap(), "ok");
        assert_eq!(stamp.await.unwrap().len(), 2);
    }
}
