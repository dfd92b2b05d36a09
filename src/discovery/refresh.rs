//! Control plane: one refresh loop per stamp host name. Resolve, store in
//! the [`DnsCache`], tell the controller what changed, sleep for the TTL.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Answer, Discovery, DnsCache, DnsError, DnsSettings};

/// What a refresh task tells the controller.
///
/// Only transitions are reported, so the controller's event log carries
/// news rather than one line per refresh: a `Resolved` when the address
/// set changes (the first answer included, a reshuffle of the same
/// addresses excluded) or when the name resolves again after failing; a
/// `Failed` when a failure streak starts or its cause changes. An unchanged
/// answer, or the same failure again, is silent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsReport {
    /// `host` now resolves to `addrs`, which the cache already serves.
    Resolved {
        /// The stamp host name.
        host: String,
        /// The new addresses, sorted.
        addrs: Arc<[IpAddr]>,
        /// When the task will ask again (the clamped TTL).
        ttl: Duration,
    },
    /// `host` could not be resolved. Its last good addresses stay in the
    /// cache and in use; the task retries with backoff.
    Failed {
        /// The stamp host name.
        host: String,
        /// Why, as [`DnsError`] displays it.
        error: String,
        /// How many addresses are still in use (0 before the first answer).
        kept: usize,
    },
}

/// Start the refresh loop for `host`: resolve, store the answer in `cache`,
/// send a [`DnsReport`] on change or failure, sleep for the clamped TTL,
/// repeat. After a failure the last good answer stays in the cache and the
/// task retries after `min_ttl`, doubling up to `max_ttl` while it keeps
/// failing. An IP literal is stored and reported once; it never changes.
///
/// The loop ends only when `cancel` fires (also mid-lookup or mid-send). A
/// closed report channel does not end it: the connector still needs fresh
/// addresses. Dropping the handle does not stop the task.
pub fn spawn_refresh(
    discovery: Arc<Discovery>,
    host: String,
    cache: DnsCache,
    reports: mpsc::Sender<DnsReport>,
    cancel: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let refresh = Refresh::new(host, cache, discovery.settings());
        run(refresh, &discovery, &reports, &cancel).await;
    })
}

