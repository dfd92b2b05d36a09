//! The admin API's client — beside the request path, for operators: the
//! one place that speaks to `/admin/*` over HTTP, with typed errors and
//! the one parser of the `/admin/events` stream. `stampgate ctl` and the
//! drill both use it (the drill sits above admin, so it may import this).

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::controller::events::Event;

/// Giving up on connecting after this long: the admin API is local or one
/// hop away; a longer wait only delays the "cannot reach" an operator needs.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A whole request/answer (not an event stream). Commands are applied in
/// one controller turn; a reload parses a file. Neither takes this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a call to the admin API (or a `ctl` command) did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The command line cannot work (exit 2).
    #[error("{0}")]
    Usage(String),
    /// No answer from the admin API (exit 2).
    #[error("cannot reach {url}: {reason}")]
    Unreachable {
        /// The admin base URL.
        url: String,
        /// What went wrong, in a few words.
        reason: String,
    },
    /// The server said no (exit 1).
    #[error("{message}")]
    Refused {
        /// The HTTP status.
        status: StatusCode,
        /// The server's message.
        message: String,
    },
    /// The server answered something this client does not understand
    /// (exit 1: it was reached, and did not do what was asked for).
    #[error("unexpected answer from {url}: {reason}")]
    BadAnswer {
        /// The URL asked.
        url: String,
        /// What is wrong with the answer.
        reason: String,
    },
}

impl ClientError {
    /// The process exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Usage(_) | ClientError::Unreachable { .. } => 2,
            ClientError::Refused { .. } | ClientError::BadAnswer { .. } => 1,
        }
    }
}

/// The admin API, as `stampgate ctl` and the drill talk to it.
#[derive(Debug, Clone)]
pub struct AdminClient {
    /// `http://host:port` (no trailing slash).
    base: String,
    token: Option<String>,
    http: Client<HttpConnector, Full<Bytes>>,
    /// Add `local=1` to changes (`ctl --local`: a fleet's emergency
    /// override on this edge only).
    pub local: bool,
}

impl AdminClient {
    /// A client of the admin API at `url` (`http://host:port`, or
    /// `host:port` as the config writes it); `token` for mutations.
    pub fn new(url: &str, token: Option<String>) -> Result<AdminClient, ClientError> {
        // `host:port` alone is accepted: that is how the config writes it.
        let url = if url.contains("://") {
            url.to_owned()
        } else {
            format!("http://{url}")
        };
        let uri: Uri = url
            .parse()
            .map_err(|e| ClientError::Usage(format!("--admin {url}: not a URL ({e})")))?;
        if uri.scheme_str() != Some("http") {
            return Err(ClientError::Usage(format!(
                "--admin {url}: only http:// is supported (the admin API has no TLS; reach it \
                 on loopback or through an SSH tunnel)"
            )));
        }
        if uri.authority().is_none() {
            return Err(ClientError::Usage(format!("--admin {url}: no host")));
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        Ok(AdminClient {
            base: url.trim_end_matches('/').to_owned(),
            token: token.filter(|t| !t.is_empty()),
            http: Client::builder(TokioExecutor::new()).build(connector),
            local: false,
        })
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Request<Full<Bytes>>, ClientError> {
        let local = match (self.local && method != Method::GET, path.contains('?')) {
            (false, _) => "",
            (true, true) => "&local=1",
            (true, false) => "?local=1",
        };
        let url = format!("{}{path}{local}", self.base);
        let mut builder = Request::builder().method(method).uri(&url);
        if let Some(token) = &self.token {
            builder = builder.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let bytes = match body {
            Some(value) => {
                builder = builder.header(http::header::CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(value).expect("a JSON value serializes"))
            }
            None => Bytes::new(),
        };
        builder
            .body(Full::new(bytes))
            .map_err(|e| ClientError::Usage(format!("{url}: {e}")))
    }

    /// One request; the JSON answer, or the server's refusal.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, ClientError> {
        let request = self.request(method, path, body.as_ref())?;
        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| self.unreachable(&e))?;
            let status = response.status();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|e| self.unreachable(&e))?
                .to_bytes();
            Ok::<_, ClientError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| ClientError::Unreachable {
                url: self.base.clone(),
                reason: format!("no answer within {REQUEST_TIMEOUT:?}"),
            })??;
        let value = serde_json::from_slice::<Value>(&bytes);
        if !status.is_success() {
            return Err(refusal(status, value.ok(), &bytes));
        }
        value.map_err(|e| self.bad_answer(path, &format!("not JSON ({e})")))
    }

    /// `GET /admin/events?follow=1`: the stream of events, the backlog
    /// first. Returns once the server has answered, so that nothing after
    /// this call is missed.
    pub async fn events(&self) -> Result<EventStream, ClientError> {
        let request = self.request(Method::GET, "/admin/events?follow=1", None)?;
        let response = tokio::time::timeout(REQUEST_TIMEOUT, self.http.request(request))
            .await
            .map_err(|_| ClientError::Unreachable {
                url: self.base.clone(),
                reason: format!("no answer within {REQUEST_TIMEOUT:?}"),
            })?
            .map_err(|e| self.unreachable(&e))?;
        let status = response.status();
        let body = response.into_body();
        if !status.is_success() {
            let bytes = body
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            return Err(refusal(status, serde_json::from_slice(&bytes).ok(), &bytes));
        }
        Ok(EventStream {
            client: self.clone(),
            body,
            parser: SseParser::default(),
            ready: VecDeque::new(),
        })
    }

    fn unreachable(&self, error: &(dyn std::error::Error + 'static)) -> ClientError {
        ClientError::Unreachable {
            url: self.base.clone(),
            reason: io_reason(error),
        }
    }

    /// The base URL, `http://host:port`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// An answer that reached us but is not what `path` should answer.
    pub fn bad_answer(&self, path: &str, reason: &str) -> ClientError {
        ClientError::BadAnswer {
            url: format!("{}{path}", self.base),
            reason: reason.to_owned(),
        }
    }
}

