//! The fleet sync task: one loop per edge. It opens a session with etcd
//! (client, lease, this edge's registration), brings the controller up to
//! the fleet's decisions (resume the watch from the last applied revision,
//! or a full read when that revision was compacted or etcd was replaced),
//! then applies what the watch brings, renews the lease and publishes this
//! edge's view every second (and at once when the pools it can serve
//! change, so that the other edges' DNS answers follow within a watch
//! round trip). When the session fails it raises the alarm and reconnects
//! with backoff; the edge keeps serving meanwhile.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    TxnOpResponse, WatchOptions,
};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::record::{self, EdgeView, KeyKind};
use super::{ETCD_CALL_TIMEOUT, FleetError, Shared};
use crate::config::FleetSettings;
use crate::controller::events::{EventKind, NewEvent};
use crate::signals::{AdminState, Command, FleetApply, FleetDecision};

/// This edge's view is published this often: the health quorum reacts
/// within about this long of a quorum's probes agreeing.
const PUBLISH_EVERY: Duration = Duration::from_secs(1);
/// Reconnect backoff: first retry soon (etcd restarts take a second or
/// two), then back off so a long outage costs etcd little when it returns.
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// HTTP/2 pings on the etcd connection: a cut network path is noticed in
/// about this long even while nothing is being sent.
const PING_EVERY: Duration = Duration::from_secs(1);
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a session could not open or ended.
#[derive(Debug, thiserror::Error)]
pub(super) enum SessionError {
    /// Starting must stop (the name is taken, bad TLS files).
    #[error(transparent)]
    Fatal(FleetError),
    /// etcd unreachable or the session broke: retry.
    #[error("{0}")]
    Lost(String),
}

fn lost(e: impl std::fmt::Display) -> SessionError {
    SessionError::Lost(e.to_string())
}

/// An etcd call bounded by [`ETCD_CALL_TIMEOUT`].
async fn bounded<T, E: std::fmt::Display>(
    what: &str,
    call: impl Future<Output = Result<T, E>>,
) -> Result<T, SessionError> {
    match tokio::time::timeout(ETCD_CALL_TIMEOUT, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(SessionError::Lost(format!("{what}: {e}"))),
        Err(_) => Err(SessionError::Lost(format!(
            "{what}: no answer within {ETCD_CALL_TIMEOUT:?}"
        ))),
    }
}

/// Client options from `[fleet]`: TLS files and the password are read
/// here, once, so a bad file stops start-up with its key named.
pub(super) fn connect_options(s: &FleetSettings) -> Result<ConnectOptions, FleetError> {
    let mut o = ConnectOptions::new()
        .with_connect_timeout(ETCD_CALL_TIMEOUT)
        .with_keep_alive(PING_EVERY, PING_TIMEOUT)
        .with_keep_alive_while_idle(true);
    if let (Some(user), Some(var)) = (&s.username, &s.password_env) {
        let password = std::env::var(var).map_err(|_| {
            FleetError::Setup(format!(
                "fleet.password_env: the variable {var} is unset or not UTF-8"
            ))
        })?;
        o = o.with_user(user.clone(), password);
    }
    if s.etcd.iter().any(|e| e.starts_with("https://")) {
        let read = |key: &str, p: &std::path::Path| {
            std::fs::read(p)
                .map_err(|e| FleetError::Setup(format!("{key}: cannot read {}: {e}", p.display())))
        };
        let mut tls = etcd_client::TlsOptions::new();
        if let Some(ca) = &s.ca_file {
            tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read(
                "fleet.ca_file",
                ca,
            )?));
        }
        if let (Some(cert), Some(key)) = (&s.cert, &s.key) {
            tls = tls.identity(etcd_client::Identity::from_pem(
                read("fleet.cert", cert)?,
                read("fleet.key", key)?,
            ));
        }
        o = o.with_tls(tls);
    }
    Ok(o)
}

/// A live session: the client, this edge's lease and its keep-alive.
pub(super) struct Session {
    client: Client,
    lease: i64,
    keeper: etcd_client::LeaseKeeper,
    keep_stream: etcd_client::LeaseKeepAliveStream,
}

