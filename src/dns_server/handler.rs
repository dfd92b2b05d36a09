//! The hickory glue: [`Handler::decide`] turns a parsed query into an
//! authoritative answer for the zone, which the UDP loop writes itself and
//! hickory's TCP listener gets through [`RequestHandler`]. hickory owns
//! the wire format, truncation of UDP answers (TC bit) and FORMERR for
//! packets it cannot parse; this file decides what the answer says.
//!
//! Per query: one `ArcSwap::load` of the routing table, one of the live
//! edges, one of the discovery cache per stamp host name, relaxed atomic
//! counters. No lock, and nothing the proxy's request path waits on.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use arc_swap::ArcSwap;
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{Edns, Header, HeaderCounts, Metadata, OpCode, ResponseCode};
use hickory_server::proto::rr::rdata::{A, AAAA, NS, SOA};
use hickory_server::proto::rr::{DNSClass, LowerName, Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponse, MessageResponseBuilder, Queries};

use super::rate_limit::{RateLimiter, Verdict};
use super::{LiveEdges, answer};
use crate::config::{DnsRecordConfig, DnsServerSettings};
use crate::discovery::DnsCache;
use crate::metrics::{DNS_QTYPES, DNS_RCODES, DnsQueryStats};
use crate::routing::RoutingTable;

/// SOA timers. Nothing transfers this zone (answers are computed, not
/// stored), so refresh, retry and expire only need to be sane values for
/// tools that read them; these are RFC 1912's suggestions.
const SOA_REFRESH: i32 = 3600;
const SOA_RETRY: i32 = 600;
const SOA_EXPIRE: i32 = 86_400 * 14;
/// The only EDNS version there is.
const EDNS_VERSION: u8 = 0;
/// A DNS header's length; the ID is its first two bytes and the QR bit
/// the top bit of the third (RFC 1035 4.1.1).
pub(super) const HEADER_LEN: usize = 12;

/// The zone, parsed once at start.
#[derive(Debug)]
pub(super) struct Zone {
    origin: Name,
    origin_lower: LowerName,
    nameservers: Vec<Name>,
    hostmaster: Name,
    ttl: u32,
    /// Records with their lower-case names, in config order.
    records: Vec<(LowerName, DnsRecordConfig)>,
}

impl Zone {
    pub(super) fn new(settings: &DnsServerSettings) -> Result<Zone, String> {
        let name = |s: &str| Name::from_ascii(s).map_err(|e| format!("{s}: {e}"));
        let origin = name(&settings.zone)?;
        Ok(Zone {
            origin_lower: LowerName::new(&origin),
            origin,
            nameservers: settings
                .nameservers
                .iter()
                .map(|n| name(n))
                .collect::<Result<_, _>>()?,
            hostmaster: name(&settings.hostmaster)?,
            ttl: u32::try_from(settings.ttl.as_secs()).unwrap_or(i32::MAX as u32),
            records: settings
                .records
                .iter()
                .map(|r| Ok((LowerName::new(&name(&r.fqdn)?), r.clone())))
                .collect::<Result<_, String>>()?,
        })
    }

    /// The SOA record; the serial is the routing table generation, so a
    /// change of what the zone answers shows as a new serial.
    fn soa(&self, generation: u64) -> Record {
        let soa = SOA::new(
            self.nameservers[0].clone(),
            self.hostmaster.clone(),
            // Serial arithmetic (RFC 1982) wraps, so truncation is fine.
            generation as u32,
            SOA_REFRESH,
            SOA_RETRY,
            SOA_EXPIRE,
            // Negative answers are cached as long as positive ones.
            self.ttl,
        );
        Record::from_rdata(self.origin.clone(), self.ttl, RData::SOA(soa))
    }
}

/// Answers queries for one zone from the routing table.
pub(super) struct Handler {
    pub(super) zone: Zone,
    pub(super) routing: Arc<ArcSwap<RoutingTable>>,
    pub(super) resolved: DnsCache,
    pub(super) edges: LiveEdges,
    pub(super) limiter: Option<RateLimiter>,
    pub(super) stats: Arc<DnsQueryStats>,
}

