//! Control plane → data plane hand-off: the table of resolved stamp
//! addresses that refresh tasks write and the upstream connector reads.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arc_swap::ArcSwap;

/// One host's addresses plus where the next connection starts in them.
///
/// The rotation counter lives per host, not once per cache: with a single
/// shared counter, two hosts of two addresses each dialled in turn would
/// see the counter only at even and odd values, and each would always get
/// the same address.
#[derive(Debug)]
struct Entry {
    addrs: Arc<[IpAddr]>,
    next: AtomicUsize,
}

type Table = HashMap<Box<str>, Arc<Entry>>;

/// The shared answer table: host name → its current addresses.
///
/// Locking: none. Readers do one `ArcSwap::load` per call. Writers (one
/// refresh task per host, plus the controller for [`DnsCache::remove`])
/// copy the table, change their one entry and swap it in with `rcu`, which
/// retries if another writer swapped in between, so writers for different
/// hosts cannot lose each other's updates. Writes happen once per TTL per
/// host, so the copy is cheap next to the reads it keeps lock-free.
///
/// Addresses are stored sorted and without duplicates: the order a
/// nameserver returns is often itself rotated, and comparing sorted lists
/// is what lets a refresh tell a real change from a reshuffle.
#[derive(Clone, Debug, Default)]
pub struct DnsCache {
    table: Arc<ArcSwap<Table>>,
}

/// One state of the table, held to tell later whether the table has
/// changed since (the DNS server's packet cache does). Compared by
/// identity through a `Weak`: the allocation stays while it is held, so
/// no later table can be given its address, but the entries are freed.
#[derive(Clone, Debug)]
pub struct CacheState(std::sync::Weak<Table>);

impl DnsCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// The table as it is now.
    pub fn state(&self) -> CacheState {
        CacheState(Arc::downgrade(&self.table.load()))
    }

    /// Whether the table is still `state`: no host's addresses changed.
    pub fn is_at(&self, state: &CacheState) -> bool {
        std::ptr::eq(Arc::as_ptr(&self.table.load()), state.0.as_ptr())
    }

    /// The current addresses of `host`, sorted, if it has been resolved.
    pub fn get(&self, host: &str) -> Option<Arc<[IpAddr]>> {
        self.table.load().get(host).map(|e| Arc::clone(&e.addrs))
    }

    /// Store the addresses of `host`. Returns whether they differ from what
    /// was stored (order does not count). An empty list is ignored and
    /// returns `false`: an answer without addresses is a failure to keep the
    /// old ones through, never a removal.
    pub fn set(&self, host: &str, addrs: impl IntoIterator<Item = IpAddr>) -> bool {
        let addrs = normalize(addrs);
        if addrs.is_empty() || self.get(host).as_deref() == Some(&addrs[..]) {
            return false;
        }
        let entry = Arc::new(Entry {
            addrs: addrs.into(),
            next: AtomicUsize::new(0),
        });
        self.table.rcu(|table| {
            let mut table = Table::clone(table);
            table.insert(host.into(), Arc::clone(&entry));
            table
        });
        true
    }

    /// Forget `host`, e.g. when a reload drops the last stamp using it.
    /// Returns whether it was present.
    pub fn remove(&self, host: &str) -> bool {
        if !self.table.load().contains_key(host) {
            return false;
        }
        self.table.rcu(|table| {
            let mut table = Table::clone(table);
            table.remove(host);
            table
        });
        true
    }

    /// The addresses of `host` for one new connection, starting one further
    /// along the list than the previous call did, so that connections
    /// spread over all addresses (the connector tries them in order).
    pub(crate) fn rotated(&self, host: &str) -> Option<Vec<IpAddr>> {
        let table = self.table.load();
        let entry = table.get(host)?;
        let len = entry.addrs.len();
        // `set` never stores an empty list; checked anyway because `% 0`
        // would panic on the connection path.
        if len == 0 {
            return None;
        }
        // Relaxed: only the spread matters, not an order with other memory.
        let start = entry.next.fetch_add(1, Ordering::Relaxed) % len;
        let (head, tail) = entry.addrs.split_at(start);
        Some(tail.iter().chain(head).copied().collect())
    }
}

