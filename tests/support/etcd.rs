//! A real etcd for the fleet tests: started on free loopback ports with a
//! temporary data directory, killed and restarted by the test itself.
//! Skips (returns `None`) only when the binary is missing and `CI` is not
//! set; in CI a missing etcd fails the test.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

/// etcd answers its first request well within this on a loaded machine.
const READY_WITHIN: Duration = Duration::from_secs(30);

pub struct Etcd {
    binary: PathBuf,
    pub client_port: u16,
    peer_port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// The etcd binary, or `None` (with a message) when it may be skipped.
pub fn binary() -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.join("etcd"))
        .find(|p| p.is_file());
    if found.is_some() {
        return found;
    }
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    assert!(
        !ci,
        "etcd is not installed and CI is set: the fleet tests need it (apt-get install -y etcd-server)"
    );
    eprintln!(
        "SKIPPED: no etcd binary on PATH (apt-get install -y etcd-server); with CI=true this fails"
    );
    None
}

/// A free loopback port: bind port 0, read it, release it. etcd cannot
/// bind port 0 itself; a race with another process is retried by
/// [`Etcd::start`].
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

impl Etcd {
    /// Start a one-member cluster; `None` when the test should skip.
    pub async fn start() -> Option<Etcd> {
        let binary = binary()?;
        for _ in 0..5 {
            let mut etcd = Etcd {
                binary: binary.clone(),
                client_port: free_port(),
                peer_port: free_port(),
                dir: tempfile::tempdir().expect("temp dir"),
                child: None,
            };
            if etcd.spawn().await {
                return Some(etcd);
            }
        }
        panic!("etcd did not start on 5 pairs of free ports");
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    async fn spawn(&mut self) -> bool {
        let client = self.url();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::File::create(self.dir.path().join("etcd.log")).expect("log file");
        let child = Command::new(&self.binary)
            .arg("--name=t")
            .arg(format!(
                "--data-dir={}",
                self.dir.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=t={peer}"))
            .arg("--logger=zap")
            .arg("--log-level=error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("etcd runs");
        self.child = Some(child);
        self.ready().await
    }

    /// Wait for the member to answer, or for the process to exit (a port
    /// taken in the meantime).
    async fn ready(&mut self) -> bool {
        let deadline = tokio::time::Instant::now() + READY_WITHIN;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(_)) = child.try_wait()
            {
                self.child = None;
                return false;
            }
            let url = self.url();
            let up = async {
                let mut c = etcd_client::Client::connect([url.as_str()], None)
                    .await
                    .ok()?;
                c.status().await.ok()
            };
            if tokio::time::timeout(Duration::from_secs(1), up)
                .await
                .ok()
                .flatten()
                .is_some()
            {
                return true;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "etcd not ready within {READY_WITHIN:?}; log: {}",
                std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL, as a crash; waits for the process to be gone.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("kill etcd");
        }
    }

    /// Start again on the same ports and data.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "kill first");
        for _ in 0..50 {
            if self.spawn().await {
                return;
            }
            // The port may linger a moment after the kill.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("etcd did not restart on port {}", self.client_port);
    }

    /// A client for the test's own reads and writes.
    pub async fn client(&self) -> etcd_client::Client {
        etcd_client::Client::connect([self.url()], None)
            .await
            .expect("etcd client")
    }
}
