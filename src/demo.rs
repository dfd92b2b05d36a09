//! `stampgate demo`: the embedded default. Three simulated stamps in three
//! regions on loopback plus the proxy in front of them, all in one process,
//! so a newcomer can watch traffic move by breaking a region with `curl`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::admin::Tokens;
use crate::app::{self, App};
use crate::config::{self, Config};
use crate::stamp::{Stamp, StampOptions};

/// The demo's configuration, embedded in the binary.
pub const DEMO_CONFIG: &str = include_str!("../config/demo.toml");

/// A stamp's control port is its serving port plus this, in the demo.
const CONTROL_PORT_OFFSET: u16 = 100;

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The embedded config is broken (a build defect).
    #[error("embedded demo config: {0}")]
    Config(#[from] config::ConfigError),
    /// A stamp could not bind its ports.
    #[error("stamp {name} cannot listen on {addr} (is another demo running?): {source}")]
    Stamp {
        /// Stamp name.
        name: String,
        /// Serving address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The proxy could not start.
    #[error(transparent)]
    Start(#[from] app::StartError),
    /// The directory for the access log could not be made.
    #[error("cannot create {}: {source}", .dir.display())]
    LogDir {
        /// The directory.
        dir: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Where the demo binds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DemoPorts {
    /// The ports of the embedded config (proxy 8080, stamps 9001-9003).
    Fixed,
    /// Port 0 everywhere (tests).
    Ephemeral,
}

/// A running demo.
pub struct Demo {
    /// The simulated stamps.
    pub stamps: Vec<Stamp>,
    /// The proxy in front of them (with its admin API when started with
    /// tokens).
    pub app: App,
    /// The config the proxy runs (with the stamps' real addresses).
    pub config: Config,
    /// Where the access log goes: a file, so that request lines do not
    /// scroll the banner's URLs and commands off the screen.
    pub access_log: PathBuf,
}

impl Demo {
    /// Start the stamps, then the proxy in front of them, with the admin
    /// API if `admin_tokens` are given.
    pub async fn start(ports: DemoPorts, admin_tokens: Option<Tokens>) -> Result<Demo, DemoError> {
        let mut config = config::parse_str(DEMO_CONFIG, Path::new("config/demo.toml"))?;
        let mut stamps = Vec::new();
        for pool in &mut config.pools {
            for s in &mut pool.stamps {
                let listen: SocketAddr = match ports {
                    DemoPorts::Fixed => (std::net::Ipv4Addr::LOCALHOST, s.port).into(),
                    DemoPorts::Ephemeral => (std::net::Ipv4Addr::LOCALHOST, 0).into(),
                };
                let control = match ports {
                    DemoPorts::Fixed => (listen.ip(), s.port + CONTROL_PORT_OFFSET).into(),
                    DemoPorts::Ephemeral => listen,
                };
                let opts = StampOptions {
                    name: s.name.clone(),
                    region: s.region.clone(),
                    listen,
                    control,
                };
                let stamp = Stamp::start(opts)
                    .await
                    .map_err(|source| DemoError::Stamp {
                        name: s.name.clone(),
                        addr: listen,
                        source,
                    })?;
                s.port = stamp.addr().port();
                s.address = stamp.addr().to_string();
                stamps.push(stamp);
            }
        }
        // One directory per process, so two demos never share it; removed
        // by `shutdown`, so demos and tests leave nothing in /tmp.
        let dir = std::env::temp_dir().join(format!("stampgate-demo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|source| DemoError::LogDir {
            dir: dir.clone(),
            source,
        })?;
        let access_log = dir.join("access.log");
        config.access_log.path = Some(access_log.clone());
        if ports == DemoPorts::Ephemeral {
            config.proxy.listen = vec![(std::net::Ipv4Addr::LOCALHOST, 0).into()];
            config.admin.listen = (std::net::Ipv4Addr::LOCALHOST, 0).into();
        }
        let app = match App::start(&config, admin_tokens).await {
            Ok(app) => app,
            Err(e) => {
                for s in stamps {
                    s.shutdown().await;
                }
                return Err(e.into());
            }
        };
        Ok(Demo {
            stamps,
            app,
            config,
            access_log,
        })
    }

    /// What to print for a person: the URLs and the commands to try.
    pub fn banner(&self) -> String {
        let proxy = self.app.listen.first().copied();
        let proxy = proxy.map_or_else(|| "(no listener)".to_owned(), |a| format!("http://{a}"));
        let mut text = format!("stampgate demo\n\n  proxy:  {proxy}\n");
        for s in &self.stamps {
            text.push_str(&format!(
                "  stamp:  {:<16} {:<14} http://{}  (faults: http://{}/fault)\n",
                s.name(),
                s.region(),
                s.addr(),
                s.control_addr()
            ));
        }
        let item = "/catalogservice/api/1.0/catalogitem";
        text.push_str(&format!("\nTry it (the X-Server-Name header says which stamp answered):\n  curl -si {proxy}{item}?limit=2\n"));
        if let Some(victim) = self.stamps.first() {
            text.push_str(&format!(
                "\nBreak a region, then repeat the curl and watch traffic move:\n  curl -X PUT -d '{{\"down\": true}}' http://{}/fault\nHeal it:\n  curl -X DELETE http://{}/fault\n",
                victim.control_addr(),
                victim.control_addr()
            ));
        }
        text.push_str(&format!(
            "\nEvery request is logged to a file (one key=value line each; removed on exit):\n  tail -f {}\n",
            self.access_log.display()
        ));
        text.push_str("\nCtrl-C stops everything.\n");
        text
    }

    /// Stop the proxy (gracefully), then the stamps; remove the access
    /// log's directory.
    pub async fn shutdown(self) {
        self.app.shutdown().await;
        for s in self.stamps {
            s.shutdown().await;
        }
        if let Some(dir) = self.access_log.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
