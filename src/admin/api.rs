//! The admin request handler: route, authorize, parse the query and body
//! into a [`Command`], ask the controller, and turn the answer (or the
//! refusal) into a JSON response. Nothing here changes routing state
//! itself; every change is the controller's.

use std::time::Duration;

use bytes::Bytes;
use http::header::{ALLOW, AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::auth::Tokens;
use super::route::{Change, Endpoint, NoRoute, Read, route};
use super::sse;
use crate::config::parse_duration;
use crate::controller::ControllerHandle;
use crate::fleet::FleetHandle;
use crate::signals::command::{AdminError, Command, Target};

/// Every admin body is a handful of fields; anything larger is a mistake
/// (or an attack), refused before it is read.
pub const MAX_BODY: usize = 64 * 1024;

/// A client must send its (small) body within this time, so a stalled
/// client cannot hold a connection of the operator's listener forever.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Who reads: reads need no token and leave no trace in the event log.
const READER: &str = "reader";

/// Response body of every admin answer: a JSON document, a text page, or
/// the event stream.
pub use super::sse::Body;

/// What every request handler shares.
#[derive(Debug)]
pub struct Admin {
    /// Where commands go, and the table and event log that reads look at.
    pub controller: ControllerHandle,
    /// The operators' tokens (empty: mutations refused).
    pub tokens: Tokens,
    /// Ends event streams on shutdown.
    pub shutdown: CancellationToken,
    /// The metrics registry (reads the request path's counters at scrape).
    pub metrics: prometheus_client::registry::Registry,
    /// The fleet, when this edge is in one: decisions go through it.
    pub fleet: Option<FleetHandle>,
}

/// Why a request was not carried out. Maps to its status code in one
/// exhaustive `match` ([`ApiError::status`]).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No or a wrong bearer token, or none configured.
    #[error("{0}")]
    Unauthorized(String),
    /// No endpoint has this path.
    #[error("no admin endpoint {method} {path}; GET / lists them")]
    NotFound {
        /// The method asked for.
        method: Method,
        /// The path asked for.
        path: String,
    },
    /// The path exists with other methods.
    #[error("{method} is not allowed on {path}; use {allow}")]
    MethodNotAllowed {
        /// The method asked for.
        method: Method,
        /// The path.
        path: String,
        /// The methods that are allowed.
        allow: &'static str,
    },
    /// The body is over [`MAX_BODY`].
    #[error("request body is larger than {MAX_BODY} bytes")]
    TooLarge,
    /// The body did not arrive in time.
    #[error("request body not received within {BODY_READ_TIMEOUT:?}")]
    BodyTimeout,
    /// The controller refused, or a field is bad (checked here or there).
    #[error(transparent)]
    Command(#[from] AdminError),
}

impl ApiError {
    /// A field with a bad value (400).
    fn invalid(field: &str, message: impl Into<String>) -> ApiError {
        ApiError::Command(AdminError::Invalid {
            field: field.to_owned(),
            message: message.into(),
        })
    }

    /// The response status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::Command(e) => e.status(),
        }
    }

    /// The `error` field of the JSON body: a stable word a script can test.
    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::NotFound { .. } => "not-found",
            ApiError::MethodNotAllowed { .. } => "method-not-allowed",
            ApiError::TooLarge => "too-large",
            ApiError::BodyTimeout => "timeout",
            ApiError::Command(e) => match e {
                AdminError::UnknownStamp(_) => "unknown-stamp",
                AdminError::UnknownRegion(_) => "unknown-region",
                AdminError::Refused(_) => "refused",
                AdminError::Invalid { .. } => "invalid",
                AdminError::Reload(_) => "reload",
                AdminError::Persist(_) => "persist",
                AdminError::Unavailable => "unavailable",
                AdminError::FleetUnavailable(_) => "fleet-unavailable",
                AdminError::Conflict(_) => "conflict",
            },
        }
    }

    fn into_response(self) -> Response<Body> {
        let mut response = json(
            self.status(),
            &json!({ "error": self.kind(), "message": self.to_string() }),
        );
        match &self {
            ApiError::MethodNotAllowed { allow, .. } => {
                response
                    .headers_mut()
                    .insert(ALLOW, HeaderValue::from_static(allow));
            }
            ApiError::Unauthorized(_) => {
                response
                    .headers_mut()
                    .insert("www-authenticate", HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}

impl Admin {
    /// Answer one admin request. Never fails: errors become JSON answers.
    pub async fn handle<B>(&self, request: Request<B>) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        match self.answer(request).await {
            Ok(response) => response,
            Err(e) => {
                if let ApiError::Command(AdminError::Persist(_) | AdminError::Unavailable) = e {
                    tracing::error!(%method, %path, error = %e, "admin request failed");
                } else {
                    tracing::debug!(%method, %path, error = %e, "admin request refused");
                }
                e.into_response()
            }
        }
    }

    async fn answer<B>(&self, request: Request<B>) -> Result<Response<Body>, ApiError>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let (parts, body) = request.into_parts();
        let endpoint = route(&parts.method, parts.uri.path()).map_err(|e| match e {
            NoRoute::NotFound => ApiError::NotFound {
                method: parts.method.clone(),
                path: parts.uri.path().to_owned(),
            },
            NoRoute::MethodNotAllowed(allow) => ApiError::MethodNotAllowed {
                method: parts.method.clone(),
                path: parts.uri.path().to_owned(),
                allow,
            },
        })?;
        let change = match endpoint {
            Endpoint::Read(read) => {
                let query = Query::parse(parts.uri.query())?;
                return self.read(read, &query, &parts.headers).await;
            }
            Endpoint::Change(change) => change,
        };
        // Authorize before looking at anything else the caller sent: an
        // unauthorized request learns nothing and changes nothing.
        let who = self.authorize(&parts.headers)?.to_owned();
        let mut query = Query::parse(parts.uri.query())?;
        // `local=1`: the emergency override, this edge only. Taken out
        // before the command's own parameters are checked.
        let local = query.flag("local")?;
        query.pairs.retain(|(k, _)| k != "local");
        let declared = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_BODY as u64) {
            return Err(ApiError::TooLarge);
        }
        let body = read_body(body).await?;
        let command = command(change, &query, &body)?;
        let summary = format!("{command:?}");
        let decision = matches!(
            command,
            Command::Drain { dry_run: false, .. }
                | Command::Enable { .. }
                | Command::Disable { .. }
                | Command::Weight { .. }
        );
        let answer = match (&self.fleet, decision, local) {
            (Some(fleet), true, false) => fleet.decide(command, &who).await,
            (Some(_), true, true) => {
                self.controller
                    .command(Command::Local(Box::new(command)), &who)
                    .await
            }
            (None, _, true) => Err(AdminError::Invalid {
                field: "local".into(),
                message: "this edge is not in a fleet: every change is local already".into(),
            }),
            _ => self.controller.command(command, &who).await,
        };
        match answer {
            Ok(answer) => {
                // The controller logs the decision itself; this is the trail
                // of the request.
                tracing::debug!(%who, command = %summary, "operator command applied");
                Ok(json(StatusCode::OK, &answer))
            }
            Err(e) => {
                tracing::info!(%who, command = %summary, error = %e, "operator command refused");
                Err(e.into())
            }
        }
    }

    /// The label of the presented token, or why there is none.
    fn authorize(&self, headers: &http::HeaderMap) -> Result<&str, ApiError> {
        if self.tokens.is_empty() {
            return Err(ApiError::Unauthorized(
                "changes are disabled: no admin token is configured (set admin.token_env to the \
                 name of an environment variable and put the token in that variable)"
                    .into(),
            ));
        }
        let Some(value) = headers.get(AUTHORIZATION) else {
            return Err(ApiError::Unauthorized(
                "this endpoint changes routing and needs an `Authorization: Bearer <token>` header"
                    .into(),
            ));
        };
        let presented = value
            .as_bytes()
            .split_at_checked(7)
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case(b"bearer "))
            .map(|(_, token)| token.trim_ascii());
        let Some(presented) = presented else {
            return Err(ApiError::Unauthorized(
                "the Authorization header must read `Bearer <token>`".into(),
            ));
        };
        match self.tokens.check(presented) {
            Some(label) => Ok(label),
            None => {
                tracing::warn!("admin request with an invalid bearer token refused");
                Err(ApiError::Unauthorized(
                    "the bearer token is not valid".into(),
                ))
            }
        }
    }

    async fn read(
        &self,
        read: Read,
        query: &Query,
        headers: &http::HeaderMap,
    ) -> Result<Response<Body>, ApiError> {
        match read {
            Read::Dashboard => Ok(html(DASHBOARD)),
            Read::Live => Ok(json(StatusCode::OK, &json!({ "status": "live" }))),
            Read::Metrics => {
                let accept = headers
                    .get(http::header::ACCEPT)
                    .and_then(|v| v.to_str().ok());
                let (body, kind) = if crate::metrics::wants_prometheus_text(accept) {
                    let body = crate::metrics::render_prometheus(&self.metrics);
                    (body, crate::metrics::CONTENT_TYPE_PROMETHEUS)
                } else {
                    let body = crate::metrics::render(&self.metrics);
                    (body, crate::metrics::CONTENT_TYPE)
                };
                let mut response = Response::new(Full::new(Bytes::from(body)).boxed_unsync());
                response
                    .headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static(kind));
                Ok(response)
            }
            Read::Ready => Ok(self.ready()),
            Read::Fleet => Ok(json(
                StatusCode::OK,
                &match &self.fleet {
                    Some(fleet) => fleet.view(),
                    None => json!({
                        "edge": null,
                        "edges": [],
                        "message": "this edge is not in a fleet ([fleet] is not configured)",
                    }),
                },
            )),
            Read::History => Ok(json(StatusCode::OK, &self.controller.history.snapshot())),
            Read::Status => {
                let mut status = self.controller.command(Command::Status, READER).await?;
                // The DNS server's current answers, when it runs.
                if let (Some(dns), Some(doc)) = (
                    self.controller.stats.dns_server.load_full(),
                    status.as_object_mut(),
                ) {
                    doc.insert("dns_server".into(), Value::clone(&dns.status.load()));
                }
                Ok(json(StatusCode::OK, &status))
            }
            Read::Events => {
                let since = query
                    .get("since")
                    .map(|v| {
                        v.parse::<u64>().map_err(|_| {
                            ApiError::invalid("since", "expected an event sequence number (seq)")
                        })
                    })
                    .transpose()?;
                if query.flag("follow")? {
                    let body =
                        sse::follow(self.controller.events.clone(), since, self.shutdown.clone());
                    let mut response = Response::new(body);
                    let h = response.headers_mut();
                    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
                    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
                    return Ok(response);
                }
                let events = self.controller.events.since(since.unwrap_or(0));
                Ok(json(StatusCode::OK, &events))
            }
        }
    }

    /// Ready once the controller has published a table in which at least
    /// one pool can take a request.
    fn ready(&self) -> Response<Body> {
        let (status, body) = if self
            .controller
            .shutting_down
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            shutting_down()
        } else {
            readiness(&self.controller.routing.load())
        };
        json(status, &body)
    }
}

