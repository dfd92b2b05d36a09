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

/// A TLS "stamp": a hyper server behind tokio-rustls answering with the
/// SNI name it saw, so the test can check the proxy verified and named it.
async fn tls_stamp(pki: &Pki, name: &str) -> std::net::SocketAddr {
    tls_stamp_with_alpn(pki, name, &[b"http/1.1"]).await
}

/// [`tls_stamp`] offering `alpn` (HTTP/1.1 is spoken whatever it says).
async fn tls_stamp_with_alpn(pki: &Pki, name: &str, alpn: &[&[u8]]) -> std::net::SocketAddr {
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
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
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
                                .header("x-server-name", "tls-stamp")
                                .body(http_body_util::Full::new(bytes::Bytes::from(sni)))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
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
