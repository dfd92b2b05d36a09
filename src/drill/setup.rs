//! What a drill runs against: the stamps and the proxy it spawns (on
//! loopback port 0, in this process), or the existing ones a scenario
//! names, reduced to the URLs the load, the timeline and the event stream
//! use.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Uri};
use tokio::time::Instant;

use super::DrillError;
use super::admin::call;
use super::load::HttpClient;
use super::scenario::{ProxyConfigSource, ProxySpec, Scenario};
use crate::admin::{self, Tokens};
use crate::app::App;
use crate::stamp::{Stamp, StampOptions};

/// How long a proxy may take to answer its first request.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause between readiness attempts (an existing proxy sends no event
/// when it is up).
const READY_POLL: Duration = Duration::from_millis(20);

/// The file a spawned proxy's config is written to, in the report
/// directory: reload re-reads it, and it documents what ran.
pub const PROXY_CONFIG_FILE: &str = "proxy.toml";

/// A running drill environment.
pub struct Environment {
    /// Where the load goes (`http://host:port`).
    pub proxy_url: Uri,
    /// The proxy's admin API.
    pub admin_url: Uri,
    /// The admin token, if any.
    pub token: Option<String>,
    /// Each stamp's control URL, by name.
    pub controls: BTreeMap<String, Uri>,
    /// The spawned proxy's config file (what a reload re-reads).
    pub config_path: Option<PathBuf>,
    /// [`fingerprint`](crate::config::fingerprint) of the spawned proxy's
    /// config as written, before the stamps' addresses are filled in (those
    /// are new ports every run; the config is the same).
    pub config_fingerprint: Option<String>,
    /// Spawned stamps' serving addresses, by name (for `{{stamp:NAME}}`).
    pub addresses: BTreeMap<String, String>,
    spawned: Option<Spawned>,
}

struct Spawned {
    stamps: Vec<Stamp>,
    app: App,
}

/// The config of a built-in or config-less scenario: one route to one
/// pool of the scenario's stamps, probes as fast as the demo's (one per
/// second, 2 of the last 3 must pass), 3 consecutive failures eject;
/// `hedge_after` hedges the route's requests.
pub fn generated_config(
    scenario: &Scenario,
    method: &str,
    all_unhealthy: &str,
    hedge_after: Option<&str>,
) -> String {
    let retry = hedge_after
        .map(|h| format!("retry = {{ attempts = 2, hedge_after = \"{h}\" }}\n"))
        .unwrap_or_default();
    let mut toml = format!(
        "# Written by `stampgate drill` for scenario {:?}.\n\
         [proxy]\nlisten = [\"127.0.0.1:0\"]\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [[routes]]\nname = \"catalog\"\npath_prefix = \"/\"\npool = \"catalog\"\n{retry}\n\
         [pools.catalog]\nmethod = \"{method}\"\nall_unhealthy = \"{all_unhealthy}\"\n\n\
         [pools.catalog.probe]\ninterval = \"1s\"\ntimeout = \"500ms\"\nsample_size = 3\n\
         successful_samples_required = 2\n\n[pools.catalog.outlier]\nconsecutive_failures = 3\n\n\
         [access_log]\nenabled = false\n",
        scenario.name
    );
    for s in &scenario.stamps {
        toml.push_str(&format!(
            "\n[[pools.catalog.stamps]]\nname = \"{}\"\nregion = \"{}\"\naddress = \"{{{{stamp:{}}}}}\"\n",
            s.name, s.region, s.name
        ));
    }
    toml
}

/// Replaces `{{stamp:NAME}}` with the address of spawned stamp NAME.
pub fn substitute(text: &str, addresses: &BTreeMap<String, String>) -> String {
    let mut out = text.to_owned();
    for (name, addr) in addresses {
        out = out.replace(&format!("{{{{stamp:{name}}}}}"), addr);
    }
    out
}

fn base_uri(addr: std::net::SocketAddr) -> Uri {
    format!("http://{addr}")
        .parse()
        .expect("a socket address makes a valid URI")
}

impl Environment {
    /// API requests each spawned stamp has received so far, by name;
    /// `None` for existing stamps.
    pub fn received(&self) -> Option<BTreeMap<String, u64>> {
        let spawned = self.spawned.as_ref()?;
        Some(
            spawned
                .stamps
                .iter()
                .map(|s| (s.name().to_owned(), s.requests_received()))
                .collect(),
        )
    }

    /// Starts what the scenario spawns, or checks that what it names
    /// answers; the proxy has answered one request when this returns.
    pub async fn start(
        scenario: &Scenario,
        out: &Path,
        client: &HttpClient,
    ) -> Result<Environment, DrillError> {
        let env = match &scenario.proxy {
            ProxySpec::Existing {
                url,
                admin,
                token_env,
            } => Environment {
                proxy_url: url.clone(),
                admin_url: admin.clone(),
                token: std::env::var(token_env)
                    .ok()
                    .filter(|t| !t.trim().is_empty()),
                controls: scenario
                    .stamps
                    .iter()
                    .filter_map(|s| Some((s.name.clone(), s.control.clone()?)))
                    .collect(),
                config_path: None,
                config_fingerprint: None,
                addresses: BTreeMap::new(),
                spawned: None,
            },
            ProxySpec::Spawned(source) => Environment::spawn(scenario, source, out).await?,
        };
        if let Err(e) = env.wait_ready(scenario, client).await {
            env.shutdown().await;
            return Err(e);
        }
        Ok(env)
    }

