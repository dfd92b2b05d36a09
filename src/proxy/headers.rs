//! Header rules applied on the way to a stamp and back: hop-by-hop headers
//! removed, `X-Forwarded-*` and `Via` set, a request id made when the client
//! sent none. `traceparent` and every end-to-end header pass untouched.

use std::net::IpAddr;

use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};

use crate::routing::header_rules::HeaderRules;
#[cfg(test)]
use crate::upstream::h1_client::consumed_by_parser;

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
/// and so must not be forwarded. `Connection` comes first: its bit in
/// [`strip_hop_by_hop`]'s mask is bit 0.
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

/// Whether a `TE` value lists `trailers` (case-insensitive, parameters
/// allowed on the other codings).
pub fn names_trailers(te: &HeaderValue) -> bool {
    te.to_str().is_ok_and(|v| {
        v.split(',').any(|t| {
            t.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("trailers")
        })
    })
}

/// Remove hop-by-hop headers, including those the `Connection` header names.
///
/// One pass over the names finds which of the eight are present (comparing
/// standard names is an enum compare), so a message with none of them costs
/// no hash lookup; only the names found are removed.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let hop = hop_by_hop();
    let mut found = 0u8;
    for name in headers.keys() {
        if let Some(i) = hop.iter().position(|h| *h == name) {
            found |= 1 << i;
        }
    }
    if found == 0 {
        return;
    }
    if found & 1 != 0 {
        remove_connection_named(headers);
    }
    for (i, name) in hop.into_iter().enumerate() {
        if found & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// Remove the headers that the `Connection` header's tokens name. Removing
/// by `&str` parses the name on the stack, so no token is allocated; each
/// value is cloned (a reference count) to let the map change meanwhile.
fn remove_connection_named(headers: &mut HeaderMap) {
    let mut nth = 0;
    while let Some(value) = headers.get_all(header::CONNECTION).iter().nth(nth).cloned() {
        nth += 1;
        let Ok(value) = value.to_str() else { continue };
        for token in value.split(',').map(str::trim) {
            // `Connection` itself goes with the other hop-by-hop headers;
            // removing it here would end this walk over its values.
            if !token.is_empty() && !token.eq_ignore_ascii_case("connection") {
                headers.remove(token);
            }
        }
    }
}

/// What the request path knows about the client side of a request.
#[derive(Debug, Clone, Copy)]
pub struct ClientSide<'a> {
    /// The client's IP address as a header value ([`client_ip_value`]),
    /// made once per client connection.
    pub ip: &'a HeaderValue,
    /// Whether the client connection is TLS.
    pub tls: bool,
    /// The client's HTTP version (for `Via`).
    pub version: http::Version,
    /// The host the client asked for (Host header or `:authority`).
    pub host: Option<&'a HeaderValue>,
}

/// The client's IP address as an `X-Forwarded-For` element. Made when a
/// connection is accepted, so requests do not format the address each time.
pub fn client_ip_value(ip: IpAddr) -> HeaderValue {
    HeaderValue::try_from(ip.to_string()).expect("an IP address is a valid header value")
}

/// Headers [`prepare_request`] adds to an HTTP/1.1 request:
/// `X-Forwarded-Host`, `X-Forwarded-For`, `X-Forwarded-Proto`, `Via`,
/// `X-Request-Id` (`Host` too when absent, as from HTTP/2, which then costs
/// one grow). Not one more: a map sized for a one-header request plus these
/// stays under glibc's per-thread cache limit (1,032 bytes), and one more
/// doubles it past that, into malloc's slow path (its cost per request is
/// in `bench/PERF.md`, "Figures behind code comments").
pub const ADDED_REQUEST_HEADERS: usize = 5;