/// Connect, take a lease (the previous one if it is still alive: after an
/// etcd restart it is, and this edge's key still holds it) and register
/// this edge's name.
pub(super) async fn open(
    shared: &Shared,
    options: &ConnectOptions,
    prior_lease: Option<i64>,
) -> Result<Session, SessionError> {
    let mut client = bounded(
        "connect",
        Client::connect(&shared.settings.etcd, Some(options.clone())),
    )
    .await?;
    let ttl = shared.settings.lease_ttl.as_secs() as i64;
    let mut lease = None;
    if let Some(id) = prior_lease {
        let alive = bounded("lease", client.lease_time_to_live(id, None)).await?;
        if alive.ttl() > 0 {
            lease = Some(id);
        }
    }
    let lease = match lease {
        Some(id) => id,
        None => bounded("lease grant", client.lease_grant(ttl, None))
            .await?
            .id(),
    };
    register(shared, &mut client, lease).await?;
    let (keeper, keep_stream) = bounded("lease keep-alive", client.lease_keep_alive(lease)).await?;
    Ok(Session {
        client,
        lease,
        keeper,
        keep_stream,
    })
}

/// Put this edge's key bound to `lease`, unless a live key of another
/// lease holds the name (two edges with one name would each take the
/// other's view for its own).
async fn register(shared: &Shared, client: &mut Client, lease: i64) -> Result<(), SessionError> {
    let key = shared.keys.edge(&shared.settings.name);
    let view = placeholder(shared);
    let put = TxnOp::put(
        key.clone(),
        serde_json::to_vec(&view).expect("view serializes"),
        Some(PutOptions::new().with_lease(lease)),
    );
    let txn = Txn::new()
        .when(vec![Compare::create_revision(
            key.clone(),
            CompareOp::Equal,
            0,
        )])
        .and_then(vec![put.clone()])
        .or_else(vec![TxnOp::get(key.clone(), None)]);
    let response = bounded("register", client.txn(txn)).await?;
    if response.succeeded() {
        return Ok(());
    }
    let holder = response.op_responses().into_iter().find_map(|r| match r {
        TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.lease()),
        _ => None,
    });
    match holder {
        Some(l) if l == lease => Ok(()),
        Some(other) => Err(SessionError::Fatal(FleetError::NameTaken {
            name: shared.settings.name.clone(),
            prefix: shared.settings.prefix.clone(),
            lease: other,
        })),
        // Gone between the compare and the read: try again next session.
        None => Err(lost("register: this edge's key vanished while registering")),
    }
}

fn placeholder(shared: &Shared) -> EdgeView {
    EdgeView {
        name: shared.settings.name.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        config_fingerprint: shared.fingerprint.clone(),
        connected: true,
        revision: shared.applied.load(Ordering::Relaxed),
        local_overrides: Vec::new(),
        stamps: BTreeMap::new(),
        advertise: shared.settings.advertise.clone(),
        pools: record::serving_pools(&shared.controller.routing.load()),
    }
}

