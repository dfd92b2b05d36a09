//! Test-only input makers for the property tests that fuzz every parser
//! stampgate owns (HTTP/1.1 heads and chunks, the config and state-file
//! loaders, the admin API's JSON): random bytes over a syntax alphabet,
//! and valid documents with a few bytes edited. A leaf: it knows no
//! parser.

use proptest::prelude::*;

/// JSON syntax, numbers at and past the edges of the ranges stampgate
/// reads, and the field names of its JSON inputs (the admin API's bodies,
/// the state file).
pub const JSON_TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"\"",
    b"null",
    b"true",
    b"false",
    b"-1",
    b"1.5",
    b"1e3",
    b"1000",
    b"1001",
    b"4294967296",
    b"18446744073709551616",
    b"\"weight\"",
    b"\"admin\"",
    b"\"active\"",
    b"\"draining\"",
    b"\"version\"",
    b"\"fleet\"",
    b"\"deadline\"",
    b"\"30s\"",
    b"\"dry_run\"",
    b"\"force\"",
    b"\\u0000",
    b"\xff",
];

/// Random bytes, mostly whole `tokens` (the syntax of the format under
/// test), up to `max` pieces.
pub fn syntax(tokens: &'static [&'static [u8]], max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            1 => any::<u8>().prop_map(|b| vec![b]),
            4 => prop::sample::select(tokens).prop_map(<[u8]>::to_vec),
        ],
        0..max,
    )
    .prop_map(|parts| parts.concat())
}

/// `valid` with up to `edits - 1` bytes inserted, replaced or removed:
/// inputs that are almost right, which is where parsers go wrong.
pub fn mutated(
    valid: impl Strategy<Value = Vec<u8>>,
    edits: usize,
) -> impl Strategy<Value = Vec<u8>> {
    let edit = (any::<prop::sample::Index>(), any::<u8>(), 0..3u8);
    (valid, prop::collection::vec(edit, 0..edits)).prop_map(|(mut bytes, edits)| {
        for (at, byte, kind) in edits {
            let i = at.index(bytes.len() + 1);
            match kind {
                0 => bytes.insert(i, byte),
                1 if i < bytes.len() => bytes[i] = byte,
                _ if i < bytes.len() => {
                    bytes.remove(i);
                }
                _ => {}
            }
        }
        bytes
    })
}

/// `valid` with whole `tokens` spliced in at random places, for formats
/// whose single-byte edits mostly break the syntax at once (TOML, JSON):
/// a token keeps the document parseable more often and so reaches the
/// validation behind the syntax.
pub fn spliced(
    valid: impl Strategy<Value = Vec<u8>>,
    tokens: &'static [&'static [u8]],
    splices: usize,
) -> impl Strategy<Value = Vec<u8>> {
    let splice = (
        any::<prop::sample::Index>(),
        prop::sample::select(tokens),
        any::<bool>(),
    );
    (valid, prop::collection::vec(splice, 0..splices)).prop_map(|(mut bytes, splices)| {
        for (at, token, replace) in splices {
            let i = at.index(bytes.len() + 1);
            let end = if replace {
                (i + token.len()).min(bytes.len())
            } else {
                i
            };
            bytes.splice(i..end, token.iter().copied());
        }
        bytes
    })
}