/// The server's refusal, in one line: its `message`, else its status.
pub(crate) fn refusal(status: StatusCode, value: Option<Value>, bytes: &[u8]) -> ClientError {
    let message = value
        .as_ref()
        .and_then(|v| v.get("message"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(bytes);
            let first = text.lines().next().unwrap_or("").trim();
            if first.is_empty() {
                status.to_string()
            } else {
                format!("{status}: {first}")
            }
        });
    ClientError::Refused {
        status,
        message: message.replace('\n', " "),
    }
}

/// The innermost I/O error in words ("connection refused"), else the
/// innermost error's message: the outer layers only say "client error".
fn io_reason(error: &(dyn std::error::Error + 'static)) -> String {
    let mut innermost = error;
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            return match io.kind() {
                ConnectionRefused | ConnectionReset | ConnectionAborted | TimedOut
                | HostUnreachable | NetworkUnreachable | AddrNotAvailable => io.kind().to_string(),
                _ => io.to_string(),
            };
        }
        innermost = e;
        current = e.source();
    }
    innermost.to_string()
}

/// The admin API's event stream, as [`AdminClient::events`] opened it.
#[derive(Debug)]
pub struct EventStream {
    client: AdminClient,
    body: Incoming,
    parser: SseParser,
    /// Payloads parsed from the last chunk, not yet handed out.
    ready: VecDeque<String>,
}

impl EventStream {
    /// The `data` of the next event as it arrives (a JSON [`Event`]
    /// document, see [`EventStream::next_event`]); `None` when the server
    /// ends the stream.
    pub async fn next_data(&mut self) -> Option<Result<String, ClientError>> {
        loop {
            if let Some(data) = self.ready.pop_front() {
                return Some(Ok(data));
            }
            let frame = match self.body.frame().await? {
                Ok(frame) => frame,
                Err(e) => return Some(Err(self.client.unreachable(&e))),
            };
            if let Ok(data) = frame.into_data() {
                self.ready.extend(self.parser.push(&data));
            }
        }
    }

    /// The next event, typed; data that is not an event is skipped.
    pub async fn next_event(&mut self) -> Option<Result<Event, ClientError>> {
        loop {
            match self.next_data().await? {
                Ok(data) => {
                    if let Ok(event) = serde_json::from_str(&data) {
                        return Some(Ok(event));
                    }
                }
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// Splits a server-sent event stream into the `data` of each event;
/// comments (`: keep-alive`) and other fields are skipped, and the lines
/// of a multi-line `data` are joined (the SSE rules, as `/admin/events`
/// writes them).
#[derive(Debug, Default)]
pub struct SseParser {
    buffer: String,
}

impl SseParser {
    /// Take `chunk` of the stream; the payloads of the events it completed.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<String> {
        self.buffer.push_str(&String::from_utf8_lossy(chunk));
        let mut out = Vec::new();
        while let Some(end) = self.buffer.find("\n\n") {
            let block: String = self.buffer.drain(..end + 2).collect();
            let data: Vec<&str> = block
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            if !data.is_empty() {
                out.push(data.join("\n"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::events::EventKind;
    use serde_json::json;

    #[test]
    fn sse_parser_joins_chunks_and_skips_comments() {
        let mut p = SseParser::default();
        assert!(p.push(b": keep-alive\n\ndata: {\"se").is_empty());
        assert_eq!(p.push(b"q\":1}\n\ndata: 2\n\n"), ["{\"seq\":1}", "2"]);
        assert_eq!(
            p.push(b"data:a\ndata: b\n\n"),
            ["a\nb"],
            "joined, space optional"
        );
    }

    #[test]
    fn an_event_parses_from_its_data() {
        let mut p = SseParser::default();
        let data = p.push(
            br#"data: {"seq":3,"time":"2026-11-29T00:00:02.000Z","unix_ms":2000,"kind":"health","stamp":"a","from":"healthy","to":"unhealthy","reason":"probe"}

"#,
        );
        let event: Event = serde_json::from_str(&data[0]).expect("an event");
        assert_eq!(
            (
                event.kind,
                event.stamp.as_deref(),
                event.to.as_deref(),
                event.unix_ms
            ),
            (EventKind::Health, Some("a"), Some("unhealthy"), 2000)
        );
    }

    #[test]
    fn refusals_are_one_line() {
        let e = refusal(
            StatusCode::NOT_FOUND,
            Some(json!({"error": "unknown-stamp", "message": "no stamp named \"x\""})),
            b"",
        );
        assert_eq!(e.to_string(), "no stamp named \"x\"");
        assert_eq!(e.exit_code(), 1);
        let e = refusal(StatusCode::BAD_GATEWAY, None, b"upstream\nbroke");
        assert_eq!(e.to_string(), "502 Bad Gateway: upstream");
    }

    #[test]
    fn only_plain_http_urls_are_accepted() {
        assert!(AdminClient::new("127.0.0.1:9901", None).is_ok());
        let e = AdminClient::new("https://127.0.0.1:9901", None).unwrap_err();
        assert_eq!(e.exit_code(), 2, "{e}");
    }
}
