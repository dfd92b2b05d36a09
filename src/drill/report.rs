//! The drill's results: the figures and series gathered into one
//! [`Report`] (written as `report.json`), the expectations checked against
//! it, and the console summary.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::measure::{Counts, FINE_BUCKET, FaultFigures, Fine, LATE_AFTER, SeenEvent, ms};
use super::scenario::{Protocol, Scenario};
use super::timeline::Applied;

/// Everything one drill measured.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The scenario's name.
    pub scenario: String,
    /// Which stampgate ran the drill, and where.
    pub build: BuildInfo,
    /// `sha256:HEX` of the proxy config text the drill started the proxy
    /// with, before the stamps' addresses were filled in, so that two
    /// reports can be told to have run the same config; `None` when the
    /// drill drove a proxy it did not start.
    pub config_fingerprint: Option<String>,
    /// What it rehearses.
    pub description: String,
    /// When the load started (RFC 3339).
    pub started: String,
    /// Length of the load, seconds.
    pub duration_s: f64,
    /// Requests per second asked for.
    pub rate: u32,
    /// HTTP version of the load.
    pub protocol: Protocol,
    /// The regions, in scenario order (the charts' stacking order).
    pub regions: Vec<String>,
    /// Whole-run figures.
    pub totals: Totals,
    /// Per fault (or drain).
    pub faults: Vec<FaultFigures>,
    /// The timeline as applied.
    pub timeline: Vec<Applied>,
    /// What the proxy reported during the run.
    pub events: Vec<SeenEvent>,
    /// The expectations, checked.
    pub expectations: Vec<Verdict>,
    /// Whether every expectation holds.
    pub passed: bool,
    /// Per second, by scheduled time.
    pub seconds: Vec<SecondRow>,
    /// Width of the `fine` buckets, milliseconds.
    pub fine_bucket_ms: u64,
    /// Per fine bucket: what the shift and recovery are computed from.
    pub fine: Vec<Fine>,
}

/// The stampgate binary that ran a drill, and the machine: a report
/// compared with another (or kept by CI) must say which code produced it.
#[derive(Debug, Clone, Serialize)]
pub struct BuildInfo {
    /// Crate version.
    pub version: String,
    /// Short git commit, or `unknown`.
    pub commit: String,
    /// `pgo` or `plain`.
    pub build: String,
    /// Host name of the machine that ran the drill.
    pub host: String,
}

impl BuildInfo {
    /// This binary, on this machine.
    pub fn current() -> BuildInfo {
        use crate::build_info;
        BuildInfo {
            version: build_info::VERSION.to_owned(),
            commit: build_info::COMMIT.to_owned(),
            build: build_info::BUILD_KIND.to_owned(),
            host: host_name(),
        }
    }
}

/// The kernel's host name (no libc call: the crate forbids `unsafe`).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Whole-run figures.
#[derive(Debug, Serialize)]
pub struct Totals {
    /// Requests scheduled.
    pub requests: u64,
    /// Of which failed, client-visible.
    pub errors: u64,
    /// Failures by kind.
    pub errors_by_kind: BTreeMap<String, u64>,
    /// Failures of idempotent requests (GET, HEAD, OPTIONS, PUT, DELETE).
    pub idempotent_errors: u64,
    /// Failures by request of the mix, then by kind.
    pub errors_by_request: BTreeMap<String, BTreeMap<String, u64>>,
    /// Answers by stamp.
    pub by_stamp: BTreeMap<String, u64>,
    /// Answers by region.
    pub by_region: BTreeMap<String, u64>,
    /// Latency from the scheduled time.
    #[serde(flatten)]
    pub latency: Latency,
    /// The generator's longest lag behind its schedule.
    pub max_lag_ms: f64,
    /// Requests sent more than 10 ms late: when many, the generator (or
    /// the machine) could not keep the rate.
    pub late_requests: u64,
}

/// One second of the series.
#[derive(Debug, Serialize)]
pub struct SecondRow {
    /// Second of the run, from 0.
    pub t: u64,
    /// Requests scheduled in it.
    pub requests: u64,
    /// Failures by kind.
    pub errors: BTreeMap<String, u64>,
    /// Answers by stamp.
    pub by_stamp: BTreeMap<String, u64>,
    /// Answers by region.
    pub by_region: BTreeMap<String, u64>,
    /// Latency from the scheduled time.
    #[serde(flatten)]
    pub latency: Latency,
    /// The generator's longest lag.
    pub max_lag_ms: f64,
    /// Requests sent late.
    pub late: u64,
}

/// One expectation, checked.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// `max_errors`, `shift_within`, ...
    pub name: String,
    /// What was asked, in words.
    pub expected: String,
    /// What was measured.
    pub actual: String,
    /// Whether it holds.
    pub passed: bool,
}

