//! The fleet: many edges acting as one through etcd. Sits between the
//! admin API and the controller: an operator decision made on any edge is
//! written to etcd (compare-and-swap on the fleet's ledger key) and every
//! edge's sync task applies it through its controller's mailbox; each edge
//! publishes its own view (health per stamp, advertised addresses, the
//! pools it can serve) under a lease.
//!
//! ```text
//!  admin API ── decide ──▶ etcd txn (ledger CAS) ──▶ controller (apply here at once)
//!  etcd watch ──▶ sync task ──▶ Command::ApplyFleet ──▶ controller ──▶ new RoutingTable
//!  sync task ── every second, and when its servable pools change ──▶ edge view under its lease
//!  etcd watch ──▶ sync task ──▶ live peers (watch) ──▶ whoever answers DNS "edges"
//! ```
//!
//! etcd is never on the request path: while it is unreachable the edge
//! serves with the decisions it last applied (persisted in the state
//! file), shows the alarm, and reconnects with backoff.
//!
//! The live peers ([`FleetHandle::live_peers`]) are the other edges whose
//! lease-bound key exists. An edge leaves when its key is deleted (lease
//! revoked at shutdown, or expired after a crash). While etcd is
//! unreachable the last known peers are kept, not dropped: no lease can be
//! seen then, and dropping them would make every edge answer DNS with
//! itself alone, piling the fleet's clients onto whichever edge they asked.
//! The full read at reconnection removes the peers that died meanwhile.
//! This module does not know the DNS server: the composition root
//! (`crate::app`) subscribes and feeds it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, FleetSettings};
use crate::controller::ControllerHandle;
use crate::signals::{AdminError, Command, FleetApply, FleetDecision};

pub mod metrics;
pub mod record;
mod sync;

pub use record::LivePeer;
use record::{DecisionValue, EdgeView, Keys};

/// One etcd call (a txn, a read) gets this long; an admin call waiting on
/// an unreachable etcd answers 503 after it rather than hang.
const ETCD_CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// A decision whose ledger compare fails is planned again on the newer
/// state this many times before the caller gets 409.
const CAS_ATTEMPTS: usize = 3;
/// After a failed compare, wait this long at most for the watch to bring
/// the newer decisions before planning again.
const CATCH_UP: Duration = Duration::from_secs(2);

/// Why the fleet could not start.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// Another live edge holds this edge's name.
    #[error(
        "fleet.name: another live edge is registered as {name:?} under {prefix} (lease {lease:x}); \
         every edge needs its own name. If that edge just died, start again after fleet.lease_ttl"
    )]
    NameTaken {
        /// The name.
        name: String,
        /// The fleet prefix.
        prefix: String,
        /// The other edge's lease.
        lease: i64,
    },
    /// TLS files or the password variable cannot be used.
    #[error("fleet: {0}")]
    Setup(String),
}

/// What the admin API holds of the fleet.
#[derive(Debug, Clone)]
pub struct FleetHandle {
    shared: Arc<Shared>,
}

/// State shared by the sync task and the admin API. The mutexes are held
/// only to copy or replace a map, never across an await.
struct Shared {
    settings: FleetSettings,
    keys: Keys,
    fingerprint: String,
    controller: ControllerHandle,
    /// The etcd client while a session is up; `None` while etcd is
    /// unreachable (decisions then answer 503).
    client: ArcSwapOption<Client>,
    connected: AtomicBool,
    /// Why the last session ended (for status and the 503's reason).
    last_error: Mutex<Option<String>>,
    /// The fleet revision applied on this edge.
    applied: AtomicI64,
    /// The ledger's mod revision as applied here: decisions compare on it.
    ledger: watch::Sender<i64>,
    /// Live edges' views by name, with the lease that holds them.
    edges: Mutex<BTreeMap<String, EdgeView>>,
    /// What `edges` holds of the other edges for DNS, sent only when that
    /// changes (not at each peer's every-second publish).
    peers: watch::Sender<Vec<LivePeer>>,
    metrics: metrics::FleetMetrics,
    /// Stops the sync task the way a crash would: no lease revoke.
    halt: CancellationToken,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("name", &self.settings.name)
            .field("connected", &self.connected)
            .finish_non_exhaustive()
    }
}