/// What a lookup found, before it is written out.
struct Found {
    code: ResponseCode,
    answers: Vec<Record>,
    /// SOA in the authority section (NODATA, NXDOMAIN).
    soa: bool,
    /// Index of the metrics label: a record, the apex, or "-".
    label: usize,
    /// The generation of the table the answer came from: the SOA serial.
    generation: u64,
    /// How the addresses were ordered, when this answer may be written
    /// once and sent again (see [`Reuse`]); `None` when it may not.
    order: Option<Order>,
}

/// The order of the addresses in one answer: the targets' `(group,
/// weight)` and the order drawn over them (empty when the answer has no
/// addresses).
#[derive(Debug, Clone, Default)]
pub(super) struct Order {
    pub(super) shape: Vec<(u8, u32)>,
    pub(super) drawn: Vec<u16>,
}

/// A response, decided but not written: hickory's TCP listener (through
/// [`RequestHandler`]) and the UDP loop each write it their own way.
pub(super) struct Reply {
    pub(super) metadata: Metadata,
    edns: Option<Edns>,
    answers: Vec<Record>,
    soa: Option<Record>,
    /// Set when the same query bytes would get this response again, up to
    /// the order of the addresses, for as long as the routing table, the
    /// live edges and the resolved stamp names stay the ones it was
    /// decided from: the UDP packet cache keeps such responses.
    pub(super) reuse: Option<Reuse>,
}

/// What the UDP packet cache needs to send a kept response again.
#[derive(Debug, Clone)]
pub(super) struct Reuse {
    /// The query counter this response counts in (record, type, code).
    pub(super) counter: [usize; 3],
    pub(super) order: Order,
}

/// The response type [`Reply::build`] gives: hickory's, over the reply's
/// own records.
pub(super) type Built<'a> = MessageResponse<
    'a,
    'a,
    std::slice::Iter<'a, Record>,
    std::iter::Empty<&'a Record>,
    std::option::Iter<'a, Record>,
    std::iter::Empty<&'a Record>,
>;

impl Reply {
    fn new(metadata: Metadata, edns: Option<Edns>) -> Reply {
        Reply {
            metadata,
            edns,
            answers: Vec::new(),
            soa: None,
            reuse: None,
        }
    }

    /// hickory's response for it, answering `queries`.
    pub(super) fn build<'a>(&'a self, queries: &'a Queries) -> Built<'a> {
        let mut builder = MessageResponseBuilder::new(queries, None);
        if let Some(edns) = &self.edns {
            builder.edns(edns);
        }
        builder.build(
            self.metadata,
            self.answers.iter(),
            std::iter::empty(),
            self.soa.iter(),
            std::iter::empty(),
        )
    }
}

impl Handler {
    /// The label index of names that are no record: unknown names, names
    /// outside the zone, malformed queries.
    fn other_label(&self) -> usize {
        self.zone.records.len() + 1
    }

    fn lookup(
        &self,
        name: &LowerName,
        original: &Name,
        qtype: RecordType,
        order: Option<&[u16]>,
    ) -> Found {
        let table = self.routing.load();
        let zone = &self.zone;
        let mut found = Found {
            code: ResponseCode::NoError,
            answers: Vec::new(),
            soa: false,
            label: self.other_label(),
            generation: table.generation,
            order: Some(Order::default()),
        };
        let record = zone.records.iter().position(|(n, _)| n == name);
        if *name == zone.origin_lower {
            found.label = record.unwrap_or(zone.records.len());
            if matches!(qtype, RecordType::SOA | RecordType::ANY) {
                found.answers.push(zone.soa(table.generation));
            }
            if matches!(qtype, RecordType::NS | RecordType::ANY) {
                for ns in &zone.nameservers {
                    let ns =
                        Record::from_rdata(original.clone(), zone.ttl, RData::NS(NS(ns.clone())));
                    found.answers.push(ns);
                }
            }
        } else if let Some(i) = record {
            found.label = i;
        } else if zone.records.iter().any(|(n, _)| name.zone_of(n)) {
            // An empty non-terminal (`eu` when only `api.eu` is a record):
            // the name exists, it just has no data (RFC 8020).
            found.soa = true;
            return found;
        } else {
            found.code = ResponseCode::NXDomain;
            found.soa = true;
            return found;
        }
        if let Some(i) = record {
            found.order = self.addresses(
                &table,
                &zone.records[i].1,
                original,
                qtype,
                order,
                &mut found.answers,
            );
        }
        // NODATA: the name exists but has nothing of this type.
        found.soa = found.answers.is_empty();
        found
    }