/// Rewrite request headers for the stamp. Returns the request id (sent by
/// the client or made here) so the response can carry it too; `None` when
/// `rules` make no request ids.
pub fn prepare_request(
    headers: &mut HeaderMap,
    client: &ClientSide<'_>,
    host_override: Option<&HeaderValue>,
    rules: HeaderRules,
) -> Option<HeaderValue> {
    strip_hop_by_hop(headers);
    // hyper sizes the map for the headers it parsed: grow it once here
    // rather than on several of the inserts below.
    headers.reserve(ADDED_REQUEST_HEADERS);

    if rules.forwarded
        && let Some(host) = client.host
    {
        headers.insert(X_FORWARDED_HOST.clone(), host.clone());
    }
    // Keep the Host the client sent unless the pool names one; an HTTP/2
    // client sends `:authority` only, which becomes Host for an HTTP/1 stamp.
    match (host_override, client.host) {
        (Some(h), _) => {
            headers.insert(header::HOST, h.clone());
        }
        (None, Some(h)) => {
            headers.entry(header::HOST).or_insert_with(|| h.clone());
        }
        (None, None) => {}
    }

    if rules.forwarded {
        append_forwarded_for(headers, client.ip);
        // We are the edge: a client-supplied proto is not to be trusted.
        headers.insert(
            X_FORWARDED_PROTO.clone(),
            HeaderValue::from_static(if client.tls { "https" } else { "http" }),
        );
        append_via(headers, client.version);
    }

    if !rules.request_id {
        return None;
    }
    Some(match headers.entry(&X_REQUEST_ID) {
        Entry::Occupied(e) if !e.get().is_empty() => e.get().clone(),
        Entry::Occupied(mut e) => {
            let id = new_request_id();
            e.insert(id.clone());
            id
        }
        Entry::Vacant(e) => e.insert(new_request_id()).clone(),
    })
}

/// Rewrite response headers from the stamp for the client.
pub fn prepare_response(headers: &mut HeaderMap, request_id: Option<&HeaderValue>) {
    strip_hop_by_hop(headers);
    if let Some(id) = request_id {
        headers.entry(&X_REQUEST_ID).or_insert_with(|| id.clone());
    }
}

/// Append the client to `X-Forwarded-For`, or start the list with it.
fn append_forwarded_for(headers: &mut HeaderMap, ip: &HeaderValue) {
    match headers.entry(&X_FORWARDED_FOR) {
        Entry::Occupied(mut e) => {
            let joined = match e.get().to_str() {
                Ok(prev) if !prev.trim().is_empty() => {
                    let mut v = Vec::with_capacity(prev.len() + 2 + ip.len());
                    v.extend_from_slice(prev.as_bytes());
                    v.extend_from_slice(b", ");
                    v.extend_from_slice(ip.as_bytes());
                    HeaderValue::from_bytes(&v).ok()
                }
                _ => Some(ip.clone()),
            };
            if let Some(v) = joined {
                e.insert(v);
            }
        }
        Entry::Vacant(e) => {
            e.insert(ip.clone());
        }
    }
}

fn append_via(headers: &mut HeaderMap, version: http::Version) {
    let hop = match version {
        http::Version::HTTP_10 => "1.0 stampgate",
        http::Version::HTTP_2 => "2 stampgate",
        _ => "1.1 stampgate",
    };
    match headers.entry(header::VIA) {
        Entry::Occupied(mut e) => {
            let joined = e
                .get()
                .to_str()
                .ok()
                .and_then(|prev| HeaderValue::try_from(format!("{prev}, {hop}")).ok());
            if let Some(v) = joined {
                e.insert(v);
            }
        }
        Entry::Vacant(e) => {
            e.insert(HeaderValue::from_static(hop));
        }
    }
}