impl FleetHandle {
    /// Join the fleet of `config.fleet`: try etcd once (bounded), refusing
    /// to start if another live edge has this name; if etcd is unreachable
    /// start anyway from the state file and keep trying in the background.
    pub async fn start(
        config: &Config,
        settings: FleetSettings,
        controller: ControllerHandle,
        cancel: CancellationToken,
    ) -> Result<FleetHandle, FleetError> {
        let fingerprint = std::fs::read(&config.source)
            .map(|b| record::fingerprint(&b))
            .unwrap_or_else(|_| "none".into());
        let status = controller.command(Command::Status, "fleet").await.ok();
        let applied = status
            .as_ref()
            .and_then(|s| s["fleet"]["revision"].as_i64())
            .unwrap_or(0);
        if config.admin.state_file.is_none() {
            tracing::warn!(edge = %settings.name, "fleet without admin.state_file: an edge restarted while etcd is down starts without the fleet's decisions");
        }
        let options = sync::connect_options(&settings)?;
        let shared = Arc::new(Shared {
            keys: Keys::new(&settings.prefix),
            settings,
            fingerprint,
            controller,
            client: ArcSwapOption::empty(),
            connected: AtomicBool::new(false),
            last_error: Mutex::new(Some("not connected yet".into())),
            applied: AtomicI64::new(applied),
            ledger: watch::Sender::new(0),
            edges: Mutex::new(BTreeMap::new()),
            peers: watch::Sender::new(Vec::new()),
            metrics: metrics::FleetMetrics::default(),
            halt: CancellationToken::new(),
        });
        shared.metrics.revision.set(applied);
        let first = match sync::open(&shared, &options, None).await {
            Ok(session) => Some(session),
            Err(sync::SessionError::Fatal(e)) => return Err(e),
            Err(e) => {
                shared.disconnected(&e.to_string());
                None
            }
        };
        tokio::spawn(sync::run(shared.clone(), options, first, cancel));
        Ok(FleetHandle { shared })
    }

    /// This edge's name.
    pub fn name(&self) -> &str {
        &self.shared.settings.name
    }

    /// Whether etcd is reachable now.
    pub fn connected(&self) -> bool {
        self.shared.connected.load(Ordering::Relaxed)
    }

    /// The fleet revision applied on this edge.
    pub fn revision(&self) -> i64 {
        self.shared.applied.load(Ordering::Relaxed)
    }

    /// Stop taking part the way a crashed edge would: no more lease
    /// renewals, no goodbye; the other edges drop this one when its lease
    /// expires. For drills and tests of a dying edge.
    pub fn halt(&self) {
        self.shared.halt.cancel();
    }

    /// The live edges other than this one that advertise addresses, with
    /// the pools each can serve; woken when that list changes. Kept as last
    /// seen while etcd is unreachable (see the module docs).
    pub fn live_peers(&self) -> watch::Receiver<Vec<LivePeer>> {
        self.shared.peers.subscribe()
    }

