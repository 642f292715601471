//! Shared set-up for the provider tests: a private `nats-server` per test,
//! the provider binary started with the host handshake, the host's control
//! messages, and a test component that serves `handler` and calls `consumer`
//! over wRPC.

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpListener;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use base64::Engine as _;
use bytes::Bytes;
use futures::StreamExt as _;
use tokio::sync::mpsc;
use wasmcloud_provider_sdk::core::secrets::SecretValue;
use wasmcloud_provider_sdk::core::{HostData, InterfaceLinkDefinition};

pub mod credentials;

pub mod bindings {
    wit_bindgen_wrpc::generate!({ world: "component", path: "wit", generate_all });
}

use bindings::wasmcloud::messaging::consumer;
pub use bindings::wasmcloud::messaging::types::BrokerMessage;

/// How long a test waits for something that should happen promptly.
pub const WAIT: Duration = Duration::from_secs(10);

/// Ports handed out by [`free_port`] in this process, so that two tests
/// never race for the same one.
static PORTS: Mutex<Vec<u16>> = Mutex::new(Vec::new());

fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("bind a loopback port");
        let mut used = PORTS.lock().expect("port list");
        if !used.contains(&port) {
            used.push(port);
            return port;
        }
    }
}

/// A private `nats-server` on a loopback port, killed on drop.
pub struct NatsServer {
    pub port: u16,
    /// HTTP monitoring port (`/connz`).
    monitor_port: u16,
    dir: tempfile::TempDir,
    extra_config: String,
    child: Option<Child>,
}

impl NatsServer {
    pub fn start() -> Self {
        Self::with_config("")
    }

    /// Starts a server with extra lines for its config file
    /// (e.g. `max_payload: 4096`, an `authorization` block).
    pub fn with_config(extra_config: &str) -> Self {
        let mut server = Self {
            port: free_port(),
            monitor_port: free_port(),
            dir: tempfile::tempdir().expect("temp dir"),
            extra_config: extra_config.to_string(),
            child: None,
        };
        server.run();
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops the server (the port stays reserved for a restart).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.run();
    }