    async fn spawn(
        scenario: &Scenario,
        source: &ProxyConfigSource,
        out: &Path,
    ) -> Result<Environment, DrillError> {
        let mut stamps = Vec::with_capacity(scenario.stamps.len());
        for s in &scenario.stamps {
            let stamp = Stamp::start(StampOptions::loopback(&s.name, &s.region))
                .await
                .map_err(|e| DrillError::Setup(format!("stamp {} cannot start: {e}", s.name)))?;
            stamps.push(stamp);
        }
        let addresses: BTreeMap<String, String> = stamps
            .iter()
            .map(|s| (s.name().to_owned(), s.addr().to_string()))
            .collect();
        let template = match source {
            ProxyConfigSource::Generated {
                method,
                all_unhealthy,
                hedge_after,
            } => generated_config(scenario, method, all_unhealthy, hedge_after.as_deref()),
            ProxyConfigSource::File(path) => std::fs::read_to_string(path)
                .map_err(|e| DrillError::Setup(format!("proxy.config {}: {e}", path.display())))?,
        };
        let config_path = out.join(PROXY_CONFIG_FILE);
        std::fs::write(&config_path, substitute(&template, &addresses)).map_err(|e| {
            DrillError::Setup(format!("cannot write {}: {e}", config_path.display()))
        })?;
        let mut config = crate::config::load(&config_path)
            .map_err(|e| DrillError::Setup(format!("proxy config: {e}")))?;
        // The proxy shares the drill's process: an access log on standard
        // output would bury the progress line and the summary. One to a
        // file is kept.
        if config.access_log.path.is_none() {
            config.access_log.enabled = false;
        }
        let token = admin::auth::random_token()
            .map_err(|e| DrillError::Setup(format!("cannot make an admin token: {e}")))?;
        // The drill talks to its own proxy's admin API on loopback,
        // whatever the config says.
        config.admin.listen = (std::net::Ipv4Addr::LOCALHOST, 0).into();
        let app = App::start(&config, Some(Tokens::single(token.clone())))
            .await
            .map_err(|e| DrillError::Setup(format!("proxy cannot start: {e}")))?;
        let (Some(listen), Some(admin_addr)) = (app.listen.first().copied(), app.admin_addr())
        else {
            app.shutdown().await;
            return Err(DrillError::Setup(
                "the proxy config has no plaintext listener (proxy.listen) for the load".into(),
            ));
        };
        let proxy_url = base_uri(listen);
        Ok(Environment {
            proxy_url,
            admin_url: base_uri(admin_addr),
            token: Some(token),
            controls: stamps
                .iter()
                .map(|s| (s.name().to_owned(), base_uri(s.control_addr())))
                .collect(),
            config_path: Some(config_path),
            config_fingerprint: Some(crate::config::fingerprint(template.as_bytes())),
            addresses,
            spawned: Some(Spawned { stamps, app }),
        })
    }

    /// Waits until the proxy answers the first request of the mix with 2xx.
    async fn wait_ready(&self, scenario: &Scenario, client: &HttpClient) -> Result<(), DrillError> {
        let path = scenario
            .load
            .requests
            .iter()
            .find(|r| r.method == Method::GET)
            .map_or("/", |r| r.path.as_str());
        let url = format!("{}{path}", self.proxy_url.to_string().trim_end_matches('/'));
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let last = call(client, Method::GET, &url, None, Bytes::new()).await;
            match last {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    return Err(DrillError::Setup(format!(
                        "the proxy did not answer within {READY_TIMEOUT:?}: {e}"
                    )));
                }
                Err(_) => tokio::time::sleep(READY_POLL).await,
            }
        }
    }

    /// Stops what was spawned: the admin listener, the proxy, the stamps.
    pub async fn shutdown(self) {
        let Some(spawned) = self.spawned else { return };
        spawned.app.shutdown().await;
        for stamp in spawned.stamps {
            stamp.shutdown().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_config_is_valid_once_substituted() {
        let scenario = super::super::builtin::scenario("region-outage").expect("built-in");
        let text = generated_config(&scenario, "weighted", "fail-open", None);
        let addresses = scenario
            .stamps
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.clone(), format!("127.0.0.1:{}", 9000 + i)))
            .collect();
        let config = crate::config::parse_str(&substitute(&text, &addresses), Path::new("p.toml"))
            .expect("valid config");
        assert_eq!(config.pools[0].stamps.len(), scenario.stamps.len());
        assert!(!substitute(&text, &addresses).contains("{{"));
    }
}