/// The loop itself. A `sleep` per turn rather than an `interval`: the wait
/// changes every turn with the TTL or the backoff.
async fn run(
    mut refresh: Refresh,
    discovery: &Discovery,
    reports: &mpsc::Sender<DnsReport>,
    cancel: &CancellationToken,
) {
    loop {
        let outcome = tokio::select! {
            () = cancel.cancelled() => return,
            outcome = discovery.resolve(&refresh.host) => outcome,
        };
        let Step { report, wait } = refresh.record(outcome);
        if let Some(report) = report {
            tracing::debug!(?report, "dns");
            tokio::select! {
                () = cancel.cancelled() => return,
                sent = reports.send(report) => if sent.is_err() {
                    tracing::debug!(host = %refresh.host, "dns report dropped: controller gone");
                },
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// What one turn decided: what to tell the controller, how long to wait.
#[derive(Debug, PartialEq, Eq)]
struct Step {
    report: Option<DnsReport>,
    wait: Duration,
}

/// The state a refresh loop carries between turns. No I/O: the answer
/// comes in, the cache is updated, and the step says what to do next.
#[derive(Debug)]
struct Refresh {
    host: String,
    cache: DnsCache,
    backoff: Backoff,
    /// The cause of the current failure streak, if the last turn failed.
    failing: Option<String>,
}

impl Refresh {
    fn new(host: String, cache: DnsCache, settings: &DnsSettings) -> Self {
        Self {
            host,
            cache,
            backoff: Backoff::new(settings.min_ttl, settings.max_ttl),
            failing: None,
        }
    }

    fn record(&mut self, outcome: Result<Answer, DnsError>) -> Step {
        match outcome {
            Ok(answer) => self.resolved(answer),
            Err(error) => self.failed(&error),
        }
    }

    fn resolved(&mut self, answer: Answer) -> Step {
        self.backoff.reset();
        let recovered = self.failing.take().is_some();
        let changed = self.cache.set(&self.host, answer.addrs);
        let report = (changed || recovered)
            .then(|| self.cache.get(&self.host))
            .flatten()
            .map(|addrs| DnsReport::Resolved {
                host: self.host.clone(),
                addrs,
                ttl: answer.ttl,
            });
        Step {
            report,
            wait: answer.ttl,
        }
    }

    fn failed(&mut self, error: &DnsError) -> Step {
        let error = error.to_string();
        let news = self.failing.as_ref() != Some(&error);
        let report = news.then(|| DnsReport::Failed {
            host: self.host.clone(),
            error: error.clone(),
            kept: self.cache.get(&self.host).map_or(0, |addrs| addrs.len()),
        });
        self.failing = Some(error);
        Step {
            report,
            wait: self.backoff.next_delay(),
        }
    }
}

/// Retry delays after failures: `min`, doubling up to `max`.
#[derive(Debug)]
struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            next: min.min(max),
        }
    }

    fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = delay.saturating_mul(2).min(self.max);
        delay
    }

    fn reset(&mut self) {
        self.next = self.min.min(self.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(10);

    fn ip(last: u8) -> IpAddr {
        [127, 0, 0, last].into()
    }

    fn answer(addrs: &[IpAddr], ttl: Duration) -> Result<Answer, DnsError> {
        Ok(Answer {
            addrs: addrs.to_vec(),
            ttl,
        })
    }

    fn timeout() -> Result<Answer, DnsError> {
        Err(DnsError::Timeout {
            host: "eu".into(),
            after: Duration::from_secs(5),
        })
    }

    fn no_addresses() -> Result<Answer, DnsError> {
        Err(DnsError::NoAddresses { host: "eu".into() })
    }

    fn refresh(cache: &DnsCache) -> Refresh {
        let settings = DnsSettings {
            min_ttl: MIN,
            max_ttl: MAX,
            ..DnsSettings::default()
        };
        Refresh::new("eu".into(), cache.clone(), &settings)
    }

    fn resolved(addrs: &[IpAddr], ttl: Duration) -> Option<DnsReport> {
        Some(DnsReport::Resolved {
            host: "eu".into(),
            addrs: addrs.into(),
            ttl,
        })
    }

    #[test]
    fn backoff_doubles_up_to_the_ceiling_and_resets() {
        let mut backoff = Backoff::new(MIN, MAX);
        let delays: Vec<u64> = (0..6).map(|_| backoff.next_delay().as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 10, 10]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), MIN);
    }

    #[test]
    fn first_answer_is_stored_and_reported() {
        let cache = DnsCache::new();
        let mut refresh = refresh(&cache);
        let ttl = Duration::from_secs(2);
        let step = refresh.record(answer(&[ip(2), ip(1)], ttl));
        assert_eq!(step.report, resolved(&[ip(1), ip(2)], ttl));
        assert_eq!(step.wait, ttl);
        assert_eq!(cache.get("eu").as_deref(), Some(&[ip(1), ip(2)][..]));
    }

    #[test]
    fn same_addresses_again_are_silent_a_change_is_reported() {
        let cache = DnsCache::new();
        let mut refresh = refresh(&cache);
        refresh.record(answer(&[ip(1), ip(2)], MIN));
        let same = refresh.record(answer(&[ip(2), ip(1)], MIN));
        assert_eq!(
            same,
            Step {
                report: None,
                wait: MIN
            }
        );
        let moved = refresh.record(answer(&[ip(3)], MIN));
        assert_eq!(moved.report, resolved(&[ip(3)], MIN));
    }

    #[test]
    fn failure_keeps_the_last_answer_and_backs_off() {
        let cache = DnsCache::new();
        let mut refresh = refresh(&cache);
        refresh.record(answer(&[ip(1), ip(2)], MIN));
        let first = refresh.record(timeout());
        assert_eq!(
            first.report,
            Some(DnsReport::Failed {
                host: "eu".into(),
                error: "resolving eu: no answer within 5s".into(),
                kept: 2,
            })
        );
        assert_eq!(first.wait, MIN);
        assert_eq!(cache.get("eu").as_deref(), Some(&[ip(1), ip(2)][..]));
        let again = refresh.record(timeout());
        assert_eq!(again.report, None, "the same failure again is no news");
        assert_eq!(again.wait, 2 * MIN);
    }

    #[test]
    fn a_new_cause_during_a_streak_is_reported() {
        let cache = DnsCache::new();
        let mut refresh = refresh(&cache);
        refresh.record(timeout());
        let step = refresh.record(no_addresses());
        assert!(matches!(
            step.report,
            Some(DnsReport::Failed { kept: 0, ref error, .. }) if error.contains("no addresses")
        ));
    }

    #[test]
    fn recovery_with_the_same_addresses_is_reported_and_resets_backoff() {
        let cache = DnsCache::new();
        let mut refresh = refresh(&cache);
        refresh.record(answer(&[ip(1)], MIN));
        refresh.record(timeout());
        refresh.record(timeout());
        let back = refresh.record(answer(&[ip(1)], MAX));
        assert_eq!(back.report, resolved(&[ip(1)], MAX));
        assert_eq!(refresh.record(timeout()).wait, MIN);
    }
}