/// 128 random bits as 32 lowercase hex digits, formatted on the stack.
///
/// Marked sensitive, which HTTP/2's HPACK encodes as a never-indexed
/// literal: a value that never repeats would only evict useful entries
/// from the connection's header table, and grow the chain of same-name
/// entries the encoder compares on every response (measured in
/// `bench/PERF.md`, "Figures behind code comments").
pub fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let n = fastrand::u128(..);
    let mut buf = [0u8; 32];
    for (i, b) in buf.iter_mut().enumerate() {
        *b = HEX[((n >> (124 - 4 * i)) & 0xf) as usize];
    }
    let mut id = HeaderValue::from_bytes(&buf).expect("hex digits are a valid header value");
    id.set_sensitive(true);
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    static IP: std::sync::LazyLock<HeaderValue> =
        std::sync::LazyLock::new(|| client_ip_value("192.0.2.7".parse().unwrap()));

    fn client(host: Option<&HeaderValue>) -> ClientSide<'_> {
        ClientSide {
            ip: &IP,
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
    fn a_parser_keeps_out_only_what_names_no_other_header() {
        for (name, value, consumed) in [
            ("connection", "keep-alive", true),
            ("connection", "Close ,keep-alive", true),
            ("connection", "", true),
            ("connection", "close, x-secret", false),
            ("connection", "upgrade", false),
            ("keep-alive", "timeout=5", true),
            ("transfer-encoding", "chunked", true),
            ("upgrade", "websocket", false),
            ("te", "trailers", false),
            ("x-keep-alive", "1", false),
        ] {
            let name = HeaderName::from_static(name);
            assert_eq!(
                consumed_by_parser(&name, value.as_bytes()),
                consumed,
                "{name}: {value}"
            );
        }
    }

    #[test]
    fn forwarded_headers_are_set_and_appended() {
        let host = HeaderValue::from_static("shop.example.com");
        let mut h = HeaderMap::new();
        h.insert(header::HOST, host.clone());
        h.insert("x-forwarded-for", HeaderValue::from_static("198.51.100.1"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("gopher"));
        h.insert(header::VIA, HeaderValue::from_static("1.1 cdn"));
        let id =
            prepare_request(&mut h, &client(Some(&host)), None, HeaderRules::default()).unwrap();
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
        let id = prepare_request(
            &mut h,
            &client(Some(&host)),
            Some(&over),
            HeaderRules::default(),
        );
        assert_eq!(id.unwrap(), "abc-123");
        assert_eq!(h[header::HOST], "internal.example.net");
        assert_eq!(h["x-forwarded-host"], "shop.example.com");
    }

    #[test]
    fn rules_turn_off_forwarded_headers_and_request_ids() {
        let host = HeaderValue::from_static("shop.example.com");
        let over = HeaderValue::from_static("internal.example.net");
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("198.51.100.1"));
        h.insert("x-request-id", HeaderValue::from_static("abc-123"));
        let rules = HeaderRules {
            forwarded: false,
            request_id: false,
        };
        let id = prepare_request(&mut h, &client(Some(&host)), Some(&over), rules);
        assert_eq!(id, None);
        // The pool's Host still applies; a client's headers pass as sent.
        assert_eq!(h[header::HOST], "internal.example.net");
        assert_eq!(h["x-forwarded-for"], "198.51.100.1");
        assert_eq!(h["x-request-id"], "abc-123");
        for added in ["x-forwarded-proto", "x-forwarded-host", "via"] {
            assert!(h.get(added).is_none(), "{added} added: {h:?}");
        }
        // Each rule alone.
        let mut h = HeaderMap::new();
        let only_ids = HeaderRules {
            forwarded: false,
            request_id: true,
        };
        let id = prepare_request(&mut h, &client(Some(&host)), None, only_ids);
        assert_eq!(h["x-request-id"], id.unwrap());
        assert!(h.get("x-forwarded-for").is_none());
        let mut h = HeaderMap::new();
        let only_forwarded = HeaderRules {
            forwarded: true,
            request_id: false,
        };
        assert_eq!(
            prepare_request(&mut h, &client(Some(&host)), None, only_forwarded),
            None
        );
        assert!(h.get("x-request-id").is_none());
        assert_eq!(h["x-forwarded-for"], "192.0.2.7");
    }

    #[test]
    fn request_ids_differ() {
        assert_ne!(new_request_id(), new_request_id());
    }

    #[test]
    fn made_request_ids_stay_out_of_hpack_tables_and_client_ids_do_not() {
        assert!(new_request_id().is_sensitive());
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("abc-123"));
        let kept = prepare_request(&mut h, &client(None), None, HeaderRules::default()).unwrap();
        assert!(
            !kept.is_sensitive(),
            "a client's id repeats and may be indexed"
        );
        let made = prepare_request(
            &mut HeaderMap::new(),
            &client(None),
            None,
            HeaderRules::default(),
        )
        .unwrap();
        assert!(made.is_sensitive());
    }
}
