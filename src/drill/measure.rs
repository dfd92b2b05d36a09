//! Measurements of a drill: one task owns every counter and histogram and
//! takes the load's [`Sample`]s from a channel (no locks on the load's
//! path); afterwards the pure functions here turn the buckets and the
//! proxy's events into per-fault figures.
//!
//! Requests are bucketed by their *scheduled* time, per second for the
//! report's series and per [`FINE_BUCKET`] for the shift, so that a
//! sub-second shift is visible.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};

use super::load::Sample;
use crate::controller::events::{Event, EventKind};

/// Resolution of the shift and recovery figures: fine enough to see a
/// sub-second shift, coarse enough that a bucket holds 100 requests at
/// 1,000 req/s (so "under 1%" means "none").
pub const FINE_BUCKET: Duration = Duration::from_millis(100);

/// The share of a bucket's requests that may still be answered by the
/// faulty stamps for the traffic to count as shifted (the issue's 1%); at
/// least this share answered by them again means traffic is back.
pub const SHIFTED_SHARE: f64 = 0.01;

/// Shares are judged over this many [`FINE_BUCKET`]s (one second): a
/// latency outlier keeps a trickle of about 0.25 % of the requests, which
/// in one 100 ms bucket at 1,000 req/s is one request or none, so a single
/// bucket would read the trickle as traffic that never left (or came back).
pub const SHARE_WINDOW: usize = 10;

/// A request handed to the client later than this after its due time
/// counts as late: the generator could not keep the rate then.
pub const LATE_AFTER: Duration = Duration::from_millis(10);

/// Latencies are recorded in microseconds up to this; longer ones saturate
/// (the load's timeout is far below).
const HISTOGRAM_MAX_US: u64 = 3_600_000_000;

/// How often the progress view is refreshed.
const LIVE_EVERY: Duration = Duration::from_millis(250);

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HISTOGRAM_MAX_US, 3).expect("constant bounds are valid")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Milliseconds, for reports.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One second of the run.
#[derive(Debug)]
pub struct Second {
    /// Requests scheduled in it.
    pub requests: u64,
    /// Errors by kind (`"503"`, `"transport"`, `"timeout"`, `"overload"`).
    pub errors: BTreeMap<String, u64>,
    /// Answers by stamp (`X-Server-Name`), errors included.
    pub by_stamp: BTreeMap<String, u64>,
    /// Answers by region (`X-Server-Location`).
    pub by_region: BTreeMap<String, u64>,
    /// Latency from the scheduled time, microseconds.
    pub latency: Histogram<u64>,
    /// The longest generator lag.
    pub max_lag: Duration,
    /// Requests sent later than [`LATE_AFTER`].
    pub late: u64,
}

impl Second {
    fn new() -> Second {
        Second {
            requests: 0,
            errors: BTreeMap::new(),
            by_stamp: BTreeMap::new(),
            by_region: BTreeMap::new(),
            latency: histogram(),
            max_lag: Duration::ZERO,
            late: 0,
        }
    }
}

/// One [`FINE_BUCKET`] of the run.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Fine {
    /// Requests scheduled in it.
    pub requests: u64,
    /// Of which failed.
    pub errors: u64,
    /// Answers by stamp.
    pub by_stamp: BTreeMap<String, u64>,
    /// API requests each stamp *received* in this bucket (read from the
    /// spawned stamps' counters), answered or not; `None` when the drill
    /// cannot read them (existing stamps). A hung stamp answers nothing,
    /// so counting answers would read it as shifted at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub received_by: Option<BTreeMap<String, u64>>,
}

/// Everything counted, once the load is over.
#[derive(Debug)]
pub struct Counts {
    /// Per second, by scheduled time.
    pub seconds: Vec<Second>,
    /// Per [`FINE_BUCKET`], by scheduled time.
    pub fine: Vec<Fine>,
    /// Latency of the whole run, microseconds.
    pub latency: Histogram<u64>,
    /// Errors by request of the mix (`POST /path`), then by kind: a POST
    /// cannot be retried, so where errors fall says whether they were
    /// avoidable.
    pub errors_by_request: BTreeMap<String, BTreeMap<String, u64>>,
    /// Errors of idempotent requests (GET, HEAD, OPTIONS, PUT, DELETE):
    /// those the proxy may retry, so those the product promises to hide.
    pub idempotent_errors: u64,
}