    /// Register the fleet's metrics.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.shared.metrics.register(registry);
    }

    /// Make `command` (drain, enable, disable, weight) a fleet-wide
    /// decision: plan it on this edge, write it to etcd comparing the
    /// ledger's revision, apply it here at once; every other edge applies
    /// it from its watch. While etcd is unreachable: 503, nothing changes.
    pub async fn decide(&self, command: Command, who: &str) -> Result<Value, AdminError> {
        let shared = &self.shared;
        for _ in 0..CAS_ATTEMPTS {
            let Some(client) = shared.client.load_full() else {
                return Err(shared.unavailable());
            };
            let ledger = *shared.ledger.borrow();
            let plan = shared
                .controller
                .command(Command::Plan(Box::new(command.clone())), who)
                .await?;
            let what = plan["what"].as_str().unwrap_or("decision").to_owned();
            let at = httpdate::fmt_http_date(std::time::SystemTime::now());
            let compares = vec![Compare::mod_revision(
                shared.keys.ledger(),
                CompareOp::Equal,
                ledger,
            )];
            let mut puts = Vec::new();
            let mut planned = Vec::new();
            for s in plan["stamps"].as_array().into_iter().flatten() {
                let stamp = s["stamp"].as_str().unwrap_or_default().to_owned();
                let value = DecisionValue {
                    admin: serde_json::from_value(s["admin"].clone())
                        .map_err(|e| AdminError::Refused(e.to_string()))?,
                    weight: s["weight"].as_u64().map(|w| w as u32),
                    deadline_ms: s["deadline_ms"].as_u64(),
                    by: who.to_owned(),
                    edge: shared.settings.name.clone(),
                    why: what.clone(),
                    at: at.clone(),
                };
                // No compare on the stamp's own key: the ledger orders every
                // decision, and a corrupt value there must not block the
                // decision that replaces it.
                let key = shared.keys.decision(&stamp);
                let bytes = serde_json::to_vec(&value).expect("decision serializes");
                puts.push(TxnOp::put(key, bytes, None));
                planned.push((stamp, value));
            }
            let ledger_value =
                json!({ "by": who, "edge": shared.settings.name, "why": what, "at": at });
            puts.push(TxnOp::put(
                shared.keys.ledger(),
                ledger_value.to_string(),
                None::<PutOptions>,
            ));
            let txn = Txn::new()
                .when(compares)
                .and_then(puts)
                .or_else(vec![TxnOp::get(shared.keys.ledger(), None)]);
            let mut c = (*client).clone();
            let response = match tokio::time::timeout(ETCD_CALL_TIMEOUT, c.txn(txn)).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => return Err(shared.unavailable_because(&e.to_string())),
                Err(_) => {
                    // Sent but unanswered: etcd may have committed it.
                    return Err(AdminError::FleetUnavailable(format!(
                        "etcd did not answer within {ETCD_CALL_TIMEOUT:?}: the decision may or may \
                         not have been recorded; look at /admin/fleet and the status before retrying"
                    )));
                }
            };
            let revision = response.header().map_or(0, |h| h.revision());
            if response.succeeded() {
                let decisions: Vec<FleetDecision> = planned
                    .into_iter()
                    .map(|(stamp, v)| v.into_decision(&stamp, revision))
                    .collect();
                let applied = shared
                    .controller
                    .command(
                        Command::ApplyFleet(FleetApply {
                            decisions,
                            full: false,
                            revision,
                        }),
                        who,
                    )
                    .await?;
                // Our compare proved no other decision came in between.
                shared.ledger.send_if_modified(|l| {
                    let newer = revision > *l;
                    *l = (*l).max(revision);
                    newer
                });
                shared.metrics.decisions.inc();
                return Ok(json!({
                    "ok": true,
                    "action": what,
                    "by": who,
                    "edge": shared.settings.name,
                    "fleet_revision": revision,
                    "stamps": applied["stamps"],
                }));
            }
            shared.metrics.conflicts.inc();
            // Someone decided in between: wait for the watch to bring that
            // decision, then plan again on the newer state.
            let current = response
                .op_responses()
                .into_iter()
                .find_map(|r| match r {
                    TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.mod_revision()),
                    _ => None,
                })
                .unwrap_or(0);
            tracing::info!(%who, action = %what, ours = ledger, current, "fleet decision raced another; planning again");
            let mut rx = shared.ledger.subscribe();
            let caught_up = tokio::time::timeout(CATCH_UP, rx.wait_for(|&l| l >= current)).await;
            if !matches!(caught_up, Ok(Ok(_))) {
                break;
            }
        }
        Err(AdminError::Conflict(
            "another operator changed the fleet's decisions at the same time and this edge could \
             not catch up; look at the status and try again"
                .into(),
        ))
    }

    /// `GET /admin/fleet`: every live edge's view as this edge last saw it.
    pub fn view(&self) -> Value {
        let shared = &self.shared;
        let connected = self.connected();
        let edges = shared.edges.lock().expect("edges lock").clone();
        let mut list: Vec<Value> = edges
            .values()
            .map(|e| {
                json!({
                    "name": e.name,
                    "alive": true,
                    "connected": if e.name == shared.settings.name { connected } else { e.connected },
                    "revision": e.revision,
                    "version": e.version,
                    "config_fingerprint": e.config_fingerprint,
                    "local_overrides": e.local_overrides,
                    "stamps": e.stamps,
                    "advertise": e.advertise,
                    "pools": e.pools,
                })
            })
            .collect();
        if !edges.contains_key(&shared.settings.name) {
            list.push(json!({
                "name": shared.settings.name,
                "alive": true,
                "connected": connected,
                "revision": self.revision(),
                "version": env!("CARGO_PKG_VERSION"),
                "config_fingerprint": shared.fingerprint,
                "local_overrides": [],
                "stamps": {},
                "advertise": shared.settings.advertise,
                "pools": record::serving_pools(&shared.controller.routing.load()),
            }));
        }
        json!({
            "edge": shared.settings.name,
            "connected": connected,
            "last_error": if connected { None } else { shared.last_error.lock().expect("lock").clone() },
            "revision": self.revision(),
            "stale": !connected,
            "edges": list,
        })
    }
}

impl Shared {
    fn unavailable(&self) -> AdminError {
        let why = self
            .last_error
            .lock()
            .expect("lock")
            .clone()
            .unwrap_or_else(|| "not connected".into());
        self.unavailable_because(&why)
    }

    fn unavailable_because(&self, why: &str) -> AdminError {
        AdminError::FleetUnavailable(format!(
            "etcd is unreachable ({why}): the decision was made on no edge. Every edge keeps \
             serving with the decisions of fleet revision {}. Retry when etcd is back, or add \
             local=1 (ctl --local) for an emergency change on this edge only",
            self.applied.load(Ordering::Relaxed)
        ))
    }

    /// The session ended (or never began): record why, raise the alarm
    /// once per outage.
    fn disconnected(&self, why: &str) {
        self.client.store(None);
        *self.last_error.lock().expect("lock") = Some(why.to_owned());
        self.metrics.connected.set(0);
        if self.connected.swap(false, Ordering::Relaxed) || self.metrics.outages.get() == 0 {
            self.metrics.outages.inc();
            tracing::error!(edge = %self.settings.name, error = %why, "fleet: etcd unreachable; serving with the last known decisions");
            self.controller.events.push(crate::controller::events::NewEvent::proxy_wide(
                crate::controller::events::EventKind::Alarm,
                format!(
                    "fleet: etcd unreachable ({why}); serving with the decisions of fleet revision {}, retrying",
                    self.applied.load(Ordering::Relaxed)
                ),
            ));
        }
    }
}
