//! The fault timeline: each step at its offset from the start of the load,
//! a stamp fault through the stamp's control API or an operator action
//! through the proxy's admin API (with the token), recorded with when it
//! really took effect and whether it worked.

use std::collections::BTreeMap;
use std::path::PathBuf;

use bytes::Bytes;
use http::{Method, Uri};
use serde::Serialize;
use tokio::time::Instant;

use super::admin::call;
use super::load::HttpClient;
use super::measure::{Episode, ms};
use super::scenario::{Action, Scenario, Step, Target};
use super::setup::substitute;
use crate::admin::client::AdminClient;

/// What the timeline needs of the environment.
pub struct Controls<'a> {
    /// Control URL by stamp name.
    pub stamps: &'a BTreeMap<String, Uri>,
    /// The proxy's admin API.
    pub admin: &'a Uri,
    /// The admin token.
    pub token: Option<&'a str>,
    /// The spawned proxy's config file.
    pub config_path: Option<&'a PathBuf>,
    /// Spawned stamps' addresses, for `{{stamp:NAME}}` in reload configs.
    pub addresses: &'a BTreeMap<String, String>,
}

/// A step as it happened.
#[derive(Debug, Clone, Serialize)]
pub struct Applied {
    /// When it was due, from the start of the load.
    pub at_ms: f64,
    /// When its calls had all been answered.
    pub done_ms: f64,
    /// What it acted on.
    pub target: String,
    /// What it did.
    pub action: String,
    /// Why it failed, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Runs `scenario`'s timeline from `start`; returns the steps as applied.
pub async fn run(
    scenario: &Scenario,
    controls: Controls<'_>,
    client: &HttpClient,
    start: Instant,
) -> Vec<Applied> {
    let mut applied = Vec::with_capacity(scenario.timeline.len());
    for step in &scenario.timeline {
        tokio::time::sleep_until(start + step.at).await;
        let error = apply(scenario, step, &controls, client).await.err();
        if let Some(e) = &error {
            tracing::warn!(target = %step.target, action = %step.action.label(), error = %e, "drill step failed");
        }
        applied.push(Applied {
            at_ms: ms(step.at),
            done_ms: ms(start.elapsed()),
            target: step.target.to_string(),
            action: step.action.label(),
            error,
        });
    }
    applied
}

async fn apply(
    scenario: &Scenario,
    step: &Step,
    controls: &Controls<'_>,
    client: &HttpClient,
) -> Result<(), String> {
    let admin = AdminClient::new(
        &controls.admin.to_string(),
        controls.token.map(str::to_owned),
    )
    .map_err(|e| e.to_string())?;
    let admin_post = |path: String| {
        let admin = &admin;
        async move {
            admin
                .call(Method::POST, &path, None)
                .await
                .map(|_| ())
                .map_err(|e| format!("POST {}{path}: {e}", admin.base()))
        }
    };
    match (&step.action, &step.target) {
        (Action::Fault(_) | Action::Clear, Target::Proxy) => {
            Err("a fault needs a stamp or region".into())
        }
        (Action::Fault(fault), target) => {
            let body = Bytes::from(serde_json::to_vec(fault).map_err(|e| e.to_string())?);
            for_each_stamp(scenario, target, controls, |url| {
                let body = body.clone();
                async move { call(client, Method::PUT, &format!("{url}/fault"), None, body).await }
            })
            .await
        }
        (Action::Clear, target) => {
            for_each_stamp(scenario, target, controls, |url| async move {
                call(
                    client,
                    Method::DELETE,
                    &format!("{url}/fault"),
                    None,
                    Bytes::new(),
                )
                .await
            })
            .await
        }
        (Action::Drain, Target::Stamp(s)) => admin_post(format!("/admin/stamps/{s}/drain")).await,
        (Action::Drain, Target::Region(r)) => admin_post(format!("/admin/regions/{r}/drain")).await,
        (Action::Enable, Target::Stamp(s)) => admin_post(format!("/admin/stamps/{s}/enable")).await,
        (Action::Enable, Target::Region(r)) => {
            admin_post(format!("/admin/regions/{r}/enable")).await
        }
        (Action::Drain | Action::Enable, Target::Proxy) => {
            Err("drain and enable need a stamp or region".into())
        }
        (Action::Reload(config), _) => {
            if let Some(config) = config {
                let Some(path) = controls.config_path else {
                    return Err("only a spawned proxy's config can be replaced".into());
                };
                let text = std::fs::read_to_string(config)
                    .map_err(|e| format!("cannot read {}: {e}", config.display()))?;
                std::fs::write(path, substitute(&text, controls.addresses))
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            }
            admin_post("/admin/reload".to_owned()).await
        }
    }
}

/// Calls `each` with the control URL of every stamp of `target`, all of
/// them at once (a region goes down as one).
async fn for_each_stamp<F, Fut>(
    scenario: &Scenario,
    target: &Target,
    controls: &Controls<'_>,
    each: F,
) -> Result<(), String>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<Bytes, super::admin::CallError>>,
{
    let mut calls = Vec::new();
    for name in scenario.stamps_of(target) {
        let Some(url) = controls.stamps.get(&name) else {
            return Err(format!("stamp {name} has no control URL"));
        };
        calls.push(each(url.to_string().trim_end_matches('/').to_owned()));
    }
    let errors: Vec<String> = futures_util::future::join_all(calls)
        .await
        .into_iter()
        .filter_map(|r| r.err().map(|e| e.to_string()))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// The faults and drains of the timeline, each ended by the first later
/// clear (for a fault) or enable (for a drain) that covers its stamps.
pub fn episodes(scenario: &Scenario) -> Vec<Episode> {
    let mut out = Vec::new();
    for (i, step) in scenario.timeline.iter().enumerate() {
        let (ends_it, detectable): (fn(&Action) -> bool, bool) = match step.action {
            Action::Fault(_) => (|a| matches!(a, Action::Clear), true),
            Action::Drain => (|a| matches!(a, Action::Enable), false),
            Action::Clear | Action::Enable | Action::Reload(_) => continue,
        };
        let stamps = scenario.stamps_of(&step.target);
        let end = scenario.timeline[i + 1..]
            .iter()
            .find(|later| {
                ends_it(&later.action) && {
                    let cleared = scenario.stamps_of(&later.target);
                    stamps.iter().all(|s| cleared.contains(s))
                }
            })
            .map(|later| later.at);
        out.push(Episode {
            label: step.action.label(),
            target: step.target.to_string(),
            stamps,
            start: step.at,
            end,
            detectable,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::time::Duration;

    #[test]
    fn a_fault_ends_at_the_clear_that_covers_it() {
        let text = "duration = \"10s\"\n[[stamps]]\nname = \"a-1\"\nregion = \"a\"\n[[stamps]]\nname = \"a-2\"\nregion = \"a\"\n\
            [[stamps]]\nname = \"b-1\"\nregion = \"b\"\n\
            [[timeline]]\nat = \"1s\"\nregion = \"a\"\nfault = { down = true }\n\
            [[timeline]]\nat = \"2s\"\nstamp = \"a-1\"\nclear = true\n\
            [[timeline]]\nat = \"3s\"\nregion = \"a\"\nclear = true\n\
            [[timeline]]\nat = \"4s\"\nstamp = \"b-1\"\nadmin = \"drain\"\n\
            [[timeline]]\nat = \"5s\"\nadmin = \"reload\"\n";
        let scenario = Scenario::parse(text, Path::new("t.toml")).unwrap();
        let e = episodes(&scenario);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].stamps, ["a-1", "a-2"]);
        assert_eq!(
            e[0].end,
            Some(Duration::from_secs(3)),
            "a-1 alone does not end a region fault"
        );
        assert!(e[0].detectable);
        assert_eq!((e[1].end, e[1].detectable), (None, false));
    }
}
