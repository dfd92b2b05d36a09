//! The selector: given one pool of the current routing table, which stamp
//! gets this request. Built once per published table, read by every request
//! without a lock or an allocation.

use super::StampView;

/// Most tries a single request can make (the config caps `retry.attempts`
/// at 5); sized so the tried-set lives on the stack.
pub const MAX_TRIES: usize = 8;

/// One tier of candidates: stamps that share traffic by weight. Stored as
/// cumulative weights so a pick is one random number and a binary search.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tier {
    /// `(cumulative weight, stamp index)`, cumulative weight strictly rising.
    entries: Box<[(u32, u16)]>,
    total: u32,
}

impl Tier {
    /// A tier over `(stamp index, weight)` pairs; zero weights are skipped.
    pub fn new(members: impl IntoIterator<Item = (usize, u32)>) -> Tier {
        let mut total = 0u32;
        let entries = members
            .into_iter()
            .filter(|&(_, w)| w > 0)
            .map(|(idx, w)| {
                total = total.saturating_add(w);
                (
                    total,
                    u16::try_from(idx).expect("pools hold fewer than 65536 stamps"),
                )
            })
            .collect();
        Tier { entries, total }
    }

    /// Whether the tier has any weight to give.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Stamp indices in this tier.
    pub fn members(&self) -> impl Iterator<Item = usize> + '_ {
        self.entries.iter().map(|&(_, idx)| usize::from(idx))
    }

    /// The share of this tier's new requests that stamp `index` gets.
    pub fn share_of(&self, index: usize) -> f64 {
        let weight: u32 = self
            .weighted_members()
            .filter(|&(i, _)| i == index)
            .map(|(_, w)| w)
            .sum();
        f64::from(weight) / f64::from(self.total.max(1))
    }

    /// `(stamp index, weight)` of each member, as the tier was built.
    pub fn weighted_members(&self) -> impl Iterator<Item = (usize, u32)> + '_ {
        (0..self.entries.len()).map(|pos| (usize::from(self.entries[pos].1), self.weight_of(pos)))
    }

    fn weight_of(&self, pos: usize) -> u32 {
        let prev = if pos == 0 { 0 } else { self.entries[pos - 1].0 };
        self.entries[pos].0 - prev
    }

    fn pick_fresh(&self) -> Option<usize> {
        if self.total == 0 {
            return None;
        }
        let r = fastrand::u32(..self.total);
        let pos = self.entries.partition_point(|&(cum, _)| cum <= r);
        Some(usize::from(self.entries[pos].1))
    }

    /// Weighted pick among members accepted by `ok`, in two passes so that
    /// the retry path allocates nothing either.
    fn pick_filtered(&self, ok: impl Fn(usize) -> bool) -> Option<usize> {
        let eligible = |pos: usize| ok(usize::from(self.entries[pos].1));
        let total: u32 = (0..self.entries.len())
            .filter(|&p| eligible(p))
            .map(|p| self.weight_of(p))
            .sum();
        if total == 0 {
            return None;
        }
        let mut r = fastrand::u32(..total);
        for p in (0..self.entries.len()).filter(|&p| eligible(p)) {
            let w = self.weight_of(p);
            if r < w {
                return Some(usize::from(self.entries[p].1));
            }
            r -= w;
        }
        None
    }
}

/// The stamps a request has already been sent to, and their regions, so a
/// retry goes somewhere new — another region first.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tried {
    stamps: [u16; MAX_TRIES],
    regions: [u16; MAX_TRIES],
    len: usize,
}

impl Tried {
    /// Remember that `stamp` (of `region`) was tried.
    pub fn push(&mut self, stamp: usize, region: u16) {
        if self.len < MAX_TRIES {
            self.stamps[self.len] = stamp as u16;
            self.regions[self.len] = region;
            self.len += 1;
        }
    }

    /// Number of stamps tried so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was tried yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn has_stamp(&self, stamp: usize) -> bool {
        self.stamps[..self.len]
            .iter()
            .any(|&s| usize::from(s) == stamp)
    }

    fn has_region(&self, region: u16) -> bool {
        self.regions[..self.len].contains(&region)
    }
}

