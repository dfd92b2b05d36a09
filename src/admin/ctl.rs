//! `stampgate ctl`: the operator's client for the admin API. It turns a
//! subcommand into one HTTP request (or a status poll, or an event stream),
//! prints the answer for a person, and exits 0 when done, 1 when the
//! server refused, 2 when the server could not be reached or the command
//! line is wrong — so a runbook script can tell "no" from "could not ask".

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use http::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::client::{AdminClient, ClientError};
use crate::config::parse_duration;

/// Where the admin API listens unless told otherwise (the config default).
pub const DEFAULT_ADMIN_URL: &str = "http://127.0.0.1:9901";

/// `drain --wait` looks at the status this often. The stream of events
/// does not promise a "drained" event, the status does show it, and two
/// small requests a second are nothing for the admin listener.
const WAIT_POLL: Duration = Duration::from_millis(500);

/// Health reasons are cut to this many characters in the status table so
/// a row fits a terminal; `--json` has them whole.
const REASON_WIDTH: usize = 40;

/// `stampgate ctl ...`
#[derive(Debug, clap::Args)]
pub struct CtlArgs {
    /// Base URL of the admin API.
    #[arg(long, global = true, env = "STAMPGATE_ADMIN", default_value = DEFAULT_ADMIN_URL)]
    pub admin: String,
    /// Bearer token for changes (prefer the environment variable: command
    /// lines are visible to other users of the machine).
    #[arg(
        long,
        global = true,
        env = "STAMPGATE_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Fleet emergency override: apply a change on this edge only (it
    /// stays until `clear-local`), e.g. while etcd is unreachable.
    #[arg(long, global = true)]
    pub local: bool,
    /// What to do.
    #[command(subcommand)]
    pub action: Action,
}

