//! The authoritative DNS server (GSLB): answers for one zone from the same
//! routing snapshot the proxy reads, so a client that resolves
//! `catalog.example.com` is sent where the proxy would send its request.
//!
//! ```text
//!  UDP: udp::serve, one datagram answered and sent at a time
//!         rate_limit (UDP only, per client network)
//!         packet_cache: a repeat of a query whose inputs are unchanged
//!         is sent the response already written for it ──▶ client
//!  TCP: hickory-server's listener
//!  (on the `stampgate-dnsN` threads, each with a runtime of its own and
//!  its own UDP socket per address; TCP on the first; hickory parses,
//!  writes, truncates (TC bit) and answers FORMERR)
//!      │  handler::Handler::decide
//!      │    table = routing.load()                (the proxy's ArcSwap)
//!      │    answer::compute(table, record, edges, resolved)   (pure)
//!      │    order drawn by weight, A/AAAA records, SOA serial = generation
//!      ▼
//!  response ──▶ client
//!
//!  watcher task (every 100 ms): answers of every record ──▶ /admin/status,
//!  fail-open gauge and alarm events on change
//! ```
//!
//! Every answer is computed when the query arrives, from the table loaded
//! at that moment, or sent from the packet cache only after checking that
//! the table, the live edges and the resolved names it was computed from
//! are still the current ones: a new table is in the very next answer
//! either way. Answering takes no lock: the routing table, the
//! discovery cache and the live edges are all `ArcSwap` loads, counters
//! are relaxed atomics, so a query never waits for the proxy nor the
//! proxy for a query.
//!
//! The fleet seam: answers of kind `"edges"` read [`LiveEdges`], a list of
//! [`EdgeInfo`] behind an `ArcSwap`. It always holds this edge
//! (`[fleet] advertise`), judged from the local table at answer time, so
//! this edge is answered while it can serve the pool even with etcd down.
//! In a fleet, the composition root (`crate::app`) follows the fleet's
//! live peers and calls [`LiveEdges::set_peers`] with each one's addresses
//! and the pools its published view says it can serve; this module does
//! not know the fleet.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use arc_swap::ArcSwap;
use hickory_server::Server;
use serde_json::{Value, json};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::config::DnsServerSettings;
use crate::controller::events::{EventKind, EventLog, NewEvent};
use crate::discovery::DnsCache;
use crate::metrics::{DnsQueryStats, ProxyStats};
use crate::routing::RoutingTable;

pub mod answer;
mod handler;
mod packet_cache;
use handler::Handler;
pub mod rate_limit;
mod udp;

/// A TCP client must send its query within this time, or the connection
/// is closed: long enough for a resolver across an ocean, short enough
/// that idle connections cannot pile up (BIND's `tcp-initial-timeout` is
/// 30 s; a GSLB answer is one round trip).
const TCP_TIMEOUT: Duration = Duration::from_secs(10);
/// Per-connection buffer of outgoing TCP responses: a resolver pipelines
/// a few queries at most.
const TCP_RESPONSE_BUFFER: usize = 32;
/// Receive buffer asked for on each UDP socket. The default (about 200 KiB,
/// a few hundred queries with kernel overhead) overflows on the burst a
/// resolver farm sends after a cache flush, and the kernel then drops
/// queries before the server sees them; 4 MiB holds tens of thousands. The
/// kernel caps it at `net.core.rmem_max`.
const UDP_RECV_BUFFER: usize = 4 << 20;
/// How often the watcher recomputes every record's answer for status,
/// metrics and alarms. Queries never wait for it.
const WATCH_INTERVAL: Duration = Duration::from_millis(100);

/// One edge of the fleet, as DNS answers of kind `"edges"` see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeInfo {
    /// Edge name (status and logs).
    pub name: Arc<str>,
    /// Addresses clients reach it at.
    pub addresses: Vec<IpAddr>,
    /// The pools this edge reports it can serve. `None` is this edge
    /// itself, judged from the local routing table at answer time.
    pub pools: Option<Vec<Arc<str>>>,
}

