//! The controller's side of operator commands: drain, enable, disable,
//! weight, reload. Each is applied, persisted and published in one place;
//! a decision that cannot be persisted is not applied.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::tripwire::Tripwire;

use super::events::{EventKind, NewEvent};
use super::{Controller, StampEntry, effective_weight, route_shared, state_file};
use crate::config::Config;
use crate::config::{self, defaults::MAX_WEIGHT};
use crate::metrics::ReloadResult;
use crate::proxy::tls::{Certificates, PreparedCertificates};
use crate::routing::RoutingTable;
use crate::signals::{AdminError, AdminRequest, AdminShown, AdminState, Command, Target};
use crate::upstream::Upstream;
use tokio::sync::oneshot;

impl Controller {
    /// Carry out an operator command and answer it. A reload is answered
    /// later, once its file has been read off the loop ([`Loaded`]).
    pub(super) fn on_admin(&mut self, request: AdminRequest, now: Instant) {
        let AdminRequest {
            command,
            who,
            reply,
        } = request;
        if let Command::Reload = command {
            return self.load_off_loop(who, reply);
        }
        let answer = self.execute(command, &who, now);
        // The asker may have gone away; the decision stands.
        let _ = reply.send(answer);
    }

    /// Carry out a command that is answered at once (every one but a
    /// reload): the admin API's through [`Controller::on_admin`], and a
    /// local override's inner command.
    pub(super) fn execute(
        &mut self,
        command: Command,
        who: &str,
        now: Instant,
    ) -> Result<Value, AdminError> {
        match command {
            Command::Reload => Err(AdminError::Invalid {
                field: "command".into(),
                message: "a reload is not a decision: it cannot be nested in another command"
                    .into(),
            }),
            Command::Status => {
                let mut status = self.status(now);
                if self.fleet.enabled
                    && let Some(o) = status.as_object_mut()
                {
                    o.insert("fleet".into(), self.fleet_status());
                }
                Ok(status)
            }
            Command::Plan(command) => self.plan(*command, now),
            Command::ApplyFleet(apply) => self.apply_fleet(apply, now),
            Command::Local(command) => self.local_override(*command, who, now),
            Command::ClearLocal { stamp } => self.clear_local(&stamp, who, now),
            Command::FleetHealth { down } => self.fleet_health(down, now),
            Command::Drain {
                target,
                deadline,
                dry_run,
                force,
            } => self.drain(&target, deadline, dry_run, force, who, now),
            Command::Enable { target } => {
                let what = format!("enable {}", describe(&target));
                self.set_admin(&target, AdminState::Active, None, &what, who, now)
            }
            Command::Disable { stamp } => {
                let target = Target::Stamp(stamp);
                let what = format!("disable {}", describe(&target));
                self.set_admin(&target, AdminState::Disabled, None, &what, who, now)
            }
            Command::Weight { stamp, weight } => self.set_weight(stamp, weight, who, now),
        }
    }

    fn set_weight(
        &mut self,
        stamp: String,
        weight: Option<u32>,
        who: &str,
        now: Instant,
    ) -> Result<Value, AdminError> {
        if let Some(w) = weight.filter(|&w| w > MAX_WEIGHT) {
            return Err(AdminError::Invalid {
                field: "weight".into(),
                message: format!("{w} is out of range 0..={MAX_WEIGHT}"),
            });
        }
        let target = Target::Stamp(stamp);
        let stamps = self.resolve(&target)?;
        let what = match weight {
            Some(w) => format!("set weight of {} to {w}", describe(&target)),
            None => format!("clear the weight override of {}", describe(&target)),
        };
        self.decide(&stamps, who, now, &what, |e| e.weight_override = weight)
    }

    /// Stamp indices named by `target`.
    pub(super) fn resolve(&self, target: &Target) -> Result<Vec<usize>, AdminError> {
        match target {
            Target::Stamp(name) => self
                .by_name
                .get(name.as_str())
                .map(|&i| vec![i])
                .ok_or_else(|| AdminError::UnknownStamp(name.clone())),
            Target::Region(region) => {
                let found: Vec<usize> = (0..self.stamps.len())
                    .filter(|&i| self.stamps[i].config.region == *region)
                    .collect();
                if found.is_empty() {
                    Err(AdminError::UnknownRegion(region.clone()))
                } else {
                    Ok(found)
                }
            }
        }
    }

