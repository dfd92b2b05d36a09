//! Property tests of the config loader: the example and demo configs with
//! TOML tokens spliced in or bytes edited, and random TOML syntax. A
//! config is loaded or refused with a message that names the file, never a
//! panic; one that loads also summarises (what `stampgate check` prints).

use std::path::Path;

use proptest::prelude::*;

use super::{parse_str, summary};
use crate::fuzzing;

const EXAMPLE: &[u8] = include_bytes!("../../config/stampgate.toml");
const DEMO: &[u8] = include_bytes!("../../config/demo.toml");

const TOML_TOKENS: &[&[u8]] = &[
    b"\n",
    b"=",
    b"[",
    b"]",
    b"[[",
    b"]]",
    b"{",
    b"}",
    b",",
    b".",
    b"\"",
    b"'''",
    b"#",
    b"0",
    b"-1",
    b"1001",
    b"4294967296",
    b"1e309",
    b"nan",
    b"true",
    b"\"\"",
    b"\"0s\"",
    b"\"1ms\"",
    b"\"999999999h\"",
    b"\"p95\"",
    b"\"p100\"",
    b"\"[::1]:0\"",
    b"\"127.0.0.1:0\"",
    b"\"${NO_SUCH_VAR}\"",
    b"\"$${X}\"",
    b"weight",
    b"priority",
    b"method",
    b"\"latency\"",
    b"pool",
    b"stamps",
    b"routes",
    b"listen",
    b"hedge_after",
    b"attempts",
    b"interval",
    b"fast_interval",
    b"timeout",
    b"\xff",
];

fn documents() -> impl Strategy<Value = Vec<u8>> {
    let valid = prop::sample::select(&[EXAMPLE, DEMO][..]).prop_map(<[u8]>::to_vec);
    prop_oneof![
        1 => fuzzing::syntax(TOML_TOKENS, 40),
        1 => fuzzing::mutated(valid.clone(), 4),
        4 => fuzzing::spliced(valid, TOML_TOKENS, 3),
    ]
}

proptest! {
    // Each case parses a whole config file: fewer cases than the HTTP
    // parsers get, for a CI run of about a second.
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_config_loads_or_is_refused_with_its_file_named(text in documents()) {
        let text = String::from_utf8_lossy(&text);
        match parse_str(&text, Path::new("fuzz.toml")) {
            Ok(cfg) => {
                let printed = summary(&cfg);
                prop_assert!(!printed.is_empty());
            }
            Err(e) => {
                let message = e.to_string();
                prop_assert!(message.contains("fuzz.toml"), "{message}");
            }
        }
    }
}
