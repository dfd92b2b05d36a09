//! Default values of every optional config key, each with the reason for
//! its value. `validate` fills them in; `config/stampgate.toml` documents them.

use std::time::Duration;

// ---- the file itself -----------------------------------------------------

/// Where `run` and `check` read the config when neither `--config` nor
/// [`CONFIG_ENV`] names one: the place a packaged service keeps it (the
/// systemd unit and the container image in `deploy/` put it there).
pub const DEFAULT_CONFIG_PATH: &str = "/etc/stampgate/stampgate.toml";
/// The environment variable that names the config file when `--config` is
/// not given (a container sets it instead of changing its command).
pub const CONFIG_ENV: &str = "STAMPGATE_CONFIG";

// ---- [proxy] -------------------------------------------------------------

/// Loopback, so that a config without `[proxy]` never exposes a port by
/// surprise; production configs name their public address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Large enough for API payloads, small enough that a client cannot tie up
/// memory with a huge upload (nginx's 1 MiB default breaks too many APIs).
pub const DEFAULT_MAX_REQUEST_BODY: u64 = 10 * 1024 * 1024;
/// Slowloris guard: a real client sends its request head in milliseconds.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Longer than typical client keep-alive pools (Go's default is 90 s idle,
/// but most browsers and SDKs reuse within a minute), short enough to shed
/// abandoned connections.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Lets in-flight API calls finish on SIGTERM while staying well inside a
/// container orchestrator's usual 30 s kill deadline.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Zero: on bare metal nothing needs telling before the listeners stop.
/// Behind a Kubernetes Service or a cloud balancer set 5–10 s: longer than
/// the balancer's readiness probe interval times its failure threshold, so
/// it stops sending before we stop accepting.
pub const DEFAULT_SHUTDOWN_DELAY: Duration = Duration::ZERO;
/// Off: a PROXY header is only sent by a balancer configured to, and a
/// listener expecting one refuses every client that connects directly.
pub const DEFAULT_PROXY_PROTOCOL: bool = false;
/// Off: redirecting needs a TLS listener, which is off by default too.
pub const DEFAULT_REDIRECT_HTTP_TO_HTTPS: bool = false;
/// ACME HTTP-01 challenges must be answered over plain HTTP (RFC 8555
/// §8.3), or certificates could never be renewed.
pub const DEFAULT_REDIRECT_EXEMPT_PATHS: &[&str] = &["/.well-known/acme-challenge/"];
/// On: seeing which stamp served a response is the first thing an operator
/// needs during a failover, and the header reveals nothing sensitive.
pub const DEFAULT_STAMP_HEADER: bool = true;
/// On: stamps behind a proxy need the client's address and scheme (the
/// de-facto `X-Forwarded-*` headers, as HAProxy's `option forwardfor` and
/// Envoy add them); off for stamps that must not learn client addresses.
pub const DEFAULT_FORWARDED_HEADERS: bool = true;
/// On: one id in the client's answer, our access log and the stamp's logs
/// is what ties a complaint to a request (Envoy's `generate_request_id`).
pub const DEFAULT_REQUEST_ID: bool = true;
/// The fast path: it serves body-less requests at a fraction of hyper's
/// cost (bench/RESULTS.md), and hands everything unusual to hyper anyway.
pub const DEFAULT_HTTP1_ENGINE: &str = "fast";

// ---- [access_log] --------------------------------------------------------

/// On: an entry point without an access log leaves an incident without its
/// first evidence. Sampling is there for when the volume hurts.
pub const DEFAULT_ACCESS_LOG_ENABLED: bool = true;
/// Every request; lower it (e.g. 0.01) for high-rate deployments. Errors
/// are logged regardless.
pub const DEFAULT_ACCESS_LOG_SAMPLE: f64 = 1.0;
/// Standard output, the container convention; a file path appends.
pub const DEFAULT_ACCESS_LOG_PATH: &str = "-";
/// JSON lines: what log shippers parse without a grok pattern.
pub const DEFAULT_ACCESS_LOG_FORMAT: &str = "json";

// ---- [admin] -------------------------------------------------------------

/// Loopback only: the admin API can drain regions, so it must be exposed on
/// purpose, never by default (Envoy's admin port convention, 9901).
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9901";

// ---- [[routes]] ----------------------------------------------------------

/// Any host: most deployments front one application.
pub const DEFAULT_ROUTE_HOST: &str = "*";
/// Everything: a route without a prefix catches all paths.
pub const DEFAULT_PATH_PREFIX: &str = "/";
/// Matches common gateway limits (Front Door's origin response timeout is
/// 30 s by default), so stampgate is not the first hop to give up.
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(30);
/// One retry: enough to hide a single dead stamp from the client, without
/// multiplying load when a whole region is slow.
pub const DEFAULT_RETRY_ATTEMPTS: u32 = 2;
/// Envoy's and tower's retry budget: retries may add at most a fifth of the
/// recent request rate, so a dying region cannot cause a retry storm.
pub const DEFAULT_RETRY_BUDGET_PERCENT: u32 = 20;
/// A try that has not produced headers in 5 s is usually stuck on a dead
/// stamp; moving on leaves time for the retry within the route timeout.
/// Capped at the route timeout when that is shorter.
pub const DEFAULT_PER_TRY_TIMEOUT: Duration = Duration::from_secs(5);
/// Bodies up to 64 KiB are buffered for replay: covers typical JSON posts,
/// while larger uploads stream through and are simply not retried.
pub const DEFAULT_REPLAY_LIMIT: u64 = 64 * 1024;
/// On: the stamps are identical copies, so a GET that one answered with a
/// 500 is answered correctly by another region's copy, and the client sees
/// no error. Only replayable idempotent requests, within the retry budget.
pub const DEFAULT_RETRY_ON_SERVER_ERROR: bool = true;

