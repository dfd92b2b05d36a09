//! # stampgate
//!
//! A global traffic manager and failover proxy for workloads deployed as
//! identical regional **stamps**. One process terminates client HTTP/1.1,
//! HTTP/2 and TLS, picks a stamp from a lock-free routing snapshot, and
//! forwards the request.
//!
//! ```text
//!  client ──▶ proxy::server (accept, TLS, timers in proxy::conn)
//!               │  proxy::h1_server: HTTP/1.1 fast path; hyper otherwise
//!               ▼
//!           proxy::handler::Gateway::handle
//!               │  table = routing.load()            (one ArcSwap load)
//!               │  route = table.route(host, path)   (routing)
//!               │  proxy::attempts: pick → classify → may retry
//!               │    stamp = pool.selector.pick(..)  (routing::selector)
//!               │  proxy::headers::prepare_request
//!               ▼
//!           upstream::Upstream::send ──▶ stamp
//!               │  connection from upstream::conn_cache (per stamp)
//!               │  outcome ──▶ StampStats atomics ──▶ Signal::Outlier
//!               ▼
//!           response streamed back (proxy::body, proxy::in_flight)
//! ```
//!
//! The control plane runs beside it, in one task that is the only writer of
//! the routing table:
//!
//! ```text
//!  probes (health::probe) ─┐
//!  passive failures ───────┤ signals::Signal ┌────────────┐ store ┌─────────────────────┐
//!  admin commands ─────────┼───────────────▶ │ controller │ ────▶ │ArcSwap<RoutingTable>│
//!  DNS answers ────────────┘                 └────────────┘       └─────────────────────┘
//!                                     events, state file, status
//! ```
//!
//! ## Layers
//!
//! Imports run one way, from the top of this list down; no module imports
//! one above it, and none import each other in a circle. The data plane
//! does not start the control plane: [`app`] starts both.
//!
//! ```text
//!  main (the CLI, a binary of its own)
//!  drill, demo            the rehearsal and the embedded demo
//!  app                    composition root: controller, access log, listeners, admin
//!  admin  dns_server      admin API, dashboard, `stampgate ctl` │ authoritative DNS
//!  fleet                  many edges as one through etcd: shared decisions, published views
//!  controller             the one writer: health verdicts, operator decisions, reload
//!  proxy    health        the data plane │ probes and the pure health state machine
//!  metrics                the Prometheus page, read through the routing table
//!  routing                the snapshot and the small types it holds (retry budget,
//!                         header rules, latency histogram, per-stamp and per-route stats)
//!  upstream               the way to a stamp: connector, connection cache, HTTP/1.1 client
//!  config  error  signals  tripwire  discovery  stamp     leaves
//!  counters               metrics counters indexed by enum labels (a leaf)
//!  build_info  logging  notify                          leaves of the process
//! ```
//!
//! [`signals`] holds the messages between the planes (probe samples,
//! passive signals, operator commands), so that the data plane and the
//! probes can reach the controller without importing it.

pub mod admin;
pub mod app;
pub mod build_info;
pub mod config;
pub mod controller;
pub mod counters;
pub mod demo;
pub mod discovery;
pub mod dns_server;
pub mod drill;
pub mod error;
pub mod fleet;
#[cfg(test)]
pub(crate) mod fuzzing;
pub mod health;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod proxy;
pub mod routing;
pub mod signals;
pub mod stamp;
pub mod tripwire;
pub mod upstream;