/// What the progress line shows.
#[derive(Debug, Clone, Default)]
pub struct Live {
    /// Requests answered (or failed) so far.
    pub done: u64,
    /// Errors so far.
    pub errors: u64,
    /// Completions per second over the last refresh.
    pub rate: f64,
    /// Region shares of the answers since the last refresh.
    pub shares: BTreeMap<String, f64>,
    /// The longest generator lag since the last refresh.
    pub lag: Duration,
}

/// Takes samples until every sender is gone, publishing a [`Live`] view
/// now and then, and returns the counts.
pub async fn collect(
    mut samples: mpsc::UnboundedReceiver<Sample>,
    live: watch::Sender<Live>,
) -> Counts {
    let mut counts = Counts::new();
    let mut view = Live::default();
    let mut recent: BTreeMap<String, u64> = BTreeMap::new();
    let mut recent_done = 0u64;
    let mut recent_lag = Duration::ZERO;
    let mut tick = tokio::time::interval(LIVE_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut last = Instant::now();
    loop {
        tokio::select! {
            sample = samples.recv() => {
                let Some(sample) = sample else { break };
                recent_done += 1;
                recent_lag = recent_lag.max(sample.lag);
                if let Some(region) = &sample.region {
                    *recent.entry(region.clone()).or_default() += 1;
                }
                view.done += 1;
                view.errors += u64::from(sample.outcome.is_error());
                counts.add(sample);
            }
            _ = tick.tick() => {
                let elapsed = last.elapsed().as_secs_f64();
                last = Instant::now();
                let answered: u64 = recent.values().sum();
                view.shares = recent
                    .iter()
                    .map(|(r, n)| (r.clone(), *n as f64 / answered.max(1) as f64))
                    .collect();
                view.rate = if elapsed > 0.0 { recent_done as f64 / elapsed } else { 0.0 };
                view.lag = recent_lag;
                recent.clear();
                recent_done = 0;
                recent_lag = Duration::ZERO;
                live.send_replace(view.clone());
            }
        }
    }
    counts
}

impl Default for Counts {
    fn default() -> Counts {
        Counts::new()
    }
}

impl Counts {
    /// Nothing counted yet.
    pub fn new() -> Counts {
        Counts {
            seconds: Vec::new(),
            fine: Vec::new(),
            latency: histogram(),
            errors_by_request: BTreeMap::new(),
            idempotent_errors: 0,
        }
    }

    /// Counts one sample in its second and fine bucket.
    pub fn add(&mut self, sample: Sample) {
        let second = sample.scheduled.as_secs() as usize;
        let fine = (sample.scheduled.as_nanos() / FINE_BUCKET.as_nanos()) as usize;
        while self.seconds.len() <= second {
            self.seconds.push(Second::new());
        }
        if self.fine.len() <= fine {
            self.fine.resize_with(fine + 1, Fine::default);
        }
        let latency = micros(sample.latency).max(1);
        self.latency.saturating_record(latency);
        let s = &mut self.seconds[second];
        let f = &mut self.fine[fine];
        s.requests += 1;
        f.requests += 1;
        s.latency.saturating_record(latency);
        s.max_lag = s.max_lag.max(sample.lag);
        s.late += u64::from(sample.lag > LATE_AFTER);
        if sample.outcome.is_error() {
            *s.errors.entry(sample.outcome.kind()).or_default() += 1;
            f.errors += 1;
            let method = sample.request.split(' ').next().unwrap_or_default();
            let idempotent = ["GET", "HEAD", "OPTIONS", "PUT", "DELETE"].contains(&method);
            self.idempotent_errors += u64::from(idempotent);
            let by_kind = self
                .errors_by_request
                .entry(sample.request.to_string())
                .or_default();
            *by_kind.entry(sample.outcome.kind()).or_default() += 1;
        }
        if let Some(stamp) = sample.stamp {
            *f.by_stamp.entry(stamp.clone()).or_default() += 1;
            *s.by_stamp.entry(stamp).or_default() += 1;
        }
        if let Some(region) = sample.region {
            *s.by_region.entry(region).or_default() += 1;
        }
    }

    /// Pads the series to `duration` so that quiet seconds show as zeros.
    pub fn pad_to(&mut self, duration: Duration) {
        let seconds = duration.as_secs_f64().ceil() as usize;
        while self.seconds.len() < seconds {
            self.seconds.push(Second::new());
        }
        let fine = (duration.as_nanos().div_ceil(FINE_BUCKET.as_nanos())) as usize;
        if self.fine.len() < fine {
            self.fine.resize_with(fine, Fine::default);
        }
    }
}

/// Reads the spawned stamps' received-request counters at every
/// [`FINE_BUCKET`] boundary from `start` for `duration`, and returns each
/// bucket's increase per stamp. Empty when `read` has nothing (existing
/// stamps, whose counters the drill cannot read in process).
pub async fn sample_received(
    read: impl Fn() -> Option<BTreeMap<String, u64>>,
    start: Instant,
    duration: Duration,
) -> Vec<BTreeMap<String, u64>> {
    let buckets = duration.as_nanos().div_ceil(FINE_BUCKET.as_nanos()) as usize;
    let mut tick = tokio::time::interval_at(start, FINE_BUCKET);
    let mut readings = Vec::with_capacity(buckets + 1);
    for _ in 0..=buckets {
        tick.tick().await;
        match read() {
            Some(r) => readings.push(r),
            None => return Vec::new(),
        }
    }
    readings
        .windows(2)
        .map(|w| {
            w[1].iter()
                .map(|(s, n)| (s.clone(), n - w[0].get(s).copied().unwrap_or(0)))
                .collect()
        })
        .collect()
}

impl Counts {
    /// Attach the stamps' received counts (from [`sample_received`]).
    pub fn set_received(&mut self, received: Vec<BTreeMap<String, u64>>) {
        if self.fine.len() < received.len() {
            self.fine.resize_with(received.len(), Fine::default);
        }
        for (bucket, r) in self.fine.iter_mut().zip(received) {
            bucket.received_by = Some(r);
        }
    }
}

/// A health transition or operator action the proxy reported, timed by
/// the drill's clock when it arrived.
#[derive(Debug, Clone, Serialize)]
pub struct SeenEvent {
    /// From the start of the load (negative: before it).
    pub at_ms: f64,
    /// The event as the proxy logged it.
    #[serde(flatten)]
    pub event: Event,
}

/// A fault (or drain) and how long it lasted.
#[derive(Debug, Clone)]
pub struct Episode {
    /// Its label (`fault {"down":true}`, `drain`).
    pub label: String,
    /// What it targeted (`region westeurope`).
    pub target: String,
    /// The stamps it covers.
    pub stamps: Vec<String>,
    /// When it began, from the start of the load.
    pub start: Duration,
    /// When the matching clear or enable came; `None`: it lasted to the end.
    pub end: Option<Duration>,
    /// A drain is the operator's word, so there is nothing to detect.
    pub detectable: bool,
}

/// The figures of one episode.
#[derive(Debug, Clone, Serialize)]
pub struct FaultFigures {
    /// The episode's label.
    pub fault: String,
    /// Its target.
    pub target: String,
    /// From the start of the load.
    pub at_ms: f64,
    /// When it ended; `None`: at the end of the run.
    pub ended_ms: Option<f64>,
    /// Fault until the first health event for one of its stamps.
    pub detect_ms: Option<f64>,
    /// Fault until the start of the first bucket from which every bucket up
    /// to the end of the fault (but the last, whose requests may be sent
    /// after it) has under 1% of its requests answered by the faulty
    /// stamps; `None`: never within the fault.
    pub shift_ms: Option<f64>,
    /// Requests scheduled between the fault and the shift (the end of the
    /// fault if it never shifted) that failed.
    pub errors_until_shift: u64,
    /// End of the fault until the first bucket with at least 1% of its
    /// requests answered by the faulty stamps again; `None`: never.
    pub recovery_ms: Option<f64>,
    /// Falls of its stamps after each one's first fall in the run (counted
    /// by the module's `flaps`): 0 for a clean outage and recovery.
    pub flaps: u64,
    /// The faulty stamps' share of the answers in the second before the
    /// fault: a check that they had traffic to lose.
    pub share_before: f64,
}

/// Flaps: each time a stamp falls again after its first fall in the run.
/// One outage and its recovery is no flap; down, up, down is one. A fall
/// is a move to `unhealthy`, or from `healthy` to `degraded`; a first
/// verdict (from `unknown`) is not a fall.
fn flaps<'a>(events: impl Iterator<Item = &'a SeenEvent>) -> u64 {
    let mut falls: std::collections::BTreeMap<&str, u64> = Default::default();
    for e in events {
        let (from, to) = (e.event.from.as_deref(), e.event.to.as_deref());
        let fall = from != Some("unknown")
            && (to == Some("unhealthy") || (from == Some("healthy") && to == Some("degraded")));
        if let (true, Some(stamp)) = (fall, e.event.stamp.as_deref()) {
            *falls.entry(stamp).or_default() += 1;
        }
    }
    falls.values().map(|n| n.saturating_sub(1)).sum()
}

