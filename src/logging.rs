//! The process's own log lines (start-up, transitions, operator actions;
//! the access log is separate, in `proxy::access_log`): `pretty` for a
//! person, `json` for a log shipper. Colours only when standard error is a
//! terminal, so that journald, `kubectl logs` and files get no escape
//! codes; in `json`, a field that holds a list is a JSON array, not a
//! string that a query would have to parse again.

use std::fmt::{self, Write as _};
use std::io::IsTerminal;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Installs the global subscriber, writing to standard error. `level`
/// (a level or an `EnvFilter` directive) wins over `RUST_LOG`, which wins
/// over `default_level`.
pub fn init(json: bool, level: Option<&str>, default_level: &str) {
    // rustls warns on every handshake whose SNI is an IP address (legal
    // for clients to send, common on internal networks), and hickory-server
    // logs every DNS query at info: noise by default, and at DNS rates the
    // logging alone would cost more than the answers.
    let filter = match level {
        Some(l) => EnvFilter::new(l),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| {
            EnvFilter::new(format!("{default_level},rustls=error,hickory_server=warn"))
        }),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(use_colour());
    if json {
        builder.event_format(JsonLines).init();
    } else {
        builder.init();
    }
}

/// Colours for a terminal only, and never when `NO_COLOR` is set
/// (<https://no-color.org>).
fn use_colour() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// A list for a log field, written as a JSON array of strings, so that the
/// `json` format can keep it an array: `listen = %logging::list(&addrs)`.
/// (A `Vec<String>` logged with `?` already reads as a JSON array; this is
/// for items whose `Debug` does not, such as socket addresses.)
pub fn list<T: fmt::Display>(items: &[T]) -> List<'_, T> {
    List(items)
}

/// See [`list`].
pub struct List<'a, T>(&'a [T]);

impl<T: fmt::Display> fmt::Display for List<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_char('[')?;
        for (i, item) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(&json_string(&item.to_string()))?;
        }
        f.write_char(']')
    }
}

/// One JSON object per event, the shape of tracing-subscriber's flattened
/// JSON (`timestamp`, `level`, the fields, `target`) except that list
/// fields are arrays. There are no spans in stampgate to write.
struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = String::with_capacity(256);
        let now = humantime::format_rfc3339_micros(std::time::SystemTime::now());
        let _ = write!(
            line,
            "{{\"timestamp\":\"{now}\",\"level\":\"{}\"",
            event.metadata().level()
        );
        event.record(&mut JsonFields(&mut line));
        let _ = write!(
            line,
            ",\"target\":{}}}",
            json_string(event.metadata().target())
        );
        writeln!(writer, "{line}")
    }
}

/// Appends `,"name":value` for each field.
struct JsonFields<'a>(&'a mut String);

impl JsonFields<'_> {
    fn member(&mut self, field: &Field, value: &str) {
        let _ = write!(self.0, ",{}:{value}", json_string(field.name()));
    }
}

impl Visit for JsonFields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        // The message is prose even when it happens to look like a list.
        if field.name() != "message" && is_json_array(&text) {
            self.member(field, &text);
        } else {
            self.member(field, &json_string(&text));
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.member(field, &json_string(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.member(field, &value.to_string());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.member(field, &value.to_string());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.member(field, &value.to_string());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if value.is_finite() {
            self.member(field, &value.to_string());
        } else {
            self.member(field, &json_string(&value.to_string()));
        }
    }
}

/// `[...]` that parses as a JSON array: a `Vec<String>` logged with `?`
/// (its `Debug` is JSON for ordinary text) or a [`list`].
fn is_json_array(text: &str) -> bool {
    text.starts_with('[')
        && text.ends_with(']')
        && serde_json::from_str::<Vec<serde_json::Value>>(text).is_ok()
}

fn json_string(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_json_arrays_of_strings() {
        let addrs: Vec<std::net::SocketAddr> = vec![
            "127.0.0.1:80".parse().unwrap(),
            "[::1]:8443".parse().unwrap(),
        ];
        let text = list(&addrs).to_string();
        assert_eq!(text, r#"["127.0.0.1:80", "[::1]:8443"]"#);
        assert!(is_json_array(&text));
        assert_eq!(list::<String>(&[]).to_string(), "[]");
    }

    #[test]
    fn debug_of_string_vectors_is_an_array_but_rust_lists_are_not() {
        assert!(is_json_array(&format!("{:?}", vec!["a \"b\"", "c"])));
        let addrs: Vec<std::net::SocketAddr> = vec!["127.0.0.1:80".parse().unwrap()];
        assert!(!is_json_array(&format!("{addrs:?}")));
        assert!(!is_json_array("[x] happened"));
    }
}
