//! TLS termination: certificates made by an rcgen CA, SNI picks the right
//! one, ALPN negotiates h2 or http/1.1, requests reach the stamp, and the
//! HTTP/1.1 fast path hands a TLS connection to hyper mid-way.

mod support;

use std::sync::Arc;

use http::{Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use support::raw::{RawClient, post, request};
use support::*;

struct Pki {
    ca: CertificateDer<'static>,
    ca_pem: String,
    dir: tempfile::TempDir,
    /// `(server name, leaf DER)`
    leaves: Vec<(String, CertificateDer<'static>)>,
}

fn make_pki(names: &[&str]) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut leaves = Vec::new();
    for name in names {
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec![(*name).to_owned()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        std::fs::write(dir.path().join(format!("{name}.pem")), leaf.pem()).unwrap();
        std::fs::write(
            dir.path().join(format!("{name}-key.pem")),
            key.serialize_pem(),
        )
        .unwrap();
        leaves.push(((*name).to_owned(), leaf.der().clone()));
    }
    Pki {
        ca: ca.der().clone(),
        ca_pem: ca.pem(),
        dir,
        leaves,
    }
}

fn tls_setup(pki: &Pki, stamp: &stampgate::stamp::Stamp) -> Setup {
    let mut setup = Setup::new()
        .stamp(stamp)
        .proxy("tls_listen = [\"127.0.0.1:0\"]");
    for (name, _) in &pki.leaves {
        let dir = pki.dir.path().display();
        setup = setup.extra(&format!(
            "[[proxy.certificates]]\nserver_names = [\"{name}\"]\ncert = \"{dir}/{name}.pem\"\nkey = \"{dir}/{name}-key.pem\"\n"
        ));
    }
    setup
}

async fn connect(
    pki: &Pki,
    addr: std::net::SocketAddr,
    sni: &str,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    connector
        .connect(ServerName::try_from(sni.to_owned()).unwrap(), tcp)
        .await
        .expect("TLS handshake")
}

fn peer_leaf(
    tls: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) -> CertificateDer<'static> {
    tls.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

#[tokio::test]
async fn h2_over_tls_with_sni_certificate_selection() {
    let pki = make_pki(&["catalog.test", "shop.test"]);
    let s = stamp("s1", "r1").await;
    let p = tls_setup(&pki, &s).start().await;
    let addr = p.handle.tls_listen[0];

    for (name, leaf) in &pki.leaves {
        let tls = connect(&pki, addr, name, &[b"h2", b"http/1.1"]).await;
        assert_eq!(&peer_leaf(&tls), leaf, "SNI {name} got its own certificate");
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));

        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = Request::get(format!("https://{name}/catalogservice/api/1.0/headers"))
            .body(empty())
            .unwrap();
        let a = read(sender.send_request(req).await.unwrap()).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text());
        assert_eq!(a.version, http::Version::HTTP_2);
        assert_eq!(a.json()["headers"]["x-forwarded-proto"], "https");
        assert_eq!(a.json()["headers"]["host"], name.as_str());
    }
}

#[tokio::test]
async fn http1_over_tls_and_unknown_sni_gets_the_default_certificate() {
    let pki = make_pki(&["catalog.test", "shop.test"]);
    let s = stamp("s1", "r1").await;
    let p = tls_setup(&pki, &s).start().await;
    let addr = p.handle.tls_listen[0];

    // An unknown name gets the first (default) certificate, which then
    // fails verification for that name: the handshake must not succeed
    // with a wrong certificate silently. Check the default by asking for
    // the first name over http/1.1 only.
    let tls = connect(&pki, addr, "catalog.test", &[b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(peer_leaf(&tls), pki.leaves[0].1);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/catalogservice/api/1.0/catalogitem?limit=1")
        .header("host", "catalog.test")
        .body(empty())
        .unwrap();
    let a = read(sender.send_request(req).await.unwrap()).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.header("x-server-name"), "s1");

    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let err = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("unknown.test").unwrap(), tcp)
        .await
        .expect_err("the default certificate does not cover unknown.test");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
}