/// The readiness answer once the process is shutting down.
pub fn shutting_down() -> (StatusCode, Value) {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        json!({ "status": "not-ready", "reason": "shutting down" }),
    )
}

/// Whether `table` can serve: a published table with at least one pool
/// that can take a request. Shared by the admin API's `/ready` and the
/// load balancer's (`[health] listen`).
pub fn readiness(table: &crate::routing::RoutingTable) -> (StatusCode, Value) {
    {
        let serving: Vec<&str> = table
            .pools
            .iter()
            .filter(|p| !p.selector.is_empty())
            .map(|p| &*p.name)
            .collect();
        if table.generation > 0 && !serving.is_empty() {
            (
                StatusCode::OK,
                json!({ "status": "ready", "generation": table.generation, "serving_pools": serving }),
            )
        } else {
            let reason = if table.generation == 0 {
                "no routing table published yet"
            } else {
                "no pool has a stamp that can take traffic"
            };
            (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({ "status": "not-ready", "generation": table.generation, "reason": reason }),
            )
        }
    }
}

/// The command a mutating endpoint asks for, from its query and body.
fn command(change: Change, query: &Query, body: &Bytes) -> Result<Command, ApiError> {
    let no_options = |query: &Query, body: &Bytes| -> Result<(), ApiError> {
        query.only(&[])?;
        let object = json_object(body)?;
        match object.keys().next() {
            Some(key) => Err(ApiError::invalid(
                key,
                "unknown field; this endpoint takes none",
            )),
            None => Ok(()),
        }
    };
    match change {
        Change::DrainStamp(name) => drain(Target::Stamp(name), query, body),
        Change::DrainRegion(region) => drain(Target::Region(region), query, body),
        Change::EnableStamp(name) => {
            no_options(query, body)?;
            Ok(Command::Enable {
                target: Target::Stamp(name),
            })
        }
        Change::EnableRegion(region) => {
            no_options(query, body)?;
            Ok(Command::Enable {
                target: Target::Region(region),
            })
        }
        Change::DisableStamp(stamp) => {
            no_options(query, body)?;
            Ok(Command::Disable { stamp })
        }
        Change::Weight(stamp) => {
            query.only(&[])?;
            Ok(Command::Weight {
                stamp,
                weight: weight(body)?,
            })
        }
        Change::Reload => {
            no_options(query, body)?;
            Ok(Command::Reload)
        }
        Change::ClearLocal(stamp) => {
            no_options(query, body)?;
            Ok(Command::ClearLocal { stamp })
        }
    }
}