fn bucket_ceil(t: Duration) -> usize {
    t.as_nanos().div_ceil(FINE_BUCKET.as_nanos()) as usize
}

fn bucket_start(i: usize) -> Duration {
    FINE_BUCKET * i as u32
}

/// Requests that reached `stamps` in `bucket`: received, when the stamps'
/// counters were read, else answered.
fn reached(bucket: &Fine, stamps: &[String]) -> u64 {
    let counts = bucket.received_by.as_ref().unwrap_or(&bucket.by_stamp);
    stamps
        .iter()
        .map(|s| counts.get(s).copied().unwrap_or(0))
        .sum()
}

/// Under [`SHIFTED_SHARE`] of the requests of `buckets` reached `stamps`.
fn shifted(buckets: &[Fine], stamps: &[String]) -> bool {
    let requests: u64 = buckets.iter().map(|b| b.requests).sum();
    let reached: u64 = buckets.iter().map(|b| reached(b, stamps)).sum();
    requests == 0 || (reached as f64) < SHIFTED_SHARE * requests as f64
}

/// The figures of `episode` from the fine buckets and the events.
pub fn figures(episode: &Episode, fine: &[Fine], events: &[SeenEvent]) -> FaultFigures {
    let first = bucket_ceil(episode.start).min(fine.len());
    // The bucket just before the end is left out: a request scheduled
    // there may be sent after the clear (or enable) and rightly land on the
    // recovered stamp.
    let end = episode
        .end
        .map_or(fine.len(), |e| {
            ((e.as_nanos() / FINE_BUCKET.as_nanos()) as usize).saturating_sub(1)
        })
        .clamp(first, fine.len());
    let window = &fine[first..end];
    // Judged on the second from each bucket on; in the fault's last
    // second, on that whole second: a window cut short by the fault's end
    // would judge a single trickle request (a latency outlier's 0.25 %)
    // against a tenth of a second's requests and call it 1 %.
    let shifted_from = |k: usize| {
        let from = k.min(window.len().saturating_sub(SHARE_WINDOW));
        let upto = (from + SHARE_WINDOW).min(window.len());
        shifted(&window[from..upto], &episode.stamps)
    };
    let shift_bucket = match (0..window.len()).rposition(|k| !shifted_from(k)) {
        None if window.is_empty() => None,
        None => Some(first),
        Some(last) if first + last + 1 == end => None,
        Some(last) => Some(first + last + 1),
    };
    let since_start = |d: Duration| ms(d.saturating_sub(episode.start));
    let shift_ms = shift_bucket.map(|b| since_start(bucket_start(b)));
    let errors_until_shift = fine[first..shift_bucket.unwrap_or(end)]
        .iter()
        .map(|b| b.errors)
        .sum();
    let recovery_ms = episode.end.and_then(|e| {
        let from = bucket_ceil(e).min(fine.len());
        // Judged on the second up to each bucket (after the end): the
        // first bucket whose second brings the stamps 1 % again.
        let back = (from..fine.len()).position(|b| {
            let second = &fine[(b + 1).saturating_sub(SHARE_WINDOW)..=b];
            fine[b].requests > 0 && !shifted(second, &episode.stamps)
        })?;
        Some(ms(bucket_start(from + back).saturating_sub(e)))
    });
    let start_ms = ms(episode.start);
    let of_stamps = |e: &&SeenEvent| {
        e.event.kind == EventKind::Health
            && e.event
                .stamp
                .as_ref()
                .is_some_and(|s| episode.stamps.contains(s))
    };
    let detect_ms = episode
        .detectable
        .then(|| {
            events
                .iter()
                .filter(of_stamps)
                .find(|e| e.at_ms >= start_ms)
                .map(|e| e.at_ms - start_ms)
        })
        .flatten();
    let flaps = flaps(events.iter().filter(of_stamps).filter(|e| e.at_ms >= 0.0));
    let before = bucket_ceil(episode.start.saturating_sub(Duration::from_secs(1)));
    let before = &fine[before.min(first)..first];
    let total: u64 = before.iter().map(|b| b.requests).sum();
    let theirs: u64 = before.iter().map(|b| reached(b, &episode.stamps)).sum();
    FaultFigures {
        fault: episode.label.clone(),
        target: episode.target.clone(),
        at_ms: start_ms,
        ended_ms: episode.end.map(ms),
        detect_ms,
        shift_ms,
        errors_until_shift,
        recovery_ms,
        flaps,
        share_before: if total == 0 {
            0.0
        } else {
            theirs as f64 / total as f64
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(requests: u64, victim: u64, errors: u64) -> Fine {
        let mut by_stamp = BTreeMap::new();
        by_stamp.insert("v".to_owned(), victim);
        by_stamp.insert("o".to_owned(), requests - victim - errors);
        Fine {
            requests,
            errors,
            by_stamp,
            received_by: None,
        }
    }

    fn episode(start_ms: u64, end_ms: Option<u64>) -> Episode {
        Episode {
            label: "fault".into(),
            target: "stamp v".into(),
            stamps: vec!["v".into()],
            start: Duration::from_millis(start_ms),
            end: end_ms.map(Duration::from_millis),
            detectable: true,
        }
    }

    fn health(at_ms: f64) -> SeenEvent {
        SeenEvent {
            at_ms,
            event: Event {
                seq: 1,
                time: String::new(),
                unix_ms: 0,
                kind: EventKind::Health,
                pool: None,
                stamp: Some("v".into()),
                from: Some("healthy".into()),
                to: Some("unhealthy".into()),
                reason: String::new(),
            },
        }
    }

    fn first_verdict(at_ms: f64) -> SeenEvent {
        let mut e = health(at_ms);
        e.event.from = Some("unknown".into());
        e
    }

    #[test]
    fn an_outage_and_its_recovery_is_no_flap() {
        let mut up = health(2000.0);
        up.event.from = Some("unhealthy".into());
        up.event.to = Some("healthy".into());
        let events = [health(1000.0), up.clone(), first_verdict(10.0)];
        assert_eq!(flaps(events.iter()), 0);
        let events = [health(1000.0), up, health(3000.0)];
        assert_eq!(flaps(events.iter()), 1, "down, up, down");
    }

    #[test]
    fn shift_is_the_first_bucket_that_stays_under_one_percent() {
        // Buckets 0-9 before the fault at 1 s, then the victim keeps a third
        // until 1.3 s, one try at 1.5 s (over 1% of its bucket, a trickle
        // in its second), then nothing.
        let mut fine: Vec<Fine> = (0..10).map(|_| bucket(100, 33, 0)).collect();
        fine.extend([bucket(100, 33, 2), bucket(100, 33, 1), bucket(100, 33, 0)]);
        fine.extend([bucket(100, 0, 0), bucket(100, 0, 0), bucket(50, 1, 0)]);
        fine.extend((0..10).map(|_| bucket(100, 0, 0)));
        let f = figures(
            &episode(1000, None),
            &fine,
            &[
                health(-5.0),
                first_verdict(900.0),
                health(740.0),
                health(3000.0),
            ],
        );
        assert_eq!(f.shift_ms, Some(300.0));
        assert_eq!(f.errors_until_shift, 3);
        assert_eq!(
            f.detect_ms,
            Some(2000.0),
            "the first health event after the fault"
        );
        assert_eq!(
            f.flaps, 1,
            "two falls after the start: the second is a flap; neither the event \
             before the start nor a first verdict counts"
        );
        assert!((f.share_before - 0.33).abs() < 1e-9);
        assert_eq!(f.recovery_ms, None);
    }

    #[test]
    fn no_shift_when_the_last_bucket_still_reaches_the_victim() {
        let fine: Vec<Fine> = (0..20).map(|_| bucket(100, 33, 0)).collect();
        let f = figures(&episode(1000, None), &fine, &[]);
        assert_eq!(f.shift_ms, None);
        assert_eq!(f.detect_ms, None);
    }

    #[test]
    fn a_trickle_request_in_the_faults_last_bucket_is_judged_on_a_whole_second() {
        // Off the victim from the fault on, but for one trickle request in
        // the last bucket judged: 1 of that bucket's 100 is 1 %, of the
        // second's 900 it is not.
        let mut fine: Vec<Fine> = (0..10).map(|_| bucket(100, 33, 0)).collect();
        fine.extend((0..8).map(|_| bucket(100, 0, 0)));
        fine.push(bucket(100, 1, 0));
        fine.extend((0..5).map(|_| bucket(100, 33, 0)));
        let f = figures(&episode(1000, Some(2000)), &fine, &[]);
        assert_eq!(f.shift_ms, Some(0.0));
    }

    #[test]
    fn recovery_is_the_first_bucket_with_traffic_back() {
        let mut fine: Vec<Fine> = (0..10).map(|_| bucket(100, 33, 0)).collect();
        fine.extend((0..10).map(|_| bucket(100, 0, 0)));
        // A trickle (2 of 1,000 in a second) is not traffic back.
        fine.extend([bucket(100, 1, 0), bucket(100, 1, 0), bucket(100, 33, 0)]);
        let f = figures(&episode(1000, Some(2000)), &fine, &[]);
        assert_eq!(f.shift_ms, Some(0.0));
        assert_eq!(f.recovery_ms, Some(200.0));
        assert_eq!(f.ended_ms, Some(2000.0));
    }

    #[test]
    fn a_hung_stamp_that_answers_nothing_has_not_shifted() {
        // The victim receives a third of the requests and answers none:
        // by answers it left at once, by requests received it never did.
        let hung = |requests: u64| {
            let mut b = bucket(requests, 0, 0);
            b.received_by = Some(BTreeMap::from([("v".to_owned(), requests / 3)]));
            b
        };
        let fine: Vec<Fine> = (0..30).map(|_| hung(100)).collect();
        let f = figures(&episode(1000, None), &fine, &[]);
        assert_eq!(f.shift_ms, None);
        assert!((f.share_before - 0.33).abs() < 1e-9);
    }

    #[test]
    fn samples_land_in_their_scheduled_buckets() {
        let mut counts = Counts::new();
        let sample = |at_ms, outcome| Sample {
            scheduled: Duration::from_millis(at_ms),
            latency: Duration::from_millis(3),
            lag: Duration::ZERO,
            outcome,
            request: "GET /".into(),
            stamp: Some("v".into()),
            region: Some("r".into()),
        };
        counts.add(sample(50, super::super::load::Outcome::Ok));
        counts.add(sample(1250, super::super::load::Outcome::Status(503)));
        counts.pad_to(Duration::from_secs(3));
        assert_eq!(counts.seconds.len(), 3);
        assert_eq!(counts.fine.len(), 30);
        assert_eq!(counts.seconds[1].errors.get("503"), Some(&1));
        assert_eq!(counts.fine[12].errors, 1);
        assert_eq!(counts.seconds[0].by_region.get("r"), Some(&1));
        assert_eq!(counts.errors_by_request["GET /"].get("503"), Some(&1));
        assert_eq!(counts.idempotent_errors, 1);
    }
}
