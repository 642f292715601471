//! The host's side: the provider process started with the stdin
//! handshake, links put and deleted, health, config updates and shutdown.

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use base64::Engine as _;
use bytes::Bytes;
use wasmcloud_provider_sdk::core::secrets::SecretValue;
use wasmcloud_provider_sdk::core::{HostData, InterfaceLinkDefinition, OtelConfig, OtelProtocol};

use crate::component::{Behaviour, Component};
use crate::control::ControlInterface;
use crate::server::{NatsServer, ServerExt as _};
use crate::WAIT;

/// Output lines of a provider process, shared with the reader threads.
#[derive(Clone, Default)]
pub struct Logs {
    lines: Arc<Mutex<Vec<String>>>,
    /// Output streams not read to their end yet.
    open: Arc<AtomicUsize>,
}

impl Logs {
    fn push(&self, line: String) {
        if let Ok(mut lines) = self.lines.lock() {
            lines.push(line);
        }
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Waits until the process's output has been read to its end (it has
    /// exited), so that [`lines`](Self::lines) holds all of it.
    pub async fn wait_closed(&self) {
        let deadline = Instant::now() + WAIT;
        while self.open.load(Ordering::SeqCst) > 0 {
            assert!(Instant::now() < deadline, "provider output still open");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn count(&self, pred: impl Fn(&str) -> bool) -> usize {
        self.lines().iter().filter(|l| pred(l)).count()
    }

    /// Lines printed so far; a position for [`wait_for`](Self::wait_for).
    pub fn line_count(&self) -> usize {
        self.lines.lock().map(|l| l.len()).unwrap_or_default()
    }

    /// Waits until a line from index `from` on satisfies `pred`, and
    /// returns it.
    pub async fn wait_for(&self, from: usize, what: &str, pred: impl Fn(&str) -> bool) -> String {
        self.wait_for_within(from, what, WAIT, pred).await
    }

    /// [`wait_for`](Self::wait_for) with a wait of its own, for what takes
    /// long by design (a client giving up after its reconnect attempts).
    pub async fn wait_for_within(
        &self,
        from: usize,
        what: &str,
        within: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + within;
        loop {
            if let Some(line) = self.lines().into_iter().skip(from).find(|l| pred(l)) {
                return line;
            }
            if Instant::now() > deadline {
                panic!(
                    "no log line {what} within {within:?}; output:\n{}",
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
    /// The links and config the lattice holds, as its control interface
    /// answers for them.
    pub control: ControlInterface,
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
        let control = ControlInterface::serve(&client, &name).await;
        Self {
            nats,
            name,
            client,
            control,
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

    /// The lattice holds `link` of the provider `provider_key`, as a host
    /// stores it (its config under a name of its own; its secrets, if any,
    /// named `SECRET_...`), without a put being sent to the provider.
    pub fn hold_link(&self, provider_key: &str, link: &Link) {
        let config_name = format!("{}-{}-{}", link.component, link.name, link.interface);
        let mut names = vec![config_name.clone()];
        if !link.secrets.is_empty() {
            names.push(format!("SECRET_{}-{}", link.component, link.name));
        }
        let (source_id, target, source_config, target_config) = match link.direction {
            Direction::Handler => (provider_key, link.component.as_str(), names, Vec::new()),
            Direction::Consumer => (link.component.as_str(), provider_key, Vec::new(), names),
        };
        let stored = serde_json::json!({
            "source_id": source_id,
            "target": target,
            "name": link.name,
            "wit_namespace": "wasmcloud",
            "wit_package": "messaging",
            "interfaces": [link.interface],
            "source_config": source_config,
            "target_config": target_config,
        });
        self.control
            .hold(stored, vec![(config_name, link.config.clone())]);
    }

    /// Plays a component: serves `handler` under `id` on this lattice.
    pub async fn component(&self, id: &str, behaviour: Behaviour) -> Component {
        Component::start_on(self.nats.client().await, &self.name, id, behaviour).await
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
    /// Links that exist already, handed over in the start-up handshake.
    pub links: Vec<Link>,
    /// Where the host tells the provider to export metrics (OTLP over
    /// HTTP), with a short export interval; unset: metrics off.
    pub metrics_endpoint: Option<String>,
    /// The base URL where the host tells the provider to export all three
    /// signals (`--enable-observability`; OTLP over HTTP, `/v1/logs`,
    /// `/v1/metrics`, `/v1/traces`), with short export intervals.
    pub observability_endpoint: Option<String>,
    /// The executable to start instead of [`crate::provider_binary`].
    pub binary: Option<std::path::PathBuf>,
}

impl Default for ProviderOptions {
    fn default() -> Self {
        Self {
            key: "messaging-nats-test".to_string(),
            config: HashMap::new(),
            secrets: HashMap::new(),
            log_level: wasmcloud_provider_sdk::core::logging::Level::Debug,
            rust_log: None,
            links: Vec::new(),
            metrics_endpoint: None,
            observability_endpoint: None,
            binary: None,
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
        let provider = Self::launch(lattice, options);
        provider.wait_ready().await;
        provider
    }

    /// Starts the process without waiting for it to answer health (it may
    /// still be setting up the links it was started with).
    pub fn launch(lattice: &Lattice, options: ProviderOptions) -> Self {
        let ProviderOptions {
            key,
            config,
            secrets,
            log_level,
            rust_log,
            links,
            metrics_endpoint,
            observability_endpoint,
            binary,
        } = options;
        let provider_xkey = nkeys::XKey::new();
        let provider_xkey_public =
            nkeys::XKey::from_public_key(&provider_xkey.public_key()).expect("public xkey");
        let link_definitions = links
            .iter()
            .map(|link| link.definition_with(&key, &lattice.host_xkey, &provider_xkey_public))
            .collect();
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
            link_definitions,
            otel_config: OtelConfig {
                enable_observability: observability_endpoint.is_some(),
                observability_endpoint: observability_endpoint.clone(),
                enable_metrics: Some(
                    metrics_endpoint.is_some() || observability_endpoint.is_some(),
                ),
                metrics_endpoint: metrics_endpoint.clone(),
                protocol: OtelProtocol::Http,
                ..OtelConfig::default()
            },
            ..Default::default()
        };
        let json = serde_json::to_vec(&host_data).expect("host data json");
        let line = format!(
            "{}\r\n",
            base64::engine::general_purpose::STANDARD.encode(json)
        );
        // The exporters' default intervals are a minute (metrics), 5 s
        // (spans) and 1 s (logs).
        let env: &[(&str, &str)] = if metrics_endpoint.is_some() || observability_endpoint.is_some()
        {
            &[
                ("OTEL_METRIC_EXPORT_INTERVAL", "200"),
                ("OTEL_BSP_SCHEDULE_DELAY", "200"),
                ("OTEL_BLRP_SCHEDULE_DELAY", "200"),
            ]
        } else {
            &[]
        };
        let binary = binary.unwrap_or_else(crate::provider_binary);
        let (child, logs) = spawn_provider_with(&binary, line.as_bytes(), rust_log.as_deref(), env);

        Self {
            key: key.clone(),
            host_id,
            logs,
            link_put_id: provider_xkey.public_key(),
            provider_xkey_public,
            host_xkey: nkeys::XKey::from_seed(&lattice.host_xkey.seed().expect("seed"))
                .expect("host xkey"),
            lattice: lattice.name.clone(),
            client: lattice.client.clone(),
            child,
        }
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

    /// Asks for health until `pred(healthy, message)` holds, for up to
    /// `within`; returns that answer.
    pub async fn wait_for_health(
        &self,
        what: &str,
        within: Duration,
        pred: impl Fn(bool, &str) -> bool,
    ) -> (bool, String) {
        let deadline = Instant::now() + within;
        loop {
            if let Ok((healthy, message)) = self.health().await {
                if pred(healthy, &message) {
                    return (healthy, message);
                }
            }
            assert!(
                Instant::now() < deadline,
                "health never showed {what} within {within:?}; output:\n{}",
                self.logs.lines().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until health says healthy (every link running, its connection
    /// up), and returns health's message.
    pub async fn wait_healthy(&self, within: Duration) -> String {
        self.wait_for_health("healthy", within, |healthy, _| healthy)
            .await
            .1
    }

    /// Puts a link and waits until the provider has taken it (or refused it).
    pub async fn put_link(&self, link: &Link) -> String {
        let from = self.logs.line_count();
        self.send_link_put(link).await;
        let marker = link.log_marker();
        self.logs
            .wait_for(from, "confirming the link", |line| {
                (line.contains("link ready") && line.contains(&marker))
                    || line.contains("link rejected")
            })
            .await
    }

    /// Sends a link put as the host does, without waiting for the provider.
    pub async fn send_link_put(&self, link: &Link) {
        let ld = link.definition(self);
        let subject = format!(
            "wasmbus.rpc.{}.{}.linkdefs.put",
            self.lattice, self.link_put_id
        );
        self.client
            .publish(subject, serde_json::to_vec(&ld).expect("link json").into())
            .await
            .expect("publish link put");
    }

    /// Deletes a link and waits until it is gone: a handler link drained
    /// and stopped (its subscriptions and pulls withdrawn), a consumer link
    /// removed.
    pub async fn delete_link(&self, link: &Link) {
        let from = self.logs.line_count();
        self.start_link_delete(link).await;
        let gone = match link.direction {
            Direction::Handler => "handler link stopped",
            Direction::Consumer => "consumer link deleted",
        };
        let marker = link.log_marker();
        self.logs
            .wait_for(from, "the link gone", |l| {
                l.contains(gone) && l.contains(&marker)
            })
            .await;
    }

    /// Sends a link delete as the host does, without waiting for the
    /// provider.
    pub async fn send_link_delete(&self, link: &Link) {
        let ld = link.definition(self);
        let subject = format!("wasmbus.rpc.{}.{}.linkdefs.del", self.lattice, self.key);
        self.client
            .publish(subject, serde_json::to_vec(&ld).expect("link json").into())
            .await
            .expect("publish link del");
    }

    /// Deletes a link and waits only until the provider has taken the
    /// delete: a handler link may still be draining.
    pub async fn start_link_delete(&self, link: &Link) {
        let from = self.logs.line_count();
        self.send_link_delete(link).await;
        let marker = link.log_marker();
        self.logs
            .wait_for(from, "confirming the delete", |l| {
                l.contains("link deleted") && l.contains(&marker)
            })
            .await;
    }

    /// Sends a provider config update, as the host does when named config
    /// of the provider changes, and waits until it is applied.
    pub async fn update_config(&self, config: &[(&str, &str)]) {
        let from = self.logs.line_count();
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
        self.request_shutdown().await;
        self.wait_exit().await
    }

    /// Sends the host's shutdown request; returns the provider's answer, or
    /// `None` if none came within the wait.
    pub async fn request_shutdown(&self) -> Option<String> {
        let subject = format!("wasmbus.rpc.{}.{}.default.shutdown", self.lattice, self.key);
        let body = serde_json::json!({ "host_id": self.host_id }).to_string();
        match tokio::time::timeout(WAIT, self.client.request(subject, body.into())).await {
            Ok(Ok(answer)) => Some(String::from_utf8_lossy(&answer.payload).into_owned()),
            _ => None,
        }
    }

    /// Resident memory of the process, in KiB (from /proc).
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.child.id()).expect("provider VmRSS in /proc")
    }

    /// Sends a signal to the process without waiting.
    pub fn send_signal(&self, signal: &str) {
        Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
    }

    /// Sends a signal to the process and waits for it to exit.
    pub async fn signal(mut self, signal: &str) -> ExitStatus {
        self.send_signal(signal);
        self.wait_exit().await
    }

    /// Waits for the process to exit (within the wait).
    pub async fn wait_exit(&mut self) -> ExitStatus {
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
    spawn_provider_with(&crate::provider_binary(), stdin, rust_log, &[])
}

/// [`spawn_provider`] with more environment variables.
fn spawn_provider_with(
    binary: &std::path::Path,
    stdin: &[u8],
    rust_log: Option<&str>,
    env: &[(&str, &str)],
) -> (Child, Logs) {
    let mut command = crate::provider_command(binary);
    if let Some(filter) = rust_log {
        command.env("RUST_LOG", filter);
    }
    command.envs(env.iter().copied());
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
        logs.open.fetch_add(1, Ordering::SeqCst);
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                logs.push(line);
            }
            logs.open.fetch_sub(1, Ordering::SeqCst);
        });
    }
    (child, logs)
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failing test shows what the provider said: its last lines are
        // what a CI log needs to tell a slow start from a lost message.
        if std::thread::panicking() {
            let lines = self.logs.lines();
            let from = lines.len().saturating_sub(PANIC_LOG_LINES);
            eprintln!(
                "--- provider {}: last {} lines of its output ---",
                self.key,
                lines.len() - from
            );
            for line in &lines[from..] {
                eprintln!("{line}");
            }
        }
    }
}

/// Resident memory of process `pid`, in KiB (`VmRSS` in its /proc
/// status), or `None` if it cannot be read.
pub fn rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// How many of the provider's last lines a failing test prints.
const PANIC_LOG_LINES: usize = 200;

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

    /// How the provider's log lines name the link.
    fn log_marker(&self) -> String {
        format!("link={}/{}", self.component, self.name)
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
        self.definition_with(
            &provider.key,
            &provider.host_xkey,
            &provider.provider_xkey_public,
        )
    }

    /// The link definition as the host sends it, secrets sealed for the
    /// provider.
    fn definition_with(
        &self,
        provider_key: &str,
        host_xkey: &nkeys::XKey,
        provider_xkey_public: &nkeys::XKey,
    ) -> InterfaceLinkDefinition {
        let sealed = (!self.secrets.is_empty()).then(|| {
            let json = serde_json::to_vec(&self.secrets).expect("secrets json");
            host_xkey
                .seal(&json, provider_xkey_public)
                .expect("seal secrets")
        });
        let (source_id, target) = match self.direction {
            Direction::Handler => (provider_key.to_string(), self.component.clone()),
            Direction::Consumer => (self.component.clone(), provider_key.to_string()),
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