#[tokio::test]
async fn get_then_post_on_one_tls_connection() {
    let pki = make_pki(&["catalog.test"]);
    let s = stamp("s1", "r1").await;
    let p = tls_setup(&pki, &s).start().await;
    let tls = connect(&pki, p.handle.tls_listen[0], "catalog.test", &[b"http/1.1"]).await;
    let mut c = RawClient::new(tls);
    // In one write: the fast path serves the GET with the POST already
    // read, then hands the TLS stream and those bytes to hyper.
    let headers = "/catalogservice/api/1.0/headers";
    c.send(request("GET", headers, "") + &post("/catalogservice/api/1.0/echo", "over tls"))
        .await;
    let got = c.response().await;
    assert_eq!(got.status, 200, "{got:?}");
    assert_eq!(got.json()["headers"]["x-forwarded-proto"], "https");
    let echoed = c.response().await;
    assert_eq!((echoed.status, echoed.text().as_str()), (200, "over tls"));
    assert_eq!(s.requests_served(), 2);
}

/// The certificate chain and key `make_pki` wrote for `name`, for a test
/// stamp's TLS server.
fn stamp_identity(
    pki: &Pki,
    name: &str,
) -> (
    Vec<rustls::pki_types::CertificateDer<'static>>,
    rustls::pki_types::PrivateKeyDer<'static>,
) {
    let dir = pki.dir.path();
    let certs = rustls_pemfile::certs(
        &mut std::fs::read(dir.join(format!("{name}.pem")))
            .unwrap()
            .as_slice(),
    )
    .collect::<Result<Vec<_>, _>>()
    .unwrap();
    let key = rustls_pemfile::private_key(
        &mut std::fs::read(dir.join(format!("{name}-key.pem")))
            .unwrap()
            .as_slice(),
    )
    .unwrap()
    .unwrap();
    (certs, key)
}

/// A TLS "stamp": a hyper server behind tokio-rustls answering with the
/// SNI name it saw, so the test can check the proxy verified and named it.
async fn tls_stamp(pki: &Pki, name: &str) -> std::net::SocketAddr {
    tls_stamp_with_alpn(pki, name, &[b"http/1.1"]).await
}

/// [`tls_stamp`] offering `alpn` (HTTP/1.1 is spoken whatever it says).
async fn tls_stamp_with_alpn(pki: &Pki, name: &str, alpn: &[&[u8]]) -> std::net::SocketAddr {
    let (certs, key) = stamp_identity(pki, name);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    serve_tls_stamp(cfg, "tls-stamp", false).await
}

/// Serve `cfg` on `127.0.0.1:0`: every request is answered with the SNI
/// name the handshake saw and `x-server-name: server_name`; HTTP/1.1 only,
/// or (`h2`) either protocol, as the client's preface says.
async fn serve_tls_stamp(
    cfg: rustls::ServerConfig,
    server_name: &'static str,
    h2: bool,
) -> std::net::SocketAddr {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let sni = tls.get_ref().1.server_name().unwrap_or("none").to_owned();
                let svc = hyper::service::service_fn(move |_req| {
                    let sni = sni.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            http::Response::builder()
                                .header("x-server-name", server_name)
                                .body(http_body_util::Full::new(bytes::Bytes::from(sni)))
                                .unwrap(),
                        )
                    }
                });
                let io = TokioIo::new(tls);
                let _ = if h2 {
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(io, svc)
                        .await
                } else {
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .await
                        .map_err(Into::into)
                };
            });
        }
    });
    addr
}