    /// The record's addresses of type `qtype` into `out`, in `order` when
    /// it is given and is an order of this answer's targets (the packet
    /// cache drew it, as below, and has no response in it yet), else in an
    /// order drawn by weight; and how they were ordered: `None` when the
    /// answer may not be reused, because it fails open (it then reads the
    /// stamps' mirrored admin state, which can change without a new
    /// routing table).
    fn addresses(
        &self,
        table: &RoutingTable,
        record: &DnsRecordConfig,
        owner: &Name,
        qtype: RecordType,
        order: Option<&[u16]>,
        out: &mut Vec<Record>,
    ) -> Option<Order> {
        let (v4, v6) = match qtype {
            RecordType::A => (true, false),
            RecordType::AAAA => (false, true),
            RecordType::ANY => (true, true),
            _ => return Some(Order::default()),
        };
        let edges = self.edges.load();
        let answer = answer::compute(table, record, &edges, |host| self.resolved.get(host));
        let drawn = match order {
            Some(order) if answer.is_order(order) => order.to_vec(),
            _ => answer.draw(&mut fastrand::Rng::with_seed(fastrand::u64(..))),
        };
        for ip in answer.in_order(&drawn) {
            let rdata = match ip {
                IpAddr::V4(ip) if v4 => RData::A(A(ip)),
                IpAddr::V6(ip) if v6 => RData::AAAA(AAAA(ip)),
                _ => continue,
            };
            out.push(Record::from_rdata(owner.clone(), self.zone.ttl, rdata));
        }
        if answer.failing_open {
            return None;
        }
        Some(if answer.is_fixed_order() || out.len() < 2 {
            Order::default()
        } else {
            Order {
                shape: answer.targets.iter().map(|t| (t.group, t.weight)).collect(),
                drawn,
            }
        })
    }

    /// A datagram with a header but no parsable message, answered FORMERR
    /// before it reaches [`RequestHandler::handle_request`].
    pub(super) fn count_malformed(&self) {
        self.count(self.other_label(), None, ResponseCode::FormErr);
    }

    fn count(&self, label: usize, qtype: Option<RecordType>, code: ResponseCode) {
        self.count_in(Self::counter(label, qtype, code));
    }

    /// Count one query in `counter` (as [`Reuse::counter`] names it).
    pub(super) fn count_in(&self, [label, t, c]: [usize; 3]) {
        self.stats.count(label, t, c);
    }

    fn counter(label: usize, qtype: Option<RecordType>, code: ResponseCode) -> [usize; 3] {
        let t = match qtype {
            Some(RecordType::A) => 0,
            Some(RecordType::AAAA) => 1,
            Some(RecordType::SOA) => 2,
            Some(RecordType::NS) => 3,
            Some(RecordType::ANY) => 4,
            _ => 5,
        };
        let c = match code {
            ResponseCode::NoError => 0,
            ResponseCode::NXDomain => 1,
            ResponseCode::Refused => 2,
            ResponseCode::FormErr => 3,
            ResponseCode::NotImp => 4,
            ResponseCode::ServFail => 5,
            _ => 6,
        };
        debug_assert_eq!((DNS_QTYPES.len(), DNS_RCODES.len()), (6, 7));
        [label, t, c]
    }

    /// The rate limit's verdict on one UDP response to `client`, counted;
    /// always [`Verdict::Answer`] when the limit is off.
    pub(super) fn limit(&self, client: IpAddr) -> Verdict {
        let Some(limiter) = &self.limiter else {
            return Verdict::Answer;
        };
        let now = tokio::time::Instant::now();
        let verdict = limiter.check(client, now);
        if verdict != Verdict::Answer && limiter.log_due(now) {
            tracing::warn!(
                %client,
                limit = limiter.per_second(),
                "dns: UDP responses to this client's network are over \
                 dns_server.responses_per_second; every second one is sent truncated \
                 (the client retries over TCP), the rest are dropped; a load test from \
                 one host needs responses_per_second = 0"
            );
        }
        match verdict {
            Verdict::Answer => {}
            Verdict::Slip => {
                self.stats.rate_limited[1].fetch_add(1, Ordering::Relaxed);
            }
            Verdict::Drop => {
                self.stats.rate_limited[0].fetch_add(1, Ordering::Relaxed);
            }
        }
        verdict
    }