/// The live edges of the fleet, read by every `"edges"` answer.
///
/// Locking: none; one writer (the fleet sync task) stores a whole new list,
/// readers `load` it.
#[derive(Debug, Clone)]
pub struct LiveEdges(Arc<ArcSwap<Vec<EdgeInfo>>>);

impl LiveEdges {
    /// This edge alone, at its advertised addresses: what answers hold
    /// when there is no fleet.
    pub fn local(name: &str, advertise: &[IpAddr]) -> LiveEdges {
        LiveEdges(Arc::new(ArcSwap::from_pointee(vec![EdgeInfo {
            name: name.into(),
            addresses: advertise.to_vec(),
            pools: None,
        }])))
    }

    /// Replace the whole list.
    pub fn set(&self, edges: Vec<EdgeInfo>) {
        self.0.store(Arc::new(edges));
    }

    /// Replace the other edges of the fleet, keeping this edge (the entry
    /// judged from the local table, `pools: None`) first: whatever the
    /// fleet says, this edge answers for itself.
    pub fn set_peers(&self, peers: impl IntoIterator<Item = EdgeInfo>) {
        let current = self.load();
        let this_edge = current.iter().filter(|e| e.pools.is_none()).cloned();
        self.set(this_edge.chain(peers).collect());
    }

    /// The current list.
    pub fn load(&self) -> arc_swap::Guard<Arc<Vec<EdgeInfo>>> {
        self.0.load()
    }
}

/// What the DNS server reads besides the routing table.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// Resolved stamp host names (`ControllerHandle::dns`).
    pub resolved: DnsCache,
    /// Live edges for `"edges"` answers.
    pub edges: LiveEdges,
    /// Where fail-open alarms go (`ControllerHandle::events`).
    pub events: EventLog,
    /// Where the DNS counters are published for `/metrics` and status
    /// (`ControllerHandle::stats`).
    pub stats: Arc<ProxyStats>,
}

