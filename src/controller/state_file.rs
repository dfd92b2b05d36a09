//! Persisted operator decisions (drain, disable, weight): written
//! atomically after every change (temp file, fsync, rename, fsync of the
//! directory) and read at start-up. A file that exists but cannot be read
//! or parsed stops start-up and is never overwritten: losing an operator's
//! drain silently is worse than not starting.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::signals::AdminState;

/// Format version written into the file, so a future change of shape can
/// be told apart from corruption.
const FORMAT_VERSION: u32 = 1;

/// Largest state file read. A real one holds a line per stamp with a
/// decision (a few KiB for thousands of stamps); without a cap a path that
/// points at `/dev/zero` or a runaway file ran the machine out of memory.
pub const MAX_STATE_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Largest weight override, as the admin API and `stampgate ctl` accept.
pub const MAX_WEIGHT: u32 = 1000;

/// The operator's word on one stamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    /// Admin state.
    pub admin: AdminState,
    /// Weight override, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

impl Decision {
    /// Whether this is what a stamp has without any decision.
    pub fn is_default(&self) -> bool {
        self.admin == AdminState::Active && self.weight.is_none()
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    version: u32,
    stamps: BTreeMap<String, Decision>,
    /// Only an edge of a fleet writes it; a file without it reads as
    /// before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fleet: Option<FleetRecord>,
}

/// What an edge of a fleet keeps beside the decisions in force, so that it
/// starts while etcd is down with what it last knew, and resumes its watch
/// where it stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetRecord {
    /// The last etcd revision applied.
    pub revision: i64,
    /// Stamps under a local (this edge only) override.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub local: BTreeSet<String>,
    /// The fleet's decision per stamp (what a cleared override returns to).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub decisions: BTreeMap<String, FleetStamp>,
}

/// The fleet's decision on one stamp, as last applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetStamp {
    /// Admin state.
    pub admin: AdminState,
    /// Weight override, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// The etcd revision that wrote it.
    pub revision: i64,
    /// Who decided, and on which edge.
    pub by: String,
    /// The edge whose admin API took it.
    pub edge: String,
}

impl FleetStamp {
    /// The decision itself.
    pub fn decision(&self) -> Decision {
        Decision {
            admin: self.admin,
            weight: self.weight,
        }
    }
}

/// Why the state file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    /// It exists but could not be read.
    #[error(
        "state file {path}: cannot read: {source}; refusing to start (the file is left untouched)"
    )]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// It is larger than [`MAX_STATE_FILE_BYTES`].
    #[error(
        "state file {path}: larger than the {MAX_STATE_FILE_BYTES}-byte (16 MiB) limit; refusing to start (the file is left untouched)"
    )]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// It was read but is not a state file.
    #[error("state file {path}: {message}; refusing to start (the file is left untouched)")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parse error.
        message: String,
    },
    /// A new state could not be written (the old file is unchanged).
    #[error("state file {path}: cannot write: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Read the decisions; a missing file means none.
pub fn load(path: &Path) -> Result<BTreeMap<String, Decision>, StateFileError> {
    load_all(path).map(|(stamps, _)| stamps)
}

/// Decisions in force and, for an edge of a fleet, its fleet record.
pub type Loaded = (BTreeMap<String, Decision>, Option<FleetRecord>);

/// Read the decisions and the fleet record; a missing file means none.
pub fn load_all(path: &Path) -> Result<Loaded, StateFileError> {
    let read_err = |source| StateFileError::Read {
        path: path.to_owned(),
        source,
    };
    let file = match fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((BTreeMap::new(), None)),
        Err(source) => return Err(read_err(source)),
    };
    // One byte past the limit tells a file at the limit from a larger one
    // (a device or pipe has no size to ask for first).
    let mut text = String::new();
    file.take(MAX_STATE_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(read_err)?;
    if text.len() as u64 > MAX_STATE_FILE_BYTES {
        return Err(StateFileError::TooLarge {
            path: path.to_owned(),
        });
    }
    parse(&text, path)
}