/// `deadline`, `dry_run` and `force`, from the query or a JSON body (not
/// both for one field: which one was meant would be a guess).
fn drain(target: Target, query: &Query, body: &Bytes) -> Result<Command, ApiError> {
    const FIELDS: [&str; 3] = ["deadline", "dry_run", "force"];
    query.only(&FIELDS)?;
    let object = json_object(body)?;
    if let Some(key) = object.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(ApiError::invalid(
            key,
            "unknown field; expected deadline, dry_run or force",
        ));
    }
    for field in FIELDS {
        if query.get(field).is_some() && object.contains_key(field) {
            return Err(ApiError::invalid(
                field,
                "given both in the query and in the body; give it once",
            ));
        }
    }
    let deadline = match (query.get("deadline"), object.get("deadline")) {
        (Some(text), _) => Some(text),
        (None, None | Some(Value::Null)) => None,
        (None, Some(Value::String(text))) => Some(text.as_str()),
        (None, Some(_)) => {
            return Err(ApiError::invalid(
                "deadline",
                "expected a duration string such as \"30s\"",
            ));
        }
    };
    let deadline = deadline
        .map(|d| parse_duration(d).map_err(|e| ApiError::invalid("deadline", e)))
        .transpose()?;
    let json_flag = |field: &str| -> Result<Option<bool>, ApiError> {
        match object.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(ApiError::invalid(field, "expected true or false")),
        }
    };
    let dry_run = query.flag("dry_run")? || json_flag("dry_run")?.unwrap_or(false);
    let force = query.flag("force")? || json_flag("force")?.unwrap_or(false);
    Ok(Command::Drain {
        target,
        deadline,
        dry_run,
        force,
    })
}

