//! `proxy.redirect_http_to_https`: a request that arrived over plain HTTP
//! is answered with a 308 to the same URL over HTTPS, before any route is
//! looked at, except for the exempt path prefixes (ACME HTTP-01 challenges
//! must be answered over plain HTTP).

use http::{HeaderValue, Request, Response, StatusCode, header};

use super::body::ResponseBody;

/// The redirect settings of a running proxy: fixed at start, because the
/// HTTPS port is that of a bound listener.
#[derive(Debug, Clone)]
pub struct Redirect {
    /// Port of the first TLS listener; left out of the URL when 443.
    pub https_port: u16,
    /// Path prefixes served over plain HTTP anyway.
    pub exempt: Vec<String>,
}

impl Redirect {
    /// The 308 for `req`, or `None` when it is exempt or names no host
    /// (then it is handled as usual, and refused there if it must be).
    pub fn answer<B>(&self, req: &Request<B>) -> Option<Response<ResponseBody>> {
        let path = req.uri().path();
        if self.exempt.iter().any(|p| path.starts_with(p.as_str())) {
            return None;
        }
        let authority = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()))?;
        let host = authority.parse::<http::uri::Authority>().ok()?;
        let host = host.host();
        let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
        let location = if self.https_port == 443 {
            format!("https://{host}{target}")
        } else {
            format!("https://{host}:{}{target}", self.https_port)
        };
        let location = HeaderValue::from_str(&location).ok()?;
        let mut resp = Response::new(ResponseBody::local(String::new()));
        // 308, not 301: the method and body are kept (RFC 9110 §15.4.9).
        *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
        resp.headers_mut().insert(header::LOCATION, location);
        Some(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location(r: &Redirect, host: &str, uri: &str) -> Option<String> {
        let req = Request::builder()
            .uri(uri)
            .header(header::HOST, host)
            .body(())
            .unwrap();
        r.answer(&req).map(|resp| {
            assert_eq!(resp.status(), StatusCode::PERMANENT_REDIRECT);
            resp.headers()[header::LOCATION]
                .to_str()
                .unwrap()
                .to_owned()
        })
    }

    #[test]
    fn host_without_its_port_and_the_https_port_unless_443() {
        let mut r = Redirect {
            https_port: 8443,
            exempt: vec!["/.well-known/acme-challenge/".into()],
        };
        assert_eq!(
            location(&r, "shop.example.com:8080", "/a/b?q=1").as_deref(),
            Some("https://shop.example.com:8443/a/b?q=1")
        );
        assert_eq!(
            location(&r, "[::1]:80", "/").as_deref(),
            Some("https://[::1]:8443/")
        );
        r.https_port = 443;
        assert_eq!(
            location(&r, "shop.example.com", "/x").as_deref(),
            Some("https://shop.example.com/x")
        );
        assert_eq!(
            location(&r, "shop.example.com", "/.well-known/acme-challenge/t"),
            None
        );
        assert_eq!(location(&r, "bad host", "/"), None);
    }
}
