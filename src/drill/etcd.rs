//! A throwaway etcd for `stampgate drill fleet` and the fleet tests: one
//! member on free loopback ports with a temporary data directory, killed
//! (SIGKILL, as a crash) and restarted on the same ports and data.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

/// etcd answers its first request well within this, even on a loaded
/// machine; past it the process is reported as failed with its log.
const READY_WITHIN: Duration = Duration::from_secs(30);
/// Free ports are found by binding port 0 and releasing it; another
/// process may take one in between, so a start is tried this many times.
const PORT_TRIES: usize = 5;

/// A running (or killed) etcd process.
#[derive(Debug)]
pub struct EtcdProcess {
    binary: PathBuf,
    client_port: u16,
    peer_port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// The `etcd` binary on `PATH`.
pub fn find_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("etcd"))
        .find(|p| p.is_file())
}

/// A free loopback port (etcd cannot bind port 0 itself).
fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl EtcdProcess {
    /// Start a one-member cluster with `binary`.
    pub async fn start(binary: &Path) -> Result<EtcdProcess, String> {
        for _ in 0..PORT_TRIES {
            let mut etcd = EtcdProcess {
                binary: binary.to_owned(),
                client_port: free_port().map_err(|e| e.to_string())?,
                peer_port: free_port().map_err(|e| e.to_string())?,
                dir: tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?,
                child: None,
            };
            if etcd.spawn().await? {
                return Ok(etcd);
            }
        }
        Err(format!(
            "etcd did not start on {PORT_TRIES} pairs of free ports"
        ))
    }

    /// The client URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// `Ok(false)` when the process exited at once (a port was taken).
    async fn spawn(&mut self) -> Result<bool, String> {
        let client = self.url();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::File::create(self.dir.path().join("etcd.log"))
            .map_err(|e| format!("etcd log file: {e}"))?;
        let child = Command::new(&self.binary)
            .arg("--name=drill")
            .arg(format!(
                "--data-dir={}",
                self.dir.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=drill={peer}"))
            .arg("--logger=zap")
            .arg("--log-level=error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.binary.display()))?;
        self.child = Some(child);
        self.ready().await
    }

    /// Wait until the member answers, or the process exits.
    async fn ready(&mut self) -> Result<bool, String> {
        let deadline = tokio::time::Instant::now() + READY_WITHIN;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(_)) = child.try_wait()
            {
                self.child = None;
                return Ok(false);
            }
            let url = self.url();
            let up = async {
                let mut c = etcd_client::Client::connect([url.as_str()], None)
                    .await
                    .ok()?;
                c.status().await.ok()
            };
            if let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(1), up).await {
                return Ok(true);
            }
            if tokio::time::Instant::now() >= deadline {
                let log =
                    std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default();
                return Err(format!("etcd not ready within {READY_WITHIN:?}: {log}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL, as a crash; returns once the process is gone.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Start again on the same ports and data (after [`kill`](Self::kill)).
    pub async fn restart(&mut self) -> Result<(), String> {
        for _ in 0..50 {
            if self.spawn().await? {
                return Ok(());
            }
            // The killed process's port may linger for a moment.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!("etcd did not restart on port {}", self.client_port))
    }
}
