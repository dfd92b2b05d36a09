//! Active health probes: one task per stamp sends the configured request to
//! the stamp's health endpoint on a jittered interval and reports the raw
//! sample (ok, status, round-trip) to the controller. The verdict is not
//! made here: see [`super::state`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Uri, header};
use http_body_util::BodyExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{PoolConfig, StampConfig};
use crate::routing::authority_of;
use crate::signals::ProbeSample;
use crate::signals::Signal;
use crate::upstream::Upstream;
use crate::upstream::body::UpstreamBody;

/// The most of a probe response body read to look for `expect_body`: health
/// bodies are small JSON documents; a huge one must not cost memory.
const MAX_PROBE_BODY: usize = 64 * 1024;

/// Everything needed to probe one stamp, prepared once.
#[derive(Debug, Clone)]
pub struct ProbeTarget {
    /// Stamp name (for the signal).
    pub stamp: Arc<str>,
    /// Full URI of the health endpoint on this stamp.
    pub uri: Uri,
    /// `GET` or `HEAD`.
    pub method: Method,
    /// Headers sent with every probe, `Host` included.
    pub headers: HeaderMap,
    /// Probe time limit.
    pub timeout: Duration,
    /// Accepted status ranges, inclusive.
    pub expect_status: Vec<(u16, u16)>,
    /// Substring the body must contain.
    pub expect_body: Option<String>,
}

impl ProbeTarget {
    /// The probe of `stamp` as `pool` configures it.
    pub fn new(pool: &PoolConfig, stamp: &StampConfig) -> ProbeTarget {
        let probe = &pool.probe;
        let authority = authority_of(stamp);
        let scheme = if probe.https { "https" } else { "http" };
        let uri: Uri = format!("{scheme}://{authority}{}", probe.path)
            .parse()
            .expect("validated config: probe path and stamp address form a URI");
        let mut headers = HeaderMap::new();
        for (name, value) in &probe.headers {
            headers.append(name.clone(), value.clone());
        }
        let host = probe.host.clone().unwrap_or_else(|| authority.to_string());
        if let Ok(host) = HeaderValue::from_str(&host) {
            headers.insert(header::HOST, host);
        }
        headers
            .entry(header::USER_AGENT)
            .or_insert(HeaderValue::from_static("stampgate-probe"));
        ProbeTarget {
            stamp: stamp.name.as_str().into(),
            uri,
            method: probe.method.clone(),
            headers,
            timeout: probe.timeout,
            expect_status: probe.expect_status.clone(),
            expect_body: probe.expect_body.clone(),
        }
    }
}

/// When to probe next.
#[derive(Debug, Clone, Copy)]
pub struct ProbeSchedule {
    /// Interval while the stamp is usable.
    pub interval: Duration,
    /// Interval while it is not (faster, to notice recovery).
    pub unhealthy_interval: Duration,
    /// Interval after a failed probe while the stamp is still usable: the
    /// verdict is pending, and waiting a whole interval for the next sample
    /// would double the detection time.
    pub fast_interval: Duration,
    /// Random spread of each interval, percent; 0 also removes the initial
    /// random offset (tests).
    pub jitter_percent: u32,
}

impl ProbeSchedule {
    /// The schedule of `pool`.
    pub fn of(pool: &PoolConfig) -> ProbeSchedule {
        ProbeSchedule {
            interval: pool.probe.interval,
            unhealthy_interval: pool.probe.unhealthy_interval,
            fast_interval: pool.probe.fast_interval,
            jitter_percent: pool.probe.jitter_percent,
        }
    }

    /// A random start within the jitter share of the first interval: a
    /// fleet started at once does not probe in step, yet a new stamp (at
    /// start or after a reload) is probed almost at once.
    fn initial_offset(&self) -> Duration {
        let spread = f64::from(self.jitter_percent) / 100.0;
        self.interval.mul_f64(spread * fastrand::f64())
    }

    /// The next interval, spread by ± `jitter_percent`: `unhealthy` (the
    /// controller's verdict is in) takes `unhealthy_interval`, otherwise a
    /// `failed` last probe takes `fast_interval` until the verdict settles.
    fn next(&self, unhealthy: bool, failed: bool) -> Duration {
        let base = if unhealthy {
            self.unhealthy_interval
        } else if failed {
            self.fast_interval
        } else {
            self.interval
        };
        if self.jitter_percent == 0 {
            return base;
        }
        let spread = f64::from(self.jitter_percent) / 100.0;
        base.mul_f64(1.0 + spread * (2.0 * fastrand::f64() - 1.0))
    }
}