#[tokio::test]
async fn upstream_tls_verifies_the_stamp_against_ca_file_and_sends_sni() {
    let pki = make_pki(&["localhost"]);
    let ca_path = pki.dir.path().join("ca.pem");
    std::fs::write(&ca_path, &pki.ca_pem).unwrap();
    let addr = tls_stamp(&pki, "localhost").await;
    let p = Setup::new()
        .address("tls-1", "r1", &format!("localhost:{}", addr.port()))
        .pool("upstream_tls = true")
        .pool(&format!("ca_file = \"{}\"", ca_path.display()))
        .start()
        .await;
    let a = get(&http1_client(), &p.url("/catalogservice/x")).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(a.header("x-server-name"), "tls-stamp");
    assert_eq!(a.text(), "localhost", "SNI carried the stamp's host name");

    // Without the CA the stamp's certificate is not trusted: 502, not data.
    let untrusted = Setup::new()
        .address("tls-1", "r1", &format!("localhost:{}", addr.port()))
        .pool("upstream_tls = true")
        .route("retry = { attempts = 1 }")
        .start()
        .await;
    let a = get(&http1_client(), &untrusted.url("/catalogservice/x")).await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY, "{}", a.text());
    assert_eq!(a.header("x-stampgate-error"), "upstream-connect-failed");
}

/// A stamp that requires a client certificate from `pki`'s CA (rustls'
/// `WebPkiClientVerifier`), serving HTTP/1.1 and h2 by ALPN, answering
/// with the SNI name it saw.
async fn mtls_stamp(pki: &Pki, name: &str) -> std::net::SocketAddr {
    let (certs, key) = stamp_identity(pki, name);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.clone()).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    serve_tls_stamp(cfg, "mtls-stamp", true).await
}

/// `upstream_tls = { ca_file, cert, key, server_name }`: the stamp (at an
/// IP address, with a certificate for "api.internal") accepts us with the
/// client certificate, over HTTP/1.1 and HTTP/2 alike.
#[tokio::test]
async fn upstream_mtls_presents_the_client_certificate_and_overrides_the_name() {
    let pki = make_pki(&["api.internal", "edge"]);
    let dir = pki.dir.path().display().to_string();
    std::fs::write(pki.dir.path().join("ca.pem"), &pki.ca_pem).unwrap();
    let addr = mtls_stamp(&pki, "api.internal").await;
    for http2 in [false, true] {
        let p = Setup::new()
            .address("mtls-1", "r1", &addr.to_string())
            .pool(&format!(
                "upstream_tls = {{ ca_file = \"{dir}/ca.pem\", cert = \"{dir}/edge.pem\", \
                 key = \"{dir}/edge-key.pem\", server_name = \"api.internal\" }}\n\
                 upstream_http2 = {http2}"
            ))
            .route("retry = { attempts = 1 }")
            .start()
            .await;
        let a = get(&http1_client(), &p.url("/catalogservice/x")).await;
        assert_eq!(a.status, StatusCode::OK, "http2={http2}: {}", a.text());
        assert_eq!(a.header("x-server-name"), "mtls-stamp");
        assert_eq!(
            a.text(),
            "api.internal",
            "SNI is the configured server_name"
        );
    }
}

/// Without a client certificate the stamp refuses us (with TLS 1.3 the
/// refusal is an alert after the handshake): the client gets a 502 naming
/// it, and the probes put it in the stamp's health reason.
#[tokio::test]
async fn upstream_mtls_rejection_is_named_in_the_answer_and_in_status() {
    let pki = make_pki(&["api.internal"]);
    let dir = pki.dir.path().display().to_string();
    std::fs::write(pki.dir.path().join("ca.pem"), &pki.ca_pem).unwrap();
    let addr = mtls_stamp(&pki, "api.internal").await;
    for http2 in [false, true] {
        let p = Setup::new()
            .address("mtls-1", "r1", &addr.to_string())
            .pool(&format!(
                "upstream_tls = {{ ca_file = \"{dir}/ca.pem\", server_name = \"api.internal\" }}\n\
                 upstream_http2 = {http2}\n\
                 probe = {{ interval = \"50ms\", unhealthy_interval = \"50ms\", timeout = \"40ms\", \
                 sample_size = 2, successful_samples_required = 2, jitter_percent = 0 }}"
            ))
            .route("retry = { attempts = 1 }")
            .start()
            .await;
        let a = get(&http1_client(), &p.url("/catalogservice/x")).await;
        assert_eq!(
            a.status,
            StatusCode::BAD_GATEWAY,
            "http2={http2}: {}",
            a.text()
        );
        assert_eq!(
            a.header("x-stampgate-error"),
            "upstream-tls-client-cert-rejected",
            "http2={http2}"
        );
        let controller = p.handle.controller.clone();
        eventually(
            "the stamp's health reason names the rejection",
            async || {
                let status = support::status(&controller).await;
                status
                    .to_string()
                    .contains("upstream-tls-client-cert-rejected")
            },
        )
        .await;
    }
}

