//! The controller's side of the fleet: decisions read from etcd applied on
//! this edge, the local emergency override, and stamps a quorum of edges
//! sees down. The fleet sync task (`crate::fleet`) talks to etcd; this file
//! only changes the controller's own state, through the same mailbox as
//! every admin command, so a fleet decision is applied, persisted and
//! published exactly like a local one.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};
use tokio::time::Instant;

use super::events::{EventKind, NewEvent};
use super::operator::{admin_label, describe};
use super::state_file::{Decision, FleetRecord, FleetStamp};
use super::{Controller, HealthState};
use crate::config::defaults::MAX_WEIGHT;
use crate::signals::{AdminError, AdminState, Command, FleetApply, Target};

/// Fleet state the controller keeps (only used when `[fleet]` is set).
#[derive(Debug, Default)]
pub(super) struct FleetState {
    /// Part of the config: whether this edge is in a fleet at all.
    pub enabled: bool,
    /// Persisted with the decisions: revision, local overrides, the
    /// fleet's decision per stamp.
    pub record: FleetRecord,
    /// Stamps a quorum of live edges sees unhealthy, with those edges.
    pub down: BTreeMap<String, Vec<String>>,
}

impl FleetState {
    /// Whether a quorum of edges has this stamp out.
    pub fn quorum_down(&self, stamp: &str) -> bool {
        self.down.contains_key(stamp)
    }
}

impl Controller {
    /// What `command` would write per stamp, refusing what the command
    /// itself would refuse. The "last usable region" guard is judged on
    /// this edge's view: the fleet's decisions (applied here) and its own
    /// health.
    pub(super) fn plan(&self, command: Command, now: Instant) -> Result<Value, AdminError> {
        let (target, what, deadline) = match &command {
            Command::Drain {
                target,
                deadline,
                force,
                ..
            } => {
                let stamps = self.resolve(target)?;
                if !force {
                    let mut weights = self.weights(now);
                    for &i in &stamps {
                        weights[i] = 0;
                    }
                    self.refuse_last_usable(&stamps, &weights, target)?;
                }
                let what = match deadline {
                    Some(d) => format!("drain {} (deadline {d:?})", describe(target)),
                    None => format!("drain {}", describe(target)),
                };
                (target.clone(), what, *deadline)
            }
            Command::Enable { target } => {
                (target.clone(), format!("enable {}", describe(target)), None)
            }
            Command::Disable { stamp } => {
                let t = Target::Stamp(stamp.clone());
                let what = format!("disable {}", describe(&t));
                (t, what, None)
            }
            Command::Weight { stamp, weight } => {
                if let Some(w) = weight.filter(|&w| w > MAX_WEIGHT) {
                    return Err(AdminError::Invalid {
                        field: "weight".into(),
                        message: format!("{w} is out of range 0..={MAX_WEIGHT}"),
                    });
                }
                let t = Target::Stamp(stamp.clone());
                let what = match weight {
                    Some(w) => format!("set weight of {} to {w}", describe(&t)),
                    None => format!("clear the weight override of {}", describe(&t)),
                };
                (t, what, None)
            }
            other => {
                return Err(AdminError::Invalid {
                    field: "command".into(),
                    message: format!("{other:?} is not an operator decision"),
                });
            }
        };
        let stamps = self.resolve(&target)?;
        let planned: Vec<Value> = stamps
            .iter()
            .map(|&i| {
                let name = &self.stamps[i].config.name;
                let fleet = self.fleet.record.decisions.get(name);
                let mut d = fleet.map(FleetStamp::decision).unwrap_or(Decision {
                    admin: AdminState::Active,
                    weight: None,
                });
                match &command {
                    Command::Drain { .. } => d.admin = AdminState::Draining,
                    Command::Enable { .. } => d.admin = AdminState::Active,
                    Command::Disable { .. } => d.admin = AdminState::Disabled,
                    Command::Weight { weight, .. } => d.weight = *weight,
                    _ => {}
                }
                json!({
                    "stamp": name,
                    "admin": d.admin,
                    "weight": d.weight,
                    "deadline_ms": deadline.map(|d| d.as_millis() as u64),
                })
            })
            .collect();
        Ok(json!({ "what": what, "stamps": planned }))
    }

