//! The simulated stamp's catalog data: the items, comments and ratings of the
//! reference workload, generated from their index so that every stamp (in
//! every region, in every run) serves the same documents.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::{Duration, SystemTime};

use serde::Serialize;

/// How many items the catalog holds (the list endpoint's maximum page too).
pub const ITEM_COUNT: usize = 100;

const ADJECTIVES: [&str; 10] = [
    "Vintage",
    "Sturdy",
    "Compact",
    "Gilded",
    "Rustic",
    "Modern",
    "Foldable",
    "Hand-made",
    "Glazed",
    "Woven",
];
const NOUNS: [&str; 10] = [
    "Lamp",
    "Chair",
    "Kettle",
    "Backpack",
    "Clock",
    "Teapot",
    "Bookshelf",
    "Lantern",
    "Rug",
    "Bicycle",
];
const AUTHORS: [&str; 5] = ["Ada", "Brian", "Chidi", "Dana", "Emeka"];
const REMARKS: [&str; 4] = [
    "Exactly as described.",
    "Arrived quickly, works well.",
    "Smaller than I expected.",
    "Would buy again.",
];

/// Seeds that keep the ids of items, comments and ratings apart.
const ITEM_SEED: u64 = 1;
const COMMENT_SEED: u64 = 2;
const RATING_SEED: u64 = 3;

/// The timestamp that generated documents count from (2024-01-01T00:00:00Z),
/// fixed so that bodies are the same in every run.
const EPOCH_SECS: u64 = 1_704_067_200;

/// One catalog item, shaped like the reference workload's `CatalogItemDto`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Item {
    /// A stable, uuid-shaped id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// One sentence about the item.
    pub description: String,
    /// Price in the shop's currency, with two decimals.
    pub price: f64,
    /// Where the item's picture would be.
    pub image_url: String,
    /// When the item was last changed (RFC 3339).
    pub last_updated: String,
}

/// A comment on an item.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Comment {
    /// A stable, uuid-shaped id.
    pub id: String,
    /// The item commented on.
    pub catalog_item_id: String,
    /// Who wrote it.
    pub author_name: String,
    /// What they wrote.
    pub text: String,
    /// When (RFC 3339).
    pub creation_date: String,
}

/// A rating of an item.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rating {
    /// A stable, uuid-shaped id.
    pub id: String,
    /// The item rated.
    pub catalog_item_id: String,
    /// 1 to 5 stars.
    pub rating: u8,
    /// When (RFC 3339).
    pub creation_date: String,
}

/// The whole catalog, built once per process and shared by every stamp in it.
pub struct Catalog {
    items: Vec<Item>,
    by_id: HashMap<String, usize>,
}

static CATALOG: LazyLock<Catalog> = LazyLock::new(Catalog::generate);

impl Catalog {
    /// The process-wide catalog.
    pub fn get() -> &'static Catalog {
        &CATALOG
    }

    fn generate() -> Catalog {
        let items: Vec<Item> = (0..ITEM_COUNT).map(item).collect();
        let by_id = items
            .iter()
            .enumerate()
            .map(|(index, item)| (item.id.clone(), index))
            .collect();
        Catalog { items, by_id }
    }

    /// The first `limit` items (all of them if `limit` is larger).
    pub fn list(&self, limit: usize) -> &[Item] {
        &self.items[..limit.min(self.items.len())]
    }

    /// The item with this id.
    pub fn item(&self, id: &str) -> Option<&Item> {
        self.by_id.get(id).map(|&index| &self.items[index])
    }

    /// The comments on the item with this id (`None`: no such item).
    pub fn comments(&self, id: &str) -> Option<Vec<Comment>> {
        let &index = self.by_id.get(id)?;
        let count = 1 + index % 4;
        let comments = (0..count)
            .map(|n| {
                let seq = (index * 10 + n) as u64;
                Comment {
                    id: stable_uuid(COMMENT_SEED, seq),
                    catalog_item_id: id.to_owned(),
                    author_name: AUTHORS[(index + n) % AUTHORS.len()].to_owned(),
                    text: REMARKS[(index * 3 + n) % REMARKS.len()].to_owned(),
                    creation_date: timestamp(seq * 3_600),
                }
            })
            .collect();
        Some(comments)
    }

    /// The ratings of the item with this id (`None`: no such item).
    pub fn ratings(&self, id: &str) -> Option<Vec<Rating>> {
        let &index = self.by_id.get(id)?;
        let count = 2 + index % 3;
        let ratings = (0..count)
            .map(|n| {
                let seq = (index * 10 + n) as u64;
                Rating {
                    id: stable_uuid(RATING_SEED, seq),
                    catalog_item_id: id.to_owned(),
                    // 1..=5, skewed to the good end like real shop ratings.
                    rating: [5, 4, 5, 3, 4, 2, 5, 1][(index + n) % 8],
                    creation_date: timestamp(seq * 1_800),
                }
            })
            .collect();
        Some(ratings)
    }
}

