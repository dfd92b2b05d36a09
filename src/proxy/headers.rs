//! Header rules applied on the way to a stamp and back: hop-by-hop headers
//! removed, `X-Forwarded-*` and `Via` set, a request id made when the client
//! sent none. `traceparent` and every end-to-end header pass untouched.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// `X-Request-Id`: correlates the client's view, our logs and the stamp's.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Names the stamp that served a response.
pub static X_STAMPGATE_STAMP: HeaderName = HeaderName::from_static("x-stampgate-stamp");
/// The machine-readable cause on proxy-made error responses.
pub static X_STAMPGATE_ERROR: HeaderName = HeaderName::from_static("x-stampgate-error");
/// W3C trace context: passed through unchanged, written to the access log.
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1),
/// and so must not be forwarded.
fn hop_by_hop() -> [&'static HeaderName; 8] {
    [
        &header::CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::TE,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
        &header::PROXY_AUTHORIZATION,
    ]
}

/// Remove hop-by-hop headers, including those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in hop_by_hop() {
        if headers.contains_key(name) {
            headers.remove(name);
        }
    }
}

/// What the request path knows about the client side of a request.
#[derive(Debug, Clone, Copy)]
pub struct ClientSide<'a> {
    /// The client's IP address.
    pub ip: IpAddr,
    /// Whether the client connection is TLS.
    pub tls: bool,
    /// The client's HTTP version (for `Via`).
    pub version: http::Version,
    /// The host the client asked for (Host header or `:authority`).
    pub host: Option<&'a HeaderValue>,
}

/// Rewrite request headers for the stamp. Returns the request id (sent by
/// the client or made here) so the response can carry it too.
pub fn prepare_request(
    headers: &mut HeaderMap,
    client: &ClientSide<'_>,
    host_override: Option<&HeaderValue>,
) -> HeaderValue {
    strip_hop_by_hop(headers);

    if let Some(host) = client.host {
        headers.insert(X_FORWARDED_HOST.clone(), host.clone());
    }
    // Keep the Host the client sent unless the pool names one; an HTTP/2
    // client sends `:authority` only, which becomes Host for an HTTP/1 stamp.
    match (host_override, client.host) {
        (Some(h), _) => {
            headers.insert(header::HOST, h.clone());
        }
        (None, Some(h)) if !headers.contains_key(header::HOST) => {
            headers.insert(header::HOST, h.clone());
        }
        _ => {}
    }

    append_forwarded_for(headers, client.ip);
    // We are the edge: a client-supplied proto is not to be trusted.
    headers.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(if client.tls { "https" } else { "http" }),
    );
    append_via(headers, client.version);

    match headers.get(&X_REQUEST_ID) {
        Some(id) if !id.is_empty() => id.clone(),
        _ => {
            let id = new_request_id();
            headers.insert(X_REQUEST_ID.clone(), id.clone());
            id
        }
    }
}

/// Rewrite response headers from the stamp for the client.
pub fn prepare_response(headers: &mut HeaderMap, request_id: &HeaderValue) {
    strip_hop_by_hop(headers);
    if !headers.contains_key(&X_REQUEST_ID) {
        headers.insert(X_REQUEST_ID.clone(), request_id.clone());
    }
}

fn append_forwarded_for(headers: &mut HeaderMap, ip: IpAddr) {
    let value = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => format!("{prev}, {ip}"),
        _ => ip.to_string(),
    };
    if let Ok(v) = HeaderValue::try_from(value) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
}

fn append_via(headers: &mut HeaderMap, version: http::Version) {
    let hop = match version {
        http::Version::HTTP_10 => "1.0 stampgate",
        http::Version::HTTP_2 => "2 stampgate",
        _ => "1.1 stampgate",
    };
    match headers.get(header::VIA).and_then(|v| v.to_str().ok()) {
        Some(prev) => {
            if let Ok(v) = HeaderValue::try_from(format!("{prev}, {hop}")) {
                headers.insert(header::VIA, v);
            }
        }
        None => {
            headers.insert(header::VIA, HeaderValue::from_static(hop));
        }
    }
}

/// 128 random bits as 32 lowercase hex digits, formatted on the stack.
pub fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let n = fastrand::u128(..);
    let mut buf = [0u8; 32];
    for (i, b) in buf.iter_mut().enumerate() {
        *b = HEX[((n >> (124 - 4 * i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&buf).expect("hex digits are a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(host: Option<&HeaderValue>) -> ClientSide<'_> {
        ClientSide {
            ip: "192.0.2.7".parse().unwrap(),
            tls: true,
            version: http::Version::HTTP_11,
            host,
        }
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("traceparent", HeaderValue::from_static("00-abc-def-01"));
        strip_hop_by_hop(&mut h);
        assert!(h.get("x-secret").is_none());
        assert!(h.get(header::CONNECTION).is_none());
        assert!(h.get("keep-alive").is_none());
        assert!(h.get(header::UPGRADE).is_none());
        assert_eq!(h["traceparent"], "00-abc-def-01");
    }

    #[test]
    fn forwarded_headers_are_set_and_appended() {
        let host = HeaderValue::from_static("shop.example.com");
        let mut h = HeaderMap::new();
        h.insert(header::HOST, host.clone());
        h.insert("x-forwarded-for", HeaderValue::from_static("198.51.100.1"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("gopher"));
        h.insert(header::VIA, HeaderValue::from_static("1.1 cdn"));
        let id = prepare_request(&mut h, &client(Some(&host)), None);
        assert_eq!(h["x-forwarded-for"], "198.51.100.1, 192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "shop.example.com");
        assert_eq!(h[header::VIA], "1.1 cdn, 1.1 stampgate");
        assert_eq!(h[header::HOST], "shop.example.com");
        assert_eq!(id.len(), 32);
        assert_eq!(h["x-request-id"], id);
    }

    #[test]
    fn client_request_id_is_kept_and_host_override_applies() {
        let host = HeaderValue::from_static("shop.example.com");
        let over = HeaderValue::from_static("internal.example.net");
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("abc-123"));
        let id = prepare_request(&mut h, &client(Some(&host)), Some(&over));
        assert_eq!(id, "abc-123");
        assert_eq!(h[header::HOST], "internal.example.net");
        assert_eq!(h["x-forwarded-host"], "shop.example.com");
    }

    #[test]
    fn request_ids_differ() {
        assert_ne!(new_request_id(), new_request_id());
    }
}
