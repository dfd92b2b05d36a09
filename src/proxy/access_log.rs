//! The access log, at the very end of the request path: when a response
//! body ends (or the client goes away), its request's [`Entry`] is handed to
//! a writer thread with a non-blocking `try_send`. Formatting and writing
//! happen on that thread, so a slow disk or a full pipe costs log lines
//! (counted in `stampgate_access_log_lines_total{result="dropped"}`),
//! never request latency.

use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};
use std::time::{Duration, SystemTime};

use http::HeaderValue;

use crate::config::{AccessLogFormat, AccessLogSettings};
use crate::metrics::ProxyStats;

/// Lines that may wait for the writer: about a second of a busy proxy. A
/// burst beyond that is dropped and counted rather than queued without
/// bound. The queue holds boxed entries: its slots are allocated and
/// written up front, and 16 Ki inline entries would be 6 MB of resident
/// memory for a proxy that logs nothing (more than half its idle RSS).
const QUEUE: usize = 16 * 1024;

/// One finished request.
#[derive(Debug)]
pub struct Entry {
    /// When the request head arrived.
    pub time: SystemTime,
    /// Client address.
    pub client: SocketAddr,
    /// Request method.
    pub method: http::Method,
    /// Request target; only its path is written (query strings carry
    /// tokens often enough that logging them must be a choice, not a
    /// default).
    pub uri: http::Uri,
    /// Client's HTTP version.
    pub version: http::Version,
    /// Status sent to the client.
    pub status: u16,
    /// Matched route, if any.
    pub route: Option<Arc<str>>,
    /// Stamp of the last try, if any.
    pub stamp: Option<Arc<str>>,
    /// That stamp's region.
    pub region: Option<Arc<str>>,
    /// Tries made (0: answered by the proxy before any try).
    pub attempts: u32,
    /// Head to end of the response body.
    pub total: Duration,
    /// Last try: sending to the stamp until its response head.
    pub upstream: Option<Duration>,
    /// Response body bytes sent to the client.
    pub bytes: u64,
    /// `X-Request-Id` (the client's or ours).
    pub request_id: Option<HeaderValue>,
    /// W3C `traceparent`, when the client sent one.
    pub traceparent: Option<HeaderValue>,
    /// `Referer`, for the combined format.
    pub referer: Option<HeaderValue>,
    /// `User-Agent`, for the combined format.
    pub user_agent: Option<HeaderValue>,
    /// The proxy's error code (`x-stampgate-error`), for its own answers.
    pub error: Option<&'static str>,
    /// The body ended before it was complete (client gone, stamp reset,
    /// drain cut).
    pub aborted: bool,
}

/// Why the access log could not start.
#[derive(Debug, thiserror::Error)]
#[error("access_log.path {path:?}: {source}")]
pub struct AccessLogError {
    path: PathBuf,
    #[source]
    source: io::Error,
}

/// The request path's end of the access log.
#[derive(Debug, Clone)]
pub struct AccessLog {
    tx: SyncSender<Box<Entry>>,
    stats: Arc<ProxyStats>,
    reopen: Arc<AtomicBool>,
}

/// Asks the access log's writer to open its file again by name before the
/// next line (log rotation: SIGUSR1 after the file was renamed).
#[derive(Debug, Clone)]
pub struct Reopen(Arc<AtomicBool>);

impl Reopen {
    /// The next line goes to a file opened afresh at the configured path.
    pub fn request(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl AccessLog {
    /// Open the destination and start the writer thread. The thread ends
    /// when the last `AccessLog` handle is dropped.
    pub fn start(
        settings: &AccessLogSettings,
        stats: Arc<ProxyStats>,
    ) -> Result<AccessLog, AccessLogError> {
        let out: Box<dyn Write + Send> = match &settings.path {
            None => Box::new(io::stdout()),
            Some(path) => Box::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| AccessLogError {
                        path: path.clone(),
                        source,
                    })?,
            ),
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let format = settings.format;
        let written = stats.clone();
        let reopen = Arc::new(AtomicBool::new(false));
        let dest = Destination {
            path: settings.path.clone(),
            reopen: reopen.clone(),
        };
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(rx, out, format, &written, &dest))
            .map_err(|source| AccessLogError {
                path: settings.path.clone().unwrap_or_else(|| "-".into()),
                source,
            })?;
        Ok(AccessLog { tx, stats, reopen })
    }