/// Latency percentiles, milliseconds (flattened into their row in JSON).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Latency {
    /// Median.
    pub p50_ms: f64,
    /// p90.
    pub p90_ms: f64,
    /// p99.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
}

impl Latency {
    /// The percentiles of a histogram of microseconds (zeros when empty).
    fn of(h: &Histogram<u64>) -> Latency {
        let at = |q: f64| {
            if h.is_empty() {
                0.0
            } else {
                h.value_at_quantile(q) as f64 / 1000.0
            }
        };
        Latency {
            p50_ms: at(0.5),
            p90_ms: at(0.9),
            p99_ms: at(0.99),
            max_ms: if h.is_empty() {
                0.0
            } else {
                h.max() as f64 / 1000.0
            },
        }
    }
}

fn sum_maps<'a>(maps: impl Iterator<Item = &'a BTreeMap<String, u64>>) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for m in maps {
        for (k, v) in m {
            *out.entry(k.clone()).or_default() += v;
        }
    }
    out
}

fn show_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "never".to_owned(), |v| format!("{v:.0} ms"))
}

impl Report {
    /// Gathers the figures and checks the expectations.
    pub fn new(
        scenario: &Scenario,
        started: String,
        counts: &Counts,
        faults: Vec<FaultFigures>,
        timeline: Vec<Applied>,
        events: Vec<SeenEvent>,
    ) -> Report {
        let seconds: Vec<SecondRow> = counts
            .seconds
            .iter()
            .enumerate()
            .map(|(t, s)| SecondRow {
                t: t as u64,
                requests: s.requests,
                errors: s.errors.clone(),
                by_stamp: s.by_stamp.clone(),
                by_region: s.by_region.clone(),
                latency: Latency::of(&s.latency),
                max_lag_ms: ms(s.max_lag),
                late: s.late,
            })
            .collect();
        let errors_by_kind = sum_maps(seconds.iter().map(|s| &s.errors));
        let totals = Totals {
            requests: seconds.iter().map(|s| s.requests).sum(),
            errors: errors_by_kind.values().sum(),
            errors_by_kind,
            idempotent_errors: counts.idempotent_errors,
            errors_by_request: counts.errors_by_request.clone(),
            by_stamp: sum_maps(seconds.iter().map(|s| &s.by_stamp)),
            by_region: sum_maps(seconds.iter().map(|s| &s.by_region)),
            latency: Latency::of(&counts.latency),
            max_lag_ms: counts
                .seconds
                .iter()
                .map(|s| ms(s.max_lag))
                .fold(0.0, f64::max),
            late_requests: seconds.iter().map(|s| s.late).sum(),
        };
        let mut report = Report {
            scenario: scenario.name.clone(),
            build: BuildInfo::current(),
            config_fingerprint: None,
            description: scenario.description.clone(),
            started,
            duration_s: scenario.duration.as_secs_f64(),
            rate: scenario.load.rate,
            protocol: scenario.load.protocol,
            regions: scenario.regions(),
            totals,
            faults,
            timeline,
            events,
            expectations: Vec::new(),
            passed: false,
            seconds,
            fine_bucket_ms: FINE_BUCKET.as_millis() as u64,
            fine: counts.fine.clone(),
        };
        report.expectations = report.check(scenario);
        report.passed = report.expectations.iter().all(|v| v.passed);
        report
    }

    fn check(&self, scenario: &Scenario) -> Vec<Verdict> {
        let expect = &scenario.expect;
        let mut out = Vec::new();
        let failed_steps: Vec<&Applied> =
            self.timeline.iter().filter(|a| a.error.is_some()).collect();
        out.push(Verdict {
            name: "timeline".into(),
            expected: "every step applied".into(),
            actual: match failed_steps.first() {
                None => format!("{} applied", self.timeline.len()),
                Some(a) => format!(
                    "{} failed, first: {} {}: {}",
                    failed_steps.len(),
                    a.action,
                    a.target,
                    a.error.as_deref().unwrap_or_default()
                ),
            },
            passed: failed_steps.is_empty(),
        });
        if let Some(max) = expect.max_errors {
            out.push(Verdict {
                name: "max_errors".into(),
                expected: format!("at most {max} errors"),
                actual: format!("{} errors", self.totals.errors),
                passed: self.totals.errors <= max,
            });
        }
        if let Some(max) = expect.max_idempotent_errors {
            out.push(Verdict {
                name: "max_idempotent_errors".into(),
                expected: format!("at most {max} errors of idempotent requests"),
                actual: format!("{} errors", self.totals.idempotent_errors),
                passed: self.totals.idempotent_errors <= max,
            });
        }
        if let Some(max) = expect.max_p99 {
            out.push(Verdict {
                name: "max_p99".into(),
                expected: format!("p99 at most {:.0} ms", ms(max)),
                actual: format!("p99 {:.1} ms", self.totals.latency.p99_ms),
                passed: self.totals.latency.p99_ms <= ms(max),
            });
        }
        for f in &self.faults {
            if let Some(within) = expect.shift_within {
                out.push(Verdict {
                    name: "shift_within".into(),
                    expected: format!(
                        "{} on {}: shifted within {:.0} ms",
                        f.fault,
                        f.target,
                        ms(within)
                    ),
                    actual: format!("shift {}", show_ms(f.shift_ms)),
                    passed: f.shift_ms.is_some_and(|s| s <= ms(within)),
                });
            }
            if let (Some(within), Some(_)) = (expect.recover_within, f.ended_ms) {
                out.push(Verdict {
                    name: "recover_within".into(),
                    expected: format!(
                        "{} on {}: traffic back within {:.0} ms",
                        f.fault,
                        f.target,
                        ms(within)
                    ),
                    actual: format!("recovery {}", show_ms(f.recovery_ms)),
                    passed: f.recovery_ms.is_some_and(|r| r <= ms(within)),
                });
            }
        }
        out
    }