/// `redirect_http_to_https`: plain HTTP gets a 308 to the TLS listener's
/// port with host, path and query kept; the ACME path is proxied; HTTPS
/// is served as usual.
#[tokio::test]
async fn plain_http_is_redirected_to_https_except_acme() {
    let pki = make_pki(&["shop.test"]);
    let s = stamp("s1", "r1").await;
    let p = tls_setup(&pki, &s)
        .proxy("redirect_http_to_https = true")
        .proxy("redirect_exempt_paths = [\"/.well-known/acme-challenge/\", \"/catalogservice/api/1.0/headers\"]")
        .start()
        .await;
    let tls_port = p.handle.tls_listen[0].port();
    let mut c = RawClient::connect(p.addr()).await;
    c.send("POST /catalogservice/x?a=1 HTTP/1.1\r\nHost: shop.test:8080\r\nContent-Length: 2\r\n\r\nhi")
        .await;
    let a = c.response().await;
    assert_eq!(a.status, 308);
    assert_eq!(
        a.header("location"),
        Some(format!("https://shop.test:{tls_port}/catalogservice/x?a=1").as_str())
    );
    assert_eq!(s.requests_served(), 0, "redirected, not proxied");

    // An exempt path goes to the stamp over plain HTTP.
    let mut c = RawClient::connect(p.addr()).await;
    c.send(request("GET", "/catalogservice/api/1.0/headers", ""))
        .await;
    let a = c.response().await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["headers"]["x-forwarded-proto"], "http");

    // Over TLS: served, no redirect.
    let tls = connect(&pki, p.handle.tls_listen[0], "shop.test", &[b"http/1.1"]).await;
    let mut c = RawClient::new(tls);
    c.send(request("GET", "/catalogservice/api/1.0/headers", ""))
        .await;
    let a = c.response().await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["headers"]["x-forwarded-proto"], "https");
}