    fn run(&mut self) {
        let config = self.dir.path().join("nats.conf");
        std::fs::write(
            &config,
            format!(
                "host: 127.0.0.1\nport: {}\nhttp: \"127.0.0.1:{}\"\n{}\n",
                self.port, self.monitor_port, self.extra_config
            ),
        )
        .expect("write nats config");
        let child = Command::new("nats-server")
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server must be installed (apt-get install nats-server)");
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's `/connz` monitoring document (its client connections).
    pub fn connz(&self) -> serde_json::Value {
        use std::io::Read as _;
        let mut stream =
            std::net::TcpStream::connect(("127.0.0.1", self.monitor_port)).expect("monitor port");
        stream
            .write_all(b"GET /connz?auth=1 HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .expect("send /connz");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read /connz");
        let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
        serde_json::from_str(body).expect("/connz json")
    }

    /// Names of the client connections the server has.
    pub fn connection_names(&self) -> Vec<String> {
        self.connz()["connections"]
            .as_array()
            .map(|conns| {
                conns
                    .iter()
                    .map(|c| c["name"].as_str().unwrap_or_default().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.url())
            .await
            .expect("connect to test nats")
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Output lines of a provider process, shared with the reader threads.
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<String>>>);

impl Logs {
    fn push(&self, line: String) {
        if let Ok(mut lines) = self.0.lock() {
            lines.push(line);
        }
    }

    pub fn lines(&self) -> Vec<String> {
        self.0.lock().map(|l| l.clone()).unwrap_or_default()
    }

    pub fn count(&self, pred: impl Fn(&str) -> bool) -> usize {
        self.lines().iter().filter(|l| pred(l)).count()
    }

    pub fn len(&self) -> usize {
        self.0.lock().map(|l| l.len()).unwrap_or_default()
    }

    /// Waits until a line from index `from` on satisfies `pred`, and
    /// returns it.
    pub async fn wait_for(&self, from: usize, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(line) = self.lines().into_iter().skip(from).find(|l| pred(l)) {
                return line;
            }
            if Instant::now() > deadline {
                panic!(
                    "no log line {what} within {WAIT:?}; output:\n{}",
                    self.lines().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The lattice side of a test: its NATS server, lattice name and xkeys.
pub struct Lattice {
    pub nats: NatsServer,
    pub name: String,
    pub client: async_nats::Client,
    host_xkey: nkeys::XKey,
}

static LATTICES: AtomicUsize = AtomicUsize::new(0);

impl Lattice {
    pub async fn start() -> Self {
        Self::on(NatsServer::start()).await
    }

    pub async fn on(nats: NatsServer) -> Self {
        let name = format!(
            "test{}-{}",
            std::process::id(),
            LATTICES.fetch_add(1, Ordering::Relaxed)
        );
        let client = nats.client().await;
        Self {
            nats,
            name,
            client,
            host_xkey: nkeys::XKey::new(),
        }
    }

    /// Starts the provider with provider-level config pointing links at
    /// this lattice's server unless `config` says otherwise.
    pub async fn provider(&self, config: &[(&str, &str)]) -> Provider {
        self.provider_with_key("messaging-nats-test", config).await
    }

    pub async fn provider_with_key(&self, key: &str, config: &[(&str, &str)]) -> Provider {
        self.provider_with(ProviderOptions {
            key: key.to_string(),
            config: pairs(config),
            ..ProviderOptions::default()
        })
        .await
    }

    /// Starts the provider as `options` say; `cluster_uris` defaults to this
    /// lattice's server.
    pub async fn provider_with(&self, mut options: ProviderOptions) -> Provider {
        options
            .config
            .entry("cluster_uris".to_string())
            .or_insert_with(|| self.nats.url());
        Provider::start(self, options).await
    }

    /// Publishes bodies "0", "1", ... "n-1" to `subject`, in order.
    pub async fn publish_numbered(&self, subject: &str, n: usize) {
        for i in 0..n {
            self.client
                .publish(subject.to_string(), i.to_string().into())
                .await
                .expect("publish");
        }
        self.client.flush().await.expect("flush");
    }

    /// Plays a component: serves `handler` under `id` on this lattice.
    pub async fn component(&self, id: &str, behaviour: Behaviour) -> Component {
        Component::start(self, id, behaviour).await
    }
}

/// How a test starts the provider process.
pub struct ProviderOptions {
    pub key: String,
    /// Provider-level config (named config merged by the host).
    pub config: HashMap<String, String>,
    /// Provider-level secrets, as the host hands them over.
    pub secrets: HashMap<String, SecretValue>,
    /// The host's log level for the provider.
    pub log_level: wasmcloud_provider_sdk::core::logging::Level,
    /// `RUST_LOG` for the process (unset: inherited).
    pub rust_log: Option<String>,
}

impl Default for ProviderOptions {
    fn default() -> Self {
        Self {
            key: "messaging-nats-test".to_string(),
            config: HashMap::new(),
            secrets: HashMap::new(),
            log_level: wasmcloud_provider_sdk::core::logging::Level::Debug,
            rust_log: None,
        }
    }
}

/// Owned key/value pairs from a test's literal list.
pub fn pairs(list: &[(&str, &str)]) -> HashMap<String, String> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A running provider process.
pub struct Provider {
    pub key: String,
    pub host_id: String,
    pub logs: Logs,
    link_put_id: String,
    provider_xkey_public: nkeys::XKey,
    host_xkey: nkeys::XKey,
    lattice: String,
    client: async_nats::Client,
    child: Child,
}

impl Provider {
    async fn start(lattice: &Lattice, options: ProviderOptions) -> Self {
        let ProviderOptions {
            key,
            config,
            secrets,
            log_level,
            rust_log,
        } = options;
        let provider_xkey = nkeys::XKey::new();
        let host_id = nkeys::KeyPair::new_server().public_key();
        let host_data = HostData {
            host_id: host_id.clone(),
            lattice_rpc_prefix: lattice.name.clone(),
            lattice_rpc_url: lattice.nats.url(),
            provider_key: key.clone(),
            instance_id: format!("{key}-instance"),
            link_name: "default".into(),
            config,
            secrets,
            host_xkey_public_key: lattice.host_xkey.public_key(),
            provider_xkey_private_key: provider_xkey.seed().expect("xkey seed"),
            log_level: Some(log_level),
            ..Default::default()
        };
        let json = serde_json::to_vec(&host_data).expect("host data json");
        let line = format!(
            "{}\r\n",
            base64::engine::general_purpose::STANDARD.encode(json)
        );
        let (child, logs) = spawn_provider(line.as_bytes(), rust_log.as_deref());

        let provider = Self {
            key: key.clone(),
            host_id,
            logs,
            link_put_id: provider_xkey.public_key(),
            provider_xkey_public: nkeys::XKey::from_public_key(&provider_xkey.public_key())
                .expect("public xkey"),
            host_xkey: nkeys::XKey::from_seed(&lattice.host_xkey.seed().expect("seed"))
                .expect("host xkey"),
            lattice: lattice.name.clone(),
            client: lattice.client.clone(),
            child,
        };
        provider.wait_ready().await;
        provider
    }

    /// The provider is ready once it answers a health request.
    async fn wait_ready(&self) {
        let deadline = Instant::now() + WAIT;
        while self.health().await.is_err() {
            assert!(
                Instant::now() < deadline,
                "provider did not answer health; output:\n{}",
                self.logs.lines().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends a health request; returns (healthy, message).
    pub async fn health(&self) -> anyhow::Result<(bool, String)> {
        let subject = format!("wasmbus.rpc.{}.{}.health", self.lattice, self.key);
        let reply = tokio::time::timeout(
            Duration::from_secs(1),
            self.client.request(subject, Bytes::from_static(b"{}")),
        )
        .await
        .context("health timed out")??;
        let v: serde_json::Value = serde_json::from_slice(&reply.payload)?;
        Ok((
            v["healthy"].as_bool().unwrap_or(false),
            v["message"].as_str().unwrap_or_default().to_string(),
        ))
    }

    /// Puts a link and waits until the provider has taken it (or refused it).
    pub async fn put_link(&self, link: &Link) -> String {
        let from = self.logs.len();
        let ld = link.definition(self);
        let subject = format!(
            "wasmbus.rpc.{}.{}.linkdefs.put",
            self.lattice, self.link_put_id
        );
        self.client
            .publish(subject, serde_json::to_vec(&ld).expect("link json").into())
            .await
            .expect("publish link put");
        let marker = format!("link={}/{}", link.component, link.name);
        self.logs
            .wait_for(from, "confirming the link", |line| {
                (line.contains("link ready") && line.contains(&marker))
                    || line.contains("link rejected")
            })
            .await
    }

    /// Deletes a link and waits until the provider has handled it.
    pub async fn delete_link(&self, link: &Link) {
        let from = self.logs.len();
        let ld = link.definition(self);
        let subject = format!("wasmbus.rpc.{}.{}.linkdefs.del", self.lattice, self.key);
        self.client
            .publish(subject, serde_json::to_vec(&ld).expect("link json").into())
            .await
            .expect("publish link del");
        let marker = format!("link={}/{}", link.component, link.name);
        self.logs
            .wait_for(from, "confirming the delete", |l| {
                l.contains("link deleted") && l.contains(&marker)
            })
            .await;
    }

    /// Sends a provider config update, as the host does when named config
    /// of the provider changes, and waits until it is applied.
    pub async fn update_config(&self, config: &[(&str, &str)]) {
        let from = self.logs.len();
        let map: HashMap<&str, &str> = config.iter().copied().collect();
        let subject = format!("wasmbus.rpc.{}.{}.config.update", self.lattice, self.key);
        self.client
            .publish(
                subject,
                serde_json::to_vec(&map).expect("config json").into(),
            )
            .await
            .expect("publish config update");
        self.logs
            .wait_for(from, "confirming the config update", |l| {
                l.contains("provider config updated")
            })
            .await;
    }

    /// Asks the provider to shut down, as the host does, and waits for the
    /// process to exit.
    pub async fn shutdown(mut self) -> ExitStatus {
        let subject = format!("wasmbus.rpc.{}.{}.default.shutdown", self.lattice, self.key);
        let body = serde_json::json!({ "host_id": self.host_id }).to_string();
        let _ = tokio::time::timeout(WAIT, self.client.request(subject, body.into())).await;
        self.wait_exit().await
    }

    /// Sends a signal to the process and waits for it to exit.
    pub async fn signal(mut self, signal: &str) -> ExitStatus {
        Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        self.wait_exit().await
    }

    async fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait provider") {
                return status;
            }
            assert!(Instant::now() < deadline, "provider did not exit");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Starts the provider binary with `stdin` as its standard input and
/// collects every line it prints, stdout and stderr alike.
pub fn spawn_provider(stdin: &[u8], rust_log: Option<&str>) -> (Child, Logs) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_messaging-nats"));
    if let Some(filter) = rust_log {
        command.env("RUST_LOG", filter);
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start provider");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin).expect("write host data");
    drop(input);

    let logs = Logs::default();
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    for stream in [
        Box::new(stdout) as Box<dyn std::io::Read + Send>,
        Box::new(stderr),
    ] {
        let logs = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                logs.push(line);
            }
        });
    }
    (child, logs)
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Which way a link points, seen from the component.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Provider -> component, interface `handler`.
    Handler,
    /// Component -> provider, interface `consumer`.
    Consumer,
}

/// A link between the provider and a component.
#[derive(Clone)]
pub struct Link {
    pub component: String,
    pub name: String,
    pub direction: Direction,
    pub interface: String,
    pub config: HashMap<String, String>,
    pub secrets: HashMap<String, SecretValue>,
}

impl Link {
    pub fn handler(component: &str, config: &[(&str, &str)]) -> Self {
        Self::new(component, Direction::Handler, "handler", config)
    }

    pub fn consumer(component: &str, config: &[(&str, &str)]) -> Self {
        Self::new(component, Direction::Consumer, "consumer", config)
    }

    fn new(
        component: &str,
        direction: Direction,
        interface: &str,
        config: &[(&str, &str)],
    ) -> Self {
        Self {
            component: component.to_string(),
            name: "default".to_string(),
            direction,
            interface: interface.to_string(),
            config: config
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            secrets: HashMap::new(),
        }
    }

    pub fn named(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }

    pub fn with_secret(mut self, key: &str, value: &str) -> Self {
        self.secrets
            .insert(key.to_string(), SecretValue::String(value.to_string()));
        self
    }

    /// The link for another WIT interface (a link this provider must refuse).
    pub fn for_interface(mut self, interface: &str) -> Self {
        self.interface = interface.to_string();
        self
    }

    fn definition(&self, provider: &Provider) -> InterfaceLinkDefinition {
        let sealed = (!self.secrets.is_empty()).then(|| {
            let json = serde_json::to_vec(&self.secrets).expect("secrets json");
            provider
                .host_xkey
                .seal(&json, &provider.provider_xkey_public)
                .expect("seal secrets")
        });
        let (source_id, target) = match self.direction {
            Direction::Handler => (provider.key.clone(), self.component.clone()),
            Direction::Consumer => (self.component.clone(), provider.key.clone()),
        };
        let mut ld = InterfaceLinkDefinition {
            source_id,
            target,
            name: self.name.clone(),
            wit_namespace: "wasmcloud".into(),
            wit_package: "messaging".into(),
            interfaces: vec![self.interface.clone()],
            source_config: HashMap::new(),
            target_config: HashMap::new(),
            source_secrets: None,
            target_secrets: None,
        };
        match self.direction {
            Direction::Handler => {
                ld.source_config = self.config.clone();
                ld.source_secrets = sealed;
            }
            Direction::Consumer => {
                ld.target_config = self.config.clone();
                ld.target_secrets = sealed;
            }
        }
        ld
    }
}

/// What the test component's `handle-message` does.
#[derive(Clone, Default)]
pub struct Behaviour {
    /// Sleeps this long before answering.
    pub delay: Duration,
    /// Returns `Err` for bodies that start with this.
    pub fail_prefix: Option<Vec<u8>>,
}

impl Behaviour {
    /// Answers `Ok` after `delay`.
    pub fn slow(delay: Duration) -> Self {
        Self {
            delay,
            ..Self::default()
        }
    }
}

/// A message as the test component received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub message: BrokerMessage,
    pub traceparent: Option<String>,
    pub source_id: Option<String>,
}

#[derive(Clone)]
struct HandlerImpl {
    behaviour: Behaviour,
    received: mpsc::UnboundedSender<Received>,
    in_flight: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
}

impl bindings::exports::wasmcloud::messaging::handler::Handler<Option<async_nats::HeaderMap>>
    for HandlerImpl
{
    async fn handle_message(
        &self,
        cx: Option<async_nats::HeaderMap>,
        message: BrokerMessage,
    ) -> anyhow::Result<Result<(), String>> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        if !self.behaviour.delay.is_zero() {
            tokio::time::sleep(self.behaviour.delay).await;
        }
        let header = |name: &str| {
            cx.as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_string())
        };
        let fail = self
            .behaviour
            .fail_prefix
            .as_ref()
            .is_some_and(|p| message.body.starts_with(p));
        let _ = self.received.send(Received {
            traceparent: header("traceparent"),
            source_id: header("source-id"),
            message,
        });
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        Ok(if fail {
            Err("told to fail".to_string())
        } else {
            Ok(())
        })
    }
}

/// A test component: serves `handler` over wRPC and calls the provider's
/// `consumer` with its own id as the source.
pub struct Component {
    pub id: String,
    received: mpsc::UnboundedReceiver<Received>,
    peak: Arc<AtomicUsize>,
    lattice: String,
    nats: Arc<async_nats::Client>,
    serving: tokio::task::JoinHandle<()>,
}

impl Component {
    async fn start(lattice: &Lattice, id: &str, behaviour: Behaviour) -> Self {
        let nats = Arc::new(lattice.nats.client().await);
        let wrpc = wrpc_transport_nats::Client::new(
            Arc::clone(&nats),
            format!("{}.{id}", lattice.name),
            None,
        )
        .await
        .expect("wrpc client");
        let (tx, received) = mpsc::unbounded_channel();
        let peak = Arc::new(AtomicUsize::new(0));
        let handler = HandlerImpl {
            behaviour,
            received: tx,
            in_flight: Arc::new(AtomicUsize::new(0)),
            peak: Arc::clone(&peak),
        };
        let streams = bindings::serve(&wrpc, handler)
            .await
            .expect("serve handler");
        nats.flush().await.expect("flush subscriptions");
        let mut invocations = futures::stream::select_all(streams.into_iter().map(|(_, _, s)| s));
        let serving = tokio::spawn(async move {
            while let Some(invocation) = invocations.next().await {
                if let Ok(fut) = invocation {
                    tokio::spawn(async move {
                        let _ = fut.await;
                    });
                }
            }
        });
        Self {
            id: id.to_string(),
            received,
            peak,
            lattice: lattice.name.clone(),
            nats,
            serving,
        }
    }

    /// The next message delivered to this component.
    pub async fn next(&mut self) -> Received {
        tokio::time::timeout(WAIT, self.received.recv())
            .await
            .expect("no delivery within the wait")
            .expect("component channel open")
    }

    /// Collects `n` deliveries.
    pub async fn take(&mut self, n: usize) -> Vec<Received> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.next().await);
        }
        out
    }

    /// Asserts that nothing is delivered for `quiet`.
    pub async fn expect_nothing(&mut self, quiet: Duration) {
        if let Ok(Some(r)) = tokio::time::timeout(quiet, self.received.recv()).await {
            panic!("unexpected delivery: {:?}", r.message.subject);
        }
    }

    /// Highest number of `handle-message` calls running at once.
    pub fn peak_in_flight(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }

    /// A wRPC client aimed at `provider`, with this component as source.
    pub async fn caller(&self, provider: &Provider) -> Caller {
        Caller {
            wrpc: wrpc_transport_nats::Client::new(
                Arc::clone(&self.nats),
                format!("{}.{}", self.lattice, provider.key),
                None,
            )
            .await
            .expect("wrpc client"),
            source_id: Some(self.id.clone()),
            link_name: "default".into(),
            traceparent: None,
            tracestate: None,
        }
    }
}

impl Drop for Component {
    fn drop(&mut self) {
        self.serving.abort();
    }
}

/// Calls the provider's `consumer` interface as one component would.
pub struct Caller {
    wrpc: wrpc_transport_nats::Client,
    pub source_id: Option<String>,
    pub link_name: String,
    pub traceparent: Option<String>,
    /// Sent as the invocation's `tracestate` header, unchecked.
    pub tracestate: Option<String>,
}

impl Caller {
    fn headers(&self) -> Option<async_nats::HeaderMap> {
        let mut headers = async_nats::HeaderMap::new();
        if let Some(id) = &self.source_id {
            headers.insert("source-id", id.as_str());
        }
        headers.insert("link-name", self.link_name.as_str());
        if let Some(tp) = &self.traceparent {
            headers.insert("traceparent", tp.as_str());
        }
        if let Some(state) = &self.tracestate {
            headers.insert("tracestate", async_nats::HeaderValue::from(state.as_str()));
        }
        Some(headers)
    }

    pub async fn publish(&self, msg: &BrokerMessage) -> anyhow::Result<Result<(), String>> {
        tokio::time::timeout(WAIT, consumer::publish(&self.wrpc, self.headers(), msg))
            .await
            .context("publish call timed out")?
    }

    /// Publishes `msg` and returns the provider's error; panics on success.
    pub async fn publish_error(&self, msg: &BrokerMessage) -> String {
        match self.publish(msg).await.expect("publish call") {
            Ok(()) => panic!("publish to {:?} succeeded", msg.subject),
            Err(err) => err,
        }
    }

    /// Sends a request and returns the provider's error; panics on success.
    pub async fn request_error(&self, subject: &str, body: &[u8], timeout_ms: u32) -> String {
        match self
            .request(subject, body, timeout_ms)
            .await
            .expect("request call")
        {
            Ok(reply) => panic!("request to {subject:?} was answered: {reply:?}"),
            Err(err) => err,
        }
    }

    pub async fn request(
        &self,
        subject: &str,
        body: &[u8],
        timeout_ms: u32,
    ) -> anyhow::Result<Result<BrokerMessage, String>> {
        let body = Bytes::copy_from_slice(body);
        tokio::time::timeout(
            WAIT,
            consumer::request(&self.wrpc, self.headers(), subject, &body, timeout_ms),
        )
        .await
        .context("request call timed out")?
    }
}

/// The usual set-up of a consumer test: a lattice, the provider, and a
/// component "c" with a consumer link configured by `config`.
pub struct ConsumerSetup {
    pub lattice: Lattice,
    /// Kept so that the provider process lives as long as the set-up.
    _provider: Provider,
    pub caller: Caller,
}

impl ConsumerSetup {
    pub async fn new(config: &[(&str, &str)]) -> Self {
        Self::on(Lattice::start().await, config).await
    }

    pub async fn on(lattice: Lattice, config: &[(&str, &str)]) -> Self {
        let provider = lattice.provider(&[]).await;
        let component = lattice.component("c", Behaviour::default()).await;
        let line = provider.put_link(&Link::consumer("c", config)).await;
        assert!(line.contains("link ready"), "{line}");
        let caller = component.caller(&provider).await;
        Self {
            lattice,
            _provider: provider,
            caller,
        }
    }

    /// Subscribes on the lattice's server, confirmed before it returns.
    pub async fn subscribe(&self, subject: &str) -> async_nats::Subscriber {
        let sub = self
            .lattice
            .client
            .subscribe(subject.to_string())
            .await
            .expect("subscribe");
        self.lattice.client.flush().await.expect("flush");
        sub
    }
}

/// A message with no reply-to.
pub fn message(subject: &str, body: &[u8]) -> BrokerMessage {
    BrokerMessage {
        subject: subject.to_string(),
        body: Bytes::copy_from_slice(body),
        reply_to: None,
    }
}

/// Reads the next message of a subscription within the wait.
pub async fn next_message(sub: &mut async_nats::Subscriber) -> anyhow::Result<async_nats::Message> {
    match tokio::time::timeout(WAIT, sub.next()).await {
        Ok(Some(msg)) => Ok(msg),
        Ok(None) => bail!("subscription closed"),
        Err(_) => bail!("no message within {WAIT:?}"),
    }
}
