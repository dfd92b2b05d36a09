//! The typed `[dns_server]` settings: what the authoritative
//! DNS server (`crate::dns_server`) answers for, and the addresses this
//! edge advertises for answers of kind `"edges"`. Validated in
//! `validate::dns_server`.

use std::net::SocketAddr;
use std::time::Duration;

/// `[dns_server]`: an authoritative server for one zone, its answers
/// computed from the routing table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsServerSettings {
    /// Addresses served over both UDP and TCP.
    pub listen: Vec<SocketAddr>,
    /// The zone, lower case, absolute (`example.com.`).
    pub zone: String,
    /// TTL of every answer, and the SOA minimum (negative caching).
    pub ttl: Duration,
    /// NS records at the apex, absolute names; the first is the SOA MNAME.
    pub nameservers: Vec<String>,
    /// SOA RNAME, absolute (`hostmaster.example.com.`).
    pub hostmaster: String,
    /// Names that follow a pool, in file order.
    pub records: Vec<DnsRecordConfig>,
    /// UDP responses per second to one client network (IPv4 /24, IPv6
    /// /56); 0 turns the limit off.
    pub responses_per_second: u32,
    /// Threads answering UDP, each with its own socket on every listen
    /// address (`SO_REUSEPORT` when more than one); the first also serves
    /// TCP. `None`: one per core, as BIND and Knot do, at most
    /// [`MAX_DNS_THREADS`](super::defaults::MAX_DNS_THREADS).
    pub threads: Option<usize>,
}

impl DnsServerSettings {
    /// How many threads answer: `threads`, or one per core.
    pub fn thread_count(&self) -> usize {
        self.threads.unwrap_or_else(|| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            cores.min(super::defaults::MAX_DNS_THREADS as usize)
        })
    }
}

/// One `[[dns_server.records]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsRecordConfig {
    /// The name as written (`"catalog"`, `"@"` for the apex).
    pub name: String,
    /// The absolute name, lower case (`catalog.example.com.`).
    pub fqdn: String,
    /// The pool whose routing state the answers follow.
    pub pool: String,
    /// What the addresses are.
    pub answer: DnsAnswerKind,
}

/// What a record answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsAnswerKind {
    /// The addresses of the pool's stamps that take traffic now.
    Stamps,
    /// The advertised addresses of the live edges that can serve the pool.
    Edges,
}

impl DnsAnswerKind {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            DnsAnswerKind::Stamps => "stamps",
            DnsAnswerKind::Edges => "edges",
        }
    }
}