/// `{"weight": N}` (0..=1000) or `{"weight": null}` to remove the override.
fn weight(body: &Bytes) -> Result<Option<u32>, ApiError> {
    const EXPECTED: &str = "expected an integer 0..=1000 or null";
    let object = json_object(body)?;
    if let Some(key) = object.keys().find(|k| k.as_str() != "weight") {
        return Err(ApiError::invalid(key, "unknown field; expected weight"));
    }
    match object.get("weight") {
        None => Err(ApiError::invalid(
            "weight",
            format!("required: send {{\"weight\": N}}, {EXPECTED} (null removes the override)"),
        )),
        Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| *n <= 1000)
            .map(Some)
            .ok_or_else(|| ApiError::invalid("weight", format!("{EXPECTED}, got {n}"))),
        Some(other) => Err(ApiError::invalid(
            "weight",
            format!("{EXPECTED}, got {other}"),
        )),
    }
}

/// The body as a JSON object; an empty body is an empty object.
fn json_object(body: &Bytes) -> Result<serde_json::Map<String, Value>, ApiError> {
    if body.trim_ascii().is_empty() {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::invalid("body", "expected a JSON object")),
        Err(e) => Err(ApiError::invalid("body", format!("not valid JSON: {e}"))),
    }
}

/// Read the whole (small) body, refusing more than [`MAX_BODY`] bytes.
async fn read_body<B>(body: B) -> Result<Bytes, ApiError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let collect = Limited::new(body, MAX_BODY).collect();
    match tokio::time::timeout(BODY_READ_TIMEOUT, collect).await {
        Err(_) => Err(ApiError::BodyTimeout),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<LengthLimitError>() => Err(ApiError::TooLarge),
        Ok(Err(e)) => Err(ApiError::invalid(
            "body",
            format!("cannot read the request body: {e}"),
        )),
    }
}

