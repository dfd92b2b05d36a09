//! `report.html`: the drill's report as one self-contained page. The charts
//! are SVG drawn here (traffic share per region with the fault markers,
//! latency percentiles, errors); no script, no stylesheet or font from
//! anywhere else, so the file can be mailed or attached to a ticket.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::report::{Latency, Report};

/// Region colours, in stacking order; the palette repeats past its end.
const PALETTE: &[&str] = &[
    "#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#9c755f",
];

/// Failed or unanswered requests in the share chart.
const ERROR_COLOUR: &str = "#e15759";

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 220.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 14.0;
const BOTTOM: f64 = 26.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn colour(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

/// Maps run time (seconds) and a 0..1 value to chart coordinates.
struct Frame {
    duration_s: f64,
}

impl Frame {
    fn x(&self, t_s: f64) -> f64 {
        LEFT + (WIDTH - LEFT - RIGHT) * (t_s / self.duration_s.max(0.001)).clamp(0.0, 1.0)
    }

    fn y(&self, v: f64) -> f64 {
        TOP + (HEIGHT - TOP - BOTTOM) * (1.0 - v.clamp(0.0, 1.0))
    }

    fn open(&self, out: &mut String, title: &str) {
        let _ = write!(
            out,
            "<svg viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\" aria-label=\"{}\">",
            esc(title)
        );
        let _ = write!(
            out,
            "<rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{}\" height=\"{}\" class=\"plot\"/>",
            WIDTH - LEFT - RIGHT,
            HEIGHT - TOP - BOTTOM
        );
        let step = if self.duration_s > 60.0 {
            10.0
        } else if self.duration_s > 20.0 {
            5.0
        } else {
            1.0
        };
        let mut t = 0.0;
        while t <= self.duration_s + 1e-9 {
            let x = self.x(t);
            let _ = write!(
                out,
                "<line x1=\"{x:.1}\" y1=\"{}\" x2=\"{x:.1}\" y2=\"{}\" class=\"grid\"/><text x=\"{x:.1}\" y=\"{}\" class=\"tick\" text-anchor=\"middle\">{t}s</text>",
                TOP,
                HEIGHT - BOTTOM,
                HEIGHT - 8.0
            );
            t += step;
        }
    }

    /// Fault spans and step markers, drawn over a chart.
    fn markers(&self, out: &mut String, report: &Report, labels: bool) {
        for f in &report.faults {
            let x0 = self.x(f.at_ms / 1000.0);
            let x1 = self.x(f.ended_ms.unwrap_or(report.duration_s * 1000.0) / 1000.0);
            let _ = write!(
                out,
                "<rect x=\"{x0:.1}\" y=\"{TOP}\" width=\"{:.1}\" height=\"{}\" class=\"fault\"><title>{} on {}</title></rect>",
                (x1 - x0).max(1.0),
                HEIGHT - TOP - BOTTOM,
                esc(&f.fault),
                esc(&f.target)
            );
        }
        for (i, step) in report.timeline.iter().enumerate() {
            let x = self.x(step.at_ms / 1000.0);
            let _ = write!(
                out,
                "<line x1=\"{x:.1}\" y1=\"{TOP}\" x2=\"{x:.1}\" y2=\"{}\" class=\"marker\"/>",
                HEIGHT - BOTTOM
            );
            if labels {
                let y = TOP + 12.0 + 13.0 * (i % 3) as f64;
                let _ = write!(
                    out,
                    "<text x=\"{:.1}\" y=\"{y:.1}\" class=\"label\">{} {}</text>",
                    x + 3.0,
                    esc(&step.action),
                    esc(&step.target)
                );
            }
        }
    }
}

/// The stacked share of answers per region per fine bucket; what is left
/// to 100% failed or carried no region.
fn share_chart(report: &Report, regions_of: &BTreeMap<String, String>) -> String {
    let frame = Frame {
        duration_s: report.duration_s,
    };
    let mut out = String::new();
    frame.open(&mut out, "traffic share by region");
    let width_s = report.fine_bucket_ms as f64 / 1000.0;
    let mut lower = vec![0.0f64; report.fine.len()];
    for (r, region) in report.regions.iter().enumerate() {
        let upper: Vec<f64> = report
            .fine
            .iter()
            .zip(&lower)
            .map(|(b, low)| {
                let n: u64 = b
                    .by_stamp
                    .iter()
                    .filter(|(s, _)| regions_of.get(*s) == Some(region))
                    .map(|(_, n)| n)
                    .sum();
                low + n as f64 / b.requests.max(1) as f64
            })
            .collect();
        let mut points = String::new();
        for (i, v) in upper.iter().enumerate() {
            let _ = write!(
                points,
                "{:.1},{:.1} {:.1},{:.1} ",
                frame.x(i as f64 * width_s),
                frame.y(*v),
                frame.x((i + 1) as f64 * width_s),
                frame.y(*v)
            );
        }
        for (i, v) in lower.iter().enumerate().rev() {
            let _ = write!(
                points,
                "{:.1},{:.1} {:.1},{:.1} ",
                frame.x((i + 1) as f64 * width_s),
                frame.y(*v),
                frame.x(i as f64 * width_s),
                frame.y(*v)
            );
        }
        let _ = write!(
            out,
            "<polygon points=\"{}\" fill=\"{}\"><title>{}</title></polygon>",
            points.trim_end(),
            colour(r),
            esc(region)
        );
        lower = upper;
    }
    for (i, b) in report.fine.iter().enumerate() {
        if b.requests == 0 || lower[i] >= 0.999 {
            continue;
        }
        let x = frame.x(i as f64 * width_s);
        let y = frame.y(1.0);
        let _ = write!(
            out,
            "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{ERROR_COLOUR}\"/>",
            frame.x((i + 1) as f64 * width_s) - x,
            frame.y(lower[i]) - y
        );
    }
    for pct in [0.0, 0.5, 1.0] {
        let _ = write!(
            out,
            "<text x=\"{}\" y=\"{:.1}\" class=\"tick\" text-anchor=\"end\">{:.0}%</text>",
            LEFT - 6.0,
            frame.y(pct) + 4.0,
            pct * 100.0
        );
    }
    frame.markers(&mut out, report, true);
    out.push_str("</svg>");
    out
}

/// Which percentile a latency line draws.
type Pick = fn(&Latency) -> f64;

/// p50/p90/p99/max per second on a log scale (a brownout and a fast
/// success share one chart).
fn latency_chart(report: &Report) -> String {
    let frame = Frame {
        duration_s: report.duration_s,
    };
    let mut out = String::new();
    frame.open(&mut out, "latency percentiles per second");
    let top = report
        .seconds
        .iter()
        .map(|s| s.latency.max_ms)
        .fold(1.0, f64::max);
    let (lo, hi) = (0.1f64.log10(), top.log10().ceil().max(1.0));
    let scale = |v: f64| frame.y((v.max(0.1).log10() - lo) / (hi - lo));
    let mut decade = lo;
    while decade <= hi + 1e-9 {
        let v = 10f64.powf(decade);
        let y = scale(v);
        let _ = write!(
            out,
            "<line x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{}\" y2=\"{y:.1}\" class=\"grid\"/><text x=\"{}\" y=\"{:.1}\" class=\"tick\" text-anchor=\"end\">{} ms</text>",
            WIDTH - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            if v < 1.0 {
                format!("{v:.1}")
            } else {
                format!("{v:.0}")
            }
        );
        decade += 1.0;
    }
    frame.markers(&mut out, report, false);
    let series: [(&str, &str, Pick); 4] = [
        ("p50", "#4e79a7", |l| l.p50_ms),
        ("p90", "#59a14f", |l| l.p90_ms),
        ("p99", "#f28e2b", |l| l.p99_ms),
        ("max", "#e15759", |l| l.max_ms),
    ];
    for (name, stroke, value) in series {
        let points: Vec<String> = report
            .seconds
            .iter()
            .filter(|s| s.requests > 0)
            .map(|s| {
                format!(
                    "{:.1},{:.1}",
                    frame.x(s.t as f64 + 0.5),
                    scale(value(&s.latency))
                )
            })
            .collect();
        let _ = write!(
            out,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{stroke}\" stroke-width=\"2\"><title>{name}</title></polyline>",
            points.join(" ")
        );
    }
    out.push_str("</svg>");
    out
}

/// Errors per second, stacked by kind.
fn error_chart(report: &Report, kinds: &[String]) -> String {
    let frame = Frame {
        duration_s: report.duration_s,
    };
    let mut out = String::new();
    frame.open(&mut out, "errors per second");
    let top = report
        .seconds
        .iter()
        .map(|s| s.errors.values().sum::<u64>())
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let _ = write!(
        out,
        "<text x=\"{}\" y=\"{:.1}\" class=\"tick\" text-anchor=\"end\">{top:.0}</text><text x=\"{}\" y=\"{:.1}\" class=\"tick\" text-anchor=\"end\">0</text>",
        LEFT - 6.0,
        frame.y(1.0) + 4.0,
        LEFT - 6.0,
        frame.y(0.0) + 4.0
    );
    frame.markers(&mut out, report, false);
    for s in &report.seconds {
        let mut low = 0.0;
        for (k, kind) in kinds.iter().enumerate() {
            let n = s.errors.get(kind).copied().unwrap_or(0) as f64;
            if n == 0.0 {
                continue;
            }
            let (x0, x1) = (frame.x(s.t as f64 + 0.1), frame.x(s.t as f64 + 0.9));
            let (y0, y1) = (frame.y((low + n) / top), frame.y(low / top));
            let _ = write!(
                out,
                "<rect x=\"{x0:.1}\" y=\"{y0:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"><title>{}s: {n} × {}</title></rect>",
                x1 - x0,
                y1 - y0,
                colour(k + 3),
                s.t,
                esc(kind)
            );
            low += n;
        }
    }
    out.push_str("</svg>");
    out
}

fn legend(items: &[(String, &str)]) -> String {
    let mut out = String::from("<p class=\"legend\">");
    for (name, colour) in items {
        let _ = write!(
            out,
            "<span><i style=\"background:{colour}\"></i>{}</span>",
            esc(name)
        );
    }
    out.push_str("</p>");
    out
}

fn opt_ms(v: Option<f64>, none: &str) -> String {
    v.map_or_else(|| none.to_owned(), |v| format!("{v:.0} ms"))
}

/// The whole page.
pub fn render(report: &Report, regions_of: &BTreeMap<String, String>) -> String {
    let t = &report.totals;
    let kinds: Vec<String> = t.errors_by_kind.keys().cloned().collect();
    let mut page = String::with_capacity(64 * 1024);
    let verdict = if report.passed {
        ("passed", "PASSED")
    } else {
        ("failed", "FAILED")
    };
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>drill {name}</title><style>{STYLE}</style></head><body>\
         <header><h1>Drill <code>{name}</code> <span class=\"{}\">{}</span></h1><p>{}</p><p class=\"meta\">started {} · {} s at {} req/s over {}</p>\
         <p class=\"meta\">stampgate {} (commit {}, {} build) on {} · config {}</p></header>",
        verdict.0,
        verdict.1,
        esc(&report.description),
        esc(&report.started),
        report.duration_s,
        report.rate,
        report.protocol,
        esc(&report.build.version),
        esc(&report.build.commit),
        esc(&report.build.build),
        esc(&report.build.host),
        esc(report
            .config_fingerprint
            .as_deref()
            .unwrap_or("not known (a proxy the drill did not start)")),
        name = esc(&report.scenario),
    );
    let _ = write!(
        page,
        "<section class=\"cards\"><div><b>{}</b>requests</div><div><b>{}</b>errors</div><div><b>{:.1} ms</b>p50</div><div><b>{:.1} ms</b>p99</div><div><b>{:.1} ms</b>max</div><div><b>{:.0} ms</b>generator lag, max</div></section>",
        t.requests, t.errors, t.latency.p50_ms, t.latency.p99_ms, t.latency.max_ms, t.max_lag_ms
    );
    page.push_str("<h2>Traffic share by region</h2>");
    let mut items: Vec<(String, &str)> = report
        .regions
        .iter()
        .enumerate()
        .map(|(i, r)| (r.clone(), colour(i)))
        .collect();
    items.push(("failed or unlabelled".into(), ERROR_COLOUR));
    page.push_str(&legend(&items));
    page.push_str(&share_chart(report, regions_of));
    let _ = write!(
        page,
        "<p class=\"note\">Each band is a region's share of the requests scheduled in a {} ms bucket, by the <code>X-Server-Location</code> of the answer; shaded spans are faults, lines are timeline steps.</p>",
        report.fine_bucket_ms
    );
    page.push_str("<h2>Latency from the scheduled time</h2>");
    page.push_str(&legend(&[
        ("p50".into(), "#4e79a7"),
        ("p90".into(), "#59a14f"),
        ("p99".into(), "#f28e2b"),
        ("max".into(), "#e15759"),
    ]));
    page.push_str(&latency_chart(report));
    page.push_str("<h2>Errors per second</h2>");
    if kinds.is_empty() {
        page.push_str("<p class=\"note\">No client-visible errors.</p>");
    } else {
        let items: Vec<(String, &str)> = kinds
            .iter()
            .enumerate()
            .map(|(k, kind)| (kind.clone(), colour(k + 3)))
            .collect();
        page.push_str(&legend(&items));
        page.push_str(&error_chart(report, &kinds));
    }
    page.push_str("<h2>Faults</h2><table><tr><th>fault</th><th>target</th><th>at</th><th>detect</th><th>shift</th><th>errors until shift</th><th>recovery</th><th>flaps</th><th>share before</th></tr>");
    for f in &report.faults {
        let _ = write!(
            page,
            "<tr><td><code>{}</code></td><td>{}</td><td>{:.1} s</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.0}%</td></tr>",
            esc(&f.fault),
            esc(&f.target),
            f.at_ms / 1000.0,
            opt_ms(f.detect_ms, "–"),
            opt_ms(f.shift_ms, "never"),
            f.errors_until_shift,
            if f.ended_ms.is_some() {
                opt_ms(f.recovery_ms, "never")
            } else {
                "–".to_owned()
            },
            f.flaps,
            f.share_before * 100.0
        );
    }
    page.push_str("</table><h2>Expectations</h2><table><tr><th></th><th>expectation</th><th>asked</th><th>measured</th></tr>");
    for v in &report.expectations {
        let _ = write!(
            page,
            "<tr class=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            if v.passed { "passed" } else { "failed" },
            if v.passed { "✓" } else { "✗" },
            esc(&v.name),
            esc(&v.expected),
            esc(&v.actual)
        );
    }
    page.push_str(
        "</table><h2>Timeline and proxy events</h2><table><tr><th>at</th><th>what</th></tr>",
    );
    let mut rows: Vec<(f64, String)> = report
        .timeline
        .iter()
        .map(|s| {
            let error = s
                .error
                .as_deref()
                .map(|e| format!(" — <b>failed</b>: {}", esc(e)))
                .unwrap_or_default();
            (
                s.at_ms,
                format!("<b>drill</b>: {} {}{error}", esc(&s.action), esc(&s.target)),
            )
        })
        .collect();
    rows.extend(report.events.iter().map(|e| {
        let (at_ms, e) = (e.at_ms, &e.event);
        let change = match (&e.from, &e.to) {
            (Some(from), Some(to)) => format!(" {} → {}", esc(from), esc(to)),
            _ => String::new(),
        };
        (
            at_ms,
            format!(
                "proxy {}: {}{change} ({})",
                format!("{:?}", e.kind).to_lowercase(),
                esc(e.stamp.as_deref().unwrap_or("")),
                esc(&e.reason)
            ),
        )
    }));
    rows.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (at, what) in rows {
        let _ = write!(
            page,
            "<tr><td>{:.3} s</td><td>{what}</td></tr>",
            at / 1000.0
        );
    }
    page.push_str("</table><footer>Written by <code>stampgate drill</code>. The figures and the per-second series are in <code>report.json</code> beside this file.</footer></body></html>\n");
    page
}

