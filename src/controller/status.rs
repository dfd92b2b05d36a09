//! The status document behind `/admin/status` and `stampgate ctl status`:
//! every pool and stamp with health, admin state, weights, traffic share,
//! probe figures and in-flight requests, built by the controller from its
//! own state plus the request path's counters.

use serde_json::{Value, json};
use tokio::time::Instant;

use super::operator::admin_label;
use super::{Controller, effective_weight};

impl Controller {
    pub(super) fn status(&self, now: Instant) -> Value {
        let table = self.routing.load();
        let pools: Vec<Value> = self
            .config
            .pools
            .iter()
            .enumerate()
            .map(|(pi, pool)| {
                let members: Vec<usize> =
                    (0..self.stamps.len()).filter(|&i| self.stamps[i].pool == pi).collect();
                let total_rps: f64 = members.iter().map(|&i| self.stamps[i].live.rps()).sum();
                let stamps: Vec<Value> = members
                    .iter()
                    .map(|&i| {
                        let e = &self.stamps[i];
                        let share = if total_rps > 0.0 { e.live.rps() / total_rps } else { 0.0 };
                        let last_probe = e.health.last_probe().map(|p| {
                            json!({
                                "ok": p.ok,
                                "status": p.status,
                                "detail": p.detail,
                                "rtt_ms": ms(p.rtt),
                            })
                        });
                        json!({
                            "name": e.config.name,
                            "region": e.config.region,
                            "address": e.config.address,
                            "priority": e.config.priority,
                            "health": e.health.state().as_str(),
                            "health_reason": e.health.reason(),
                            "health_for_s": now.duration_since(e.health.since()).as_secs(),
                            "admin": admin_label(e).as_str(),
                            "configured_weight": e.config.weight,
                            "weight_override": e.weight_override,
                            "effective_weight": if self.fleet.quorum_down(&e.config.name) { 0 } else { effective_weight(e, pool, now) },
                            "traffic_share": (share * 1000.0).round() / 1000.0,
                            "requests_per_second": (e.live.rps() * 10.0).round() / 10.0,
                            "errors_per_second": (e.live.eps() * 10.0).round() / 10.0,
                            "in_flight": e.in_flight(),
                            "requests_total": e.stats.requests.load(std::sync::atomic::Ordering::Relaxed),
                            "probe_rtt_ms": e.health.smoothed_rtt().map(ms),
                            "live_latency_ms": e.live_latency.estimate(now).map(|l| ms(l.latency)),
                            "latency_outlier": e.latency_outlier.as_ref().map(|v| v.reason(&crate::health::latency::OutlierRule {
                                factor: pool.outlier.latency_factor,
                                floor: pool.outlier.latency_floor,
                            })),
                            "last_probe": last_probe,
                            "ejections": e.health.ejections(),
                            "ejected_for_s": e.health.ejected_until().filter(|&u| u > now).map(|u| u.duration_since(now).as_secs_f64()),
                        })
                    })
                    .collect();
                let failing_open = table.pools.get(pi).is_some_and(|p| p.failing_open);
                json!({
                    "name": pool.name,
                    "method": format!("{:?}", pool.method).to_lowercase(),
                    "all_unhealthy": match pool.all_unhealthy {
                        crate::config::AllUnhealthy::FailOpen => "fail-open",
                        crate::config::AllUnhealthy::FailClosed => "fail-closed",
                    },
                    "failing_open": failing_open,
                    "stamps": stamps,
                })
            })
            .collect();
        let orphans: Vec<Value> = self
            .orphans
            .iter()
            .map(|(name, d)| json!({ "stamp": name, "admin": d.admin, "weight": d.weight }))
            .collect();
        json!({
            "generation": self.generation,
            "config": self.config.source.display().to_string(),
            "pools": pools,
            "orphaned_decisions": orphans,
            "last_reload": self.last_reload,
        })
    }
}

fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}