    /// The response to `request`, given the rate limit's `verdict` on it
    /// (counted already), and the query counted; `None` when nothing is to
    /// be sent (over the rate limit). `order`: the order of the addresses,
    /// when the packet cache has drawn it (see [`Handler::addresses`]).
    pub(super) fn decide(
        &self,
        request: &Request,
        verdict: Verdict,
        order: Option<&[u16]>,
    ) -> Option<Reply> {
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = true;
        match verdict {
            Verdict::Answer => {}
            Verdict::Slip => {
                metadata.truncation = true;
                return Some(Reply::new(metadata, None));
            }
            Verdict::Drop => return None,
        }

        // EDNS0 (RFC 6891): answer with our own OPT record, keeping the
        // client's buffer size (at least 512), which the writer uses to
        // decide when a UDP answer must be truncated.
        let edns = request.edns.as_ref().map(|req| {
            let mut edns = Edns::new();
            edns.set_max_payload(req.max_payload().max(512));
            edns.set_version(EDNS_VERSION);
            edns
        });
        let only = |code: ResponseCode, authoritative: bool| {
            let mut m = metadata;
            m.response_code = code;
            m.authoritative = authoritative;
            Some(Reply::new(m, edns.clone()))
        };
        if request
            .edns
            .as_ref()
            .is_some_and(|req| req.version() > EDNS_VERSION)
        {
            self.count(self.other_label(), None, ResponseCode::BADVERS);
            return only(ResponseCode::BADVERS, true);
        }
        if request.metadata.op_code != OpCode::Query {
            self.count(self.other_label(), None, ResponseCode::NotImp);
            return only(ResponseCode::NotImp, true);
        }
        let [query] = request.queries.queries() else {
            self.count(self.other_label(), None, ResponseCode::FormErr);
            return only(ResponseCode::FormErr, true);
        };
        let qtype = query.query_type();
        let in_zone = self.zone.origin_lower.zone_of(query.name());
        if !in_zone || query.query_class() != DNSClass::IN {
            // Not ours, and no recursion: refuse rather than point
            // anywhere (an open resolver is an amplifier).
            self.count(self.other_label(), Some(qtype), ResponseCode::Refused);
            return only(ResponseCode::Refused, false);
        }

        let found = self.lookup(query.name(), query.original().name(), qtype, order);
        let counter = Self::counter(found.label, Some(qtype), found.code);
        self.count_in(counter);
        metadata.response_code = found.code;
        let soa = found.soa.then(|| self.zone.soa(found.generation));
        Some(Reply {
            metadata,
            edns,
            answers: found.answers,
            soa,
            reuse: found.order.map(|order| Reuse { counter, order }),
        })
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let verdict = match request.protocol() {
            Protocol::Udp => self.limit(request.src().ip()),
            // A TCP client has proved its address in the handshake.
            _ => Verdict::Answer,
        };
        match self.decide(request, verdict, None) {
            None => unsent(Metadata::response_from_request(&request.metadata)),
            Some(reply) => {
                let response = reply.build(&request.queries);
                send(&mut response_handle, response, reply.metadata).await
            }
        }
    }
}

/// The handler as hickory's TCP listener holds it, shared with the UDP
/// loop (`super::udp`).
pub(super) struct Shared(pub(super) Arc<Handler>);

#[async_trait::async_trait]
impl RequestHandler for Shared {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        self.0
            .handle_request::<R, T>(request, response_handle)
            .await
    }
}

async fn send<R: ResponseHandler>(
    handle: &mut R,
    response: Built<'_>,
    metadata: Metadata,
) -> ResponseInfo {
    match handle.send_response(response).await {
        Ok(info) => info,
        Err(error) => {
            tracing::debug!(%error, "dns: cannot send a response");
            let mut failed = metadata;
            failed.response_code = ResponseCode::ServFail;
            unsent(failed)
        }
    }
}

/// What hickory wants back for a response that was not sent.
fn unsent(metadata: Metadata) -> ResponseInfo {
    ResponseInfo::from(Header {
        metadata,
        counts: HeaderCounts::default(),
    })
}