    /// Apply decisions read from etcd. A decision older than the one a
    /// stamp already has is skipped (the watch replays what this edge
    /// wrote itself); a stamp under a local override keeps it, the fleet's
    /// decision is kept for when the override is cleared.
    pub(super) fn apply_fleet(
        &mut self,
        apply: FleetApply,
        now: Instant,
    ) -> Result<Value, AdminError> {
        let mut changed = Vec::new();
        let mut seen = BTreeSet::new();
        let record = &mut self.fleet.record;
        for d in apply.decisions {
            seen.insert(d.stamp.clone());
            let old = record.decisions.get(&d.stamp);
            let stale = match old {
                // A full read is the truth even when revisions went back
                // (etcd's data was replaced).
                Some(old) if apply.full => old.revision == d.revision,
                Some(old) => old.revision >= d.revision,
                None => false,
            };
            if stale {
                continue;
            }
            record.decisions.insert(
                d.stamp.clone(),
                FleetStamp {
                    admin: d.admin,
                    weight: d.weight,
                    revision: d.revision,
                    by: d.by.clone(),
                    edge: d.edge.clone(),
                },
            );
            changed.push(d);
        }
        if apply.full {
            let gone: Vec<String> = record
                .decisions
                .keys()
                .filter(|k| !seen.contains(*k))
                .cloned()
                .collect();
            for stamp in gone {
                record.decisions.remove(&stamp);
                changed.push(crate::signals::FleetDecision {
                    stamp,
                    admin: AdminState::Active,
                    weight: None,
                    deadline: None,
                    by: "fleet".into(),
                    edge: "etcd".into(),
                    why: "no decision in etcd any more".into(),
                    revision: apply.revision,
                });
            }
            record.revision = apply.revision;
        } else {
            record.revision = record.revision.max(apply.revision);
        }
        if changed.is_empty() && !apply.full {
            // Our own decisions coming back on the watch: nothing to do,
            // nothing to write. (A full read is written even so: its
            // revision is where the next start resumes.)
            return Ok(
                json!({ "ok": true, "revision": self.fleet.record.revision, "applied": 0, "stamps": [] }),
            );
        }
        let mut touched = Vec::new();
        for d in &changed {
            let reason = format!(
                "{} (by {} on edge {}, fleet revision {})",
                d.why, d.by, d.edge, d.revision
            );
            if self.fleet.record.local.contains(&d.stamp) {
                self.events.push(NewEvent {
                    kind: EventKind::Operator,
                    pool: None,
                    stamp: Some(d.stamp.clone()),
                    from: None,
                    to: None,
                    reason: format!("{reason}: not applied, a local override is in force"),
                });
                continue;
            }
            let decision = Decision {
                admin: d.admin,
                weight: d.weight,
            };
            match self.by_name.get(d.stamp.as_str()) {
                Some(&i) => {
                    let e = &mut self.stamps[i];
                    let before = admin_label(e);
                    if e.admin != d.admin || d.admin == AdminState::Draining {
                        e.drain_deadline = d.deadline.map(|dl| now + dl);
                        e.drained = false;
                    }
                    e.admin = d.admin;
                    e.weight_override = d.weight;
                    touched.push(i);
                    tracing::info!(stamp = %d.stamp, by = %d.by, edge = %d.edge, revision = d.revision, action = %d.why, "fleet decision applied");
                    self.events.push(NewEvent {
                        kind: EventKind::Operator,
                        pool: Some(self.config.pools[e.pool].name.clone()),
                        stamp: Some(d.stamp.clone()),
                        from: Some(before.as_str().into()),
                        to: Some(admin_label(e).as_str().into()),
                        reason,
                    });
                }
                None if decision.is_default() => {
                    self.orphans.remove(&d.stamp);
                }
                None => {
                    self.orphans.insert(d.stamp.clone(), decision);
                }
            }
        }
        self.persist()
            .map_err(|e| AdminError::Persist(e.to_string()))?;
        self.publish(now, false);
        let stamps: Vec<Value> = touched.iter().map(|&i| self.stamp_brief(i)).collect();
        Ok(json!({
            "ok": true,
            "revision": self.fleet.record.revision,
            "applied": changed.len(),
            "stamps": stamps,
        }))
    }