/// Probe once: send the request, check status and body, measure the RTT.
pub async fn probe_once(upstream: &Upstream, target: &ProbeTarget) -> ProbeSample {
    let start = Instant::now();
    let outcome = tokio::time::timeout(target.timeout, check(upstream, target)).await;
    let rtt = start.elapsed();
    match outcome {
        Ok(Ok(status)) => ProbeSample {
            ok: true,
            rtt,
            status: Some(status),
            detail: format!("status {status}"),
        },
        Ok(Err((status, detail))) => ProbeSample {
            ok: false,
            rtt,
            status,
            detail,
        },
        Err(_) => ProbeSample {
            ok: false,
            rtt,
            status: None,
            detail: format!("timed out after {:?}", target.timeout),
        },
    }
}

/// `Ok(status)` when the stamp passed; `Err((status, why))` otherwise.
async fn check(upstream: &Upstream, target: &ProbeTarget) -> Result<u16, (Option<u16>, String)> {
    let mut req = Request::builder()
        .method(target.method.clone())
        .uri(target.uri.clone())
        .version(upstream.version())
        .body(UpstreamBody::full(Bytes::new()))
        .expect("probe request parts are valid");
    *req.headers_mut() = target.headers.clone();
    let resp = upstream
        .send(&target.stamp, req)
        .await
        .map_err(|e| (None, e.code().to_owned()))?;
    let status = resp.status().as_u16();
    if !target
        .expect_status
        .iter()
        .any(|&(lo, hi)| (lo..=hi).contains(&status))
    {
        return Err((Some(status), format!("status {status}")));
    }
    let Some(needle) = &target.expect_body else {
        return Ok(status);
    };
    let mut body = resp.into_body();
    let mut seen = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| (Some(status), format!("body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            let room = MAX_PROBE_BODY.saturating_sub(seen.len());
            seen.extend_from_slice(&data[..data.len().min(room)]);
            if seen.len() >= MAX_PROBE_BODY {
                break;
            }
        }
    }
    if memchr_str(&seen, needle.as_bytes()) {
        Ok(status)
    } else {
        Err((Some(status), format!("body lacks {needle:?}")))
    }
}

fn memchr_str(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// The probe loop of one stamp, until `cancel`. `fast` is set by the
/// controller while the stamp is unhealthy; after a failed probe of a
/// stamp that is not (yet), the next one follows at `fast_interval`.
pub async fn run(
    upstream: Arc<Upstream>,
    target: ProbeTarget,
    schedule: ProbeSchedule,
    fast: Arc<AtomicBool>,
    signals: mpsc::Sender<Signal>,
    cancel: CancellationToken,
) {
    tokio::select! {
        () = tokio::time::sleep(schedule.initial_offset()) => {}
        () = cancel.cancelled() => return,
    }
    loop {
        let sample = tokio::select! {
            s = probe_once(&upstream, &target) => s,
            () = cancel.cancelled() => return,
        };
        let failed = !sample.ok;
        let signal = Signal::Probe {
            stamp: target.stamp.clone(),
            sample,
        };
        if signals.send(signal).await.is_err() {
            return;
        }
        let wait = schedule.next(fast.load(Ordering::Relaxed), failed);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = cancel.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_its_percent() {
        let s = ProbeSchedule {
            interval: Duration::from_secs(1),
            unhealthy_interval: Duration::from_millis(500),
            fast_interval: Duration::from_millis(250),
            jitter_percent: 10,
        };
        for _ in 0..1000 {
            let d = s.next(false, false);
            assert!(
                d >= Duration::from_millis(900) && d <= Duration::from_millis(1100),
                "{d:?}"
            );
            let f = s.next(true, false);
            assert!(
                f >= Duration::from_millis(450) && f <= Duration::from_millis(550),
                "{f:?}"
            );
            assert!(s.initial_offset() <= Duration::from_millis(100));
        }
    }

    #[test]
    fn zero_jitter_is_exact() {
        let s = ProbeSchedule {
            interval: Duration::from_secs(1),
            unhealthy_interval: Duration::from_millis(500),
            fast_interval: Duration::from_millis(250),
            jitter_percent: 0,
        };
        assert_eq!(s.next(false, false), Duration::from_secs(1));
        assert_eq!(s.next(true, false), Duration::from_millis(500));
        assert_eq!(s.next(true, true), Duration::from_millis(500));
        assert_eq!(s.initial_offset(), Duration::ZERO);
    }

    #[test]
    fn a_failed_probe_is_followed_fast_until_the_verdict() {
        let s = ProbeSchedule {
            interval: Duration::from_secs(1),
            unhealthy_interval: Duration::from_millis(500),
            fast_interval: Duration::from_millis(250),
            jitter_percent: 0,
        };
        assert_eq!(s.next(false, true), Duration::from_millis(250));
        assert_eq!(
            s.next(true, true),
            Duration::from_millis(500),
            "once unhealthy, the verdict is in"
        );
    }

    #[test]
    fn body_search() {
        assert!(memchr_str(b"{\"status\":\"Healthy\"}", b"Healthy"));
        assert!(!memchr_str(b"{\"status\":\"Unhealthy\"}", b"\"Healthy"));
    }
}
