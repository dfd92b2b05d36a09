//! Loads the PEM files a config names (server certificates and keys,
//! upstream trust anchors) at validation time, so that `stampgate check`
//! catches a missing or wrong file before the proxy starts. Errors are bare
//! rules; the caller adds the key path and value.

use std::path::Path;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Reads a file, telling "missing" apart from other I/O failures because
/// that is the mistake people make (a relative path against the wrong
/// directory).
fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!("file missing: {}", path.display()),
        _ => format!("cannot read {}: {e}", path.display()),
    })
}

/// A certificate chain, leaf first; at least one `CERTIFICATE` block.
pub(super) fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = read(path)?;
    let certs = rustls_pemfile::certs(&mut bytes.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not PEM: {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "not PEM: no \"BEGIN CERTIFICATE\" block in {}",
            path.display()
        ));
    }
    Ok(certs)
}

/// The first private key in the file: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
pub(super) fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let bytes = read(path)?;
    rustls_pemfile::private_key(&mut bytes.as_slice())
        .map_err(|e| format!("not PEM: {}: {e}", path.display()))?
        .ok_or_else(|| {
            format!(
                "not PEM: no \"BEGIN PRIVATE KEY\" (PKCS#8), \"BEGIN RSA PRIVATE KEY\" \
                 (PKCS#1) or \"BEGIN EC PRIVATE KEY\" (SEC1) block in {}",
                path.display()
            )
        })
}

/// Checks that rustls (ring) can sign with `key` and that it belongs to the
/// leaf certificate: a mismatch would otherwise surface only as failed
/// handshakes.
pub(super) fn check_pair(
    certs: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
    cert_path: &Path,
) -> Result<(), String> {
    let provider = rustls::crypto::ring::default_provider();
    rustls::sign::CertifiedKey::from_der(certs.to_vec(), key.clone_key(), &provider)
        .map(|_| ())
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => {
                format!("does not match the certificate in {}", cert_path.display())
            }
            other => format!("unusable key: {other}"),
        })
}
