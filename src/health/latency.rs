//! Live latency: what the API of a stamp costs its callers now, from the
//! request path's counters (time to response head), and which stamps are
//! latency outliers of their pool. Pure: the controller feeds it counter
//! readings once per tick and asks for estimates; tests drive it with
//! paused time.
//!
//! A gray failure is a stamp whose API slows down or hangs while its light
//! health endpoint stays green, so probes cannot see it. Two signals cover
//! it: the mean time to response head of the stamp's recent requests, and
//! the *stall*: requests are waiting for a head and none has arrived for a
//! while. The stall is a lower bound that grows while a stamp hangs, when
//! no request completes to give a sample at all.
//!
//! Why a sliding window rather than peak-EWMA: peak-EWMA with a decay long
//! enough to be stable takes tens of seconds to forget a fault (about 57 s
//! from 300 ms back to 1 ms with a 10 s decay). The window here reaches
//! back only as far as it needs for [`MIN_SAMPLES`], so a stamp at full
//! traffic is judged on its last half second, and a stamp kept on a trickle
//! on its last few requests: the fault is forgotten once a handful of fast
//! answers came back.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// Fewest samples an estimate is judged on: one slow request is not a
/// slow stamp.
pub const MIN_SAMPLES: u64 = 5;
/// The window covers at least this much time, so that a busy stamp's
/// estimate is not one burst.
pub const MIN_SPAN: Duration = Duration::from_millis(500);
/// ... and at most this much: older samples say nothing of the stamp now.
/// A stamp without [`MIN_SAMPLES`] in it has no judged estimate and falls
/// back to probes (and gets traffic again, which measures it afresh).
pub const MAX_SPAN: Duration = Duration::from_secs(10);
/// A latency outlier is released only once its latency fell below this
/// share of the limit that ejected it, so that a stamp hovering at the
/// limit does not flap in and out every tick.
pub const RELEASE_SHARE: f64 = 0.8;

/// One counter reading's worth of samples.
#[derive(Debug, Clone, Copy)]
struct Slot {
    at: Instant,
    count: u64,
    micros: u64,
}

/// One reading of a stamp's counters (cumulative, from the request path).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reading {
    /// Latency samples: response heads, timed-out tries, cancelled hedges.
    pub samples: u64,
    /// Their sum, microseconds.
    pub micros: u64,
    /// Tries that ended in any way (a refused connect gives no latency
    /// sample, but it is progress: no stall).
    pub ended: u64,
    /// Tries waiting for a response head right now.
    pub awaiting: u64,
}

/// The live latency of one stamp, fed from its cumulative counters.
#[derive(Debug, Default)]
pub struct LiveLatency {
    slots: VecDeque<Slot>,
    /// Sample count, sum and ended tries at the last reading.
    seen: (u64, u64, u64),
    /// Requests have been waiting for a head since then, and no head came.
    waiting_since: Option<Instant>,
}

/// A judged estimate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// The mean time to response head over the window, or the stall if
    /// that is longer.
    pub latency: Duration,
    /// Samples the mean is over.
    pub samples: u64,
    /// The latency is the stall: requests wait and nothing answers.
    pub stalled: bool,
}

impl LiveLatency {
    /// Take one reading of the stamp's counters at `now`.
    pub fn observe(&mut self, now: Instant, r: Reading) {
        let (seen_samples, seen_micros, seen_ended) =
            std::mem::replace(&mut self.seen, (r.samples, r.micros, r.ended));
        let count = r.samples.saturating_sub(seen_samples);
        if count > 0 {
            self.slots.push_back(Slot {
                at: now,
                count,
                micros: r.micros.saturating_sub(seen_micros),
            });
        }
        let progress = count + r.ended.saturating_sub(seen_ended);
        while self
            .slots
            .front()
            .is_some_and(|s| now.duration_since(s.at) > MAX_SPAN)
        {
            self.slots.pop_front();
        }
        // A stall needs several requests waiting: one slow request of a
        // quiet stamp is not a hang.
        self.waiting_since = match (r.awaiting >= MIN_SAMPLES, progress) {
            (false, _) => None,
            // Something ended: what waits now may have just been sent.
            (true, 1..) => Some(now),
            (true, 0) => self.waiting_since.or(Some(now)),
        };
    }

    /// The estimate at `now`, if there is enough to judge: at least
    /// [`MIN_SAMPLES`] within [`MAX_SPAN`], or a stall.
    pub fn estimate(&self, now: Instant) -> Option<Estimate> {
        let (mut count, mut micros) = (0u64, 0u64);
        for slot in self.slots.iter().rev() {
            if count >= MIN_SAMPLES && now.duration_since(slot.at) >= MIN_SPAN {
                break;
            }
            count += slot.count;
            micros += slot.micros;
        }
        let stall = self
            .waiting_since
            .map_or(Duration::ZERO, |t| now.duration_since(t));
        let mean = (count >= MIN_SAMPLES).then(|| Duration::from_micros(micros / count));
        match mean {
            Some(mean) if mean >= stall => Some(Estimate {
                latency: mean,
                samples: count,
                stalled: false,
            }),
            _ if !stall.is_zero() => Some(Estimate {
                latency: stall,
                samples: count,
                stalled: true,
            }),
            _ => None,
        }
    }
}