    /// Apply `change` to `stamps`, persist, publish, log; on a failed write
    /// undo the change and report it.
    pub(super) fn decide(
        &mut self,
        stamps: &[usize],
        who: &str,
        now: Instant,
        what: &str,
        change: impl Fn(&mut StampEntry),
    ) -> Result<Value, AdminError> {
        let before: Vec<(AdminState, Option<u32>, Option<Instant>, bool)> = stamps
            .iter()
            .map(|&i| {
                let e = &self.stamps[i];
                (e.admin, e.weight_override, e.drain_deadline, e.drained)
            })
            .collect();
        for &i in stamps {
            change(&mut self.stamps[i]);
        }
        if let Err(e) = self.persist() {
            for (&i, (admin, weight, deadline, drained)) in stamps.iter().zip(before) {
                let entry = &mut self.stamps[i];
                entry.admin = admin;
                entry.weight_override = weight;
                entry.drain_deadline = deadline;
                entry.drained = drained;
            }
            return Err(AdminError::Persist(e.to_string()));
        }
        tracing::info!(%who, action = %what, "operator action");
        for &i in stamps {
            let e = &self.stamps[i];
            self.events.push(NewEvent {
                kind: EventKind::Operator,
                pool: Some(self.config.pools[e.pool].name.clone()),
                stamp: Some(e.config.name.clone()),
                from: None,
                to: Some(admin_label(e).as_str().into()),
                reason: format!("{what} (by {who})"),
            });
        }
        self.publish(now, false);
        let changed: Vec<Value> = stamps.iter().map(|&i| self.stamp_brief(i)).collect();
        Ok(json!({ "ok": true, "action": what, "by": who, "stamps": changed }))
    }

    fn drain(
        &mut self,
        target: &Target,
        deadline: Option<Duration>,
        dry_run: bool,
        force: bool,
        who: &str,
        now: Instant,
    ) -> Result<Value, AdminError> {
        let stamps = self.resolve(target)?;
        // What the pools would look like with these stamps draining.
        let mut weights = self.weights(now);
        for &i in &stamps {
            weights[i] = 0;
        }
        let predicted = self.build_table(&weights, self.generation, now);
        if dry_run {
            let current = self.routing.load();
            let mut answer = json!({
                "dry_run": true,
                "target": describe(target),
                "current_shares": shares(&current),
                "shares": shares(&predicted),
            });
            // A dry run answers what the real call would do, refusal
            // included: "looks fine" followed by a refusal misleads.
            if !force
                && let Err(AdminError::Refused(why)) =
                    self.refuse_last_usable(&stamps, &weights, target)
            {
                answer["would_refuse"] = json!(why);
            }
            return Ok(answer);
        }
        if !force {
            self.refuse_last_usable(&stamps, &weights, target)?;
        }
        let what = match deadline {
            Some(d) => format!("drain {} (deadline {d:?})", describe(target)),
            None => format!("drain {}", describe(target)),
        };
        self.set_admin(
            target,
            AdminState::Draining,
            deadline.map(|d| now + d),
            &what,
            who,
            now,
        )
    }

    /// Put `target` into `admin` state (a drain with its deadline).
    fn set_admin(
        &mut self,
        target: &Target,
        admin: AdminState,
        deadline: Option<Instant>,
        what: &str,
        who: &str,
        now: Instant,
    ) -> Result<Value, AdminError> {
        let stamps = self.resolve(target)?;
        self.decide(&stamps, who, now, what, |e| {
            e.admin = admin;
            e.drain_deadline = deadline;
            e.drained = false;
        })
    }

    /// Refuse a drain that would leave a pool without any usable stamp:
    /// that is an outage by hand, so it needs `force`.
    pub(super) fn refuse_last_usable(
        &self,
        stamps: &[usize],
        weights_after: &[u32],
        target: &Target,
    ) -> Result<(), AdminError> {
        for (pi, pool) in self.config.pools.iter().enumerate() {
            let affected = stamps.iter().any(|&i| self.stamps[i].pool == pi);
            let usable_after =
                (0..self.stamps.len()).any(|i| self.stamps[i].pool == pi && weights_after[i] > 0);
            if affected && !usable_after {
                return Err(AdminError::Refused(format!(
                    "draining {} would leave pool {} with no usable stamp (the others are unhealthy, draining or disabled); add force=1 to drain anyway",
                    describe(target),
                    pool.name
                )));
            }
        }
        Ok(())
    }

