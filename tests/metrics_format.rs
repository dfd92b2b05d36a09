//! `GET /metrics` read by a strict parser written here, independent of the
//! encoder: OpenMetrics by default and when asked, the Prometheus text
//! format 0.0.4 when the scraper's `Accept` prefers it; histogram buckets
//! cumulative and monotonic, `+Inf` equal to `_count` (issue 17).

mod support;

use std::collections::BTreeMap;

use stampgate::admin::Tokens;
use support::*;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Format {
    OpenMetrics,
    Prometheus,
}

/// Labels in order.
type Labels = Vec<(String, String)>;

/// One sample: metric name, labels, value.
type Sample = (String, Labels, f64);

/// Parse `text` strictly as `format`; panics naming the line at fault.
/// Returns the declared type of each family and the samples.
fn parse(text: &str, format: Format) -> (BTreeMap<String, String>, Vec<Sample>) {
    let mut types = BTreeMap::new();
    let mut samples = Vec::new();
    let lines: Vec<&str> = text.split('\n').collect();
    assert_eq!(lines.last(), Some(&""), "the page ends with a newline");
    let lines = &lines[..lines.len() - 1];
    match format {
        Format::OpenMetrics => {
            assert_eq!(lines.last(), Some(&"# EOF"), "OpenMetrics ends with # EOF")
        }
        Format::Prometheus => assert!(!text.contains("# EOF"), "no # EOF in 0.0.4"),
    }
    for (i, line) in lines.iter().enumerate() {
        if *line == "# EOF" {
            assert_eq!(i, lines.len() - 1, "# EOF only at the end");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or_else(|| panic!("{line}"));
            let known: &[&str] = match format {
                Format::OpenMetrics => &[
                    "counter",
                    "gauge",
                    "histogram",
                    "info",
                    "stateset",
                    "unknown",
                    "summary",
                    "gaugehistogram",
                ],
                Format::Prometheus => &["counter", "gauge", "histogram", "summary", "untyped"],
            };
            assert!(known.contains(&kind), "type {kind} in {format:?}: {line}");
            assert!(
                types.insert(name.to_owned(), kind.to_owned()).is_none(),
                "TYPE twice: {line}"
            );
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            assert!(rest.split_once(' ').is_some(), "{line}");
            continue;
        }
        if line.starts_with("# UNIT ") {
            assert_eq!(format, Format::OpenMetrics, "UNIT in 0.0.4: {line}");
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment {line}");
        samples.push(sample(line));
    }
    // Every sample belongs to a declared family, by the format's naming.
    for (name, _, _) in &samples {
        let family = types.iter().find(|(f, kind)| {
            let suffixes: &[&str] = match (format, kind.as_str()) {
                (Format::OpenMetrics, "counter") => &["_total", "_created"],
                (Format::OpenMetrics, "info") => &["_info"],
                (_, "histogram") => &["_bucket", "_sum", "_count", "_created"],
                _ => &[""],
            };
            suffixes.iter().any(|s| *name == format!("{f}{s}"))
        });
        assert!(family.is_some(), "sample {name} has no TYPE in {format:?}");
    }
    (types, samples)
}

fn bad(line: &str) -> ! {
    panic!("bad sample line {line:?}")
}

/// `name{a="x",b="y"} value` with strict label syntax.
fn sample(line: &str) -> Sample {
    let name_end = line.find(['{', ' ']).unwrap_or_else(|| bad(line));
    let name = &line[..name_end];
    assert!(
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
        "bad name in {line:?}"
    );
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(r) = rest.strip_prefix('{') {
        rest = r;
        loop {
            if let Some(r) = rest.strip_prefix('}') {
                rest = r;
                break;
            }
            let eq = rest.find("=\"").unwrap_or_else(|| bad(line));
            let key = &rest[..eq];
            assert!(
                key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{line:?}"
            );
            let mut value = String::new();
            let mut chars = rest[eq + 2..].char_indices();
            let end = loop {
                match chars.next() {
                    Some((i, '"')) => break eq + 2 + i,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c @ ('\\' | '"'))) => value.push(c),
                        _ => bad(line),
                    },
                    Some((_, c)) => value.push(c),
                    None => bad(line),
                }
            };
            labels.push((key.to_owned(), value));
            rest = &rest[end + 1..];
            rest = rest.strip_prefix(',').unwrap_or(rest);
        }
    }
    let value = rest.strip_prefix(' ').unwrap_or_else(|| bad(line));
    let value: f64 = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().unwrap_or_else(|_| bad(line)),
    };
    (name.to_owned(), labels, value)
}