    /// The handle that asks for the file to be reopened.
    pub fn reopener(&self) -> Reopen {
        Reopen(self.reopen.clone())
    }

    /// Queue `entry` without waiting; a full queue drops it (counted).
    pub fn send(&self, entry: Box<Entry>) {
        match self.tx.try_send(entry) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.stats
                    .access_log_dropped
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The writer thread. Under load it wakes every [`BATCH`], drains what
/// queued meanwhile and flushes once, so senders find it awake and never
/// pay a wake-up (a futex call per request otherwise). After a quiet
/// [`BATCH`] it blocks until the next line, so an idle proxy costs nothing.
fn write_lines(
    rx: Receiver<Box<Entry>>,
    out: Box<dyn Write + Send>,
    format: AccessLogFormat,
    stats: &ProxyStats,
    dest: &Destination,
) {
    let mut out = BufWriter::with_capacity(64 * 1024, out);
    let mut line = String::with_capacity(512);
    let mut write = |entry: Box<Entry>, out: &mut BufWriter<Box<dyn Write + Send>>| {
        dest.reopen_if_asked(out);
        line.clear();
        match format {
            AccessLogFormat::Json => json_line(&entry, &mut line),
            AccessLogFormat::Text => text_line(&entry, &mut line),
            AccessLogFormat::Combined => combined_line(&entry, &mut line),
        }
        line.push('\n');
        let counter = match out.write_all(line.as_bytes()) {
            Ok(()) => &stats.access_log_written,
            Err(_) => &stats.access_log_dropped,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    };
    while let Ok(first) = rx.recv() {
        write(first, &mut out);
        loop {
            let mut wrote = false;
            loop {
                match rx.try_recv() {
                    Ok(entry) => {
                        write(entry, &mut out);
                        wrote = true;
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        let _ = out.flush();
                        return;
                    }
                }
            }
            let _ = out.flush();
            if !wrote {
                break;
            }
            std::thread::sleep(BATCH);
        }
    }
    let _ = out.flush();
}

/// Where the writer thread writes, and the flag that asks it to reopen.
struct Destination {
    /// `None`: standard output, never reopened.
    path: Option<PathBuf>,
    reopen: Arc<AtomicBool>,
}

impl Destination {
    /// Swap `out` for the file now at the path, when asked. On failure the
    /// old file is kept: lines in a renamed file beat no lines.
    fn reopen_if_asked(&self, out: &mut BufWriter<Box<dyn Write + Send>>) {
        if !self.reopen.load(Ordering::Relaxed) || !self.reopen.swap(false, Ordering::Relaxed) {
            return;
        }
        let Some(path) = &self.path else { return };
        let _ = out.flush();
        match OpenOptions::new().create(true).append(true).open(path) {
            Ok(file) => *out.get_mut() = Box::new(file),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot reopen the access log; writing on to the old file");
            }
        }
    }
}

/// How long the writer lets lines gather while requests keep coming: the
/// delay before a line is on disk, and a bound of 50 wake-ups a second.
const BATCH: Duration = Duration::from_millis(20);

/// `s` as a JSON string, quotes included.
fn push_json_str(out: &mut String, s: &str) {
    use std::fmt::Write as _;
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A JSON member `"key":"value"`, or `"key":null`, with a leading comma.
fn push_field(out: &mut String, key: &str, value: Option<&str>) {
    out.push_str(",\"");
    out.push_str(key);
    out.push_str("\":");
    match value {
        Some(v) => push_json_str(out, v),
        None => out.push_str("null"),
    }
}

/// The last try's time in text lines: milliseconds or `-`.
struct Upstream(Option<Duration>);

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(d) => write!(f, "{}", millis(d)),
            None => f.write_str("-"),
        }
    }
}

