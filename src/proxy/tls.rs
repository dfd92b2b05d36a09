//! TLS termination for client connections: rustls with the ring provider,
//! the certificate chosen by SNI (the first configured one is the default
//! for clients that send no or an unknown name), ALPN `h2` then `http/1.1`.
//!
//! The certificates live in [`Certificates`], swapped whole on reload (by
//! the controller, their one writer): a handshake loads the current set
//! once, lock-free, so new handshakes get the new certificate while open
//! connections, which are past their handshake, carry on.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwapOption;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::CertificateConfig;

/// Why the TLS listener configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// `tls_listen` is set but no certificate is configured.
    #[error("proxy.tls_listen needs at least one [[proxy.certificates]] entry")]
    NoCertificate,
    /// The key file holds a key type ring cannot sign with.
    #[error("{path}: unsupported private key: {source}")]
    Key {
        /// The key file.
        path: String,
        /// The rustls error.
        #[source]
        source: rustls::Error,
    },
    /// rustls refused the protocol configuration.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// Picks the certificate for a handshake by server name.
#[derive(Debug)]
struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` entries, stored as `.example.com`.
    wildcard: Vec<(String, Arc<CertifiedKey>)>,
    default: Arc<CertifiedKey>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = hello.server_name() else {
            return Some(self.default.clone());
        };
        let name = name.to_ascii_lowercase();
        if let Some(key) = self.exact.get(&name) {
            return Some(key.clone());
        }
        self.wildcard
            .iter()
            .find(|(suffix, _)| {
                // `*.example.com` covers exactly one extra label.
                name.strip_suffix(suffix.as_str())
                    .is_some_and(|label| !label.is_empty() && !label.contains('.'))
            })
            .map(|(_, key)| key.clone())
            .or_else(|| Some(self.default.clone()))
    }
}

/// Certificates ready to serve, made off the controller's loop.
#[derive(Debug)]
pub struct PreparedCertificates(Option<Arc<SniResolver>>);

/// The certificates of the TLS listeners: empty when none is configured.
#[derive(Debug, Default)]
pub struct Certificates {
    current: ArcSwapOption<SniResolver>,
}

impl Certificates {
    /// The certificates of `certs` (the config's `[[proxy.certificates]]`).
    pub fn new(certs: &[CertificateConfig]) -> Result<Certificates, TlsSetupError> {
        let store = Certificates::default();
        store.install(Certificates::prepare(certs)?);
        Ok(store)
    }

    /// Turn `certs` into what handshakes use (the signing keys parsed):
    /// the slow part of a certificate reload, done off the controller's
    /// loop, which then only [`Certificates::install`]s the result.
    pub fn prepare(certs: &[CertificateConfig]) -> Result<PreparedCertificates, TlsSetupError> {
        let resolver = if certs.is_empty() {
            None
        } else {
            Some(Arc::new(resolver(certs)?))
        };
        Ok(PreparedCertificates(resolver))
    }

    /// Use certificates made by [`Certificates::prepare`] for every
    /// handshake from now on: one atomic swap.
    pub fn install(&self, prepared: PreparedCertificates) {
        self.current.store(prepared.0);
    }

    /// Whether any certificate is configured.
    pub fn is_empty(&self) -> bool {
        self.current.load().is_none()
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.load().as_ref()?.resolve(hello)
    }
}

/// The server configuration for TLS listeners, resolving from `certs`.
pub fn server_config(certs: Arc<Certificates>) -> Result<Arc<rustls::ServerConfig>, TlsSetupError> {
    if certs.is_empty() {
        return Err(TlsSetupError::NoCertificate);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn resolver(certs: &[CertificateConfig]) -> Result<SniResolver, TlsSetupError> {
    let provider = rustls::crypto::ring::default_provider();
    let mut exact = HashMap::new();
    let mut wildcard = Vec::new();
    let mut default = None;
    for c in certs {
        let signer = provider
            .key_provider
            .load_private_key(c.key.clone_key())
            .map_err(|source| TlsSetupError::Key {
                path: c.key_path.display().to_string(),
                source,
            })?;
        let key = Arc::new(CertifiedKey::new(c.cert_chain.clone(), signer));
        default.get_or_insert_with(|| key.clone());
        for name in &c.server_names {
            let name = name.to_ascii_lowercase();
            match name.strip_prefix('*') {
                Some(suffix) => wildcard.push((suffix.to_owned(), key.clone())),
                None => {
                    exact.entry(name).or_insert_with(|| key.clone());
                }
            }
        }
    }
    let default = default.ok_or(TlsSetupError::NoCertificate)?;
    Ok(SniResolver {
        exact,
        wildcard,
        default,
    })
}