// ---- [pools.NAME] --------------------------------------------------------

/// Active-active by weight: the mission-critical reference runs every
/// stamp live, and it needs no latency data to start.
pub const DEFAULT_METHOD: &str = "weighted";
/// Stamps within 50 ms of the fastest share traffic: one region's jitter,
/// not the distance between continents (Front Door's 0 ms default sends
/// everything to one region; its reference setting of 1 s spreads globally).
pub const DEFAULT_LATENCY_SENSITIVITY: Duration = Duration::from_millis(50);
/// Fail open: if every probe fails at once, the probes (or the network to
/// them) are more likely broken than every region; serving beats a 503.
pub const DEFAULT_ALL_UNHEALTHY: &str = "fail-open";
/// A recovered stamp ramps up over 30 s, long enough to warm caches and
/// connection pools, short enough to relieve the other regions quickly.
pub const DEFAULT_SLOW_START: Duration = Duration::from_secs(30);
/// Stamps usually sit on a private network behind the proxy.
pub const DEFAULT_UPSTREAM_TLS: bool = false;
/// HTTP/1.1 works with every backend; HTTP/2 is opt-in.
pub const DEFAULT_UPSTREAM_HTTP2: bool = false;
/// A TCP connect in one cloud region takes milliseconds; after 1 s the stamp
/// is down or drowning and the retry should go elsewhere.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A stamp that sends nothing for 30 s in the middle of a body is stuck,
/// not slow: streaming APIs that pause longer send keep-alive bytes. Same
/// as HAProxy's common `timeout server`.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(30);

// ---- [pools.NAME.probe] --------------------------------------------------

/// The health endpoint of the mission-critical reference architecture,
/// which the simulated stamp serves too.
pub const DEFAULT_PROBE_PATH: &str = "/healthservice/health/stamp";
/// GET, so that `expect_body` can check the answer (HEAD has no body).
pub const DEFAULT_PROBE_METHOD: &str = "GET";
/// Every second: fast on purpose, against Front Door's 30 s, because the
/// promise is failover within about a second. A probe is one small request.
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Half the interval at most, so that a hung stamp costs one missed sample,
/// not a stalled probe loop. Capped at half the interval when that is shorter.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// `probe.fast_interval` is a quarter of `interval` by default (HAProxy's
/// `fastinter` idea): after one failed probe the verdict is close, and the
/// next probes should decide it in a fraction of an interval. Never below
/// this floor, so that a short interval does not become a probe storm.
pub const MIN_PROBE_FAST_INTERVAL: Duration = Duration::from_millis(100);
/// A window of 4 samples: Front Door's window, at 30 times the pace.
pub const DEFAULT_SAMPLE_SIZE: u32 = 4;
/// 3 of the last 4 must succeed: two failures in a row mark a stamp down
/// (the second one `fast_interval` after the first, so about 1.25 s plus
/// timeouts worst case) while one lost probe does not. Capped at
/// `sample_size` when that is smaller.
pub const DEFAULT_SUCCESSFUL_SAMPLES_REQUIRED: u32 = 3;
/// Success and redirects: a health endpoint that redirects is still up
/// (the same range Front Door and Traffic Manager accept).
pub const DEFAULT_EXPECT_STATUS: (u16, u16) = (200, 399);

// ---- [pools.NAME.outlier] ------------------------------------------------

/// Envoy's default: five gateway failures in a row are not bad luck.
pub const DEFAULT_CONSECUTIVE_FAILURES: u32 = 5;
/// First ejection 10 s: long enough for the active probe to take over the
/// verdict, short enough that a false positive heals on its own.
pub const DEFAULT_BASE_EJECTION: Duration = Duration::from_secs(10);
/// Repeated ejections grow up to 5 minutes and no further, so a stamp that
/// keeps failing stays out without being forgotten. Raised to
/// `base_ejection` when that is longer.
pub const DEFAULT_MAX_EJECTION: Duration = Duration::from_secs(300);
/// A pool can never eject more than half its stamps on passive signals
/// alone: when everything fails at once the cause is usually shared (a bad
/// deploy, the proxy's own network), and ejecting all would be an outage.
pub const DEFAULT_MAX_EJECTED_PERCENT: u32 = 50;
/// A stamp failing one request in four is broken for its users, while a
/// healthy one rarely passes 1 %: ejecting at 25 % takes out a stamp whose
/// health endpoint still says "fine" (Envoy's failure-percentage ejection,
/// with a lower default because stamps are identical copies and another
/// region serves the same request correctly). `max_ejected_percent` still
/// bounds how much of a pool goes.
pub const DEFAULT_FAILURE_RATE: f64 = 0.25;
/// Ten requests in the half-second window: below that a couple of unlucky
/// answers would be a rate.
pub const DEFAULT_FAILURE_RATE_MIN_REQUESTS: u32 = 10;
/// Five times the pool's median: far beyond the spread of identical stamps
/// (Envoy's success-rate rule uses a similar multiple), and a stamp that
/// jumps from 1 ms to 300 ms is out at once.
pub const DEFAULT_LATENCY_FACTOR: f64 = 5.0;
/// 50 ms: below it a "5x slower" stamp is still fast in absolute terms (2 ms
/// against 0.4 ms is noise, not a gray failure).
pub const DEFAULT_LATENCY_FLOOR: Duration = Duration::from_millis(50);