/// Why the DNS server did not start.
#[derive(Debug, thiserror::Error)]
pub enum DnsServerError {
    /// A listener could not be bound.
    #[error("dns_server.listen: cannot listen on {addr} ({protocol}): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// `"udp"` or `"tcp"`.
        protocol: &'static str,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The server's thread or its runtime could not be started.
    #[error("dns_server: cannot start the DNS server thread: {0}")]
    Runtime(#[source] std::io::Error),
    /// A name hickory refuses although validation accepted it.
    #[error("dns_server: {0}")]
    Name(String),
}

/// A running DNS server.
#[derive(Debug)]
pub struct DnsServerHandle {
    /// Bound addresses, each served over UDP and TCP on the same port
    /// (port 0 resolved).
    pub listen: Vec<SocketAddr>,
    /// Its counters (also in `ProxyStats::dns_server`).
    pub stats: Arc<DnsQueryStats>,
    task: JoinHandle<()>,
}

impl DnsServerHandle {
    /// Wait until the server has stopped after the shutdown token fired.
    pub async fn stopped(self) {
        let _ = self.task.await;
    }
}

/// Bind every `settings.listen` address on UDP and TCP and answer for the
/// zone until `shutdown`.
///
/// The server runs on threads of its own (`dns_server.threads`, default
/// one per core), each with a single-threaded runtime: a query then never waits
/// behind proxy connections, probes or controller ticks, and a query flood
/// cannot take the proxy's worker threads. On the proxy's work-stealing
/// runtime each query's task also woke an idle worker to steal it, which
/// about doubled the CPU per query (bench/RESULTS.md, "Its own thread, UDP
/// answered inline"). Each thread has its own UDP socket on every address
/// (`SO_REUSEPORT`, so the kernel spreads clients over them); the first
/// also serves TCP. Binding happens on the threads, where the sockets are
/// polled, and the results come back here, so a bind error still fails
/// the start and stops the threads already started.
pub async fn start(
    settings: &DnsServerSettings,
    routing: Arc<ArcSwap<RoutingTable>>,
    inputs: Inputs,
    shutdown: CancellationToken,
) -> Result<DnsServerHandle, DnsServerError> {
    let zone = handler::Zone::new(settings).map_err(DnsServerError::Name)?;
    let names: Vec<&str> = settings.records.iter().map(|r| r.fqdn.as_str()).collect();
    let stats = Arc::new(DnsQueryStats::new(&names, &settings.zone));
    inputs.stats.dns_server.store(Some(stats.clone()));
    let handler = Arc::new(handler::Handler {
        zone,
        routing: routing.clone(),
        resolved: inputs.resolved.clone(),
        edges: inputs.edges.clone(),
        limiter: rate_limit::RateLimiter::new(
            settings.responses_per_second,
            tokio::time::Instant::now(),
        ),
        stats: stats.clone(),
    });
    // Every thread holds a sender; `recv` says `None` once all have ended.
    let (ended_tx, mut ended_rx) = mpsc::channel::<()>(1);
    let stop = shutdown.child_token();
    let started = start_threads(settings, &handler, &ended_tx, &stop).await;
    drop(ended_tx);
    let listen = match started {
        Ok(listen) => listen,
        Err(e) => {
            stop.cancel();
            return Err(e);
        }
    };
    tracing::info!(
        zone = %settings.zone,
        ?listen,
        records = settings.records.len(),
        threads = settings.thread_count(),
        "dns server listening"
    );

    let watcher = tokio::spawn(watch(
        settings.clone(),
        routing,
        inputs,
        stats.clone(),
        shutdown,
    ));
    let task = tokio::spawn(async move {
        while ended_rx.recv().await.is_some() {}
        let _ = watcher.await;
    });
    Ok(DnsServerHandle {
        listen,
        stats,
        task,
    })
}

/// Start the first thread (UDP and TCP on every address, port 0 resolved),
/// then the others on the addresses it bound. The bound addresses, or the
/// first error.
async fn start_threads(
    settings: &DnsServerSettings,
    handler: &Arc<Handler>,
    ended: &mpsc::Sender<()>,
    stop: &CancellationToken,
) -> Result<Vec<SocketAddr>, DnsServerError> {
    let threads = settings.thread_count();
    let reuse_port = threads > 1;
    let (bound_tx, bound_rx) = oneshot::channel();
    on_own_thread(
        0,
        ended.clone(),
        serve_first(
            handler.clone(),
            settings.listen.clone(),
            reuse_port,
            bound_tx,
            stop.clone(),
        ),
    )?;
    let listen = bound_rx.await.map_err(|_| ended_early())??;
    for index in 1..threads {
        let (bound_tx, bound_rx) = oneshot::channel();
        on_own_thread(
            index,
            ended.clone(),
            serve_more(handler.clone(), listen.clone(), bound_tx, stop.clone()),
        )?;
        bound_rx.await.map_err(|_| ended_early())??;
    }
    Ok(listen)
}

fn ended_early() -> DnsServerError {
    DnsServerError::Runtime(std::io::Error::other("a DNS server thread ended early"))
}

/// Run `work` on a new thread `stampgate-dnsN` with a runtime of its own.
/// `ended` is dropped once the thread's runtime, and with it every socket
/// the work bound, is gone.
fn on_own_thread(
    index: usize,
    ended: mpsc::Sender<()>,
    work: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DnsServerError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(DnsServerError::Runtime)?;
    std::thread::Builder::new()
        // Linux keeps 15 bytes of a thread name: room for 2 digits.
        .name(format!("stampgate-dns{index}"))
        .spawn(move || {
            runtime.block_on(work);
            drop(runtime);
            drop(ended);
        })
        .map_err(DnsServerError::Runtime)?;
    Ok(())
}

/// The first DNS thread: bind UDP and TCP on every address, report the
/// bound addresses, answer until `shutdown`, then let hickory finish the
/// TCP queries in hand.
async fn serve_first(
    handler: Arc<Handler>,
    addrs: Vec<SocketAddr>,
    reuse_port: bool,
    bound: oneshot::Sender<Result<Vec<SocketAddr>, DnsServerError>>,
    shutdown: CancellationToken,
) {
    let mut tcp_server = Server::new(handler::Shared(handler.clone()));
    let mut sockets = Vec::with_capacity(addrs.len());
    let mut listen = Vec::with_capacity(addrs.len());
    for addr in addrs {
        match bind_pair(addr, reuse_port).await {
            Ok((udp, tcp, at)) => {
                sockets.push(udp);
                tcp_server.register_listener(tcp, TCP_TIMEOUT, TCP_RESPONSE_BUFFER);
                listen.push(at);
            }
            Err(e) => {
                let _ = bound.send(Err(e));
                return;
            }
        }
    }
    if bound.send(Ok(listen)).is_err() {
        return;
    }
    serve_udp(sockets, &handler, &shutdown).await;
    if let Err(error) = tcp_server.shutdown_gracefully().await {
        tracing::warn!(%error, "dns server stopped with an error");
    }
}

/// Every other DNS thread: one more UDP socket on each address the first
/// bound, answered until `shutdown`.
async fn serve_more(
    handler: Arc<Handler>,
    addrs: Vec<SocketAddr>,
    bound: oneshot::Sender<Result<(), DnsServerError>>,
    shutdown: CancellationToken,
) {
    let mut sockets = Vec::with_capacity(addrs.len());
    for addr in addrs {
        match bind_udp(addr, true) {
            Ok(udp) => sockets.push(udp),
            Err(source) => {
                let _ = bound.send(Err(DnsServerError::Bind {
                    addr,
                    protocol: "udp",
                    source,
                }));
                return;
            }
        }
    }
    if bound.send(Ok(())).is_err() {
        return;
    }
    serve_udp(sockets, &handler, &shutdown).await;
}

/// Answer on each socket until `shutdown`.
async fn serve_udp(sockets: Vec<UdpSocket>, handler: &Arc<Handler>, shutdown: &CancellationToken) {
    let loops: Vec<_> = sockets
        .into_iter()
        .map(|socket| tokio::spawn(udp::serve(socket, handler.clone(), shutdown.clone())))
        .collect();
    for udp_loop in loops {
        let _ = udp_loop.await;
    }
}

/// Port 0 asks for a free port: tries this many UDP ports before giving up
/// on finding one whose TCP twin is free too.
const PORT_ZERO_TRIES: usize = 16;

/// A UDP socket and a TCP listener on one port: the port UDP got, so that
/// port 0 gives one port for both, as resolvers expect when they retry a
/// truncated answer over TCP. With port 0, a TCP port already taken (the
/// kernel picks UDP ports without looking at TCP) means another try.
async fn bind_pair(
    addr: SocketAddr,
    reuse_port: bool,
) -> Result<(UdpSocket, TcpListener, SocketAddr), DnsServerError> {
    let mut tries = 0;
    loop {
        tries += 1;
        let udp = bind_udp(addr, reuse_port).map_err(|source| DnsServerError::Bind {
            addr,
            protocol: "udp",
            source,
        })?;
        let bound = udp.local_addr().map_err(|source| DnsServerError::Bind {
            addr,
            protocol: "udp",
            source,
        })?;
        match TcpListener::bind(bound).await {
            Ok(tcp) => return Ok((udp, tcp, bound)),
            Err(e)
                if addr.port() == 0
                    && e.kind() == std::io::ErrorKind::AddrInUse
                    && tries < PORT_ZERO_TRIES => {}
            Err(source) => {
                return Err(DnsServerError::Bind {
                    addr: bound,
                    protocol: "tcp",
                    source,
                });
            }
        }
    }
}

/// A non-blocking UDP socket with a large receive buffer; with
/// `reuse_port`, one of a group on the same address among which the
/// kernel spreads clients (by their address and port).
fn bind_udp(addr: SocketAddr, reuse_port: bool) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if let Err(error) = socket.set_recv_buffer_size(UDP_RECV_BUFFER) {
        // Not fatal: the server works with the default, only bursts suffer.
        tracing::warn!(%error, %addr, "dns: cannot enlarge the UDP receive buffer");
    }
    socket.set_nonblocking(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// Recompute every record's answer, publish it for status, and raise or
/// clear the fail-open alarm when it changes. Queries do not depend on
/// this loop; it exists so that an operator sees the answers (and the
/// alarm fires) even while no query arrives.
async fn watch(
    settings: DnsServerSettings,
    routing: Arc<ArcSwap<RoutingTable>>,
    inputs: Inputs,
    stats: Arc<DnsQueryStats>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut last = Value::Null;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let table = routing.load();
        let edges = inputs.edges.load();
        let mut records = Vec::with_capacity(settings.records.len());
        for (i, record) in settings.records.iter().enumerate() {
            let answer = answer::compute(&table, record, &edges, |host| inputs.resolved.get(host));
            let was = stats.failing_open[i].swap(answer.failing_open, Ordering::Relaxed);
            if answer.failing_open != was {
                alarm(&inputs.events, record, answer.failing_open);
            }
            records.push(json!({
                "name": record.fqdn,
                "pool": record.pool,
                "answer": record.answer.as_str(),
                "addresses": answer.addresses().iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                "targets": answer.targets.iter().map(|t| &*t.name).collect::<Vec<_>>(),
                "failing_open": answer.failing_open,
                "problem": answer.problem,
            }));
        }
        let status = json!({
            "zone": settings.zone,
            "serial": table.generation as u32,
            "ttl_s": settings.ttl.as_secs(),
            "threads": settings.thread_count(),
            "records": records,
        });
        if status != last {
            stats.status.store(Arc::new(status.clone()));
            last = status;
        }
    }
}

fn alarm(events: &EventLog, record: &crate::config::DnsRecordConfig, failing_open: bool) {
    let reason = if failing_open {
        tracing::warn!(record = %record.fqdn, pool = %record.pool, "dns: no usable target, answering with every enabled one (fail-open)");
        format!(
            "DNS {}: no usable {} in pool {}; answering with every enabled one (fail-open)",
            record.fqdn,
            record.answer.as_str(),
            record.pool
        )
    } else {
        tracing::info!(record = %record.fqdn, pool = %record.pool, "dns: usable targets again, fail-open over");
        format!(
            "DNS {}: usable {} in pool {} again; fail-open over",
            record.fqdn,
            record.answer.as_str(),
            record.pool
        )
    };
    events.push(NewEvent {
        kind: EventKind::Alarm,
        pool: Some(record.pool.clone()),
        stamp: None,
        from: Some(
            if failing_open {
                "answering"
            } else {
                "failing-open"
            }
            .into(),
        ),
        to: Some(
            if failing_open {
                "failing-open"
            } else {
                "answering"
            }
            .into(),
        ),
        reason,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(name: &str, last: u8) -> EdgeInfo {
        EdgeInfo {
            name: name.into(),
            addresses: vec![[127, 0, 0, last].into()],
            pools: Some(vec!["p".into()]),
        }
    }

    #[test]
    fn set_peers_replaces_the_other_edges_and_keeps_this_one_first() {
        let edges = LiveEdges::local("me", &[[127, 0, 0, 2].into()]);
        edges.set_peers([peer("e3", 3), peer("e4", 4)]);
        let names = |e: &LiveEdges| {
            e.load()
                .iter()
                .map(|e| e.name.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&edges), ["me", "e3", "e4"]);
        edges.set_peers([peer("e4", 4)]);
        assert_eq!(names(&edges), ["me", "e4"]);
        edges.set_peers([]);
        assert_eq!(names(&edges), ["me"]);
        assert_eq!(edges.load()[0].pools, None, "this edge is judged locally");
    }
}