    /// The emergency override: `command` on this edge only. Its stamps
    /// ignore fleet decisions until the override is cleared.
    pub(super) fn local_override(
        &mut self,
        command: Command,
        who: &str,
        now: Instant,
    ) -> Result<Value, AdminError> {
        let target = match &command {
            Command::Drain { target, .. } | Command::Enable { target } => target.clone(),
            Command::Disable { stamp } | Command::Weight { stamp, .. } => {
                Target::Stamp(stamp.clone())
            }
            other => {
                return Err(AdminError::Invalid {
                    field: "local".into(),
                    message: format!("{other:?} cannot be a local override"),
                });
            }
        };
        let dry_run = matches!(command, Command::Drain { dry_run: true, .. });
        let stamps = self.resolve(&target)?;
        let names: Vec<String> = stamps
            .iter()
            .map(|&i| self.stamps[i].config.name.clone())
            .collect();
        let added: Vec<String> = if dry_run {
            Vec::new()
        } else {
            names
                .iter()
                .filter(|n| self.fleet.record.local.insert((*n).clone()))
                .cloned()
                .collect()
        };
        let who = format!("{who}, local override on this edge only");
        let answer = self.execute(command, &who, now);
        if answer.is_err() {
            for n in &added {
                self.fleet.record.local.remove(n);
            }
        }
        let mut answer = answer?;
        if let Some(o) = answer.as_object_mut() {
            o.insert("local_override".into(), json!(names));
        }
        Ok(answer)
    }

    /// End the local override of `stamp`: it takes the fleet's decision
    /// (or none) again.
    pub(super) fn clear_local(
        &mut self,
        stamp: &str,
        who: &str,
        now: Instant,
    ) -> Result<Value, AdminError> {
        let stamps = self.resolve(&Target::Stamp(stamp.to_owned()))?;
        if !self.fleet.record.local.contains(stamp) {
            return Err(AdminError::Refused(format!(
                "stamp {stamp} has no local override"
            )));
        }
        let fleet = self
            .fleet
            .record
            .decisions
            .get(stamp)
            .map(FleetStamp::decision);
        let d = fleet.unwrap_or(Decision {
            admin: AdminState::Active,
            weight: None,
        });
        self.fleet.record.local.remove(stamp);
        let what =
            format!("clear the local override of stamp {stamp}: back to the fleet's decision");
        let answer = self.decide(&stamps, who, now, &what, |e| {
            if e.admin != d.admin {
                e.drain_deadline = None;
                e.drained = false;
            }
            e.admin = d.admin;
            e.weight_override = d.weight;
        });
        if answer.is_err() {
            self.fleet.record.local.insert(stamp.to_owned());
        }
        answer
    }

    /// A new set of stamps a quorum of edges sees down: they leave (or
    /// rejoin) this edge's table at once. Only ever takes a stamp out:
    /// what this edge's own probes see down stays down.
    pub(super) fn fleet_health(
        &mut self,
        down: BTreeMap<String, Vec<String>>,
        now: Instant,
    ) -> Result<Value, AdminError> {
        for (stamp, edges) in &down {
            if self.fleet.down.get(stamp) == Some(edges) {
                continue;
            }
            let Some(&i) = self.by_name.get(stamp.as_str()) else {
                continue;
            };
            if self.fleet.down.contains_key(stamp) {
                continue;
            }
            let reason = format!("a quorum of edges sees it unhealthy: {}", edges.join(", "));
            tracing::warn!(%stamp, %reason, "stamp out by fleet quorum");
            self.events.push(NewEvent {
                kind: EventKind::Health,
                pool: Some(self.config.pools[self.stamps[i].pool].name.clone()),
                stamp: Some(stamp.clone()),
                from: Some(self.stamps[i].health.state().as_str().into()),
                to: Some(HealthState::Unhealthy.as_str().into()),
                reason,
            });
        }
        for stamp in self.fleet.down.keys() {
            if down.contains_key(stamp) || !self.by_name.contains_key(stamp.as_str()) {
                continue;
            }
            tracing::info!(%stamp, "fleet quorum no longer sees the stamp down");
            self.events.push(NewEvent {
                kind: EventKind::Health,
                pool: None,
                stamp: Some(stamp.clone()),
                from: Some(HealthState::Unhealthy.as_str().into()),
                to: None,
                reason:
                    "no quorum of edges sees it unhealthy any more; this edge's own probes decide"
                        .into(),
            });
        }
        self.fleet.down = down;
        self.publish(now, false);
        Ok(json!({ "ok": true, "quorum_down": self.fleet.down }))
    }