/// The outlier rule of a pool: `latency_factor` x the median of the other
/// stamps, and above `latency_floor`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutlierRule {
    /// `outlier.latency_factor`.
    pub factor: f64,
    /// `outlier.latency_floor`.
    pub floor: Duration,
}

/// Why a stamp is a latency outlier, with the figures.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencyVerdict {
    /// Its latency.
    pub latency: Duration,
    /// The median of the other stamps of the pool.
    pub median: Duration,
    /// Samples behind its latency.
    pub samples: u64,
    /// The latency is a stall (requests wait, nothing answers).
    pub stalled: bool,
}

impl LatencyVerdict {
    /// The reason shown in status and events.
    pub fn reason(&self, rule: &OutlierRule) -> String {
        let what = if self.stalled {
            format!("no response head for {} ms", ms(self.latency))
        } else {
            format!(
                "live latency {} ms over {} requests",
                ms(self.latency),
                self.samples
            )
        };
        format!(
            "latency outlier: {what}, more than {} x the pool median {} ms and above {} ms",
            rule.factor,
            ms(self.median),
            ms(rule.floor)
        )
    }
}

/// Judge every stamp of one pool: `estimates[i]` is stamp i's live
/// estimate, `was[i]` whether it is an outlier now. A stamp is an outlier
/// when its latency is more than `factor` x the median of the *other*
/// stamps with an estimate and above `floor`; once out, it is released
/// below [`RELEASE_SHARE`] of that limit. Comparing with the others (not a
/// median that includes the stamp) keeps a two-stamp pool judgeable; a
/// pool where every stamp is slow has a slow median and ejects nobody.
/// At most `max_out` stamps are outliers, the slowest first.
pub fn judge(
    estimates: &[Option<Estimate>],
    was: &[bool],
    rule: &OutlierRule,
    max_out: usize,
) -> Vec<Option<LatencyVerdict>> {
    let mut verdicts: Vec<Option<LatencyVerdict>> = (0..estimates.len())
        .map(|i| {
            let own = estimates[i]?;
            let median = median_of_others(estimates, i)?;
            let share = if was[i] { RELEASE_SHARE } else { 1.0 };
            let limit = median.mul_f64(rule.factor).max(rule.floor).mul_f64(share);
            (own.latency > limit).then_some(LatencyVerdict {
                latency: own.latency,
                median,
                samples: own.samples,
                stalled: own.stalled,
            })
        })
        .collect();
    let mut out: Vec<usize> = (0..verdicts.len())
        .filter(|&i| verdicts[i].is_some())
        .collect();
    if out.len() > max_out {
        out.sort_by_key(|&i| std::cmp::Reverse(verdicts[i].as_ref().map(|v| v.latency)));
        for &i in &out[max_out..] {
            verdicts[i] = None;
        }
    }
    verdicts
}

/// Milliseconds with one decimal: fast stamps answer in under one.
fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

