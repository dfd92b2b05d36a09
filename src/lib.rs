//! # stampgate
//!
//! A global traffic manager and failover proxy for workloads deployed as
//! identical regional **stamps**. One process terminates client HTTP/1.1,
//! HTTP/2 and TLS, picks a stamp from a lock-free routing snapshot, and
//! forwards the request.
//!
//! ```text
//!  client ──▶ proxy::server (accept, TLS, hyper conn)
//!               │
//!               ▼
//!           proxy::forward::Gateway::handle
//!               │  table = routing.load()            (one ArcSwap load)
//!               │  route = table.route(host, path)   (routing)
//!               │  stamp = pool.selector.pick(..)    (routing::selector)
//!               │  headers::prepare_request
//!               ▼
//!           proxy::upstream::Upstream::send ──▶ stamp
//!               │  connection from proxy::pool (per stamp, no hashing)
//!               │  outcome ──▶ StampStats atomics
//!               ▼
//!           response streamed back (proxy::body)
//! ```
//!
//! The control plane runs beside it, in one task that is the only writer of
//! the routing table:
//!
//! ```text
//!  probes (health::probe) ─┐
//!  passive failures ───────┤ Signal  ┌──────────────────┐ store ┌────────────────────┐
//!  admin commands ─────────┼───────▶ │ controller task  │ ────▶ │ArcSwap<RoutingTable>│
//!  DNS answers ────────────┘         └──────────────────┘       └────────────────────┘
//!                                     events, state file, status
//! ```
//!
//! Module map: [`config`] (two-stage TOML), [`routing`] (the snapshot and
//! selectors), [`proxy`] (the data plane), [`controller`] (the one writer:
//! health, operator decisions, reload), [`health`] (probes and the pure
//! state machine), [`discovery`] (DNS), [`admin`] (the admin API and
//! `stampgate ctl`), [`fleet`] (many edges as one through etcd: shared
//! operator decisions, published views), [`stamp`] (the simulated regional stamp), [`drill`]
//! (the failover rehearsal: load, fault timeline, report), [`error`]
//! (typed request-path errors), [`demo`].

pub mod admin;
pub mod app;
pub mod config;
pub mod controller;
pub mod demo;
pub mod discovery;
pub mod drill;
pub mod error;
pub mod fleet;
pub mod health;
pub mod metrics;
pub mod proxy;
pub mod routing;
pub mod signals;
pub mod stamp;
pub mod tripwire;
pub mod upstream;