fn item(index: usize) -> Item {
    let adjective = ADJECTIVES[index % ADJECTIVES.len()];
    let noun = NOUNS[index / ADJECTIVES.len() % NOUNS.len()];
    // 4.99 to 204.98, spread without a visible pattern.
    let cents = 499 + (index as u64 * 7_919) % 20_000;
    Item {
        id: stable_uuid(ITEM_SEED, index as u64),
        name: format!("{adjective} {noun}"),
        description: format!(
            "A {} {} from the stampgate demo catalog.",
            adjective.to_lowercase(),
            noun.to_lowercase()
        ),
        price: cents as f64 / 100.0,
        image_url: format!("https://images.example.com/catalog/{index}.jpg"),
        last_updated: timestamp(index as u64 * 86_400),
    }
}

/// The id of the catalog item at `index` (0 to [`ITEM_COUNT`] - 1): what a
/// client such as the drill puts in `.../catalogitem/{id}` paths.
pub fn item_id(index: usize) -> String {
    stable_uuid(ITEM_SEED, index as u64)
}

/// A uuid-shaped id (version 4, RFC 4122 variant) derived from `seed` and
/// `n`, so that ids look like the reference workload's GUIDs yet never change.
pub fn stable_uuid(seed: u64, n: u64) -> String {
    let high = splitmix64(seed.wrapping_mul(0x1000_0000_0000_0001) ^ n);
    let low = splitmix64(high ^ n);
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        high >> 32,
        (high >> 16) & 0xffff,
        high & 0x0fff,
        0x8000 | ((low >> 48) & 0x3fff),
        low & 0xffff_ffff_ffff,
    )
}

/// The splitmix64 finalizer: a cheap, well-mixed hash of one integer.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// RFC 3339 time `secs` after the catalog's epoch.
fn timestamp(secs: u64) -> String {
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(EPOCH_SECS + secs);
    humantime::format_rfc3339_seconds(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_uuid_shaped() {
        let catalog = Catalog::get();
        assert_eq!(catalog.by_id.len(), ITEM_COUNT);
        for item in catalog.list(ITEM_COUNT) {
            let groups: Vec<usize> = item.id.split('-').map(str::len).collect();
            assert_eq!(groups, [8, 4, 4, 4, 12], "{}", item.id);
            assert_eq!(&item.id[14..15], "4");
            assert!(
                matches!(&item.id[19..20], "8" | "9" | "a" | "b"),
                "{}",
                item.id
            );
        }
    }

    #[test]
    fn generation_is_deterministic() {
        assert_eq!(Catalog::generate().items, Catalog::get().items);
        assert_eq!(stable_uuid(ITEM_SEED, 0), stable_uuid(ITEM_SEED, 0));
        assert_ne!(stable_uuid(ITEM_SEED, 0), stable_uuid(COMMENT_SEED, 0));
    }

    #[test]
    fn names_are_distinct() {
        let names: std::collections::HashSet<_> = Catalog::get()
            .list(ITEM_COUNT)
            .iter()
            .map(|i| &i.name)
            .collect();
        assert_eq!(names.len(), ITEM_COUNT);
    }

    #[test]
    fn list_clamps_to_catalog() {
        let catalog = Catalog::get();
        assert_eq!(catalog.list(3).len(), 3);
        assert_eq!(catalog.list(1_000).len(), ITEM_COUNT);
        assert!(catalog.list(0).is_empty());
    }

    #[test]
    fn comments_and_ratings_belong_to_their_item() {
        let catalog = Catalog::get();
        let id = &catalog.list(ITEM_COUNT)[7].id;
        let comments = catalog.comments(id).unwrap();
        let ratings = catalog.ratings(id).unwrap();
        assert!(!comments.is_empty() && !ratings.is_empty());
        assert!(comments.iter().all(|c| &c.catalog_item_id == id));
        assert!(
            ratings
                .iter()
                .all(|r| &r.catalog_item_id == id && (1..=5).contains(&r.rating))
        );
        assert!(catalog.comments("no-such-item").is_none());
        assert!(catalog.ratings("no-such-item").is_none());
    }

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(timestamp(0), "2024-01-01T00:00:00Z");
    }
}