fn median_of_others(estimates: &[Option<Estimate>], me: usize) -> Option<Duration> {
    let mut others: Vec<Duration> = estimates
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != me)
        .filter_map(|(_, e)| e.map(|e| e.latency))
        .collect();
    if others.is_empty() {
        return None;
    }
    others.sort_unstable();
    let mid = others.len() / 2;
    Some(if others.len() % 2 == 1 {
        others[mid]
    } else {
        (others[mid - 1] + others[mid]) / 2
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_millis(100);

    /// A stamp at `rps` whose requests take `latency`: feeds `ticks`
    /// readings, advancing paused time.
    struct Fed {
        live: LiveLatency,
        heads: u64,
        micros: u64,
    }

    impl Fed {
        fn new() -> Fed {
            Fed {
                live: LiveLatency::default(),
                heads: 0,
                micros: 0,
            }
        }

        async fn run(&mut self, per_tick: u64, latency: Duration, awaiting: u64, ticks: u32) {
            for _ in 0..ticks {
                tokio::time::advance(TICK).await;
                self.heads += per_tick;
                self.micros += per_tick * latency.as_micros() as u64;
                let reading = Reading {
                    samples: self.heads,
                    micros: self.micros,
                    ended: self.heads,
                    awaiting,
                };
                self.live.observe(Instant::now(), reading);
            }
        }

        fn latency(&self) -> Option<Duration> {
            self.live.estimate(Instant::now()).map(|e| e.latency)
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_stamp_is_judged_on_its_last_half_second() {
        let mut s = Fed::new();
        s.run(10, ms(1), 1, 20).await;
        assert_eq!(s.latency(), Some(ms(1)));
        // 300 ms from now on: within a second the estimate is far above
        // any sensible limit, not a slow average over ten seconds.
        s.run(10, ms(300), 1, 3).await;
        assert!(s.latency().unwrap() > ms(100), "{:?}", s.latency());
        s.run(10, ms(300), 1, 5).await;
        assert_eq!(s.latency(), Some(ms(300)));
        // Back to 1 ms: forgotten within the half second.
        s.run(10, ms(1), 1, 6).await;
        assert_eq!(s.latency(), Some(ms(1)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickle_is_judged_on_its_last_few_requests() {
        let mut s = Fed::new();
        // One request every 500 ms, each 300 ms.
        for _ in 0..10 {
            s.run(1, ms(300), 0, 1).await;
            s.run(0, ms(0), 0, 4).await;
        }
        assert_eq!(s.latency(), Some(ms(300)));
        // The fault clears: after MIN_SAMPLES fast answers (2.5 s) the
        // slow ones are out of the window.
        for _ in 0..MIN_SAMPLES {
            s.run(1, ms(1), 0, 1).await;
            s.run(0, ms(0), 0, 4).await;
        }
        assert_eq!(s.latency(), Some(ms(1)));
    }

    #[tokio::test(start_paused = true)]
    async fn too_few_samples_is_no_estimate() {
        let mut s = Fed::new();
        s.run(1, ms(300), 0, (MIN_SAMPLES - 1) as u32).await;
        assert_eq!(s.latency(), None);
        s.run(1, ms(300), 0, 1).await;
        assert_eq!(s.latency(), Some(ms(300)));
        // Samples older than MAX_SPAN are forgotten.
        s.run(0, ms(0), 0, 101).await;
        assert_eq!(s.latency(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hang_shows_as_a_growing_stall() {
        let mut s = Fed::new();
        s.run(10, ms(1), 5, 10).await;
        // Requests keep waiting and nothing ends.
        s.run(0, ms(0), 8, 3).await;
        let e = s.live.estimate(Instant::now()).unwrap();
        assert!(e.stalled);
        assert_eq!(
            e.latency,
            ms(300),
            "a lower bound: waiting since the last answer"
        );
        // One slow request of a quiet stamp is no stall.
        s.run(0, ms(0), 1, 1).await;
        assert!(!s.live.estimate(Instant::now()).unwrap().stalled);
        s.run(0, ms(0), 8, 2).await;
        assert_eq!(s.live.estimate(Instant::now()).unwrap().latency, ms(100));
    }

    fn est(ms_: u64) -> Option<Estimate> {
        Some(Estimate {
            latency: ms(ms_),
            samples: 50,
            stalled: false,
        })
    }

    const RULE: OutlierRule = OutlierRule {
        factor: 5.0,
        floor: Duration::from_millis(50),
    };

    fn outliers(estimates: &[Option<Estimate>], was: &[bool]) -> Vec<bool> {
        judge(estimates, was, &RULE, estimates.len())
            .iter()
            .map(Option::is_some)
            .collect()
    }

    #[test]
    fn a_slow_stamp_among_fast_ones_is_an_outlier() {
        let none = [false; 4];
        assert_eq!(
            outliers(&[est(1), est(2), est(300), est(1)], &none),
            [false, false, true, false]
        );
        // Two stamps: each is compared with the other.
        assert_eq!(outliers(&[est(1), est(300)], &none[..2]), [false, true]);
        let v = judge(&[est(1), est(300)], &none[..2], &RULE, 2);
        let reason = v[1].as_ref().unwrap().reason(&RULE);
        assert!(
            reason.contains("300 ms") && reason.contains("median 1 ms"),
            "{reason}"
        );
    }

    #[test]
    fn a_pool_where_every_stamp_is_slow_ejects_nobody() {
        let none = [false; 3];
        assert_eq!(outliers(&[est(300), est(320), est(290)], &none), [false; 3]);
        // Half the pool slow: the median of the others is the slow one too.
        assert_eq!(outliers(&[est(1), est(300), est(300)], &none), [false; 3]);
    }

    #[test]
    fn the_floor_spares_fast_stamps_that_are_relatively_slow() {
        // 20 ms is 20 x the others but below the 50 ms floor.
        assert_eq!(
            outliers(&[est(1), est(1), est(20)], &[false; 3]),
            [false; 3]
        );
        assert_eq!(
            outliers(&[est(1), est(1), est(60)], &[false; 3]),
            [false, false, true]
        );
    }

    #[test]
    fn release_needs_a_margin_below_the_limit() {
        // Limit 50 ms (the floor); 45 ms keeps an outlier out, frees nobody.
        assert_eq!(
            outliers(&[est(1), est(1), est(45)], &[false, false, true]),
            [false, false, true]
        );
        assert_eq!(
            outliers(&[est(1), est(1), est(35)], &[false, false, true]),
            [false; 3]
        );
    }

    #[test]
    fn stamps_without_an_estimate_are_neither_judged_nor_compared() {
        assert_eq!(outliers(&[None, est(300)], &[false; 2]), [false; 2]);
        assert_eq!(
            outliers(&[None, est(1), est(300)], &[false; 3]),
            [false, false, true]
        );
    }

    #[test]
    fn at_most_max_out_the_slowest_first() {
        let v = judge(
            &[est(1), est(1), est(1), est(200), est(400)],
            &[false; 5],
            &RULE,
            1,
        );
        let out: Vec<bool> = v.iter().map(Option::is_some).collect();
        assert_eq!(out, [false, false, false, false, true]);
    }
}
