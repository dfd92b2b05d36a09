//! The drill's load generator: an open loop at a constant rate. Request `i`
//! is due at `start + i / rate` whatever happened to the ones before it, and
//! its latency runs from that due time, so a stalled server cannot hide its
//! queue (no coordinated omission). Every request ends as one [`Sample`]
//! sent to the measurement task.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::scenario::{LoadSpec, Protocol, RequestSpec};
use crate::stamp::{SERVER_LOCATION_HEADER, SERVER_NAME_HEADER};

/// The client the load (and the drill's control calls) use.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Idle keep-alive connections kept per host: enough for the concurrency of
/// a few thousand requests per second at tens of milliseconds each, so
/// connections are reused rather than opened per request.
const MAX_IDLE_PER_HOST: usize = 1024;

/// What became of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx or 3xx answer, body read to the end.
    Ok,
    /// A 4xx or 5xx answer.
    Status(u16),
    /// The connection failed or the body broke off.
    Transport,
    /// No complete answer within the load's timeout.
    Timeout,
    /// Not sent: the in-flight cap was reached (the generator, or the
    /// server, cannot keep up).
    Overload,
}

impl Outcome {
    /// Whether the client saw a failure.
    pub fn is_error(&self) -> bool {
        !matches!(self, Outcome::Ok)
    }

    /// The error kind as reports name it (`"503"`, `"transport"`, ...).
    pub fn kind(&self) -> String {
        match self {
            Outcome::Ok => "ok".to_owned(),
            Outcome::Status(code) => code.to_string(),
            Outcome::Transport => "transport".to_owned(),
            Outcome::Timeout => "timeout".to_owned(),
            Outcome::Overload => "overload".to_owned(),
        }
    }
}

/// One request of the load, as measured.
#[derive(Debug, Clone)]
pub struct Sample {
    /// When it was due, from the start of the load.
    pub scheduled: Duration,
    /// From the due time to the end of the answer (or the failure).
    pub latency: Duration,
    /// From the due time until it was handed to the client: the
    /// generator's own lag.
    pub lag: Duration,
    /// What became of it.
    pub outcome: Outcome,
    /// Which request of the mix it was (`POST /path`), so that errors can
    /// be told apart by method and path.
    pub request: Arc<str>,
    /// `X-Server-Name` of the answer, if any.
    pub stamp: Option<String>,
    /// `X-Server-Location` of the answer, if any.
    pub region: Option<String>,
}

/// A client for `protocol`: HTTP/1.1 keep-alive, or h2c with prior knowledge.
pub fn client(protocol: Protocol) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let mut builder = Client::builder(TokioExecutor::new());
    builder.pool_max_idle_per_host(MAX_IDLE_PER_HOST);
    if protocol == Protocol::Http2 {
        builder.http2_only(true);
    }
    builder.build(connector)
}

/// Picks requests of the mix by weight, deterministically: request `i`
/// gets the kind at position `i mod total` of the weighted sequence, so a
/// short run still has the exact mix.
#[derive(Debug)]
pub struct Mix {
    requests: Vec<(Uri, RequestSpec, Arc<str>)>,
    /// Index into `requests` for each slot of one cycle.
    cycle: Vec<usize>,
}

impl Mix {
    /// The mix of `requests` sent to `base` (`http://host:port`).
    pub fn new(base: &Uri, requests: &[RequestSpec]) -> Result<Mix, http::Error> {
        let mut out = Vec::with_capacity(requests.len());
        for r in requests {
            let uri = Uri::builder()
                .scheme(base.scheme_str().unwrap_or("http"))
                .authority(base.authority().map_or("", |a| a.as_str()))
                .path_and_query(r.path.as_str())
                .build()?;
            let label: Arc<str> = Arc::from(format!("{} {}", r.method, r.path));
            out.push((uri, r.clone(), label));
        }
        // Interleave the kinds (largest remainder first) so that every
        // stretch of the run carries the mix, not 20 GETs then 10 POSTs.
        let total: u32 = requests.iter().map(|r| r.weight).sum();
        let mut credit = vec![0i64; requests.len()];
        let mut cycle = Vec::with_capacity(total as usize);
        for _ in 0..total {
            for (c, r) in credit.iter_mut().zip(requests) {
                *c += i64::from(r.weight);
            }
            let best = (0..credit.len()).max_by_key(|&i| credit[i]).unwrap_or(0);
            credit[best] -= i64::from(total);
            cycle.push(best);
        }
        Ok(Mix {
            requests: out,
            cycle,
        })
    }

    fn nth(&self, i: u64) -> &(Uri, RequestSpec, Arc<str>) {
        let slot = self.cycle[(i % self.cycle.len() as u64) as usize];
        &self.requests[slot]
    }
}