/// 10 %: enough spread that a fleet of proxies started together drifts out
/// of lock-step within a few intervals, while a probe is never late by much.
pub const DEFAULT_PROBE_JITTER_PERCENT: u32 = 10;

// ---- [pools.NAME.health] -------------------------------------------------

/// The reference health model's yellow line for API errors (about 10 % of
/// requests failing): worth shifting load, not yet worth taking it all away.
pub const DEFAULT_DEGRADED_ERROR_RATE: f64 = 0.1;
/// A degraded stamp keeps a quarter of its weight: it still serves (so its
/// recovery is seen in live traffic) while most requests go elsewhere.
pub const DEFAULT_DEGRADED_WEIGHT_PERCENT: u32 = 25;
/// Two seconds in a state before moving back up: two probe intervals, so a
/// single lucky probe cannot bring a stamp back. Moving down is immediate.
pub const DEFAULT_MIN_HOLD: Duration = Duration::from_secs(2);
/// The flap penalty halves every 30 s: a stamp that flapped a minute ago is
/// mostly forgiven, one that flaps now is not.
pub const DEFAULT_FLAP_HALF_LIFE: Duration = Duration::from_secs(30);
/// Four flaps within about a half-life hold a stamp out: fewer would punish
/// an ordinary fail-and-recover; more would let traffic follow every flap.
pub const DEFAULT_FLAP_SUPPRESS: u32 = 4;

// ---- [[pools.NAME.stamps]] -----------------------------------------------

/// 100, so that percentages are easy when shifting traffic between stamps
/// (the reference's release switch steps weights 10 -> 50 -> 100).
pub const DEFAULT_WEIGHT: u32 = 100;
/// Everyone in the first tier: active-active unless told otherwise.
pub const DEFAULT_PRIORITY: u32 = 1;
/// Upper bound of `weight`: fine-grained enough for 0.1 % steps.
pub const MAX_WEIGHT: u32 = 1000;
/// Upper bound of `priority`: more tiers than anyone needs, fits a `u8`.
pub const MAX_PRIORITY: u32 = 255;
/// Upper bound of `retry.attempts`: past five tries the client has waited
/// too long and the pool is in trouble; more tries only add load.
pub const MAX_RETRY_ATTEMPTS: u32 = 5;
/// Upper bound of a probe window: the window is kept per stamp, and 100
/// samples at any sane interval is already minutes of history.
pub const MAX_SAMPLE_SIZE: u32 = 100;

// ---- [dns_server] --------------------------------------------------------

/// Half a minute: a failover reaches DNS clients within about this long,
/// while resolvers still cache long enough that the server sees a query per
/// resolver and name every half minute, not per client (Traffic Manager
/// lets users go down to 0 s, Route 53 health-checked records use 60 s).
pub const DEFAULT_DNS_TTL: Duration = Duration::from_secs(30);
/// A resolver refreshes each name once per TTL, so even a thousand names
/// at 30 s is about 33 queries a second from one resolver network; 200
/// leaves room for bursts after a flush, while a spoofed flood reflected at
/// a victim is cut to 200 answers a second (BIND's RRL idea, per network).
pub const DEFAULT_DNS_RESPONSES_PER_SECOND: u32 = 200;
/// `dns_server.threads` at most, and the most "one per core" gives: past
/// this, more threads only contend for the shared counters, and a zone
/// needing more than 64 cores of DNS wants more edges.
pub const MAX_DNS_THREADS: u32 = 64;

// ---- [fleet] -------------------------------------------------------------

/// Key prefix of a fleet when none is given: one fleet per etcd cluster
/// unless the operator separates them.
pub const DEFAULT_FLEET_PREFIX: &str = "/stampgate";
/// An edge that dies leaves the fleet's view after this long: long enough
/// to ride out a short etcd leader election, short enough that a dead edge
/// stops counting toward the health quorum within seconds.
pub const DEFAULT_FLEET_LEASE_TTL: Duration = Duration::from_secs(10);
/// etcd grants leases in whole seconds, and a lease shorter than this is
/// renewed so often that a busy etcd would expire live edges.
pub const MIN_FLEET_LEASE_TTL: Duration = Duration::from_secs(2);