/// A state file's text, checked as [`load_all`] does (`path` names it in
/// errors).
fn parse(text: &str, path: &Path) -> Result<Loaded, StateFileError> {
    let file: StateFile = serde_json::from_str(text).map_err(|e| StateFileError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    if file.version != FORMAT_VERSION {
        return Err(StateFileError::Parse {
            path: path.to_owned(),
            message: format!("version {} is not {FORMAT_VERSION}", file.version),
        });
    }
    // The fleet's decisions are applied like the local ones: the same range.
    let local = file
        .stamps
        .iter()
        .map(|(s, d)| (format!("stamps.{s}.weight"), d.weight));
    let fleet = file.fleet.iter().flat_map(|f| {
        f.decisions
            .iter()
            .map(|(s, d)| (format!("fleet.decisions.{s}.weight"), d.weight))
    });
    if let Some((key, weight)) = local
        .chain(fleet)
        .find_map(|(key, w)| w.filter(|&w| w > MAX_WEIGHT).map(|w| (key, w)))
    {
        return Err(StateFileError::Parse {
            path: path.to_owned(),
            message: format!("{key} = {weight} is out of range (0..={MAX_WEIGHT})"),
        });
    }
    Ok((file.stamps, file.fleet))
}

/// Write the decisions atomically: a reader (or a crash) sees the old file
/// or the new one, never half of one.
pub fn save(path: &Path, decisions: &BTreeMap<String, Decision>) -> Result<(), StateFileError> {
    save_all(path, decisions, None)
}

/// Write the decisions and, for an edge of a fleet, its fleet record.
pub fn save_all(
    path: &Path,
    decisions: &BTreeMap<String, Decision>,
    fleet: Option<&FleetRecord>,
) -> Result<(), StateFileError> {
    let write_err = |source| StateFileError::Write {
        path: path.to_owned(),
        source,
    };
    let file = StateFile {
        version: FORMAT_VERSION,
        stamps: decisions
            .iter()
            .filter(|(_, d)| !d.is_default())
            .map(|(k, d)| (k.clone(), *d))
            .collect(),
        fleet: fleet.cloned(),
    };
    let text = serde_json::to_string_pretty(&file).expect("decisions serialize");
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(write_err)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = fs::File::create(&tmp).map_err(write_err)?;
    f.write_all(text.as_bytes()).map_err(write_err)?;
    f.write_all(b"\n").map_err(write_err)?;
    f.sync_all().map_err(write_err)?;
    drop(f);
    fs::rename(&tmp, path).map_err(write_err)?;
    // The rename itself must reach the disk too.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzzing;
    use proptest::prelude::*;

    /// A state file with local and fleet decisions, as `save_all` writes it.
    fn valid_text() -> Vec<u8> {
        let stamps = BTreeMap::from([
            (
                "eu-1".to_owned(),
                Decision {
                    admin: AdminState::Draining,
                    weight: Some(40),
                },
            ),
            (
                "us-2".to_owned(),
                Decision {
                    admin: AdminState::Disabled,
                    weight: None,
                },
            ),
        ]);
        let fleet = FleetRecord {
            revision: 12,
            local: BTreeSet::from(["us-2".to_owned()]),
            decisions: BTreeMap::from([(
                "eu-1".to_owned(),
                FleetStamp {
                    admin: AdminState::Draining,
                    weight: Some(40),
                    revision: 11,
                    by: "ops".to_owned(),
                    edge: "edge-1".to_owned(),
                },
            )]),
        };
        let file = StateFile {
            version: FORMAT_VERSION,
            stamps,
            fleet: Some(fleet),
        };
        serde_json::to_vec_pretty(&file).unwrap()
    }

    proptest! {
        /// Whatever the file holds, loading it is an answer, never a
        /// panic, and what it accepts is in the API's range.
        #[test]
        fn any_state_file_loads_or_is_refused_and_accepted_weights_are_in_range(
            text in prop_oneof![
                1 => fuzzing::syntax(fuzzing::JSON_TOKENS, 40),
                2 => fuzzing::mutated(Just(valid_text()), 5),
                3 => fuzzing::spliced(Just(valid_text()), fuzzing::JSON_TOKENS, 3),
            ]
        ) {
            let text = String::from_utf8_lossy(&text);
            match parse(&text, Path::new("state.json")) {
                Ok((stamps, fleet)) => {
                    let fleet_weights = fleet.iter().flat_map(|f| f.decisions.values().map(|d| d.weight));
                    for w in stamps.values().map(|d| d.weight).chain(fleet_weights).flatten() {
                        prop_assert!(w <= MAX_WEIGHT, "weight {w} accepted: {text}");
                    }
                }
                Err(e) => prop_assert!(e.to_string().contains("state.json"), "{e}"),
            }
        }
    }

    #[test]
    fn a_fleet_decision_out_of_range_is_refused_by_its_key() {
        // The first 40 is the local decision's weight, the last the fleet's.
        let text = String::from_utf8(valid_text()).unwrap();
        let local = text.replacen("40", "5000", 1);
        let e = parse(&local, Path::new("s.json")).unwrap_err().to_string();
        assert!(e.contains("stamps.eu-1.weight = 5000"), "{e}");
        let (before, after) = text.rsplit_once("40").unwrap();
        let fleet_only = format!("{before}5000{after}");
        let e = parse(&fleet_only, Path::new("s.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("fleet.decisions.eu-1.weight = 5000"), "{e}");
    }

    #[test]
    fn round_trip_keeps_only_decisions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("var/state.json");
        let mut d = BTreeMap::new();
        d.insert(
            "a".to_owned(),
            Decision {
                admin: AdminState::Draining,
                weight: None,
            },
        );
        d.insert(
            "b".to_owned(),
            Decision {
                admin: AdminState::Active,
                weight: Some(10),
            },
        );
        d.insert(
            "c".to_owned(),
            Decision {
                admin: AdminState::Active,
                weight: None,
            },
        );
        save(&path, &d).unwrap();
        let back = load(&path).unwrap();
        assert_eq!(back.len(), 2, "the default decision is not written");
        assert_eq!(back["a"].admin, AdminState::Draining);
        assert_eq!(back["b"].weight, Some(10));
    }

    #[test]
    fn fleet_record_round_trips_and_old_files_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        save(&path, &BTreeMap::new()).unwrap();
        assert_eq!(load_all(&path).unwrap().1, None);
        let mut record = FleetRecord {
            revision: 42,
            ..FleetRecord::default()
        };
        record.local.insert("a".into());
        record.decisions.insert(
            "b".into(),
            FleetStamp {
                admin: AdminState::Draining,
                weight: None,
                revision: 40,
                by: "alice".into(),
                edge: "edge-2".into(),
            },
        );
        save_all(&path, &BTreeMap::new(), Some(&record)).unwrap();
        assert_eq!(load_all(&path).unwrap().1, Some(record));
    }

    #[test]
    fn missing_file_is_empty_and_corrupt_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(&dir.path().join("none.json")).unwrap().is_empty());
        let path = dir.path().join("bad.json");
        fs::write(&path, "{not json").unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(
            err.contains("bad.json") && err.contains("refusing to start"),
            "{err}"
        );
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "{not json",
            "left untouched"
        );
    }
}