/// Opens about `connections` keep-alive connections with as many
/// concurrent GETs of the mix (not measured), so that the first second of
/// the schedule does not also pay for connecting from cold: at thousands of
/// requests per second that showed as generator lag.
pub async fn warm_up(client: &HttpClient, mix: &Mix, connections: usize) {
    let Some((uri, _, _)) = mix
        .requests
        .iter()
        .find(|(_, r, _)| r.method == http::Method::GET)
    else {
        return;
    };
    let gets = (0..connections).map(|_| async {
        let request = Request::get(uri.clone()).body(Full::new(Bytes::new()));
        if let Ok(request) = request {
            let _ = send(client, request).await;
        }
    });
    futures_util::future::join_all(gets).await;
}

/// Sends `spec.rate` requests per second from `start` until `until` (or
/// `stop`), each in its own task, and returns once every one has ended
/// (each ends within `spec.timeout`). Returns the number scheduled.
pub async fn open_loop(
    client: HttpClient,
    mix: Arc<Mix>,
    spec: &LoadSpec,
    start: Instant,
    until: Duration,
    samples: mpsc::UnboundedSender<Sample>,
    stop: CancellationToken,
) -> u64 {
    let total = u64::from(spec.rate) * until.as_millis() as u64 / 1000;
    let permits = Arc::new(Semaphore::new(spec.max_in_flight));
    let timeout = spec.timeout;
    let mut i = 0;
    while i < total {
        let due = start + Duration::from_nanos(i * 1_000_000_000 / u64::from(spec.rate));
        tokio::select! {
            () = tokio::time::sleep_until(due) => {}
            () = stop.cancelled() => break,
        }
        let scheduled = due - start;
        match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let (uri, request, label) = mix.nth(i).clone();
                let client = client.clone();
                let samples = samples.clone();
                tokio::spawn(async move {
                    let mut sample = timed(&client, uri, request, scheduled, due, timeout).await;
                    sample.request = label;
                    drop(permit);
                    let _ = samples.send(sample);
                });
            }
            Err(_) => {
                let _ = samples.send(Sample {
                    scheduled,
                    latency: due.elapsed(),
                    lag: due.elapsed(),
                    outcome: Outcome::Overload,
                    request: mix.nth(i).2.clone(),
                    stamp: None,
                    region: None,
                });
            }
        }
        i += 1;
    }
    // Every task holds a permit until it has sent its sample.
    let _all = permits
        .acquire_many(u32::try_from(spec.max_in_flight).unwrap_or(u32::MAX))
        .await;
    i
}

async fn timed(
    client: &HttpClient,
    uri: Uri,
    spec: RequestSpec,
    scheduled: Duration,
    due: Instant,
    timeout: Duration,
) -> Sample {
    let lag = due.elapsed();
    let request = Request::builder()
        .method(spec.method)
        .uri(uri)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(spec.body));
    let (outcome, stamp, region) = match request {
        Ok(request) => {
            // Latency counts from the due time: the deadline does too.
            match tokio::time::timeout_at(due + timeout, send(client, request)).await {
                Ok(answer) => answer,
                Err(_) => (Outcome::Timeout, None, None),
            }
        }
        Err(_) => (Outcome::Transport, None, None),
    };
    Sample {
        scheduled,
        latency: due.elapsed(),
        lag,
        outcome,
        request: Arc::from(""),
        stamp,
        region,
    }
}

async fn send(
    client: &HttpClient,
    request: Request<Full<Bytes>>,
) -> (Outcome, Option<String>, Option<String>) {
    let Ok(response) = client.request(request).await else {
        return (Outcome::Transport, None, None);
    };
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let stamp = header(SERVER_NAME_HEADER);
    let region = header(SERVER_LOCATION_HEADER);
    let status = response.status();
    let outcome = match response.into_body().collect().await {
        Err(_) => Outcome::Transport,
        Ok(_) if status.as_u16() < 400 => Outcome::Ok,
        Ok(_) => Outcome::Status(status.as_u16()),
    };
    (outcome, stamp, region)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drill::scenario::reference_mix;

    #[test]
    fn the_mix_cycle_has_the_exact_weights_interleaved() {
        let base: Uri = "http://127.0.0.1:1".parse().unwrap();
        let mix = Mix::new(&base, &reference_mix()).unwrap();
        assert_eq!(mix.cycle.len(), 34);
        let count = |k| mix.cycle.iter().filter(|&&i| i == k).count();
        assert_eq!((count(0), count(1), count(2), count(3)), (20, 2, 10, 2));
        // Interleaved: the first half of a cycle holds about half the GETs.
        let early = mix.cycle[..17].iter().filter(|&&i| i == 0).count();
        assert!((9..=11).contains(&early), "{:?}", mix.cycle);
        assert_eq!(mix.nth(34).0, mix.nth(0).0);
        assert!(
            mix.nth(0)
                .0
                .to_string()
                .starts_with("http://127.0.0.1:1/catalogservice/")
        );
    }
}