    /// The console summary: totals, one line per fault, the verdicts.
    pub fn summary(&self) -> String {
        let t = &self.totals;
        let mut out = String::new();
        let _ = writeln!(out, "\ndrill {}: {}", self.scenario, self.description);
        let _ = writeln!(
            out,
            "  {} requests in {:.0}s at {} req/s ({}), {} errors{}",
            t.requests,
            self.duration_s,
            self.rate,
            self.protocol,
            t.errors,
            if t.errors_by_kind.is_empty() {
                String::new()
            } else {
                let kinds: Vec<String> = t
                    .errors_by_kind
                    .iter()
                    .map(|(k, n)| format!("{k}: {n}"))
                    .collect();
                format!(" ({})", kinds.join(", "))
            }
        );
        for (request, kinds) in &t.errors_by_request {
            let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{k}: {n}")).collect();
            let _ = writeln!(out, "    {request}: {}", kinds.join(", "));
        }
        let _ = writeln!(
            out,
            "  latency from schedule: p50 {:.1} ms  p90 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
            t.latency.p50_ms, t.latency.p90_ms, t.latency.p99_ms, t.latency.max_ms
        );
        let total_answers: u64 = t.by_region.values().sum();
        let shares: Vec<String> = self
            .regions
            .iter()
            .map(|r| {
                let n = t.by_region.get(r).copied().unwrap_or(0);
                format!("{r} {:.0}%", 100.0 * n as f64 / total_answers.max(1) as f64)
            })
            .collect();
        let _ = writeln!(out, "  answers by region: {}", shares.join(", "));
        let late_share = t.late_requests as f64 / t.requests.max(1) as f64;
        if late_share > 0.01 {
            let _ = writeln!(
                out,
                "  WARNING: the load generator fell behind: {} requests ({:.1}%) sent over {:.0} ms late (max lag {:.0} ms); latencies then include the machine's own queueing",
                t.late_requests,
                late_share * 100.0,
                ms(LATE_AFTER),
                t.max_lag_ms
            );
        }
        if !self.faults.is_empty() {
            let _ = writeln!(
                out,
                "\n  {:<34} {:<22} {:>8} {:>9} {:>8} {:>6} {:>10} {:>6}",
                "fault", "target", "at", "detect", "shift", "errors", "recovery", "flaps"
            );
            for f in &self.faults {
                let mut label = f.fault.clone();
                if label.chars().count() > 34 {
                    label = label.chars().take(33).collect::<String>() + "…";
                }
                let _ = writeln!(
                    out,
                    "  {:<34} {:<22} {:>7.1}s {:>9} {:>8} {:>6} {:>10} {:>6}",
                    label,
                    f.target,
                    f.at_ms / 1000.0,
                    f.detect_ms
                        .map_or_else(|| "-".to_owned(), |v| format!("{v:.0} ms")),
                    show_ms(f.shift_ms),
                    f.errors_until_shift,
                    match (f.ended_ms, f.recovery_ms) {
                        (None, _) => "-".to_owned(),
                        (Some(_), r) => show_ms(r),
                    },
                    f.flaps
                );
            }
        }
        let _ = writeln!(out, "\n  expectations:");
        for v in &self.expectations {
            let mark = if v.passed { "ok  " } else { "FAIL" };
            let _ = writeln!(
                out,
                "    {mark} {:<22} {} (measured: {})",
                v.name, v.expected, v.actual
            );
        }
        let _ = writeln!(out, "\n  {}", if self.passed { "PASSED" } else { "FAILED" });
        out
    }

    /// The failed expectations, one line each.
    pub fn failures(&self) -> Vec<String> {
        self.expectations
            .iter()
            .filter(|v| !v.passed)
            .map(|v| format!("{}: {} (measured: {})", v.name, v.expected, v.actual))
            .collect()
    }
}