/// The loop: sessions one after the other, with backoff between them.
pub(super) async fn run(
    shared: Arc<Shared>,
    options: ConnectOptions,
    mut first: Option<Session>,
    cancel: CancellationToken,
) {
    let mut backoff = BACKOFF_MIN;
    let mut lease = first.as_ref().map(|s| s.lease);
    let mut quorum_down = BTreeMap::new();
    loop {
        let session = match first.take() {
            Some(s) => Ok(s),
            None => open(&shared, &options, lease).await,
        };
        let ended = match session {
            Ok(s) => {
                lease = Some(s.lease);
                backoff = BACKOFF_MIN;
                serve(&shared, s, &mut quorum_down, &cancel).await
            }
            Err(e) => Err(e),
        };
        match ended {
            Ok(()) => return,
            Err(e) => {
                if matches!(e, SessionError::Fatal(_)) {
                    // Not fatal once running: the edge keeps serving; the
                    // operator sees why in the alarm.
                    lease = None;
                }
                shared.disconnected(&e.to_string());
                if !quorum_down.is_empty() {
                    // Without etcd the other edges' verdicts age: this
                    // edge's own probes decide again.
                    quorum_down.clear();
                    let _ = shared
                        .controller
                        .command(
                            Command::FleetHealth {
                                down: BTreeMap::new(),
                            },
                            "fleet",
                        )
                        .await;
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = cancel.cancelled() => return,
            () = shared.halt.cancelled() => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One session until it breaks (`Err`) or the edge stops (`Ok`).
async fn serve(
    shared: &Arc<Shared>,
    session: Session,
    quorum_down: &mut BTreeMap<String, Vec<String>>,
    cancel: &CancellationToken,
) -> Result<(), SessionError> {
    let Session {
        mut client,
        lease,
        mut keeper,
        mut keep_stream,
    } = session;
    let start = catch_up(shared, &mut client).await?;
    let mut stream = watch_from(shared, &mut client, start).await?;
    shared.client.store(Some(Arc::new(client.clone())));
    let was = shared.connected.swap(true, Ordering::Relaxed);
    shared.metrics.connected.set(1);
    *shared.last_error.lock().expect("lock") = None;
    if !was {
        let revision = shared.applied.load(Ordering::Relaxed);
        tracing::info!(edge = %shared.settings.name, revision, "fleet: connected to etcd");
        shared.controller.events.push(NewEvent::proxy_wide(
            EventKind::Alarm,
            format!(
                "fleet: connected to etcd as edge {}; in sync at fleet revision {revision}",
                shared.settings.name
            ),
        ));
    }
    let mut renew = tokio::time::interval(shared.settings.lease_ttl / 3);
    renew.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut publish = tokio::time::interval(PUBLISH_EVERY);
    publish.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut tables = shared.controller.published();
    let mut tables_open = true;
    let mut published_pools = None;
    loop {
        tokio::select! {
            () = shared.halt.cancelled() => {
                shared.client.store(None);
                shared.connected.store(false, Ordering::Relaxed);
                return Ok(());
            }
            () = cancel.cancelled() => {
                shared.client.store(None);
                // Leave at once rather than after the lease's TTL.
                let _ = tokio::time::timeout(Duration::from_secs(1), client.lease_revoke(lease)).await;
                return Ok(());
            }
            message = stream.message() => {
                let response = message
                    .map_err(|e| lost(format!("watch: {e}")))?
                    .ok_or_else(|| lost("watch: etcd closed the stream"))?;
                if response.compact_revision() > 0 {
                    tracing::warn!(compacted = response.compact_revision(), "fleet: watch revision compacted; reading everything again");
                    shared.metrics.resyncs.inc();
                    let start = full_read(shared, &mut client).await?;
                    stream = watch_from(shared, &mut client, start).await?;
                    continue;
                }
                if response.canceled() {
                    return Err(lost(format!("watch canceled: {}", response.cancel_reason())));
                }
                on_events(shared, response.events()).await;
            }
            _ = renew.tick() => {
                bounded("lease keep-alive", keeper.keep_alive()).await?;
                let answer = bounded("lease keep-alive", keep_stream.message()).await?;
                if answer.is_none_or(|a| a.ttl() <= 0) {
                    return Err(lost("this edge's lease expired"));
                }
            }
            _ = publish.tick() => {
                published_pools = Some(publish_view(shared, &mut client, lease).await?);
                judge_quorum(shared, quorum_down).await;
            }
            changed = tables.changed(), if tables_open => {
                // Closed: the controller stopped, the edge is going down
                // and the cancel branch ends this loop.
                tables_open = changed.is_ok();
                let pools = record::serving_pools(&shared.controller.routing.load());
                if tables_open && published_pools.as_ref() != Some(&pools) {
                    published_pools = Some(publish_view(shared, &mut client, lease).await?);
                }
            }
        }
    }
}

/// The revision to watch from: resume after the last applied one, or read
/// everything when nothing was applied yet or etcd's revisions went back
/// (a replaced cluster).
async fn catch_up(shared: &Shared, client: &mut Client) -> Result<i64, SessionError> {
    let known = shared.applied.load(Ordering::Relaxed);
    if known == 0 {
        return full_read(shared, client).await;
    }
    let ledger = bounded("read", client.get(shared.keys.ledger(), None)).await?;
    let head = ledger.header().map_or(0, |h| h.revision());
    if head < known {
        tracing::warn!(
            head,
            known,
            "fleet: etcd is behind this edge's revision (replaced?); reading everything"
        );
        shared.metrics.resyncs.inc();
        return full_read(shared, client).await;
    }
    if let Some(kv) = ledger.kvs().first()
        && kv.mod_revision() <= known
    {
        shared.ledger.send_if_modified(|l| {
            let newer = kv.mod_revision() > *l;
            *l = (*l).max(kv.mod_revision());
            newer
        });
    }
    let edges = bounded(
        "read",
        client.get(shared.keys.edges(), Some(GetOptions::new().with_prefix())),
    )
    .await?;
    let mut map = BTreeMap::new();
    for kv in edges.kvs() {
        if let KeyKind::Edge(name) = shared.keys.kind(kv.key())
            && let Some(view) = shared.parse_edge(kv.key(), name, kv.value())
        {
            map.insert(name.to_owned(), view);
        }
    }
    shared.update_edges(|edges| *edges = map);
    Ok(known + 1)
}

/// Everything under the prefix: decisions applied as the whole truth,
/// edges replaced. Returns the revision to watch from.
async fn full_read(shared: &Shared, client: &mut Client) -> Result<i64, SessionError> {
    let response = bounded(
        "read",
        client.get(shared.keys.all(), Some(GetOptions::new().with_prefix())),
    )
    .await?;
    let revision = response.header().map_or(0, |h| h.revision());
    let mut decisions = Vec::new();
    let mut edges = BTreeMap::new();
    let mut ledger = 0;
    for kv in response.kvs() {
        match shared.keys.kind(kv.key()) {
            KeyKind::Decision(stamp) => {
                if let Some(d) =
                    shared.parse_decision(kv.key(), stamp, kv.value(), kv.mod_revision())
                {
                    decisions.push(d);
                }
            }
            KeyKind::Edge(name) => {
                if let Some(view) = shared.parse_edge(kv.key(), name, kv.value()) {
                    edges.insert(name.to_owned(), view);
                }
            }
            KeyKind::Ledger => ledger = kv.mod_revision(),
            KeyKind::Foreign => shared.bad_value(&format!(
                "{}: not a key of this fleet; ignored",
                String::from_utf8_lossy(kv.key())
            )),
        }
    }
    shared.update_edges(|map| *map = edges);
    shared
        .apply(FleetApply {
            decisions,
            full: true,
            revision,
        })
        .await?;
    shared.ledger.send_replace(ledger);
    Ok(revision + 1)
}

async fn watch_from(
    shared: &Shared,
    client: &mut Client,
    start: i64,
) -> Result<etcd_client::WatchStream, SessionError> {
    let options = WatchOptions::new().with_prefix().with_start_revision(start);
    bounded("watch", client.watch(shared.keys.all(), Some(options))).await
}

/// One watch response: decisions applied as one batch, edge views kept.
async fn on_events(shared: &Shared, events: &[etcd_client::Event]) {
    let received = Instant::now();
    let mut decisions = Vec::new();
    let mut ledger = None;
    let mut revision = 0;
    for event in events {
        let Some(kv) = event.kv() else { continue };
        revision = revision.max(kv.mod_revision());
        let put = event.event_type() == EventType::Put;
        match shared.keys.kind(kv.key()) {
            KeyKind::Decision(stamp) if put => {
                if let Some(d) =
                    shared.parse_decision(kv.key(), stamp, kv.value(), kv.mod_revision())
                {
                    decisions.push(d);
                }
            }
            KeyKind::Decision(stamp) => decisions.push(FleetDecision {
                stamp: stamp.to_owned(),
                admin: AdminState::Active,
                weight: None,
                deadline: None,
                by: "etcd".into(),
                edge: "etcd".into(),
                why: "decision deleted from etcd".into(),
                revision: kv.mod_revision(),
            }),
            KeyKind::Edge(name) if put => {
                if let Some(view) = shared.parse_edge(kv.key(), name, kv.value()) {
                    shared.update_edges(|edges| {
                        edges.insert(name.to_owned(), view);
                    });
                }
            }
            KeyKind::Edge(name) => shared.update_edges(|edges| {
                if edges.remove(name).is_some() {
                    tracing::info!(edge = %name, "fleet: edge left (lease expired or revoked)");
                }
            }),
            KeyKind::Ledger => ledger = Some(kv.mod_revision()),
            KeyKind::Foreign => shared.bad_value(&format!(
                "{}: not a key of this fleet; ignored",
                String::from_utf8_lossy(kv.key())
            )),
        }
    }
    if !decisions.is_empty() {
        let applied = shared
            .apply(FleetApply {
                decisions,
                full: false,
                revision,
            })
            .await;
        shared
            .metrics
            .apply_lag
            .observe(received.elapsed().as_secs_f64());
        if let Err(e) = applied {
            tracing::error!(error = %e, "fleet: decisions could not be applied");
        }
    }
    if let Some(l) = ledger {
        shared.ledger.send_if_modified(|cur| {
            let newer = l > *cur;
            *cur = (*cur).max(l);
            newer
        });
    }
}

/// Put this edge's view (health per stamp, advertised addresses, the
/// pools it can serve) under its lease; returns the pools put.
async fn publish_view(
    shared: &Shared,
    client: &mut Client,
    lease: i64,
) -> Result<Vec<String>, SessionError> {
    let pools = record::serving_pools(&shared.controller.routing.load());
    let Ok(status) = shared.controller.command(Command::Status, "fleet").await else {
        return Ok(pools);
    };
    let view = record::view_from_status(
        &shared.settings.name,
        &shared.fingerprint,
        shared.applied.load(Ordering::Relaxed),
        &status,
        &shared.settings.advertise,
        pools.clone(),
    );
    let bytes = serde_json::to_vec(&view).expect("view serializes");
    bounded(
        "publish",
        client.put(
            shared.keys.edge(&shared.settings.name),
            bytes,
            Some(PutOptions::new().with_lease(lease)),
        ),
    )
    .await?;
    Ok(pools)
}

/// Stamps a quorum of live edges sees unhealthy go to the controller when
/// that set changes.
async fn judge_quorum(shared: &Shared, last: &mut BTreeMap<String, Vec<String>>) {
    let down = {
        let edges = shared.edges.lock().expect("edges lock");
        let quorum = shared.settings.health_quorum.of(edges.len());
        record::quorum_down(edges.values(), quorum)
    };
    if down == *last {
        return;
    }
    if shared
        .controller
        .command(Command::FleetHealth { down: down.clone() }, "fleet")
        .await
        .is_ok()
    {
        *last = down;
    }
}

impl Shared {
    /// Apply a batch on the controller and remember the revision.
    async fn apply(&self, apply: FleetApply) -> Result<(), SessionError> {
        let revision = apply.revision;
        let full = apply.full;
        self.controller
            .command(Command::ApplyFleet(apply), "fleet")
            .await
            .map_err(|e| lost(format!("applying fleet decisions: {e}")))?;
        if full {
            self.applied.store(revision, Ordering::Relaxed);
        } else {
            self.applied.fetch_max(revision, Ordering::Relaxed);
        }
        self.metrics
            .revision
            .set(self.applied.load(Ordering::Relaxed));
        Ok(())
    }

    /// Change the live edges' views, and wake the live peers' watchers
    /// when what they see of the other edges changed. The lock is held for
    /// the change and the copy only.
    fn update_edges(&self, change: impl FnOnce(&mut BTreeMap<String, EdgeView>)) {
        let peers = {
            let mut edges = self.edges.lock().expect("edges lock");
            change(&mut edges);
            self.metrics.edges_alive.set(edges.len() as i64);
            record::live_peers(edges.values(), &self.settings.name)
        };
        self.peers.send_if_modified(|old| {
            let changed = *old != peers;
            if changed {
                *old = peers;
            }
            changed
        });
    }

    fn parse_decision(
        &self,
        key: &[u8],
        stamp: &str,
        value: &[u8],
        revision: i64,
    ) -> Option<FleetDecision> {
        let key = String::from_utf8_lossy(key);
        record::parse_decision(&key, stamp, value, revision)
            .map_err(|e| self.bad_value(&e.to_string()))
            .ok()
    }

    fn parse_edge(&self, key: &[u8], name: &str, value: &[u8]) -> Option<EdgeView> {
        let key = String::from_utf8_lossy(key);
        let view = record::parse_edge(&key, value)
            .map_err(|e| self.bad_value(&e.to_string()))
            .ok()?;
        if view.name != name {
            self.bad_value(&format!("{key}: names edge {:?}; ignored", view.name));
            return None;
        }
        Some(view)
    }

    /// A value under the prefix that is not ours: never applied, never a
    /// crash; an alarm so that someone looks.
    fn bad_value(&self, message: &str) {
        self.metrics.bad_values.inc();
        tracing::error!(%message, "fleet: ignoring a value under the prefix");
        self.controller.events.push(NewEvent::proxy_wide(
            EventKind::Alarm,
            format!("fleet: {message}"),
        ));
    }
}