/// Check every histogram: buckets ascending by `le`, counts never falling,
/// a `+Inf` bucket equal to `_count`. Returns how many series it checked.
fn check_histograms(types: &BTreeMap<String, String>, samples: &[Sample]) -> usize {
    let mut checked = 0;
    for (family, _) in types.iter().filter(|(_, k)| *k == "histogram") {
        // Group by the labels other than `le`.
        let mut series: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
        let mut counts = BTreeMap::new();
        for (name, labels, value) in samples {
            if *name == format!("{family}_bucket") {
                let le = labels
                    .iter()
                    .find(|(k, _)| k == "le")
                    .expect("bucket has le");
                let le = if le.1 == "+Inf" {
                    f64::INFINITY
                } else {
                    le.1.parse().expect("le is a number")
                };
                let rest: Vec<_> = labels.iter().filter(|(k, _)| k != "le").cloned().collect();
                series.entry(rest).or_default().push((le, *value));
            } else if *name == format!("{family}_count") {
                counts.insert(labels.clone(), *value);
            }
        }
        for (labels, buckets) in &series {
            for pair in buckets.windows(2) {
                assert!(
                    pair[0].0 < pair[1].0,
                    "{family}{labels:?}: le not ascending"
                );
                assert!(
                    pair[0].1 <= pair[1].1,
                    "{family}{labels:?}: buckets fall: {buckets:?}"
                );
            }
            let last = buckets.last().unwrap();
            assert_eq!(last.0, f64::INFINITY, "{family}{labels:?}: no +Inf bucket");
            let count = counts
                .get(labels)
                .unwrap_or_else(|| panic!("{family}{labels:?}: no _count"));
            assert_eq!(
                last.1, *count,
                "{family}{labels:?}: +Inf != _count: {buckets:?}"
            );
            checked += 1;
        }
    }
    checked
}

#[tokio::test]
async fn metrics_page_parses_strictly_in_both_formats() {
    let s = stamp("s1", "r1").await;
    let p = Setup::new().stamp(&s).start().await;
    let admin = AdminApi::start(p.handle.controller.clone(), Tokens::none()).await;
    let c = http1_client();
    let requests = 25;
    for _ in 0..requests {
        assert_eq!(
            get(&c, &p.url("/catalogservice/api/1.0/catalogitem"))
                .await
                .status,
            200
        );
    }
    let url = format!("http://{}/metrics", admin.addr);
    let scrape = async |accept: Option<&str>| {
        let mut req = http::Request::get(&url);
        if let Some(accept) = accept {
            req = req.header("accept", accept);
        }
        send(&c, req.body(empty()).unwrap()).await
    };

    // What Prometheus sends: OpenMetrics first.
    let prometheus_accept = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    for accept in [None, Some(prometheus_accept)] {
        let a = scrape(accept).await;
        assert!(
            a.header("content-type")
                .starts_with("application/openmetrics-text"),
            "{accept:?}"
        );
        let (types, samples) = parse(&a.text(), Format::OpenMetrics);
        assert!(
            check_histograms(&types, &samples) >= 2,
            "histograms with data"
        );
        // The route's histogram counted every request once.
        let route_count: f64 = samples
            .iter()
            .filter(|(n, ..)| n == "stampgate_request_duration_seconds_count")
            .map(|s| s.2)
            .sum();
        assert!(route_count > 0.0, "{route_count}");
    }

    // A scraper that reads only the classic format.
    for accept in [
        "text/plain;version=0.0.4",
        "text/plain;version=0.0.4;q=0.9,application/openmetrics-text;q=0.5",
    ] {
        let a = scrape(Some(accept)).await;
        assert_eq!(
            a.header("content-type"),
            "text/plain; version=0.0.4; charset=utf-8"
        );
        let (types, samples) = parse(&a.text(), Format::Prometheus);
        assert!(check_histograms(&types, &samples) >= 2);
    }
}