/// Decoded query parameters, in order.
#[derive(Debug, Default)]
struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    fn parse(query: Option<&str>) -> Result<Query, ApiError> {
        let mut pairs = Vec::new();
        for item in query.unwrap_or("").split('&').filter(|i| !i.is_empty()) {
            let (key, value) = item.split_once('=').unwrap_or((item, ""));
            let key = percent_decode(key)
                .ok_or_else(|| ApiError::invalid("query", "bad percent-encoding"))?;
            // `?=1`: an error must name a field, and this one has none.
            if key.is_empty() {
                return Err(ApiError::invalid(
                    "query",
                    format!("a parameter without a name ({item:?})"),
                ));
            }
            let value = percent_decode(value)
                .ok_or_else(|| ApiError::invalid(&key, "bad percent-encoding"))?;
            pairs.push((key, value));
        }
        Ok(Query { pairs })
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Refuse parameters outside `known`: a mistyped `dry_run` must not
    /// turn a rehearsal into a real drain. (Reads do not call this:
    /// dashboards add cache-busting parameters, and a read cannot harm.)
    fn only(&self, known: &[&str]) -> Result<(), ApiError> {
        match self
            .pairs
            .iter()
            .find(|(k, _)| !known.contains(&k.as_str()))
        {
            None => Ok(()),
            Some((k, _)) if known.is_empty() => Err(ApiError::invalid(
                k,
                "unknown query parameter; this endpoint takes none",
            )),
            Some((k, _)) => Err(ApiError::invalid(
                k,
                format!("unknown query parameter; expected {}", known.join(", ")),
            )),
        }
    }

    /// A boolean parameter: absent is false; `1`/`true`/`yes` or a bare
    /// `?flag` is true, `0`/`false`/`no` false.
    fn flag(&self, key: &str) -> Result<bool, ApiError> {
        match self.get(key) {
            None => Ok(false),
            Some("" | "1" | "true" | "yes") => Ok(true),
            Some("0" | "false" | "no") => Ok(false),
            Some(_) => Err(ApiError::invalid(key, "expected 1 or 0 (true or false)")),
        }
    }
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a
/// byte; `None` for a broken escape or bytes that are not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = char::from(bytes.next()?).to_digit(16)?;
                let lo = char::from(bytes.next()?).to_digit(16)?;
                out.push((hi * 16 + lo) as u8);
            }
            other => out.push(other),
        }
    }
    String::from_utf8(out).ok()
}