    /// Draining stamps: cut what is still in flight at the deadline, and
    /// once nothing is in flight report `drained` and let the pool's idle
    /// connections to the stamp close.
    pub(super) fn advance_drains(&mut self, now: Instant) {
        let mut renew = Vec::new();
        for i in 0..self.stamps.len() {
            let e = &mut self.stamps[i];
            if e.admin != AdminState::Draining {
                continue;
            }
            let in_flight = e.in_flight();
            if let Some(at) = e.drain_deadline.filter(|&at| at <= now) {
                e.drain_deadline = None;
                if in_flight > 0 {
                    let old = e.stats.cut.swap(Arc::new(Tripwire::new()));
                    old.trip();
                    let _ = at;
                    self.events.push(NewEvent {
                        kind: EventKind::Operator,
                        pool: Some(self.config.pools[e.pool].name.clone()),
                        stamp: Some(e.config.name.clone()),
                        from: None,
                        to: Some("draining".into()),
                        reason: format!(
                            "drain deadline reached: cut {in_flight} request(s) in flight"
                        ),
                    });
                }
            }
            if !e.drained && in_flight == 0 {
                e.drained = true;
                renew.push(e.pool);
                tracing::info!(stamp = %e.config.name, "drained: no request in flight");
                self.events.push(NewEvent {
                    kind: EventKind::Operator,
                    pool: Some(self.config.pools[e.pool].name.clone()),
                    stamp: Some(e.config.name.clone()),
                    from: Some("draining".into()),
                    to: Some("drained".into()),
                    reason: "no request in flight".into(),
                });
            }
        }
        renew.sort_unstable();
        renew.dedup();
        if !renew.is_empty() {
            self.renew_upstreams(&renew);
            self.publish(now, false);
        }
    }

    /// Every decision, for the state file: current stamps and the orphans.
    fn decisions(&self) -> BTreeMap<String, state_file::Decision> {
        let mut all = self.orphans.clone();
        for e in &self.stamps {
            all.insert(e.config.name.clone(), e.decision());
        }
        all
    }

    pub(super) fn persist(&self) -> Result<(), state_file::StateFileError> {
        match &self.config.admin.state_file {
            Some(path) => {
                let fleet = self.fleet.enabled.then_some(&self.fleet.record);
                state_file::save_all(path, &self.decisions(), fleet)
            }
            None => Ok(()),
        }
    }

