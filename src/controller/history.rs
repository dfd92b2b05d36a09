//! The dashboard's memory, kept on the server: one sample per second of
//! every stamp's observed traffic share, request and error rate and probe
//! round trip, with the same per region, for the last ten minutes. A page
//! opened in the middle of an incident draws the minutes before it from
//! `GET /admin/history` instead of starting empty.
//!
//! Locking: one `std::sync::Mutex` around the ring. The controller takes
//! it once a second to push; the admin API takes it to copy the ring out.
//! Neither holds it across an await, and the request path never touches it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use serde_json::{Value, json};

/// Ten minutes at one sample a second: long enough to show how an
/// incident began, small enough (a few hundred KiB for dozens of stamps)
/// to keep in memory and send whole.
pub const HISTORY_SAMPLES: usize = 600;

/// One stamp's figures in one sample.
#[derive(Debug, Clone)]
pub struct StampSample {
    /// Stamp name.
    pub stamp: String,
    /// Its region.
    pub region: String,
    /// Requests per second over the last second.
    pub rps: f64,
    /// Failed requests (gateway failures and 5xx) per second.
    pub eps: f64,
    /// Smoothed probe round trip, when probed.
    pub rtt_ms: Option<f64>,
}

/// The bounded ring of per-second samples.
#[derive(Debug, Default)]
pub struct History {
    ring: Mutex<VecDeque<Value>>,
}

impl History {
    /// Add the sample taken at `unix_ms` (the oldest goes beyond
    /// [`HISTORY_SAMPLES`]).
    pub fn push(&self, unix_ms: u64, stamps: &[StampSample]) {
        let sample = sample(unix_ms, stamps);
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        if ring.len() == HISTORY_SAMPLES {
            ring.pop_front();
        }
        ring.push_back(sample);
    }

    /// The ring, oldest first, as `GET /admin/history` answers it.
    pub fn snapshot(&self) -> Value {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        json!({
            "interval_s": 1,
            "capacity": HISTORY_SAMPLES,
            "share": "observed: share of the requests of the stamp's pool in that second",
            "samples": ring.iter().collect::<Vec<_>>(),
        })
    }
}

fn round(x: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (x * f).round() / f
}

fn sample(unix_ms: u64, stamps: &[StampSample]) -> Value {
    let total: f64 = stamps.iter().map(|s| s.rps).sum();
    let share = |rps: f64| if total > 0.0 { rps / total } else { 0.0 };
    let error_rate = |rps: f64, eps: f64| if rps > 0.0 { (eps / rps).min(1.0) } else { 0.0 };
    let mut per_stamp = serde_json::Map::new();
    // Region: summed rates; the round trip is the mean of its probed stamps.
    let mut regions: BTreeMap<&str, (f64, f64, f64, u32)> = BTreeMap::new();
    for s in stamps {
        per_stamp.insert(
            s.stamp.clone(),
            json!({
                "region": s.region,
                "share": round(share(s.rps), 4),
                "rps": round(s.rps, 1),
                "error_rate": round(error_rate(s.rps, s.eps), 4),
                "rtt_ms": s.rtt_ms.map(|r| round(r, 1)),
            }),
        );
        let r = regions.entry(&s.region).or_default();
        r.0 += s.rps;
        r.1 += s.eps;
        if let Some(rtt) = s.rtt_ms {
            r.2 += rtt;
            r.3 += 1;
        }
    }
    let per_region: serde_json::Map<String, Value> = regions
        .into_iter()
        .map(|(region, (rps, eps, rtt, n))| {
            let v = json!({
                "share": round(share(rps), 4),
                "rps": round(rps, 1),
                "error_rate": round(error_rate(rps, eps), 4),
                "rtt_ms": (n > 0).then(|| round(rtt / f64::from(n), 1)),
            });
            (region.to_owned(), v)
        })
        .collect();
    json!({ "t": unix_ms, "stamps": per_stamp, "regions": per_region })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(stamp: &str, region: &str, rps: f64, eps: f64, rtt: Option<f64>) -> StampSample {
        StampSample {
            stamp: stamp.into(),
            region: region.into(),
            rps,
            eps,
            rtt_ms: rtt,
        }
    }

    #[test]
    fn shares_rates_and_regions() {
        let h = History::default();
        h.push(
            1000,
            &[
                s("a", "eu", 30.0, 3.0, Some(10.0)),
                s("b", "eu", 10.0, 0.0, Some(20.0)),
                s("c", "us", 60.0, 0.0, None),
            ],
        );
        let v = h.snapshot();
        let x = &v["samples"][0];
        assert_eq!(x["t"], 1000);
        assert_eq!(x["stamps"]["a"]["share"], 0.3);
        assert_eq!(x["stamps"]["a"]["error_rate"], 0.1);
        assert_eq!(x["regions"]["eu"]["share"], 0.4);
        assert_eq!(x["regions"]["eu"]["error_rate"], 0.075);
        assert_eq!(x["regions"]["eu"]["rtt_ms"], 15.0);
        assert_eq!(x["regions"]["us"]["rtt_ms"], Value::Null);
    }

    #[test]
    fn the_ring_keeps_the_last_ten_minutes() {
        let h = History::default();
        for t in 0..(HISTORY_SAMPLES as u64 + 5) {
            h.push(t, &[]);
        }
        let v = h.snapshot();
        let samples = v["samples"].as_array().unwrap();
        assert_eq!(samples.len(), HISTORY_SAMPLES);
        assert_eq!(samples[0]["t"], 5, "the oldest went first");
    }
}