/// A JSON response (with a final newline, for people using curl).
fn json<T: serde::Serialize + ?Sized>(status: StatusCode, value: &T) -> Response<Body> {
    let mut bytes = serde_json::to_vec(value).expect("admin documents serialize to JSON");
    bytes.push(b'\n');
    let mut response = Response::new(Full::new(Bytes::from(bytes)).boxed_unsync());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// An HTML page; `no-store`, so a browser never shows an old build of the
/// page against a newer API.
fn html(body: &'static str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())).boxed_unsync());
    let h = response.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `GET /` and `GET /admin/ui`: the dashboard, one self-contained page
/// (inline CSS and script, no external requests) that polls
/// `/admin/status` and `/admin/events` and lists the endpoints at its foot.
const DASHBOARD: &str = include_str!("dashboard.html");

#[cfg(test)]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Query {
        Query::parse(Some(s)).unwrap()
    }

    fn field_of(e: ApiError) -> String {
        match e {
            ApiError::Command(AdminError::Invalid { field, .. }) => field,
            other => panic!("not an invalid field: {other:?}"),
        }
    }

    #[test]
    fn drain_options_come_from_query_or_body() {
        let stamp = || Target::Stamp("a".into());
        assert_eq!(
            drain(stamp(), &q("deadline=30s&dry_run=1"), &Bytes::new()).unwrap(),
            Command::Drain {
                target: stamp(),
                deadline: Some(Duration::from_secs(30)),
                dry_run: true,
                force: false
            }
        );
        let body = Bytes::from_static(br#"{"deadline":"1m","dry_run":false,"force":true}"#);
        assert_eq!(
            drain(stamp(), &q(""), &body).unwrap(),
            Command::Drain {
                target: stamp(),
                deadline: Some(Duration::from_secs(60)),
                dry_run: false,
                force: true
            }
        );
        assert_eq!(
            drain(stamp(), &q("dry_run"), &Bytes::new()).unwrap(),
            Command::Drain {
                target: stamp(),
                deadline: None,
                dry_run: true,
                force: false
            }
        );
    }

    #[test]
    fn bad_drain_options_name_the_field() {
        let t = || Target::Region("r".into());
        let none = Bytes::new();
        assert_eq!(
            field_of(drain(t(), &q("deadline=soon"), &none).unwrap_err()),
            "deadline"
        );
        assert_eq!(
            field_of(drain(t(), &q("dryrun=1"), &none).unwrap_err()),
            "dryrun"
        );
        assert_eq!(
            field_of(drain(t(), &q("force=maybe"), &none).unwrap_err()),
            "force"
        );
        let body = Bytes::from_static(br#"{"deadline": 30}"#);
        assert_eq!(field_of(drain(t(), &q(""), &body).unwrap_err()), "deadline");
        let body = Bytes::from_static(br#"{"deadline": "30s"}"#);
        assert_eq!(
            field_of(drain(t(), &q("deadline=1s"), &body).unwrap_err()),
            "deadline"
        );
        let body = Bytes::from_static(b"{not json");
        assert_eq!(field_of(drain(t(), &q(""), &body).unwrap_err()), "body");
        let body = Bytes::from_static(b"[1]");
        assert_eq!(field_of(drain(t(), &q(""), &body).unwrap_err()), "body");
    }

    #[test]
    fn weight_is_an_integer_up_to_1000_or_null() {
        let w = |s: &'static str| weight(&Bytes::from_static(s.as_bytes()));
        assert_eq!(w(r#"{"weight": 0}"#).unwrap(), Some(0));
        assert_eq!(w(r#"{"weight": 1000}"#).unwrap(), Some(1000));
        assert_eq!(w(r#"{"weight": null}"#).unwrap(), None);
        for bad in [
            r#"{"weight": 1001}"#,
            r#"{"weight": -1}"#,
            r#"{"weight": 1.5}"#,
            r#"{"weight": "10"}"#,
            r#"{}"#,
            "",
        ] {
            let e = w(bad).unwrap_err();
            assert!(
                e.to_string()
                    .starts_with("weight: expected an integer 0..=1000 or null")
                    || e.to_string().starts_with("weight: required"),
                "{bad}: {e}"
            );
        }
        assert_eq!(field_of(w(r#"{"weigth": 5}"#).unwrap_err()), "weigth");
    }

    #[test]
    fn queries_are_form_decoded() {
        let query = q("deadline=1m30s&since=%34%32&x=a+b&bare");
        assert_eq!(query.get("since"), Some("42"));
        assert_eq!(query.get("x"), Some("a b"));
        assert_eq!(query.get("bare"), Some(""));
        assert!(Query::parse(Some("a=%zz")).is_err());
        assert!(Query::parse(Some("a=%4")).is_err());
    }

    #[test]
    fn error_kinds_and_statuses() {
        let e = ApiError::from(AdminError::UnknownStamp("x".into()));
        assert_eq!(
            (e.status(), e.kind()),
            (StatusCode::NOT_FOUND, "unknown-stamp")
        );
        let e = ApiError::invalid("weight", "bad");
        assert_eq!((e.status(), e.kind()), (StatusCode::BAD_REQUEST, "invalid"));
        assert_eq!(e.to_string(), "weight: bad");
        let e = ApiError::Unauthorized("no".into());
        assert_eq!(e.into_response().status(), StatusCode::UNAUTHORIZED);
    }
}