/// Certificates are reloaded without a restart: after the files change and
/// `POST /admin/reload`, a new handshake gets the new certificate while a
/// connection opened before still works; a broken file is refused by the
/// reload and the last good certificate stays.
#[tokio::test]
async fn certificates_reload_without_a_restart() {
    let pki = make_pki(&["shop.test"]);
    let s = stamp("s1", "r1").await;
    let path = pki.dir.path().join("stampgate.toml");
    std::fs::write(&path, tls_setup(&pki, &s).toml()).unwrap();
    let config = stampgate::config::load(&path).unwrap();
    let app = stampgate::app::App::start(&config, None).await.unwrap();
    let admin = AdminApi::start(
        app.controller.clone(),
        stampgate::admin::Tokens::single("t"),
    )
    .await;
    let addr = app.tls_listen[0];
    let reload = async || {
        admin_call(
            &http1_client(),
            http::Method::POST,
            &admin.url("/admin/reload"),
            Some("t"),
            "",
        )
        .await
    };

    let old = connect(&pki, addr, "shop.test", &[b"http/1.1"]).await;
    assert_eq!(peer_leaf(&old), pki.leaves[0].1);
    let mut open = RawClient::new(old);
    open.send(request("GET", "/catalogservice/api/1.0/headers", ""))
        .await;
    assert_eq!(open.response().await.status, 200);

    // A new certificate (from a new CA) over the same files.
    let next = make_pki(&["shop.test"]);
    for file in ["shop.test.pem", "shop.test-key.pem"] {
        std::fs::copy(next.dir.path().join(file), pki.dir.path().join(file)).unwrap();
    }
    let a = reload().await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let fresh = connect(&next, addr, "shop.test", &[b"http/1.1"]).await;
    assert_eq!(
        peer_leaf(&fresh),
        next.leaves[0].1,
        "new handshake, new certificate"
    );
    open.send(request("GET", "/catalogservice/api/1.0/headers", ""))
        .await;
    assert_eq!(
        open.response().await.status,
        200,
        "the open connection still works"
    );

    // A broken certificate: the reload says why, the last good one stays.
    std::fs::write(pki.dir.path().join("shop.test.pem"), "not a certificate\n").unwrap();
    let a = reload().await;
    assert_ne!(a.status, StatusCode::OK, "{}", a.text());
    assert!(
        a.text().contains("proxy.certificates[0].cert"),
        "the answer names the key: {}",
        a.text()
    );
    let again = connect(&next, addr, "shop.test", &[b"http/1.1"]).await;
    assert_eq!(
        peer_leaf(&again),
        next.leaves[0].1,
        "still the last good one"
    );
    drop(admin);
    app.shutdown().await;
}

/// On a TLS listener the PROXY header comes before the handshake.
#[tokio::test]
async fn proxy_protocol_header_precedes_the_tls_handshake() {
    use tokio::io::AsyncWriteExt;
    let pki = make_pki(&["shop.test"]);
    let s = stamp("s1", "r1").await;
    let p = tls_setup(&pki, &s)
        .proxy("proxy_protocol = true")
        .start()
        .await;
    let mut tcp = tokio::net::TcpStream::connect(p.handle.tls_listen[0])
        .await
        .unwrap();
    tcp.write_all(b"PROXY TCP6 2001:db8::5 ::1 7000 443\r\n")
        .await
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("shop.test").unwrap(), tcp)
        .await
        .expect("handshake after the PROXY header");
    let mut c = RawClient::new(tls);
    c.send(request("GET", "/catalogservice/api/1.0/headers", ""))
        .await;
    let a = c.response().await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["headers"]["x-forwarded-for"], "2001:db8::5");
}

/// `upstream_http2` over TLS to a stamp whose ALPN offers no h2 (none at
/// all, or only http/1.1): a 502 whose message names ALPN, instead of a
/// vague reset after an HTTP/2 preface sent to an HTTP/1.1 server.
#[tokio::test]
async fn upstream_http2_to_a_stamp_without_h2_alpn_names_alpn() {
    let pki = make_pki(&["localhost"]);
    let ca_path = pki.dir.path().join("ca.pem");
    std::fs::write(&ca_path, &pki.ca_pem).unwrap();
    for alpn in [&[][..], &[&b"http/1.1"[..]][..]] {
        let addr = tls_stamp_with_alpn(&pki, "localhost", alpn).await;
        let p = Setup::new()
            .address("tls-1", "r1", &format!("localhost:{}", addr.port()))
            .pool("upstream_tls = true\nupstream_http2 = true")
            .pool(&format!("ca_file = \"{}\"", ca_path.display()))
            .route("retry = { attempts = 1 }")
            .start()
            .await;
        let a = get(&http1_client(), &p.url("/catalogservice/x")).await;
        assert_eq!(a.status, StatusCode::BAD_GATEWAY, "{alpn:?}: {}", a.text());
        assert_eq!(a.header("x-stampgate-error"), "upstream-connect-failed");
        assert!(a.text().contains("ALPN"), "{alpn:?}: {}", a.text());
    }
}