    /// Read and validate the config file, and build the upstream clients
    /// that cannot be kept (a CA file, the system's root store), on a
    /// blocking thread: the loop keeps serving probes and commands
    /// meanwhile, and applies the result when it arrives ([`Loaded`]).
    pub(super) fn load_off_loop(&self, who: String, reply: Reply) {
        let source = self.config.source.clone();
        let current = self.config.pools.clone();
        let dns = self.dns.clone();
        let loaded = self.loaded_tx.clone();
        tokio::spawn(async move {
            let outcome = tokio::task::spawn_blocking(move || {
                let config = config::load(&source).map_err(|e| LoadError::Config(e.to_string()))?;
                let built = config
                    .pools
                    .iter()
                    .map(|pool| {
                        if current
                            .iter()
                            .any(|p| p.name == pool.name && same_upstream(p, pool))
                        {
                            return Ok(None);
                        }
                        Upstream::new(pool, &dns)
                            .map(|u| Some(Arc::new(u)))
                            .map_err(|e| LoadError::Upstream(e.to_string()))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                // Parsing the signing keys is the slow part of a
                // certificate reload: here, not in the loop.
                let certificates = Certificates::prepare(&config.proxy.certificates)
                    .map_err(|e| LoadError::Config(format!("proxy.certificates: {e}")))?;
                Ok(Box::new(Ready {
                    config,
                    built,
                    certificates,
                }))
            })
            .await
            .unwrap_or_else(|e| Err(LoadError::Upstream(format!("loading the config: {e}"))));
            // A closed channel means the controller has stopped; the
            // dropped reply tells the asker so.
            let _ = loaded
                .send(Loaded {
                    who,
                    reply,
                    outcome,
                })
                .await;
        });
    }

    /// Apply a config loaded off the loop, count the reload, answer it.
    pub(super) fn on_loaded(&mut self, loaded: Loaded, now: Instant) {
        let Loaded {
            who,
            reply,
            outcome,
        } = loaded;
        let result = match outcome {
            Ok(ready) => self.reload(*ready, &who, now),
            Err(LoadError::Config(message)) => {
                tracing::error!(%who, error = %message, "reload refused; still serving the previous config");
                self.events.push(NewEvent::proxy_wide(
                    EventKind::Config,
                    format!("reload refused (by {who}): {message}"),
                ));
                self.last_reload = Some(json!({ "ok": false, "by": who, "error": message }));
                Err(AdminError::Reload(message))
            }
            Err(LoadError::Upstream(message)) => Err(AdminError::Reload(message)),
        };
        let counted = if result.is_ok() {
            ReloadResult::Applied
        } else {
            ReloadResult::Refused
        };
        self.stats.reloads[counted].fetch_add(1, Ordering::Relaxed);
        let _ = reply.send(result);
    }

    /// Swap in a validated config, keeping health history of stamps whose
    /// name and address are unchanged, operator decisions by name, retry
    /// budgets by route and warm connection pools of unchanged pools.
    fn reload(&mut self, ready: Ready, who: &str, now: Instant) -> Result<Value, AdminError> {
        let Ready {
            config: new,
            built,
            certificates,
        } = ready;
        let mut warnings = Vec::new();
        if new.proxy.listen != self.config.proxy.listen
            || new.proxy.tls_listen != self.config.proxy.tls_listen
            || new.admin.listen != self.config.admin.listen
        {
            warnings
                .push("listener addresses changed: they take effect after a restart".to_owned());
        }
        let (log, new_log) = (&self.config.access_log, &new.access_log);
        if log.path != new_log.path || log.format != new_log.format {
            warnings.push(
                "access_log.path and access_log.format take effect after a restart".to_owned(),
            );
        }
        if new.fleet != self.config.fleet {
            warnings.push("[fleet] changed: it takes effect after a restart".to_owned());
        }
        if new.proxy.http1_engine != self.config.proxy.http1_engine {
            warnings.push("proxy.http1_engine takes effect after a restart".to_owned());
        }

        // Upstream clients: keep those whose pool's connection settings
        // did not change, so their warm connections survive; else the one
        // built off the loop. Only when another reload was applied in
        // between is one still missing, and built here. All before any
        // change, so that a failure changes nothing.
        let mut upstreams = Vec::new();
        for (pool, built) in new.pools.iter().zip(built) {
            let reuse = self
                .config
                .pools
                .iter()
                .position(|p| p.name == pool.name && same_upstream(p, pool))
                .map(|pi| self.upstreams[pi].clone());
            let u = match reuse.or(built) {
                Some(u) => u,
                None => Arc::new(
                    Upstream::new(pool, &self.dns)
                        .map_err(|e| AdminError::Reload(e.to_string()))?,
                ),
            };
            upstreams.push(u);
        }
        // Nothing below can refuse the reload: the certificates, read and
        // prepared off the loop, are swapped in.
        self.certificates.install(certificates);
        self.config = new;
        self.upstreams = upstreams;
        let mut old: BTreeMap<String, StampEntry> = std::mem::take(&mut self.stamps)
            .into_iter()
            .map(|e| (e.config.name.clone(), e))
            .collect();
        let mut kept = Vec::new();
        let entries = self.fresh_entries(now, |s| {
            let e = old
                .remove(&s.name)
                .filter(|e| e.config.address == s.address)?;
            kept.push(s.name.clone());
            Some(e)
        });
        let added: Vec<String> = entries
            .iter()
            .map(|e| e.config.name.clone())
            .filter(|n| !kept.contains(n))
            .collect();
        // Stamps gone (or moved to a new address): stop probing, keep
        // their decisions aside.
        let mut removed = Vec::new();
        for (name, e) in old {
            e.probe_cancel.cancel();
            let decision = e.decision();
            if !decision.is_default() {
                self.orphans.insert(name.clone(), decision);
            }
            removed.push(name);
        }
        for e in &entries {
            e.probe_cancel.cancel();
        }
        let entries: Vec<StampEntry> = entries
            .into_iter()
            .map(|mut e| {
                e.probe_cancel = self.cancel.child_token();
                e
            })
            .collect();
        self.install_stamps(entries);
        self.routes = route_shared(&self.config, &self.routes);
        if let Err(e) = self.start_dns() {
            warnings.push(format!("dns: {e}"));
        }
        self.start_probes();
        self.report_orphans();
        self.publish(now, true);
        let summary = json!({
            "ok": true,
            "by": who,
            "generation": self.generation,
            "stamps_kept": kept,
            "stamps_added": added,
            "stamps_removed": removed,
            "warnings": warnings,
        });
        tracing::info!(%who, generation = self.generation, "config reloaded");
        self.events.push(NewEvent::proxy_wide(
            EventKind::Config,
            format!(
                "reloaded (by {who}): {} kept, {} added, {} removed",
                kept.len(),
                added.len(),
                removed.len()
            ),
        ));
        self.last_reload = Some(summary.clone());
        Ok(summary)
    }

    pub(super) fn stamp_brief(&self, i: usize) -> Value {
        let e = &self.stamps[i];
        json!({
            "name": e.config.name,
            "region": e.config.region,
            "admin": admin_label(e).as_str(),
            "weight_override": e.weight_override,
            "in_flight": e.in_flight(),
            "effective_weight": effective_weight(e, &self.config.pools[e.pool], Instant::now()),
        })
    }
}

/// The admin state as shown: a draining stamp with nothing in flight is
/// `drained`.
pub(super) fn admin_label(e: &StampEntry) -> AdminShown {
    e.admin.shown(e.in_flight())
}

/// Where a command's answer goes.
type Reply = oneshot::Sender<Result<Value, AdminError>>;

/// A reload's file, read off the loop, on its way back to be applied.
pub(super) struct Loaded {
    who: String,
    reply: Reply,
    outcome: Result<Box<Ready>, LoadError>,
}

/// A validated config and, per pool, the upstream client built for it
/// where the current one could not be kept (`None`: keep it).
pub(super) struct Ready {
    config: Config,
    built: Vec<Option<Arc<Upstream>>>,
    /// The TLS listeners' certificates, their keys parsed.
    certificates: PreparedCertificates,
}

/// Why a reload's file cannot be applied.
enum LoadError {
    /// The file is unreadable or invalid: recorded as a refused reload.
    Config(String),
    /// A pool's upstream client cannot be built from it.
    Upstream(String),
}

pub(super) fn describe(target: &Target) -> String {
    match target {
        Target::Stamp(s) => format!("stamp {s}"),
        Target::Region(r) => format!("region {r}"),
    }
}

/// Share of new requests each stamp would get from `table` (first tier of
/// each pool's selector), per pool.
pub(super) fn shares(table: &RoutingTable) -> Value {
    let mut pools = serde_json::Map::new();
    for pool in &table.pools {
        let mut shares = serde_json::Map::new();
        for s in &pool.stamps {
            shares.insert(s.name.to_string(), json!(0.0));
        }
        if let Some(tier) = pool.selector.tiers().first() {
            let total: f64 = tier
                .members()
                .map(|i| {
                    f64::from(
                        pool.stamps[i]
                            .effective_weight
                            .max(failing_open_weight(pool, i)),
                    )
                })
                .sum();
            for i in tier.members() {
                let w = f64::from(
                    pool.stamps[i]
                        .effective_weight
                        .max(failing_open_weight(pool, i)),
                );
                let share = if total > 0.0 { w / total } else { 0.0 };
                shares.insert(
                    pool.stamps[i].name.to_string(),
                    json!((share * 1000.0).round() / 1000.0),
                );
            }
        }
        pools.insert(pool.name.to_string(), Value::Object(shares));
    }
    Value::Object(pools)
}

/// In a failing-open pool the tier uses configured weights.
fn failing_open_weight(pool: &crate::routing::PoolView, i: usize) -> u32 {
    if pool.failing_open {
        pool.stamps[i].configured_weight
    } else {
        0
    }
}

/// Whether two pool configs need the same upstream client.
fn same_upstream(a: &crate::config::PoolConfig, b: &crate::config::PoolConfig) -> bool {
    a.upstream_tls == b.upstream_tls
        && a.upstream_http2 == b.upstream_http2
        && a.ca_file == b.ca_file
        // The chain as read, not only the paths: a rotated client
        // certificate keeps its file names.
        && a.client_cert.as_ref().map(|c| (&c.cert_path, &c.key_path, &c.cert_chain))
            == b.client_cert.as_ref().map(|c| (&c.cert_path, &c.key_path, &c.cert_chain))
        && a.tls_server_name == b.tls_server_name
        && a.connect_timeout == b.connect_timeout
        && a.probe.https == b.probe.https
}
