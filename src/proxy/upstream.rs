//! Connections to stamps: one keep-alive connection pool per stamp pool
//! (hyper-util's pooled client keys idle connections by scheme + authority,
//! so each stamp gets its own), plain or TLS, HTTP/1.1 or HTTP/2. Failures
//! are classified here into [`ProxyError`]s that say whether the stamp acted.

use std::error::Error as StdError;
use std::fs;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use http::uri::Scheme;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::body::{BodyError, UpstreamBody};
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

/// The client for one pool's stamps.
#[derive(Debug)]
pub struct Upstream {
    client: Client<HttpsConnector<HttpConnector<CacheResolver>>, UpstreamBody>,
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
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .http2_only(pool.upstream_http2)
            .set_host(false)
            .build(connector);
        Ok(Upstream {
            client,
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

    /// Send one request (its URI already points at the stamp) and wait for
    /// the response head. The body streams afterwards.
    pub async fn send(
        &self,
        stamp: &str,
        req: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, ProxyError> {
        self.client
            .request(req)
            .await
            .map_err(|e| classify(stamp, &e))
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
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// Turn a client error into what happened at the stamp. The request body's
/// own errors come back through hyper as the error's source, so they are
/// found by walking the chain.
fn classify(stamp: &str, err: &hyper_util::client::legacy::Error) -> ProxyError {
    if let Some(body) = find_source::<BodyError>(err) {
        return match body {
            BodyError::TooLarge { limit } => ProxyError::BodyTooLarge { limit: *limit },
            BodyError::Client(e) => ProxyError::ClientBody(e.to_string()),
        };
    }
    let stamp = stamp.to_owned();
    let detail = chain_text(err);
    if err.is_connect() {
        return match find_source::<io::Error>(err).map(io::Error::kind) {
            Some(io::ErrorKind::ConnectionRefused) => ProxyError::ConnectRefused { stamp },
            Some(io::ErrorKind::TimedOut) => ProxyError::ConnectTimeout { stamp },
            _ => ProxyError::ConnectFailed { stamp, detail },
        };
    }
    ProxyError::UpstreamReset { stamp, detail }
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
