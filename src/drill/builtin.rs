//! The built-in scenarios: the files of `scenarios/`, embedded so that
//! `stampgate drill region-outage` runs without any file. Each spawns its
//! own stamps (three regions) and an in-process proxy on loopback.

use std::path::Path;

use super::scenario::{Scenario, ScenarioError};

/// `(name, file text)` of every built-in scenario, in the order `--list`
/// shows them.
pub const BUILTIN: &[(&str, &str)] = &[
    (
        "region-outage",
        include_str!("../../scenarios/region-outage.toml"),
    ),
    ("brownout", include_str!("../../scenarios/brownout.toml")),
    (
        "api-brownout",
        include_str!("../../scenarios/api-brownout.toml"),
    ),
    (
        "api-brownout-weighted",
        include_str!("../../scenarios/api-brownout-weighted.toml"),
    ),
    ("api-hang", include_str!("../../scenarios/api-hang.toml")),
    (
        "api-hang-hedged",
        include_str!("../../scenarios/api-hang-hedged.toml"),
    ),
    (
        "partial-errors",
        include_str!("../../scenarios/partial-errors.toml"),
    ),
    (
        "health-takeout",
        include_str!("../../scenarios/health-takeout.toml"),
    ),
    ("flapping", include_str!("../../scenarios/flapping.toml")),
    (
        "drain-under-load",
        include_str!("../../scenarios/drain-under-load.toml"),
    ),
    (
        "all-regions-down",
        include_str!("../../scenarios/all-regions-down.toml"),
    ),
    (
        "reload-under-load",
        include_str!("../../scenarios/reload-under-load.toml"),
    ),
];

/// The built-in scenario `name`, parsed; `None` if there is none. A parse
/// error is a build defect, reported as such.
pub fn find(name: &str) -> Option<Result<Scenario, ScenarioError>> {
    let (file, text) = BUILTIN.iter().find(|(n, _)| *n == name)?;
    let source = Path::new("scenarios").join(format!("{file}.toml"));
    Some(Scenario::parse(text, &source))
}

/// The built-in scenario `name`; panics if it is missing or broken (tests).
#[cfg(test)]
pub fn scenario(name: &str) -> Option<Scenario> {
    find(name).map(|s| s.expect("built-in scenarios parse"))
}

/// `--list`: one line per built-in scenario, name and description.
pub fn list() -> String {
    let mut out = String::new();
    for (name, text) in BUILTIN {
        let description = match Scenario::parse(text, Path::new(name)) {
            Ok(s) => s.description,
            Err(e) => format!("(broken: {e})"),
        };
        out.push_str(&format!("{name:<20} {description}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_parses_and_is_named_after_its_file() {
        for (name, _) in BUILTIN {
            let s = scenario(name).expect("listed");
            assert_eq!(&s.name, name);
            assert!(!s.description.is_empty(), "{name} needs a description");
            assert!(s.stamps.len() >= 3, "{name}: three regions");
        }
        assert!(find("no-such").is_none());
        assert_eq!(list().lines().count(), BUILTIN.len());
    }
}
