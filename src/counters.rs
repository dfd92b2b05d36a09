//! Counters indexed by an enum — beside the request path: the listeners, the
//! handler and the controller bump relaxed atomics in a [`ByEnum`] indexed
//! by what happened (`stats.accepted[Listener::Https]`), and `/metrics`
//! walks the same table with each variant's label. An index is a variant,
//! never a bare number or a string a typo could turn into "unknown".

use std::fmt;
use std::marker::PhantomData;
use std::ops::Index;

/// A closed set of metric label values.
pub trait Label: Copy + Eq + 'static {
    /// Every variant, in index order (the order `/metrics` lists them).
    const ALL: &'static [Self];

    /// The label value on `/metrics` (and in status documents).
    fn as_str(self) -> &'static str;

    /// Position in [`Label::ALL`].
    fn index(self) -> usize {
        Self::ALL
            .iter()
            .position(|&v| v == self)
            .expect("ALL lists every variant")
    }
}

/// Declare a fieldless enum with its label values and a [`Label`] impl.
macro_rules! labels {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident => $label:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant ),+
        }

        impl $name {
            /// The label value on `/metrics`.
            $vis fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $label),+
                }
            }
        }

        impl $crate::counters::Label for $name {
            const ALL: &'static [Self] = &[$($name::$variant),+];

            fn as_str(self) -> &'static str {
                $name::as_str(self)
            }

            fn index(self) -> usize {
                self as usize
            }
        }
    };
}
pub(crate) use labels;

/// One `T` per variant of `E`; `N` is the number of variants (checked when
/// the table is made).
pub struct ByEnum<E, T, const N: usize> {
    slots: [T; N],
    label: PhantomData<fn() -> E>,
}

impl<E: Label, T, const N: usize> ByEnum<E, T, N> {
    /// Each variant with its slot, in [`Label::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (E, &T)> + '_ {
        E::ALL.iter().copied().zip(&self.slots)
    }
}

impl<E: Label, T: Default, const N: usize> Default for ByEnum<E, T, N> {
    fn default() -> Self {
        const { assert!(N > 0) };
        assert_eq!(E::ALL.len(), N, "one slot per variant");
        ByEnum {
            slots: std::array::from_fn(|_| T::default()),
            label: PhantomData,
        }
    }
}

impl<E: Label, T, const N: usize> Index<E> for ByEnum<E, T, N> {
    type Output = T;

    fn index(&self, e: E) -> &T {
        &self.slots[e.index()]
    }
}

impl<E: Label + fmt::Debug, T: fmt::Debug, const N: usize> fmt::Debug for ByEnum<E, T, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.iter().map(|(e, t)| (e.as_str(), t)))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    labels! {
        enum Door {
            Front => "front",
            Back => "back",
        }
    }

    #[test]
    fn each_variant_has_its_own_slot_and_label() {
        let counts: ByEnum<Door, AtomicU64, 2> = ByEnum::default();
        counts[Door::Back].fetch_add(2, Ordering::Relaxed);
        counts[Door::Front].fetch_add(1, Ordering::Relaxed);
        let seen: Vec<(&str, u64)> = counts
            .iter()
            .map(|(d, n)| (d.as_str(), n.load(Ordering::Relaxed)))
            .collect();
        assert_eq!(seen, [("front", 1), ("back", 2)]);
        assert_eq!(Door::Back.index(), 1);
    }

    #[test]
    #[should_panic(expected = "one slot per variant")]
    fn a_table_of_the_wrong_size_is_refused() {
        let _: ByEnum<Door, AtomicU64, 3> = ByEnum::default();
    }
}
