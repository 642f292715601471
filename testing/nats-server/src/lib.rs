//! Private `nats-server` processes for tests and the demo.
//!
//! A server listens on a port it picks itself (`port: -1`), read back from
//! its log, as does its monitoring endpoint. [`NatsServer::restart`] starts
//! it again on the same port, so clients reconnect to it; a cluster's nodes
//! have route ports chosen up front, since each node must name the others.
//! Each server has a folder of its own (config, log, JetStream store),
//! removed with the server, and the process is killed on drop.

mod leaf;
mod proxy;

pub use self::leaf::{LeafTopology, HUB_DOMAIN, LEAF_DOMAIN};
pub use self::proxy::{Proxy, SeenAck};

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to say that it is ready.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a graceful stop may take before the process is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on a lame duck shutdown with [`LAME_DUCK_CONFIG`].
const LAME_DUCK_WAIT: Duration = Duration::from_secs(20);

/// Names the `nats-server` executable to run; unset, the one on the `PATH`
/// (Debian's package). `.ci/run` points it at the current release for the
/// main run and leaves it unset for the compatibility run.
pub const SERVER_BIN_ENV: &str = "NATS_SERVER_BIN";

const CLIENT_MARKER: &str = "Listening for client connections on ";
const MONITOR_MARKER: &str = "Starting http monitor on ";

/// Lame duck durations short enough for a test: the defaults are a 10 s
/// grace period and 2 minutes of closing clients. The server refuses a
/// duration under 30 s; it closes at most one client a second, so a test
/// with a few clients is done in a few seconds.
pub const LAME_DUCK_CONFIG: &str = "lame_duck_grace_period: \"1s\"\nlame_duck_duration: \"30s\"\n";

/// What to start: extra config lines and whether JetStream is on.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Lines added to the config file (an `authorization` block,
    /// `max_payload: 4096`, a `tls` block, ...).
    pub config: String,
    /// JetStream with a store in the server's own folder.
    pub jetstream: bool,
    /// The JetStream domain (with `jetstream`); `None`: no domain.
    pub jetstream_domain: Option<String>,
}

/// A running (or stopped, for a restart) `nats-server`.
pub struct NatsServer {
    options: Options,
    /// 0 until the first start has read it back; then fixed, for restarts.
    port: u16,
    monitor_port: u16,
    /// `cluster { ... }` lines of a cluster node.
    cluster: Option<String>,
    dir: tempfile::TempDir,
    child: Option<Child>,
    starts: usize,
    /// The ports the config file names (`-1` before the first start): a
    /// reload must not change them.
    config_ports: (i32, i32),
}

impl NatsServer {
    /// A plain server.
    pub fn start() -> Self {
        Self::with(Options::default())
    }

    /// A server with extra config lines.
    pub fn with_config(config: &str) -> Self {
        Self::with(Options {
            config: config.to_string(),
            ..Options::default()
        })
    }

    pub fn with(options: Options) -> Self {
        Self::launch(options, None)
    }

    fn launch(options: Options, cluster: Option<String>) -> Self {
        let mut server = Self {
            options,
            port: 0,
            monitor_port: 0,
            cluster,
            dir: tempfile::Builder::new()
                .prefix("nats-test-server")
                .tempdir()
                .expect("temp dir for nats-server"),
            child: None,
            starts: 0,
            config_ports: (-1, -1),
        };
        server.run();
        server
    }

    /// `n` servers clustered on loopback (full mesh of routes).
    pub fn cluster(n: usize, options: Options) -> Vec<Self> {
        Self::cluster_with(n, options, |_| String::new())
    }