    /// The `fleet` part of the status document.
    pub(super) fn fleet_status(&self) -> Value {
        let decisions: BTreeMap<&String, Value> = self
            .fleet
            .record
            .decisions
            .iter()
            .map(|(k, d)| {
                (
                    k,
                    json!({ "admin": d.admin, "weight": d.weight, "revision": d.revision, "by": d.by, "edge": d.edge }),
                )
            })
            .collect();
        json!({
            "revision": self.fleet.record.revision,
            "local_overrides": self.fleet.record.local,
            "quorum_down": self.fleet.down,
            "decisions": decisions,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::controller::ControllerHandle;
    use crate::signals::FleetDecision;

    const CONFIG: &str = "[[routes]]\nname = \"r\"\npool = \"p\"\n[pools.p]\n\
        [[pools.p.stamps]]\nname = \"a\"\nregion = \"r1\"\naddress = \"127.0.0.1:1\"\n\
        [[pools.p.stamps]]\nname = \"b\"\nregion = \"r2\"\naddress = \"B_ADDRESS\"\n\
        [fleet]\nname = \"e1\"\netcd = [\"http://127.0.0.1:1\"]\n";

    fn decision(admin: AdminState, revision: i64) -> FleetDecision {
        FleetDecision {
            stamp: "a".into(),
            admin,
            weight: None,
            deadline: None,
            by: "alice".into(),
            edge: "e2".into(),
            why: "test".into(),
            revision,
        }
    }

    async fn apply(c: &ControllerHandle, decisions: Vec<FleetDecision>, full: bool, revision: i64) {
        let apply = FleetApply {
            decisions,
            full,
            revision,
        };
        c.command(Command::ApplyFleet(apply), "fleet")
            .await
            .unwrap();
    }

    async fn admin_of_a(c: &ControllerHandle) -> String {
        let s = c.command(Command::Status, "t").await.unwrap();
        s["pools"][0]["stamps"][0]["admin"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    #[tokio::test]
    async fn fleet_decisions_apply_in_revision_order_and_yield_to_a_local_override() {
        let text = CONFIG.replace("B_ADDRESS", "127.0.0.1:2");
        let config = crate::config::parse_str(&text, std::path::Path::new("t.toml")).unwrap();
        let stats = Arc::new(crate::metrics::ProxyStats::default());
        let c = Controller::start(config, stats, CancellationToken::new()).unwrap();
        apply(&c, vec![decision(AdminState::Draining, 5)], false, 5).await;
        assert_eq!(admin_of_a(&c).await, "drained");
        // An older decision (a replay) changes nothing.
        apply(&c, vec![decision(AdminState::Active, 4)], false, 4).await;
        assert_eq!(admin_of_a(&c).await, "drained");
        // The local override wins over later fleet decisions until cleared.
        let enable = Command::Enable {
            target: Target::Stamp("a".into()),
        };
        c.command(Command::Local(Box::new(enable)), "bob")
            .await
            .unwrap();
        assert_eq!(admin_of_a(&c).await, "active");
        apply(&c, vec![decision(AdminState::Disabled, 7)], false, 7).await;
        assert_eq!(admin_of_a(&c).await, "active");
        let status = c.command(Command::Status, "t").await.unwrap();
        assert_eq!(status["fleet"]["local_overrides"][0], "a");
        assert_eq!(status["fleet"]["decisions"]["a"]["revision"], 7);
        c.command(Command::ClearLocal { stamp: "a".into() }, "bob")
            .await
            .unwrap();
        assert_eq!(admin_of_a(&c).await, "disabled");
        // A full read without a decision for a: back to active.
        apply(&c, Vec::new(), true, 9).await;
        assert_eq!(admin_of_a(&c).await, "active");
        let err = c
            .command(Command::ClearLocal { stamp: "a".into() }, "bob")
            .await
            .unwrap_err();
        assert!(matches!(err, AdminError::Refused(_)), "{err}");
    }

    #[tokio::test]
    async fn a_quorum_only_takes_a_stamp_out() {
        // b is a live stamp, so only the quorum can take it out.
        let b = crate::stamp::Stamp::start(crate::stamp::StampOptions::loopback("b", "r2"))
            .await
            .unwrap();
        let text = CONFIG.replace("B_ADDRESS", &b.addr().to_string());
        let config = crate::config::parse_str(&text, std::path::Path::new("t.toml")).unwrap();
        let stats = Arc::new(crate::metrics::ProxyStats::default());
        let c = Controller::start(config, stats, CancellationToken::new()).unwrap();
        let weight = async || {
            let s = c.command(Command::Status, "t").await.unwrap();
            s["pools"][0]["stamps"][1]["effective_weight"]
                .as_u64()
                .unwrap()
        };
        let before = weight().await;
        assert!(before > 0, "b takes traffic before the quorum speaks");
        let down = BTreeMap::from([("b".to_owned(), vec!["e2".to_owned(), "e3".to_owned()])]);
        c.command(Command::FleetHealth { down }, "fleet")
            .await
            .unwrap();
        assert_eq!(weight().await, 0);
        c.command(
            Command::FleetHealth {
                down: BTreeMap::new(),
            },
            "fleet",
        )
        .await
        .unwrap();
        assert_eq!(weight().await, before);
    }
}
