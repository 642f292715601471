//! A throw-away `nats-server` with JetStream for one test or demo run.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use tempfile::TempDir;

/// How long the server may take to report that it listens.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// Log line that carries the client address the server listens on.
const LISTEN_MARKER: &str = "Listening for client connections on ";

/// A `nats-server` on 127.0.0.1 with a port the server picked itself and a
/// fresh JetStream store; the process is killed and the store removed on drop.
pub struct NatsServer {
    child: Child,
    port: u16,
    dir: TempDir,
}

impl NatsServer {
    /// Starts `nats-server` (from `PATH`) and waits until it accepts clients.
    pub fn start() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("messaging-nats-e2e-nats")
            .tempdir()
            .context("failed to create nats-server dir")?;
        let log = dir.path().join("nats-server.log");
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", "-1", "-js", "-sd"])
            .arg(dir.path().join("jetstream"))
            .arg("-l")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("failed to start nats-server (is it installed and on PATH?)")?;
        let mut server = Self {
            child,
            port: 0,
            dir,
        };
        server.port = server.wait_for_port(&log)?;
        Ok(server)
    }

    fn wait_for_port(&mut self, log: &Path) -> Result<u16> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .try_wait()
                .context("failed to poll nats-server")?
            {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                bail!("nats-server exited with {status}:\n{text}");
            }
            if let Ok(text) = std::fs::read_to_string(log) {
                if text.contains("Server is ready") {
                    return listen_port(&text)
                        .with_context(|| format!("no listen address in nats-server log:\n{text}"));
                }
            }
            if Instant::now() > deadline {
                bail!("nats-server did not get ready within {START_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The client URL, e.g. `nats://127.0.0.1:4222`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The folder holding the server's log and JetStream store.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A new client connection to this server.
    pub async fn connect(&self) -> Result<async_nats::Client> {
        async_nats::connect(self.url())
            .await
            .with_context(|| format!("failed to connect to {}", self.url()))
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        // The process may be gone already; there is nothing else to do then.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The port in the server's "Listening for client connections on HOST:PORT" line.
fn listen_port(log: &str) -> Option<u16> {
    log.lines()
        .find_map(|line| line.split_once(LISTEN_MARKER))
        .and_then(|(_, address)| address.trim().rsplit_once(':'))
        .and_then(|(_, port)| port.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_port_in_log() {
        let log = "[1] [INF] Starting nats-server\n\
                   [1] 2026/01/01 00:00:00.000000 [INF] Listening for client connections on 127.0.0.1:43867\n\
                   [1] [INF] Server is ready\n";
        assert_eq!(listen_port(log), Some(43867));
    }

    #[test]
    fn no_port_without_listen_line() {
        assert_eq!(listen_port("[1] [INF] Server is ready\n"), None);
    }
}