    /// `n` clustered servers, node `i` with the config lines `extra(i)`
    /// besides `options` (a port of its own, say).
    pub fn cluster_with(n: usize, options: Options, extra: impl Fn(usize) -> String) -> Vec<Self> {
        let route_ports: Vec<u16> = (0..n).map(|_| unused_port()).collect();
        let routes = route_ports
            .iter()
            .map(|p| format!("nats-route://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(", ");
        route_ports
            .iter()
            .enumerate()
            .map(|(i, port)| {
                let cluster = format!(
                    "server_name: node{i}\ncluster {{\n  name: test-cluster\n  listen: \"127.0.0.1:{port}\"\n  routes: [{routes}]\n}}\n{}",
                    extra(i)
                );
                Self::launch(options.clone(), Some(cluster))
            })
            .collect()
    }

    /// The client URL, e.g. `nats://127.0.0.1:4222`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port (the same across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's own folder (config, log, JetStream store).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// Kills the server at once (the port stays known for a restart).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server as an operator would (SIGTERM: it closes client
    /// connections and flushes JetStream), killing it after a bound.
    pub fn stop(&mut self) {
        self.signal_and_wait("-TERM", STOP_TIMEOUT);
    }

    /// Sends `signal` to the server and waits up to `bound` for it to
    /// exit, then kills it.
    fn signal_and_wait(&mut self, signal: &str, bound: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status();
        let deadline = Instant::now() + bound;
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts the server again on the same ports (stopping it first if it
    /// runs), with the same store.
    pub fn restart(&mut self) {
        self.stop();
        self.run();
    }

    /// Restarts the server as an operator does for maintenance: lame duck
    /// mode (SIGUSR2: it tells its clients it is going, stops taking new
    /// ones and, after its grace period, closes the remaining ones and
    /// exits), then a start on the same ports and store. Needs the lame
    /// duck durations in the server's config (see [`LAME_DUCK_CONFIG`]).
    pub fn lame_duck_restart(&mut self) {
        // One client closed a second, after the grace period.
        self.signal_and_wait("-USR2", LAME_DUCK_WAIT);
        self.run();
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("nats.conf")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join(format!("nats-{}.log", self.starts))
    }

    /// Changes the server's extra config lines and has the running server
    /// reload its config (SIGHUP), as an operator does to change accounts
    /// or users without a restart; returns once the server says it
    /// reloaded.
    pub fn reload_with_config(&mut self, config: &str) {
        self.options.config = config.to_string();
        self.write_config();
        let pid = self.child.as_ref().expect("a running server").id();
        let log = self.log_path();
        let before = std::fs::read_to_string(&log).unwrap_or_default().len();
        let _ = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let new = text.get(before..).unwrap_or_default();
            if new.contains("Reloaded server configuration") {
                return;
            }
            assert!(
                !new.contains("[ERR]"),
                "nats-server refused the reload:\n{new}"
            );
            assert!(
                Instant::now() < deadline,
                "nats-server did not reload within {START_TIMEOUT:?}:\n{new}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn run(&mut self) {
        self.starts += 1;
        let port = if self.port == 0 {
            -1
        } else {
            i32::from(self.port)
        };
        let monitor = if self.monitor_port == 0 {
            -1
        } else {
            i32::from(self.monitor_port)
        };
        self.config_ports = (port, monitor);
        self.write_config();
        let log = self.log_path();
        let child = Command::new(server_binary())
            .arg("-c")
            .arg(self.config_path())
            .arg("-l")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| {
                panic!(
                    "cannot run {:?} ({err}): install nats-server (apt-get install nats-server) \
                     or name it in ${SERVER_BIN_ENV}",
                    server_binary()
                )
            });
        self.child = Some(child);
        let text = self.wait_ready(&log);
        self.port = read_port(&text, CLIENT_MARKER)
            .unwrap_or_else(|| panic!("no client port in the nats-server log:\n{text}"));
        self.monitor_port = read_port(&text, MONITOR_MARKER)
            .unwrap_or_else(|| panic!("no monitoring port in the nats-server log:\n{text}"));
    }

    /// Writes the config file for the ports of the last start.
    fn write_config(&self) {
        let (port, monitor) = self.config_ports;
        let mut config = format!(
            "host: 127.0.0.1\nport: {port}\nhttp_port: {monitor}\n{}\n",
            self.options.config
        );
        if self.options.jetstream {
            let store = self.dir.path().join("jetstream");
            let domain = self
                .options
                .jetstream_domain
                .as_ref()
                .map(|domain| format!(", domain: {domain:?}"))
                .unwrap_or_default();
            config.push_str(&format!("jetstream {{ store_dir: {store:?}{domain} }}\n"));
        }
        if let Some(cluster) = &self.cluster {
            config.push_str(cluster);
        }
        std::fs::write(self.config_path(), config).expect("write nats-server config");
    }

    /// Waits for "Server is ready" in the log and returns the log.
    fn wait_ready(&mut self, log: &Path) -> String {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if text.contains("Server is ready") {
                return text;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("nats-server exited with {status}:\n{text}");
            }
            assert!(
                Instant::now() < deadline,
                "nats-server not ready within {START_TIMEOUT:?}:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// What the server has logged since its last start.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// A monitoring document (`/connz?subs=1`, `/varz`, ...) as JSON.
    pub fn monitor(&self, path: &str) -> serde_json::Value {
        let mut stream =
            TcpStream::connect(("127.0.0.1", self.monitor_port)).expect("monitoring port");
        write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").expect("send request");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read response");
        let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
        serde_json::from_str(body).unwrap_or_else(|err| panic!("{path}: {err}: {body}"))
    }

    /// The client connections the server has (`/connz`, with subscriptions
    /// and authorised users).
    pub fn connections(&self) -> Vec<serde_json::Value> {
        self.monitor("/connz?subs=1&auth=1")["connections"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `nats-server` executable the helpers run.
pub fn server_binary() -> PathBuf {
    std::env::var_os(SERVER_BIN_ENV)
        .filter(|path| !path.is_empty())
        .map_or_else(|| PathBuf::from("nats-server"), PathBuf::from)
}

/// The port in a log line such as "Listening for client connections on
/// 127.0.0.1:43867" (the last such line: a restart appends to its own log).
fn read_port(log: &str, marker: &str) -> Option<u16> {
    log.lines()
        .rev()
        .filter_map(|line| line.split_once(marker))
        .filter_map(|(_, address)| address.trim().rsplit_once(':'))
        .find_map(|(_, port)| port.parse().ok())
}

/// How long [`round_trip`] waits for the server's answer.
const ROUND_TRIP_TIMEOUT: Duration = Duration::from_secs(10);

/// Waits until the server has processed everything `client` sent before,
/// subscriptions above all. `flush` only empties the client's buffer: a
/// message from another connection can still reach the server before it has
/// read this one's SUB. A request to an inbox nobody serves is answered with
/// "no responders" once the server has read it, so after everything before
/// it. Panics if the server does not answer in time.
pub async fn round_trip(client: &async_nats::Client) {
    use async_nats::client::RequestErrorKind;
    let nobody = client.new_inbox();
    match tokio::time::timeout(ROUND_TRIP_TIMEOUT, client.request(nobody, "".into())).await {
        Ok(Err(err)) if err.kind() == RequestErrorKind::NoResponders => {}
        Ok(Ok(_)) => panic!("round trip: somebody answered a fresh inbox"),
        Ok(Err(err)) => panic!("round trip to the NATS server failed: {err}"),
        Err(_) => panic!("NATS server did not answer a round trip within {ROUND_TRIP_TIMEOUT:?}"),
    }
}

/// A loopback port free now, for cluster routes and leaf node ports (which
/// must be known before the nodes start).
fn unused_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("bind a loopback port")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ports_from_the_log() {
        let log = "[1] [INF] Starting http monitor on 127.0.0.1:8222\n\
                   [1] [INF] Listening for client connections on 127.0.0.1:43867\n\
                   [1] [INF] Server is ready\n";
        assert_eq!(read_port(log, CLIENT_MARKER), Some(43867));
        assert_eq!(read_port(log, MONITOR_MARKER), Some(8222));
        assert_eq!(
            read_port("[1] [INF] Server is ready\n", CLIENT_MARKER),
            None
        );
    }

    #[test]
    fn restarted_server_keeps_its_port_and_store() {
        let mut server = NatsServer::with(Options {
            jetstream: true,
            ..Options::default()
        });
        let port = server.port();
        assert!(server.is_running());
        server.restart();
        assert_eq!(server.port(), port);
        assert!(server.is_running());
        assert!(server.dir().join("jetstream").exists());
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    }

    #[test]
    fn cluster_nodes_see_each_other() {
        let nodes = NatsServer::cluster(3, Options::default());
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            // Servers from 2.10 keep a pool of routes to each peer: count
            // the peers.
            let routez = nodes[0].monitor("/routez");
            let peers: std::collections::HashSet<_> = routez["routes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|route| route["remote_id"].as_str().map(str::to_string))
                .collect();
            if peers.len() == 2 {
                break;
            }
            assert!(Instant::now() < deadline, "peers: {peers:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
