//! `deploy/grafana/stampgate.json` against the real `/metrics`: every
//! metric name in every query of the dashboard (panel expressions and
//! template variables) must be a series a running proxy exposes, with the
//! suffix its family's type gives it (`_total` for counters; `_bucket`,
//! `_sum`, `_count` for histograms; none for gauges). A renamed metric
//! otherwise leaves an operator with an empty panel during an incident.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use stampgate::admin::Tokens;
use support::*;

const DASHBOARD: &str = include_str!("../deploy/grafana/stampgate.json");

/// Every query string of the dashboard: `expr` of each target (rows may
/// nest panels) and the variables' `query`/`definition`.
fn queries(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr" | "query" | "definition", serde_json::Value::String(s)) => {
                        out.push(s.clone())
                    }
                    _ => queries(value, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|i| queries(i, out)),
        _ => {}
    }
}

/// Metric names in a PromQL expression: identifiers outside quoted label
/// values that start with `stampgate_` (label names and functions never do).
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut chars = expr.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c == '"' || c == '\'' || c == '`' {
            // Skip the string, escapes included.
            let mut escaped = false;
            for (_, d) in chars.by_ref() {
                if escaped {
                    escaped = false;
                } else if d == '\\' {
                    escaped = true;
                } else if d == c {
                    break;
                }
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let mut end = i + c.len_utf8();
            while let Some(&(j, d)) = chars.peek() {
                if d.is_ascii_alphanumeric() || d == '_' || d == ':' {
                    end = j + d.len_utf8();
                    chars.next();
                } else {
                    break;
                }
            }
            let word = &expr[i..end];
            if word.starts_with("stampgate_") {
                names.push(word.to_owned());
            }
        }
    }
    names
}

/// What an OpenMetrics exposition holds: family name -> type, and the
/// sample names (with their suffixes) that carry values.
struct Exposition {
    families: BTreeMap<String, String>,
    samples: BTreeSet<String>,
}

fn exposition(text: &str) -> Exposition {
    let mut families = BTreeMap::new();
    let mut samples = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            families.insert(name.to_owned(), kind.to_owned());
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).expect("sample line");
            samples.insert(line[..end].to_owned());
        }
    }
    Exposition { families, samples }
}

/// Why `name` is not a series of `exp`, or `None` when it is.
fn problem(exp: &Exposition, name: &str) -> Option<String> {
    if !exp.samples.contains(name) {
        let hint = exp
            .families
            .get(name)
            .map(|kind| format!(" ({name} is a {kind} family: use its sample names)"))
            .unwrap_or_default();
        return Some(format!("{name}: not exposed by /metrics{hint}"));
    }
    let suffixed = [
        ("_total", &["counter"][..]),
        ("_bucket", &["histogram"][..]),
        ("_sum", &["histogram", "summary"][..]),
        ("_count", &["histogram", "summary"][..]),
    ];
    for (suffix, kinds) in suffixed {
        if let Some(family) = name.strip_suffix(suffix)
            && let Some(kind) = exp.families.get(family)
        {
            return (!kinds.contains(&kind.as_str()))
                .then(|| format!("{name}: {family} is a {kind}, not a {}", kinds.join(" or ")));
        }
    }
    match exp.families.get(name).map(String::as_str) {
        Some("gauge" | "unknown") => None,
        Some(kind) => Some(format!("{name}: a {kind} family has no bare sample")),
        None => Some(format!("{name}: no # TYPE line for its family")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_metric_is_exposed_by_metrics() {
    let dashboard: serde_json::Value =
        serde_json::from_str(DASHBOARD).expect("deploy/grafana/stampgate.json is JSON");
    let mut exprs = Vec::new();
    queries(&dashboard, &mut exprs);
    assert!(
        exprs.len() >= 20,
        "the dashboard has its queries: {exprs:?}"
    );

    let s = stamp("westeurope-1", "westeurope").await;
    // A hedging route, so that its delay gauge has a sample.
    let p = Setup::new()
        .stamp(&s)
        .route("retry = { attempts = 2, hedge_after = \"100ms\" }")
        .start()
        .await;
    let admin = AdminApi::start(p.handle.controller.clone(), Tokens::none()).await;
    let c = http1_client();
    // One answered request, so that no family is empty for want of traffic.
    let a = get(&c, &p.url("/catalogservice/api/1.0/catalogitem?limit=1")).await;
    assert_eq!(a.status, http::StatusCode::OK);
    let m = get(&c, &format!("http://{}/metrics", admin.addr)).await;
    assert_eq!(m.status, http::StatusCode::OK);
    let exp = exposition(&m.text());
    assert!(exp.families.len() >= 20, "{:?}", exp.families);

    let mut used = BTreeSet::new();
    let mut failures = Vec::new();
    for expr in &exprs {
        let names = metric_names(expr);
        // A variable such as `$datasource` names no metric; every PromQL
        // query does, or this check would pass it by not reading it.
        if names.is_empty() && (expr.contains('(') || expr.contains('{')) {
            failures.push(format!("no stampgate metric found in {expr:?}"));
        }
        for name in names {
            if let Some(why) = problem(&exp, &name) {
                failures.push(format!("{why}\n    in {expr}"));
            }
            used.insert(name);
        }
    }
    assert!(
        failures.is_empty(),
        "deploy/grafana/stampgate.json:\n{}",
        failures.join("\n")
    );
    // Every family is on the dashboard somewhere: a new metric needs a panel.
    let unused: Vec<&String> = exp
        .families
        .keys()
        .filter(|f| {
            !used
                .iter()
                .any(|u| *u == **f || u.starts_with(&format!("{f}_")))
        })
        .collect();
    assert!(unused.is_empty(), "families without a panel: {unused:?}");
}

/// The check itself refuses what a careless rename or a guessed suffix
/// would write.
#[test]
fn the_check_refuses_unknown_names_and_wrong_suffixes() {
    let exp = exposition(
        "# TYPE sg_requests counter\nsg_requests_total{a=\"b\"} 1\n\
         # TYPE sg_latency histogram\nsg_latency_bucket{le=\"+Inf\"} 1\nsg_latency_sum 0.1\nsg_latency_count 1\n\
         # TYPE sg_weight gauge\nsg_weight 3\n# EOF\n",
    );
    for ok in [
        "sg_requests_total",
        "sg_latency_bucket",
        "sg_latency_sum",
        "sg_latency_count",
        "sg_weight",
    ] {
        assert_eq!(problem(&exp, ok), None, "{ok}");
    }
    for bad in [
        "sg_requests",
        "sg_latency",
        "sg_weight_total",
        "sg_requests_count",
        "sg_other_total",
    ] {
        assert!(problem(&exp, bad).is_some(), "{bad} passed");
    }
    assert_eq!(
        metric_names(
            "sum by (stamp) (rate(stampgate_a_total{class=\"stampgate_not_a_name\"}[5m])) / stampgate_b"
        ),
        vec!["stampgate_a_total", "stampgate_b"]
    );
}