const STYLE: &str = "body{font:14px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:24px auto;max-width:1000px;color:#222;padding:0 12px}\
h1{font-size:22px;margin:0}h2{font-size:16px;margin:28px 0 6px}header p{margin:4px 0}.meta,.note{color:#666;font-size:12px}\
span.passed,span.failed{font-size:13px;padding:2px 8px;border-radius:10px;color:#fff;vertical-align:middle}span.passed{background:#2e7d32}span.failed{background:#c62828}\
.cards{display:flex;gap:10px;margin:16px 0;flex-wrap:wrap}.cards div{flex:1;min-width:120px;background:#f5f6f8;border-radius:8px;padding:10px;color:#555;font-size:12px}.cards b{display:block;font-size:20px;color:#222}\
svg{width:100%;height:auto;display:block}.plot{fill:#fafafa;stroke:#ddd}.grid{stroke:#e6e6e6}.tick{font-size:11px;fill:#777}.label{font-size:11px;fill:#333}\
.marker{stroke:#333;stroke-dasharray:4 3}.fault{fill:#e15759;fill-opacity:.08}\
.legend span{margin-right:14px;font-size:12px}.legend i{display:inline-block;width:10px;height:10px;margin-right:4px;border-radius:2px}\
table{border-collapse:collapse;width:100%;font-size:13px}th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #eee}tr.failed td{color:#c62828}tr.passed td:first-child{color:#2e7d32}\
footer{margin-top:28px;color:#888;font-size:12px}";