/// Where a pool sends requests, precomputed from effective weights.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    /// Tiers in order of preference: the first non-empty one takes all new
    /// requests; later ones are only used by retries once every stamp above
    /// was tried. Empty when the pool fails closed.
    tiers: Box<[Tier]>,
}

impl Selector {
    /// A selector over the given tiers (empty tiers are dropped).
    pub fn new(tiers: impl IntoIterator<Item = Tier>) -> Selector {
        Selector {
            tiers: tiers.into_iter().filter(|t| !t.is_empty()).collect(),
        }
    }

    /// Whether the selector can serve nothing (fail-closed answer).
    pub fn is_empty(&self) -> bool {
        self.tiers.is_empty()
    }

    /// The tiers, most preferred first.
    pub fn tiers(&self) -> &[Tier] {
        &self.tiers
    }

    /// Choose a stamp for a request that has already tried `tried`.
    ///
    /// First try: a weighted pick in the first tier. A retry: a stamp not
    /// yet tried, in a region not yet tried if there is one, walking down the
    /// tiers only when every stamp of the tier above was tried.
    pub fn pick(&self, stamps: &[StampView], tried: &Tried) -> Option<usize> {
        if tried.is_empty() {
            return self.tiers.first().and_then(Tier::pick_fresh);
        }
        for tier in self.tiers.iter() {
            let other_region = tier
                .pick_filtered(|i| !tried.has_stamp(i) && !tried.has_region(stamps[i].region_id));
            if other_region.is_some() {
                return other_region;
            }
            let any = tier.pick_filtered(|i| !tried.has_stamp(i));
            if any.is_some() {
                return any;
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::tests::stamp_views;

    #[test]
    fn picks_follow_weights() {
        let stamps = stamp_views(&[("a", 0), ("b", 1), ("c", 2)]);
        let sel = Selector::new([Tier::new([(0, 100), (1, 300), (2, 0)])]);
        fastrand::seed(7);
        let mut counts = [0u32; 3];
        for _ in 0..40_000 {
            counts[sel.pick(&stamps, &Tried::default()).unwrap()] += 1;
        }
        assert_eq!(counts[2], 0, "zero weight gets nothing");
        let share_b = f64::from(counts[1]) / 40_000.0;
        assert!((0.72..0.78).contains(&share_b), "b share {share_b}");
    }

    #[test]
    fn retry_prefers_another_region_then_another_stamp() {
        // a and b share region 0, c is region 1.
        let stamps = stamp_views(&[("a", 0), ("b", 0), ("c", 1)]);
        let sel = Selector::new([Tier::new([(0, 100), (1, 100), (2, 1)])]);
        let mut tried = Tried::default();
        tried.push(0, 0);
        for _ in 0..100 {
            assert_eq!(
                sel.pick(&stamps, &tried),
                Some(2),
                "other region despite low weight"
            );
        }
        tried.push(2, 1);
        assert_eq!(
            sel.pick(&stamps, &tried),
            Some(1),
            "then the untried stamp of a tried region"
        );
        tried.push(1, 0);
        assert_eq!(sel.pick(&stamps, &tried), None, "never a stamp twice");
    }

    #[test]
    fn lower_tier_only_for_new_requests_when_upper_is_empty() {
        let stamps = stamp_views(&[("a", 0), ("b", 1)]);
        let sel = Selector::new([Tier::new([(0, 100)]), Tier::new([(1, 100)])]);
        for _ in 0..100 {
            assert_eq!(sel.pick(&stamps, &Tried::default()), Some(0));
        }
        let mut tried = Tried::default();
        tried.push(0, 0);
        assert_eq!(
            sel.pick(&stamps, &tried),
            Some(1),
            "retry falls to the backup tier"
        );

        let only_backup = Selector::new([Tier::new([(0, 0)]), Tier::new([(1, 100)])]);
        assert_eq!(only_backup.pick(&stamps, &Tried::default()), Some(1));
    }

    #[test]
    fn empty_selector_picks_nothing() {
        let stamps = stamp_views(&[("a", 0)]);
        let sel = Selector::new([Tier::new([(0, 0)])]);
        assert!(sel.is_empty());
        assert_eq!(sel.pick(&stamps, &Tried::default()), None);
    }
}