/// The `ctl` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Action {
    /// Pools and stamps: health, admin state, weights, traffic share.
    Status {
        /// Print the raw JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Stop new traffic to a stamp; in-flight requests finish.
    Drain {
        /// Stamp name.
        stamp: String,
        /// Cut requests still in flight after this long (e.g. 30s).
        #[arg(long, value_parser = duration_arg)]
        deadline: Option<String>,
        /// Wait until nothing is in flight any more, showing progress.
        #[arg(long, conflicts_with = "dry_run")]
        wait: bool,
        /// Only show the traffic shares that would result.
        #[arg(long)]
        dry_run: bool,
        /// Drain even the last usable stamp of a pool.
        #[arg(long)]
        force: bool,
    },
    /// Stop new traffic to every stamp of a region.
    DrainRegion {
        /// Region label.
        region: String,
        /// Cut requests still in flight after this long (e.g. 30s).
        #[arg(long, value_parser = duration_arg)]
        deadline: Option<String>,
        /// Drain even the last usable region of a pool.
        #[arg(long)]
        force: bool,
        /// Only show the traffic shares that would result.
        #[arg(long)]
        dry_run: bool,
    },
    /// Put a drained or disabled stamp back into rotation.
    Enable {
        /// Stamp name.
        stamp: String,
    },
    /// Put every stamp of a region back into rotation.
    EnableRegion {
        /// Region label.
        region: String,
    },
    /// Take a stamp out entirely, even when its pool fails open.
    Disable {
        /// Stamp name.
        stamp: String,
    },
    /// Override a stamp's weight (0..=1000), or `clear` the override.
    Weight {
        /// Stamp name.
        stamp: String,
        /// 0..=1000, or `clear`.
        #[arg(value_parser = weight_arg)]
        weight: WeightArg,
    },
    /// Re-read and apply the config file.
    Reload,
    /// The fleet: every live edge with its connection, revision and view
    /// of each stamp.
    Fleet {
        /// Print the raw JSON document.
        #[arg(long)]
        json: bool,
    },
    /// End a local override: the stamp follows the fleet's decision again.
    ClearLocal {
        /// Stamp name.
        stamp: String,
    },
    /// Recent transitions and operator actions.
    Events {
        /// Keep printing new events as they happen.
        #[arg(long)]
        follow: bool,
        /// One JSON document per line instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// The `weight` argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightArg {
    /// A new weight.
    Set(u32),
    /// Remove the override.
    Clear,
}

fn weight_arg(s: &str) -> Result<WeightArg, String> {
    if s.eq_ignore_ascii_case("clear") {
        return Ok(WeightArg::Clear);
    }
    match s.parse::<u32>() {
        Ok(n) if n <= 1000 => Ok(WeightArg::Set(n)),
        _ => Err("expected an integer 0..=1000 or `clear`".into()),
    }
}

/// Checked here so a typo exits 2 before anything is sent; the original
/// text goes to the server, which parses it the same way.
fn duration_arg(s: &str) -> Result<String, String> {
    parse_duration(s).map(|_| s.to_owned())
}

/// Run `stampgate ctl`, printing results on stdout and a one-line reason on
/// stderr.
pub async fn run(args: CtlArgs) -> ExitCode {
    match execute(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stampgate ctl: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

async fn execute(args: CtlArgs) -> Result<(), ClientError> {
    let mut api = AdminClient::new(&args.admin, args.token)?;
    api.local = args.local;
    match args.action {
        Action::Fleet { json } => {
            let fleet = api.call(Method::GET, "/admin/fleet", None).await?;
            if json {
                println!("{}", pretty(&fleet));
            } else {
                print!("{}", render_fleet(&fleet));
            }
        }
        Action::ClearLocal { stamp } => {
            let path = format!("/admin/stamps/{stamp}/clear-local");
            let answer = api.call(Method::POST, &path, None).await?;
            print!(
                "{}",
                render_change(&format!("clear-local {stamp}"), &answer)
            );
        }
        Action::Status { json } => {
            let status = api.call(Method::GET, "/admin/status", None).await?;
            if json {
                println!("{}", pretty(&status));
            } else {
                print!("{}", render_status(&status, api.base()));
            }
        }
        Action::Drain {
            stamp,
            deadline,
            wait,
            dry_run,
            force,
        } => {
            let path = format!("/admin/stamps/{stamp}/drain");
            let body = drain_body(deadline, dry_run, force);
            drain(&api, &path, body, &format!("drain {stamp}")).await?;
            if wait {
                wait_drained(&api, &stamp).await?;
            }
        }
        Action::DrainRegion {
            region,
            deadline,
            force,
            dry_run,
        } => {
            let path = format!("/admin/regions/{region}/drain");
            let body = drain_body(deadline, dry_run, force);
            drain(&api, &path, body, &format!("drain region {region}")).await?;
        }
        Action::Enable { stamp } => {
            let answer = api
                .call(Method::POST, &format!("/admin/stamps/{stamp}/enable"), None)
                .await?;
            print!("{}", render_change(&format!("enable {stamp}"), &answer));
        }
        Action::EnableRegion { region } => {
            let answer = api
                .call(
                    Method::POST,
                    &format!("/admin/regions/{region}/enable"),
                    None,
                )
                .await?;
            print!(
                "{}",
                render_change(&format!("enable region {region}"), &answer)
            );
        }
        Action::Disable { stamp } => {
            let answer = api
                .call(
                    Method::POST,
                    &format!("/admin/stamps/{stamp}/disable"),
                    None,
                )
                .await?;
            print!("{}", render_change(&format!("disable {stamp}"), &answer));
        }
        Action::Weight { stamp, weight } => {
            let value = match weight {
                WeightArg::Set(n) => json!(n),
                WeightArg::Clear => Value::Null,
            };
            let path = format!("/admin/stamps/{stamp}/weight");
            let answer = api
                .call(Method::PUT, &path, Some(json!({ "weight": value })))
                .await?;
            print!("{}", render_change(&format!("weight {stamp}"), &answer));
        }
        Action::Reload => {
            let answer = api.call(Method::POST, "/admin/reload", None).await?;
            print!("{}", render_change("reload", &answer));
        }
        Action::Events { follow, json } => {
            if follow {
                follow_events(&api, json).await?;
            } else {
                let events = api.call(Method::GET, "/admin/events", None).await?;
                let Value::Array(events) = events else {
                    return Err(api.bad_answer("/admin/events", "expected a JSON array"));
                };
                for e in &events {
                    println!("{}", render_event(e, json));
                }
            }
        }
    }
    Ok(())
}

/// The server speaks of the API's `force=1`; say what it is on this
/// command line.
fn force_hint(e: ClientError) -> ClientError {
    match e {
        ClientError::Refused { status, message } if status == StatusCode::CONFLICT => {
            ClientError::Refused {
                status,
                message: format!("{message} (here: --force)"),
            }
        }
        other => other,
    }
}

/// Send a drain (of a stamp or a region) and print what changed.
async fn drain(api: &AdminClient, path: &str, body: Value, what: &str) -> Result<(), ClientError> {
    let answer = api
        .call(Method::POST, path, Some(body))
        .await
        .map_err(force_hint)?;
    print!("{}", render_change(what, &answer));
    // A dry run of a call the server would refuse fails like the call.
    if let Some(why) = answer.get("would_refuse").and_then(Value::as_str) {
        return Err(force_hint(ClientError::Refused {
            status: StatusCode::CONFLICT,
            message: format!("dry run: the real call would be refused: {why}"),
        }));
    }
    Ok(())
}

fn drain_body(deadline: Option<String>, dry_run: bool, force: bool) -> Value {
    let mut body = serde_json::Map::new();
    if let Some(d) = deadline {
        body.insert("deadline".into(), json!(d));
    }
    if dry_run {
        body.insert("dry_run".into(), json!(true));
    }
    if force {
        body.insert("force".into(), json!(true));
    }
    Value::Object(body)
}

/// Poll the status until `stamp` shows `drained` with nothing in flight.
async fn wait_drained(api: &AdminClient, stamp: &str) -> Result<(), ClientError> {
    let mut shown: Option<(String, u64)> = None;
    let mut poll = tokio::time::interval(WAIT_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        poll.tick().await;
        let status = api.call(Method::GET, "/admin/status", None).await?;
        let doc: StatusDoc = serde_json::from_value(status)
            .map_err(|e| api.bad_answer("/admin/status", &e.to_string()))?;
        let Some(s) = doc
            .pools
            .iter()
            .flat_map(|p| &p.stamps)
            .find(|s| s.name == stamp)
        else {
            return Err(ClientError::Refused {
                status: StatusCode::NOT_FOUND,
                message: format!("{stamp} is no longer in the status (was the config reloaded?)"),
            });
        };
        let in_flight = s.in_flight.unwrap_or(0.0).max(0.0) as u64;
        let now = (s.admin.clone(), in_flight);
        if shown.as_ref() != Some(&now) {
            println!("{stamp}: {}, {in_flight} in flight", s.admin);
            shown = Some(now);
        }
        match s.admin.as_str() {
            "drained" | "disabled" if in_flight == 0 => return Ok(()),
            "active" => {
                return Err(ClientError::Refused {
                    status: StatusCode::CONFLICT,
                    message: format!("{stamp} is active again: the drain was undone while waiting"),
                });
            }
            _ => {}
        }
    }
}

/// `events --follow`: print each event of the stream as it arrives.
async fn follow_events(api: &AdminClient, json: bool) -> Result<(), ClientError> {
    let mut events = api.events().await?;
    while let Some(data) = events.next_data().await {
        let data = data?;
        match serde_json::from_str::<Value>(&data) {
            Ok(event) => println!("{}", render_event(&event, json)),
            Err(_) => println!("{data}"),
        }
    }
    Ok(())
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).expect("a JSON value serializes")
}

/// What a change answered, for a person: a headline, the answer's
/// fields, the stamps it changed, and for a dry run the traffic shares now
/// and after.
fn render_change(what: &str, answer: &Value) -> String {
    let Some(object) = answer.as_object() else {
        return format!("{what}: ok\n{}\n", pretty(answer));
    };
    let dry_run = object.get("dry_run") == Some(&Value::Bool(true));
    let mut out = format!(
        "{what}: {}",
        if dry_run {
            "dry run, nothing changed"
        } else {
            "ok"
        }
    );
    if let Some(by) = object.get("by").and_then(Value::as_str) {
        let _ = write!(out, " (by {by})");
    }
    out.push('\n');
    for (key, value) in object {
        if !matches!(
            key.as_str(),
            "ok" | "by" | "dry_run" | "shares" | "current_shares" | "stamps" | "would_refuse"
        ) {
            let _ = writeln!(out, "  {}: {}", key.replace('_', " "), plain(value));
        }
    }
    if let Some(after) = object.get("shares") {
        let now = object
            .get("current_shares")
            .map(share_rows)
            .unwrap_or_default();
        let mut rows = vec![
            ["POOL", "STAMP", "NOW", "AFTER"]
                .map(str::to_owned)
                .to_vec(),
        ];
        for (pool, stamp, share) in share_rows(after) {
            let before = now
                .iter()
                .find(|(p, s, _)| *p == pool && *s == stamp)
                .map_or_else(|| "-".to_owned(), |(_, _, v)| percent(*v));
            rows.push(vec![pool, stamp, before, percent(share)]);
        }
        // Planned, from the weights the selector uses; `status`'s OBSERVED-SHARE
        // is what was observed (requests per second), so say which.
        out.push_str("  planned traffic shares (by effective weight; `ctl status` OBSERVED-SHARE is measured):\n");
        for line in align(&rows, &[false, false, true, true]) {
            let _ = writeln!(out, "    {line}");
        }
    }
    if let Some(Value::Array(stamps)) = object.get("stamps") {
        let mut rows = vec![
            [
                "STAMP",
                "REGION",
                "ADMIN",
                "WEIGHT OVERRIDE",
                "EFFECTIVE",
                "IN-FLIGHT",
            ]
            .map(str::to_owned)
            .to_vec(),
        ];
        for s in stamps {
            let field = |k: &str| s.get(k).map_or_else(|| "-".to_owned(), plain);
            rows.push(
                [
                    "name",
                    "region",
                    "admin",
                    "weight_override",
                    "effective_weight",
                    "in_flight",
                ]
                .map(field)
                .to_vec(),
            );
        }
        for line in align(&rows, &[false, false, false, true, true, true]) {
            let _ = writeln!(out, "  {line}");
        }
    }
    out
}

/// `(pool, stamp, share)` from `{"pool": {"stamp": share}}`, a flat
/// `{"stamp": share}` or `[{"stamp": .., "share": ..}]`.
fn share_rows(shares: &Value) -> Vec<(String, String, f64)> {
    match shares {
        Value::Object(map) => map
            .iter()
            .flat_map(|(k, v)| match v {
                Value::Object(inner) => inner
                    .iter()
                    .filter_map(|(s, share)| Some((k.clone(), s.clone(), share.as_f64()?)))
                    .collect::<Vec<_>>(),
                other => other
                    .as_f64()
                    .map(|share| (String::new(), k.clone(), share))
                    .into_iter()
                    .collect(),
            })
            .collect(),
        Value::Array(items) => items
            .iter()
            .filter_map(|i| {
                let stamp = i.get("stamp").or_else(|| i.get("name"))?.as_str()?;
                let share = i
                    .get("share")
                    .or_else(|| i.get("traffic_share"))?
                    .as_f64()?;
                let pool = i.get("pool").and_then(Value::as_str).unwrap_or("");
                Some((pool.to_owned(), stamp.to_owned(), share))
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn percent(share: f64) -> String {
    format!("{:.1}%", share * 100.0)
}

/// A value as a person reads it: strings bare, lists comma-separated,
/// null as `-`.
fn plain(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        Value::Array(items) if items.is_empty() => "none".to_owned(),
        Value::Array(items) if items.iter().all(|i| !i.is_object() && !i.is_array()) => {
            items.iter().map(plain).collect::<Vec<_>>().join(", ")
        }
        other => other.to_string(),
    }
}

/// Rows padded to aligned columns (the first row is usually the header);
/// `right` marks the columns aligned right (numbers).
fn align(rows: &[Vec<String>], right: &[bool]) -> Vec<String> {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; columns];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    rows.iter()
        .map(|row| {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                let pad = " ".repeat(widths[i] - cell.chars().count());
                if right.get(i).copied().unwrap_or(false) {
                    line.push_str(&pad);
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    line.push_str(&pad);
                }
                line.push_str("  ");
            }
            line.trim_end().to_owned()
        })
        .collect()
}

/// Event lines pad `pool/stamp` to this width so most lines of a stream
/// line up without knowing the names to come.
const SUBJECT_WIDTH: usize = 24;

/// One event as a line: time, seq, kind, subject, transition, reason.
fn render_event(event: &Value, json: bool) -> String {
    if json {
        return event.to_string();
    }
    let s = |k: &str| event.get(k).and_then(Value::as_str).unwrap_or("");
    let subject = match (s("pool"), s("stamp")) {
        ("", "") => "-".to_owned(),
        (pool, "") => pool.to_owned(),
        ("", stamp) => stamp.to_owned(),
        (pool, stamp) => format!("{pool}/{stamp}"),
    };
    let transition = match (s("from"), s("to")) {
        ("", "") => String::new(),
        ("", to) => format!("-> {to}  "),
        (from, "") => format!("{from} ->  "),
        (from, to) => format!("{from} -> {to}  "),
    };
    let seq = event.get("seq").and_then(Value::as_u64).unwrap_or(0);
    format!(
        "{}  #{seq:<4} {:<8} {subject:<SUBJECT_WIDTH$}  {transition}{}",
        s("time"),
        s("kind"),
        s("reason")
    )
}

/// The parts of the status document this client shows. Every field has a
/// default so that a newer server's additions, or an older server's
/// omissions, do not break the table.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct StatusDoc {
    generation: u64,
    config: Option<String>,
    pools: Vec<PoolDoc>,
    orphaned_decisions: Vec<Value>,
    last_reload: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PoolDoc {
    name: String,
    method: String,
    all_unhealthy: String,
    failing_open: bool,
    stamps: Vec<StampDoc>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct StampDoc {
    name: String,
    region: String,
    health: String,
    health_reason: Option<String>,
    admin: String,
    configured_weight: Option<f64>,
    weight_override: Option<f64>,
    effective_weight: Option<f64>,
    traffic_share: Option<f64>,
    requests_per_second: Option<f64>,
    in_flight: Option<f64>,
    probe_rtt_ms: Option<f64>,
}

/// `ctl fleet`: one row per edge and stamp.
fn render_fleet(fleet: &Value) -> String {
    let mut out = String::new();
    let Some(edges) = fleet["edges"].as_array() else {
        return pretty(fleet);
    };
    if fleet["edge"].is_null() {
        let _ = writeln!(
            out,
            "{}",
            fleet["message"].as_str().unwrap_or("not in a fleet")
        );
        return out;
    }
    let _ = writeln!(
        out,
        "fleet seen from edge {}: {}, revision {}",
        plain(&fleet["edge"]),
        if fleet["connected"].as_bool() == Some(true) {
            "connected to etcd".to_owned()
        } else {
            format!(
                "NOT connected to etcd ({}); showing what it last knew",
                plain(&fleet["last_error"])
            )
        },
        plain(&fleet["revision"])
    );
    let mut rows = vec![
        [
            "EDGE",
            "CONNECTED",
            "REVISION",
            "STAMP",
            "HEALTH",
            "ADMIN",
            "RTT",
            "ERR%",
            "RPS",
            "REASON",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for e in edges {
        let name = plain(&e["name"]);
        let locals: Vec<String> = e["local_overrides"]
            .as_array()
            .into_iter()
            .flatten()
            .map(plain)
            .collect();
        let stamps = e["stamps"].as_object().cloned().unwrap_or_default();
        if stamps.is_empty() {
            rows.push(vec![
                name.clone(),
                plain(&e["connected"]),
                plain(&e["revision"]),
                "-".into(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
            ]);
        }
        for (stamp, s) in stamps {
            let mut admin = plain(&s["admin"]);
            if locals.contains(&stamp) {
                admin.push_str(" (local override)");
            }
            rows.push(vec![
                name.clone(),
                plain(&e["connected"]),
                plain(&e["revision"]),
                stamp,
                plain(&s["health"]),
                admin,
                s["rtt_ms"]
                    .as_f64()
                    .map_or("-".into(), |r| format!("{r:.1}ms")),
                format!("{:.1}", s["error_rate"].as_f64().unwrap_or(0.0) * 100.0),
                format!("{:.1}", s["rps"].as_f64().unwrap_or(0.0)),
                truncate(s["reason"].as_str().unwrap_or("")),
            ]);
        }
    }
    for line in align(
        &rows,
        &[
            false, false, true, false, false, false, true, true, true, false,
        ],
    ) {
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

/// The status as aligned tables, one per pool, with the same column
/// widths down the page.
fn render_status(status: &Value, url: &str) -> String {
    let doc: StatusDoc = match serde_json::from_value(status.clone()) {
        Ok(doc) => doc,
        // Not the shape this client knows: show it rather than nothing.
        Err(_) => return format!("{}\n", pretty(status)),
    };
    let mut out = format!("stampgate at {url}  generation {}", doc.generation);
    if let Some(config) = &doc.config {
        let _ = write!(out, "  config {config}");
    }
    out.push('\n');
    const HEADERS: [&str; 9] = [
        "STAMP",
        "REGION",
        "HEALTH",
        "ADMIN",
        "WEIGHT",
        "OBSERVED-SHARE",
        "RPS",
        "IN-FLIGHT",
        "RTT",
    ];
    const RIGHT: [bool; 9] = [false, false, false, false, true, true, true, true, true];
    let mut rows = vec![HEADERS.map(str::to_owned).to_vec()];
    rows.extend(
        doc.pools
            .iter()
            .flat_map(|p| &p.stamps)
            .map(|s| stamp_row(s).to_vec()),
    );
    let lines = align(&rows, &RIGHT);
    let (header, mut stamp_lines) = (&lines[0], lines[1..].iter());
    for pool in &doc.pools {
        let _ = write!(
            out,
            "\npool {}  method {}  all unhealthy: {}",
            pool.name, pool.method, pool.all_unhealthy
        );
        if pool.failing_open {
            out.push_str("  ** FAILING OPEN: no usable stamp **");
        }
        let _ = writeln!(out, "\n  {header}");
        for line in stamp_lines.by_ref().take(pool.stamps.len()) {
            let _ = writeln!(out, "  {line}");
        }
    }
    if doc
        .pools
        .iter()
        .flat_map(|p| &p.stamps)
        .any(|s| s.weight_override.is_some())
    {
        out.push_str("\n* weight set by an operator (overrides the configured weight)\n");
    }
    if !doc.orphaned_decisions.is_empty() {
        out.push_str("\ndecisions kept for stamps no longer in the config:\n");
        for d in &doc.orphaned_decisions {
            let _ = writeln!(out, "  {}", plain_object(d));
        }
    }
    if let Some(reload) = doc.last_reload.as_ref().filter(|r| r["ok"] == false) {
        let _ = writeln!(
            out,
            "\nlast reload FAILED (still serving the previous config): {}",
            plain(&reload["error"])
        );
    }
    out
}

/// `key value, key value` for a small object.
fn plain_object(value: &Value) -> String {
    match value.as_object() {
        Some(map) => map
            .iter()
            .map(|(k, v)| format!("{k} {}", plain(v)))
            .collect::<Vec<_>>()
            .join(", "),
        None => plain(value),
    }
}

fn stamp_row(s: &StampDoc) -> [String; 9] {
    let number = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.0}"));
    let health = match s.health_reason.as_deref().map(str::trim) {
        Some(reason) if !reason.is_empty() => format!("{}: {}", s.health, truncate(reason)),
        _ => s.health.clone(),
    };
    let weight = match s.weight_override {
        Some(w) => format!("{}*/{}", number(Some(w)), number(s.effective_weight)),
        None => format!(
            "{}/{}",
            number(s.configured_weight),
            number(s.effective_weight)
        ),
    };
    [
        s.name.clone(),
        s.region.clone(),
        health,
        s.admin.clone(),
        weight,
        s.traffic_share
            .map_or_else(|| "-".into(), |v| format!("{:.1}%", v * 100.0)),
        s.requests_per_second
            .map_or_else(|| "-".into(), |v| format!("{v:.1}")),
        number(s.in_flight),
        s.probe_rtt_ms
            .map_or_else(|| "-".into(), |v| format!("{v:.1}ms")),
    ]
}

fn truncate(text: &str) -> String {
    if text.chars().count() <= REASON_WIDTH {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(REASON_WIDTH - 1).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_status() -> Value {
        json!({
            "generation": 7,
            "config": "stampgate.toml",
            "pools": [{
                "name": "backend-apis", "method": "weighted", "all_unhealthy": "fail-open",
                "failing_open": false,
                "stamps": [
                    {"name": "westeurope-1", "region": "westeurope", "health": "healthy",
                     "health_reason": "", "admin": "active", "configured_weight": 100,
                     "weight_override": null, "effective_weight": 100, "traffic_share": 0.6667,
                     "requests_per_second": 12.5, "in_flight": 3, "probe_rtt_ms": 1.25},
                    {"name": "eastus2-1", "region": "eastus2", "health": "unhealthy",
                     "health_reason": "probe failed: connection refused by 127.0.0.1:9002 after three attempts",
                     "admin": "draining", "configured_weight": 100, "weight_override": 50,
                     "effective_weight": 0, "traffic_share": 0.0, "requests_per_second": 0.0,
                     "in_flight": 0, "probe_rtt_ms": null, "extra_field": true}
                ]
            }]
        })
    }

    #[test]
    fn status_table_lines_up_and_shows_every_column() {
        let text = render_status(&sample_status(), "http://x");
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].contains("generation 7"), "{text}");
        let header = lines.iter().position(|l| l.contains("STAMP")).unwrap();
        let (h, a, b) = (lines[header], lines[header + 1], lines[header + 2]);
        assert!(a.contains("westeurope-1") && a.contains("66.7%") && a.contains("100/100"));
        assert!(a.contains("1.2ms") || a.contains("1.3ms"), "{a}");
        assert!(b.contains("eastus2-1") && b.contains("draining") && b.contains("50*/0"));
        assert!(b.contains('…'), "long reasons are cut: {b}");
        // Columns line up: ADMIN starts where the admin states start.
        let col = h.find("ADMIN").unwrap();
        assert_eq!(a.chars().skip(col).take(6).collect::<String>(), "active");
        assert_eq!(b.chars().skip(col).take(8).collect::<String>(), "draining");
        assert!(text.contains("* weight set by an operator"));
    }

    #[test]
    fn unknown_status_shapes_are_shown_as_json() {
        let text = render_status(&json!({"pools": "nope"}), "http://x");
        assert!(text.contains("\"pools\": \"nope\""), "{text}");
    }

    #[test]
    fn events_render_as_one_line() {
        let e = json!({"seq": 3, "time": "2024-01-01T00:00:00.000Z", "kind": "health",
                       "pool": "p", "stamp": "a", "from": "healthy", "to": "unhealthy",
                       "reason": "probe failed"});
        let line = render_event(&e, false);
        assert_eq!(
            line,
            "2024-01-01T00:00:00.000Z  #3    health   p/a                       healthy -> unhealthy  probe failed"
        );
        assert_eq!(render_event(&e, true), e.to_string());
    }

    #[test]
    fn dry_run_shares_are_tabulated() {
        let out = render_change(
            "drain eu-1",
            &json!({"dry_run": true, "target": "stamp eu-1",
                    "current_shares": {"p": {"eu-1": 0.5, "us-1": 0.5}},
                    "shares": {"p": {"eu-1": 0.0, "us-1": 1.0}}}),
        );
        assert!(
            out.starts_with("drain eu-1: dry run, nothing changed\n"),
            "{out}"
        );
        assert!(out.contains("  target: stamp eu-1\n"), "{out}");
        assert!(out.contains("p     eu-1   50.0%    0.0%"), "{out}");
        assert!(out.contains("p     us-1   50.0%  100.0%"), "{out}");
        let out = render_change(
            "drain a",
            &json!({"shares": [{"stamp": "a", "share": 0.25}]}),
        );
        assert!(out.contains("a        -  25.0%"), "{out}");
    }

    #[test]
    fn the_fleet_table_has_a_row_per_edge_and_stamp() {
        let fleet = json!({
            "edge": "edge-1", "connected": false, "last_error": "connect: refused", "revision": 42,
            "edges": [
                { "name": "edge-1", "connected": false, "revision": 42, "local_overrides": ["a"],
                  "stamps": { "a": { "health": "healthy", "admin": "drained", "rtt_ms": 1.25, "error_rate": 0.0, "rps": 10.0, "reason": "probes pass" } } },
                { "name": "edge-2", "connected": true, "revision": 41, "stamps": {} },
            ],
        });
        let text = render_fleet(&fleet);
        assert!(
            text.contains("NOT connected to etcd (connect: refused)"),
            "{text}"
        );
        assert!(text.contains("drained (local override)"), "{text}");
        assert!(text.contains("1.2ms") || text.contains("1.3ms"), "{text}");
        assert_eq!(text.lines().count(), 4, "{text}");
        let alone =
            render_fleet(&json!({ "edge": null, "edges": [], "message": "not in a fleet" }));
        assert_eq!(alone, "not in a fleet\n");
    }

    #[test]
    fn changes_list_the_stamps_they_changed() {
        let out = render_change(
            "drain region westeurope",
            &json!({"ok": true, "action": "drain region westeurope", "by": "alice",
                    "stamps": [{"name": "eu-1", "region": "westeurope", "admin": "draining",
                                "weight_override": null, "in_flight": 2, "effective_weight": 0}]}),
        );
        assert!(
            out.starts_with("drain region westeurope: ok (by alice)\n"),
            "{out}"
        );
        assert!(out.contains("  action: drain region westeurope\n"), "{out}");
        assert!(out.contains("eu-1   westeurope  draining"), "{out}");
        let out = render_change(
            "reload",
            &json!({"ok": true, "stamps_added": ["x", "y"], "warnings": []}),
        );
        assert!(
            out.contains("  stamps added: x, y\n  warnings: none\n"),
            "{out}"
        );
    }

    #[test]
    fn arguments_are_checked_before_sending() {
        assert_eq!(weight_arg("clear"), Ok(WeightArg::Clear));
        assert_eq!(weight_arg("1000"), Ok(WeightArg::Set(1000)));
        assert!(weight_arg("1001").is_err());
        assert!(weight_arg("-1").is_err());
        assert!(duration_arg("30s").is_ok());
        assert!(duration_arg("30").is_err());
        assert!(AdminClient::new("https://x:1", None).is_err());
        assert_eq!(
            AdminClient::new("127.0.0.1:9901/", None).unwrap().base(),
            "http://127.0.0.1:9901"
        );
    }
}
