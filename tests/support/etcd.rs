//! A real etcd for the fleet tests (the drill's throwaway etcd). Skips
//! (returns `None`) only when the binary is missing and `CI` is not set;
//! in CI a missing etcd fails the test.

use stampgate::drill::etcd::{EtcdProcess, find_binary};

pub struct Etcd(EtcdProcess);

impl Etcd {
    /// Start a one-member cluster on free loopback ports; `None` when the
    /// test should skip.
    pub async fn start() -> Option<Etcd> {
        let Some(binary) = find_binary() else {
            let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
            assert!(
                !ci,
                "etcd is not installed and CI is set: the fleet tests need it (apt-get install -y etcd-server)"
            );
            eprintln!(
                "SKIPPED: no etcd binary on PATH (apt-get install -y etcd-server); with CI=true this fails"
            );
            return None;
        };
        Some(Etcd(
            EtcdProcess::start(&binary).await.expect("etcd starts"),
        ))
    }

    pub fn url(&self) -> String {
        self.0.url()
    }

    /// SIGKILL, as a crash.
    pub async fn kill(&mut self) {
        self.0.kill().await;
    }

    /// Start again on the same ports and data.
    pub async fn restart(&mut self) {
        self.0.restart().await.expect("etcd restarts");
    }

    /// A client for the test's own reads and writes.
    pub async fn client(&self) -> etcd_client::Client {
        etcd_client::Client::connect([self.url()], None)
            .await
            .expect("etcd client")
    }
}