/// Sort and deduplicate, so equal sets compare equal.
fn normalize(addrs: impl IntoIterator<Item = IpAddr>) -> Vec<IpAddr> {
    let mut addrs: Vec<IpAddr> = addrs.into_iter().collect();
    addrs.sort_unstable();
    addrs.dedup();
    addrs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_is_current_until_an_address_changes() {
        let cache = DnsCache::new();
        cache.set("a.example", ["192.0.2.1".parse().unwrap()]);
        let state = cache.state();
        assert!(cache.is_at(&state));
        // The same addresses again: nothing changed.
        cache.set("a.example", ["192.0.2.1".parse().unwrap()]);
        assert!(cache.is_at(&state));
        cache.set("a.example", ["192.0.2.2".parse().unwrap()]);
        assert!(!cache.is_at(&state));
    }

    fn ip(last: u8) -> IpAddr {
        [127, 0, 0, last].into()
    }

    #[test]
    fn set_get_remove() {
        let cache = DnsCache::new();
        assert!(cache.get("eu").is_none());
        assert!(cache.set("eu", [ip(2), ip(1), ip(2)]));
        assert_eq!(cache.get("eu").as_deref(), Some(&[ip(1), ip(2)][..]));
        assert!(cache.remove("eu"));
        assert!(!cache.remove("eu"));
        assert!(cache.get("eu").is_none());
    }

    #[test]
    fn set_reports_only_real_changes() {
        let cache = DnsCache::new();
        assert!(cache.set("eu", [ip(1), ip(2)]));
        assert!(!cache.set("eu", [ip(2), ip(1)]), "a reshuffle is no change");
        assert!(cache.set("eu", [ip(3)]));
        assert!(!cache.set("eu", []), "an empty answer keeps the old one");
        assert_eq!(cache.get("eu").as_deref(), Some(&[ip(3)][..]));
    }

    #[test]
    fn clones_share_one_table() {
        let writer = DnsCache::new();
        let reader = writer.clone();
        writer.set("eu", [ip(1)]);
        assert_eq!(reader.get("eu").as_deref(), Some(&[ip(1)][..]));
    }

    #[test]
    fn rotation_visits_every_address_as_first() {
        let cache = DnsCache::new();
        cache.set("multi", [ip(1), ip(2), ip(3)]);
        let firsts: Vec<IpAddr> = (0..6).map(|_| cache.rotated("multi").unwrap()[0]).collect();
        assert_eq!(firsts, [ip(1), ip(2), ip(3), ip(1), ip(2), ip(3)]);
        assert_eq!(cache.rotated("multi").unwrap(), [ip(1), ip(2), ip(3)]);
        assert_eq!(cache.rotated("multi").unwrap(), [ip(2), ip(3), ip(1)]);
    }

    #[test]
    fn rotation_is_per_host() {
        let cache = DnsCache::new();
        cache.set("a", [ip(1), ip(2)]);
        cache.set("b", [ip(3), ip(4)]);
        let mut firsts_a = Vec::new();
        for _ in 0..2 {
            firsts_a.push(cache.rotated("a").unwrap()[0]);
            cache.rotated("b");
        }
        assert_eq!(firsts_a, [ip(1), ip(2)]);
    }

    #[test]
    fn unchanged_hosts_keep_their_rotation_across_other_writes() {
        let cache = DnsCache::new();
        cache.set("a", [ip(1), ip(2)]);
        cache.rotated("a");
        cache.set("b", [ip(3)]);
        assert_eq!(cache.rotated("a").unwrap()[0], ip(2));
    }

    #[test]
    fn unknown_host_has_no_rotation() {
        assert!(DnsCache::new().rotated("nowhere").is_none());
    }
}