fn header_str(v: &Option<HeaderValue>) -> Option<&str> {
    v.as_ref().and_then(|v| v.to_str().ok())
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn version_str(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/?",
    }
}

/// One JSON object; field names are stable (log pipelines parse them).
/// Written by hand: a `serde_json::Value` would allocate every key.
pub fn json_line(e: &Entry, out: &mut String) {
    use std::fmt::Write as _;
    let _ = write!(
        out,
        "{{\"time\":\"{}\",\"client\":\"{}\"",
        humantime::format_rfc3339_millis(e.time),
        e.client
    );
    push_field(out, "method", Some(e.method.as_str()));
    push_field(out, "path", Some(e.uri.path()));
    push_field(out, "protocol", Some(version_str(e.version)));
    let _ = write!(out, ",\"status\":{}", e.status);
    push_field(out, "route", e.route.as_deref());
    push_field(out, "stamp", e.stamp.as_deref());
    push_field(out, "region", e.region.as_deref());
    let _ = write!(
        out,
        ",\"attempts\":{},\"duration_ms\":{}",
        e.attempts,
        millis(e.total)
    );
    match e.upstream {
        Some(d) => {
            let _ = write!(out, ",\"upstream_ms\":{}", millis(d));
        }
        None => out.push_str(",\"upstream_ms\":null"),
    }
    let _ = write!(out, ",\"bytes\":{}", e.bytes);
    push_field(out, "request_id", header_str(&e.request_id));
    push_field(out, "traceparent", header_str(&e.traceparent));
    push_field(out, "error", e.error);
    let _ = write!(out, ",\"aborted\":{}}}", e.aborted);
}

/// `key=value` pairs, `-` for an absent value; the path is quoted.
pub fn text_line(e: &Entry, out: &mut String) {
    use std::fmt::Write as _;
    fn opt(v: Option<&str>) -> &str {
        v.unwrap_or("-")
    }
    let _ = write!(
        out,
        "{} client={} {} {:?} {} status={} route={} stamp={} region={} attempts={} duration_ms={} upstream_ms={} bytes={} request_id={} traceparent={}",
        humantime::format_rfc3339_millis(e.time),
        e.client,
        e.method,
        e.uri.path(),
        version_str(e.version),
        e.status,
        opt(e.route.as_deref()),
        opt(e.stamp.as_deref()),
        opt(e.region.as_deref()),
        e.attempts,
        millis(e.total),
        Upstream(e.upstream),
        e.bytes,
        opt(header_str(&e.request_id)),
        opt(header_str(&e.traceparent)),
    );
    if let Some(code) = e.error {
        let _ = write!(out, " error={code}");
    }
    if e.aborted {
        out.push_str(" aborted");
    }
}

/// Apache's combined format: `%h %l %u %t "%r" %>s %b "%{Referer}i"
/// "%{User-agent}i"`. The request line has the path only, as the other
/// formats do (query strings carry tokens); the time is UTC.
pub fn combined_line(e: &Entry, out: &mut String) {
    use std::fmt::Write as _;
    let _ = write!(out, "{} - - [{}] \"", e.client.ip(), clf_time(e.time));
    push_clf_escaped(out, e.method.as_str().as_bytes());
    out.push(' ');
    push_clf_escaped(out, e.uri.path().as_bytes());
    let _ = write!(out, " {}\" {} ", version_str(e.version), e.status);
    // %b: "-" for no body bytes.
    if e.bytes == 0 {
        out.push('-');
    } else {
        let _ = write!(out, "{}", e.bytes);
    }
    for header in [&e.referer, &e.user_agent] {
        out.push_str(" \"");
        match header {
            Some(v) => push_clf_escaped(out, v.as_bytes()),
            None => out.push('-'),
        }
        out.push('"');
    }
}

/// `10/Oct/2000:13:55:36 +0000`, from the HTTP date `Tue, 10 Oct 2000
/// 13:55:36 GMT` (same fields, other order; no calendar code of our own).
fn clf_time(t: SystemTime) -> String {
    let http = httpdate::fmt_http_date(t);
    let parts: Vec<&str> = http.split(' ').collect();
    match parts.as_slice() {
        [_, day, month, year, time, _] => format!("{day}/{month}/{year}:{time} +0000"),
        _ => http,
    }
}

/// As Apache escapes logged strings: `"` and `\` with a backslash, bytes
/// outside printable ASCII as `\xhh`, so a header cannot forge a line.
fn push_clf_escaped(out: &mut String, bytes: &[u8]) {
    use std::fmt::Write as _;
    for &b in bytes {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            time: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            client: "127.0.0.1:5000".parse().unwrap(),
            method: http::Method::GET,
            uri: "/catalogservice/api/1.0/catalogitem/7?token=secret"
                .parse()
                .unwrap(),
            version: http::Version::HTTP_11,
            status: 200,
            route: Some("catalog".into()),
            stamp: Some("eu-1".into()),
            region: Some("westeurope".into()),
            attempts: 2,
            total: Duration::from_micros(12_345),
            upstream: Some(Duration::from_micros(4_000)),
            bytes: 321,
            request_id: Some(HeaderValue::from_static("abc")),
            traceparent: None,
            referer: None,
            user_agent: None,
            error: None,
            aborted: false,
        }
    }

    #[test]
    fn json_lines_carry_every_field_and_no_query() {
        let mut line = String::new();
        json_line(&entry(), &mut line);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["time"], "2027-01-15T08:00:00.000Z");
        assert_eq!(v["path"], "/catalogservice/api/1.0/catalogitem/7");
        assert_eq!(v["status"], 200);
        assert_eq!(v["stamp"], "eu-1");
        assert_eq!(v["attempts"], 2);
        assert_eq!(v["duration_ms"], 12.345);
        assert_eq!(v["upstream_ms"], 4.0);
        assert_eq!(v["traceparent"], serde_json::Value::Null);
        assert!(!line.contains("secret"), "{line}");
    }

    #[test]
    fn json_strings_are_escaped() {
        let mut e = entry();
        e.route = Some("a\"b\\c\u{1}".into());
        e.upstream = None;
        let mut line = String::new();
        json_line(&e, &mut line);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["route"], "a\"b\\c\u{1}");
        assert_eq!(v["upstream_ms"], serde_json::Value::Null);
        assert_eq!(v["aborted"], false);
    }

    #[test]
    fn text_lines_mark_absent_values() {
        let mut e = entry();
        e.stamp = None;
        e.error = Some("no-healthy-stamp");
        let mut line = String::new();
        text_line(&e, &mut line);
        assert!(line.contains(" stamp=- "), "{line}");
        assert!(line.ends_with(" error=no-healthy-stamp"), "{line}");
        assert!(
            line.contains("\"/catalogservice/api/1.0/catalogitem/7\""),
            "{line}"
        );
    }

    #[test]
    fn combined_lines_are_apaches_format() {
        let mut e = entry();
        e.user_agent = Some(HeaderValue::from_static("curl/8.5.0"));
        let mut line = String::new();
        combined_line(&e, &mut line);
        assert_eq!(
            line,
            "127.0.0.1 - - [15/Jan/2027:08:00:00 +0000] \"GET /catalogservice/api/1.0/catalogitem/7 HTTP/1.1\" 200 321 \"-\" \"curl/8.5.0\""
        );
    }

    #[test]
    fn combined_lines_escape_what_could_forge_a_field() {
        let mut e = entry();
        e.bytes = 0;
        e.referer = Some(HeaderValue::from_bytes(b"a\"b\\c\xff").unwrap());
        e.user_agent = None;
        let mut line = String::new();
        combined_line(&e, &mut line);
        assert!(
            line.ends_with(" 200 - \"a\\\"b\\\\c\\xff\" \"-\""),
            "{line}"
        );
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts() {
        let stats = Arc::new(ProxyStats::default());
        let (tx, _rx) = std::sync::mpsc::sync_channel(1);
        let log = AccessLog {
            tx,
            stats: stats.clone(),
            reopen: Arc::default(),
        };
        log.send(Box::new(entry()));
        log.send(Box::new(entry()));
        assert_eq!(stats.access_log_dropped.load(Ordering::Relaxed), 1);
    }
}
