//! An embedded wasmCloud host (the library of host v1.9.2) plus the control
//! interface calls the tests make on it.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use nkeys::KeyPair;
use wasmcloud_control_interface::{
    Client as CtlClient, ClientBuilder, CtlResponse, HostInventory, Link,
};
use wasmcloud_host::url::Url;
use wasmcloud_host::wasmbus::{Host as WasmbusHost, HostConfig};

/// WIT namespace and package of every link made here.
pub const WIT_NAMESPACE: &str = "wasmcloud";
/// See [`WIT_NAMESPACE`].
pub const WIT_PACKAGE: &str = "messaging";
/// The link name components use unless told otherwise.
pub const DEFAULT_LINK_NAME: &str = "default";

/// How long the host waits for a provider to answer a shutdown request before
/// killing it; the `wasmcloud` binary's default.
pub const PROVIDER_SHUTDOWN_DELAY: Duration = Duration::from_millis(300);

/// Time allowed for control interface requests.
const CTL_TIMEOUT: Duration = Duration::from_secs(10);

/// Time allowed for the host's own shutdown once its providers are stopped.
const HOST_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(20);

/// Time allowed for a provider or component to come up.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The host's shutdown future, returned by its constructor.
type Shutdown = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// The host's start-up future, boxed (see [`start_host`]).
type Starting = Pin<Box<dyn Future<Output = Result<(Arc<WasmbusHost>, Shutdown)>> + Send>>;

/// A wasmCloud host running in this process on a fresh lattice, with a
/// control interface client for that lattice.
///
/// Stop it with [`Host::stop`], the in-process equivalent of sending SIGINT to
/// the `wasmcloud` binary. Dropping it instead kills what it started.
pub struct Host {
    host: Option<Arc<WasmbusHost>>,
    shutdown: Option<Shutdown>,
    ctl: CtlClient,
    nats: async_nats::Client,
    lattice: String,
    id: String,
}

impl Host {
    /// Starts a host whose control and RPC connections go to `nats_url`, on a
    /// lattice named for this run only.
    pub async fn start(nats_url: &str) -> Result<Self> {
        Self::start_on(nats_url, &new_lattice_name()).await
    }

    /// Starts a host for `lattice` (see [`new_lattice_name`]).
    pub async fn start_on(nats_url: &str, lattice: &str) -> Result<Self> {
        // The host caches provider executables under the temp dir; an empty
        // TMPDIR would put them in the current folder.
        let temp_dir = std::env::temp_dir();
        if !temp_dir.is_absolute() {
            bail!("TMPDIR must be an absolute path, not {temp_dir:?}");
        }
        let url = Url::parse(nats_url).with_context(|| format!("invalid NATS URL {nats_url}"))?;
        let lattice = lattice.to_string();
        let host_key = Arc::new(KeyPair::new_server());
        let id = host_key.public_key();
        let config = HostConfig {
            ctl_nats_url: url.clone(),
            rpc_nats_url: url,
            lattice: lattice.as_str().into(),
            host_key: Some(host_key),
            allow_file_load: true,
            provider_shutdown_delay: Some(PROVIDER_SHUTDOWN_DELAY),
            ..HostConfig::default()
        };
        let (host, shutdown) = start_host(config)
            .await
            .context("failed to start wasmCloud host")?;
        let nats = async_nats::connect(nats_url)
            .await
            .with_context(|| format!("failed to connect to {nats_url}"))?;
        let ctl = ClientBuilder::new(nats.clone())
            .lattice(&lattice)
            .timeout(CTL_TIMEOUT)
            .build();
        Ok(Self {
            host: Some(host),
            shutdown: Some(shutdown),
            ctl,
            nats,
            lattice,
            id,
        })
    }

    /// The host's id (its public server key).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The lattice this host serves.
    pub fn lattice(&self) -> &str {
        &self.lattice
    }

    /// The control interface client of the lattice.
    pub fn ctl(&self) -> &CtlClient {
        &self.ctl
    }

    /// The NATS connection the control client uses.
    pub fn nats(&self) -> &async_nats::Client {
        &self.nats
    }

    /// Stores named config in the lattice.
    pub async fn put_config(&self, name: &str, values: &[(&str, &str)]) -> Result<()> {
        let values: HashMap<String, String> = values
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let response = self
            .ctl
            .put_config(name, values)
            .await
            .map_err(|e| anyhow!(e))?;
        succeeded(response, "put config")
    }

    /// Runs the component at `wasm` under `component_id` and waits until the
    /// host lists it.
    pub async fn scale_component(
        &self,
        component_id: &str,
        wasm: &Path,
        max_instances: u32,
    ) -> Result<()> {
        let reference = file_reference(wasm)?;
        let response = self
            .ctl
            .scale_component(
                &self.id,
                &reference,
                component_id,
                max_instances,
                None,
                Vec::new(),
                false,
            )
            .await
            .map_err(|e| anyhow!(e))?;
        succeeded(response, "scale component")?;
        self.wait_until(&format!("component {component_id} to run"), |inventory| {
            inventory
                .components()
                .iter()
                .any(|c| c.id() == component_id)
        })
        .await
    }

    /// Starts the provider archive at `par` under `provider_id` with the named
    /// `config`, and waits until the provider answers health checks.
    pub async fn start_provider(
        &self,
        provider_id: &str,
        par: &Path,
        config: &[&str],
    ) -> Result<()> {
        self.request_provider_start(provider_id, par, config)
            .await?;
        self.wait_until(&format!("provider {provider_id} to run"), |inventory| {
            inventory.providers().iter().any(|p| p.id() == provider_id)
        })
        .await?;
        self.wait_provider_healthy(provider_id).await
    }

    /// Asks the host to start the provider archive at `par` under
    /// `provider_id` with the named `config`; the host answers before the
    /// provider runs.
    pub async fn request_provider_start(
        &self,
        provider_id: &str,
        par: &Path,
        config: &[&str],
    ) -> Result<()> {
        let reference = file_reference(par)?;
        let config = config.iter().map(|c| (*c).to_owned()).collect();
        let response = self
            .ctl
            .start_provider(&self.id, &reference, provider_id, None, config)
            .await
            .map_err(|e| anyhow!(e))?;
        succeeded(response, "start provider")
    }

    /// Waits until the provider answers a health request on the lattice, which
    /// it does once its control subscriptions are in place.
    pub async fn wait_provider_healthy(&self, provider_id: &str) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        while self.provider_health(provider_id).await.is_err() {
            if Instant::now() > deadline {
                bail!("provider {provider_id} did not answer health requests within {READY_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// The provider's answer to a health request: healthy, and its message.
    pub async fn provider_health(&self, provider_id: &str) -> Result<(bool, String)> {
        let subject = format!("wasmbus.rpc.{}.{provider_id}.health", self.lattice);
        let answer = tokio::time::timeout(
            Duration::from_millis(500),
            self.nats.request(subject, bytes::Bytes::new()),
        )
        .await
        .context("no health answer within 500 ms")??;
        let health: serde_json::Value = serde_json::from_slice(&answer.payload)?;
        Ok((
            health["healthy"].as_bool().unwrap_or(false),
            health["message"].as_str().unwrap_or_default().to_owned(),
        ))
    }

    /// Stops a provider through the host. The host asks the provider to shut
    /// down, waits up to [`PROVIDER_SHUTDOWN_DELAY`] for its answer, then
    /// kills the process if it still runs.
    pub async fn stop_provider(&self, provider_id: &str) -> Result<()> {
        let response = self
            .ctl
            .stop_provider(&self.id, provider_id)
            .await
            .map_err(|e| anyhow!(e))?;
        succeeded(response, "stop provider")
    }

    /// Runs a messaging component from `wasm` as `component_id` and links it
    /// with `provider_id` both ways: a handler link named `handler_link_name`
    /// whose source config subscribes the component to `subscriptions`, and a
    /// consumer link named [`DEFAULT_LINK_NAME`], the name a component sends
    /// under unless it picks another.
    pub async fn deploy_messaging_component(
        &self,
        component_id: &str,
        wasm: &Path,
        provider_id: &str,
        handler_link_name: &str,
        subscriptions: &str,
    ) -> Result<()> {
        let config = format!("{component_id}-subscriptions");
        self.put_config(&config, &[("subscriptions", subscriptions)])
            .await?;
        self.scale_component(component_id, wasm, 100).await?;
        self.put_link(consumer_link(component_id, provider_id, DEFAULT_LINK_NAME)?)
            .await?;
        self.put_link(handler_link(
            provider_id,
            component_id,
            handler_link_name,
            &[&config],
        )?)
        .await
    }

    /// Puts a link into the lattice.
    pub async fn put_link(&self, link: Link) -> Result<()> {
        let response = self.ctl.put_link(link).await.map_err(|e| anyhow!(e))?;
        succeeded(response, "put link")
    }

    /// Deletes the `wasmcloud:messaging` link named `link_name` from `source_id`.
    pub async fn delete_link(&self, source_id: &str, link_name: &str) -> Result<()> {
        let response = self
            .ctl
            .delete_link(source_id, link_name, WIT_NAMESPACE, WIT_PACKAGE)
            .await
            .map_err(|e| anyhow!(e))?;
        succeeded(response, "delete link")
    }

    /// The links the lattice holds.
    pub async fn links(&self) -> Result<Vec<Link>> {
        let response = self.ctl.get_links().await.map_err(|e| anyhow!(e))?;
        if !response.succeeded() {
            bail!("get links failed: {}", response.message());
        }
        Ok(response.into_data().unwrap_or_default())
    }

    /// What the host runs now.
    pub async fn inventory(&self) -> Result<HostInventory> {
        let response = self
            .ctl
            .get_host_inventory(&self.id)
            .await
            .map_err(|e| anyhow!(e))?;
        if !response.succeeded() {
            bail!("get host inventory failed: {}", response.message());
        }
        response
            .into_data()
            .context("host inventory response without data")
    }

    async fn wait_until(&self, what: &str, done: impl Fn(&HostInventory) -> bool) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if done(&self.inventory().await?) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("timed out after {READY_TIMEOUT:?} waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Process ids of the provider executables this host runs: the host runs
    /// them from its own cache folder under the temp dir.
    pub fn provider_processes(&self) -> Vec<u32> {
        processes_running_from(&self.cache_dir())
    }

    fn cache_dir(&self) -> PathBuf {
        std::env::temp_dir().join("wasmcloudcache").join(&self.id)
    }

    /// Stops the host as the `wasmcloud` binary does on SIGINT, but gently:
    /// first each provider through the control interface (so that it gets its
    /// shutdown request), then the host's own tasks, which publish
    /// `host_stopped`; then drops the host.
    pub async fn stop(mut self) -> Result<()> {
        let inventory = self.inventory().await?;
        for provider in inventory.providers() {
            self.stop_provider(provider.id()).await?;
        }
        if let Some(shutdown) = self.shutdown.take() {
            // The host's shutdown future waits for every control message
            // still being handled; seen once to hang in CI. Bounded, and
            // said, so that a test ends either way; dropping the host then
            // kills what it started (the lifecycle test checks that
            // `host_stopped` is published).
            match tokio::time::timeout(HOST_SHUTDOWN_TIMEOUT, shutdown).await {
                Ok(result) => result.context("host shutdown failed")?,
                Err(_) => eprintln!(
                    "warning: the host's shutdown did not finish within {HOST_SHUTDOWN_TIMEOUT:?}; \
                     dropping it"
                ),
            }
        }
        self.host.take();
        Ok(())
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // Dropping the host drops its provider handles, which kill the
        // processes; this also catches any process that outlived its handle.
        self.host.take();
        for pid in self.provider_processes() {
            kill(pid);
        }
        let _ = std::fs::remove_dir_all(self.cache_dir());
    }
}

/// Starts the host behind a boxed future. The host's start-up future is
/// large; boxed in a plain function, it is compiled once in this crate
/// instead of once in every test and binary that starts a host.
#[inline(never)]
fn start_host(config: HostConfig) -> Starting {
    Box::pin(async move {
        let (host, shutdown) = WasmbusHost::new(config).await?;
        Ok((host, Box::pin(shutdown) as Shutdown))
    })
}

/// A lattice name that no other run on this machine uses.
pub fn new_lattice_name() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "e2e-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A `file://` reference to `path`, which the host accepts with file loading allowed.
fn file_reference(path: &Path) -> Result<String> {
    let path = path
        .canonicalize()
        .with_context(|| format!("{} not found", path.display()))?;
    Ok(format!("file://{}", path.display()))
}

fn succeeded(response: CtlResponse<()>, what: &str) -> Result<()> {
    if response.succeeded() {
        Ok(())
    } else {
        bail!("{what} failed: {}", response.message())
    }
}

/// Live processes whose executable lies under `dir`.
pub fn processes_running_from(dir: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe.starts_with(dir))
        })
        .filter(|pid| process_alive(*pid))
        .collect()
}

/// Whether `pid` names a process that has not terminated (a zombie has).
pub fn process_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name, which is in parentheses and may
    // itself contain spaces or parentheses.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_some_and(|state| !matches!(state, "Z" | "X" | "x"))
}

fn kill(pid: u32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
}

/// The link over which the provider delivers messages to a component
/// (`wasmcloud:messaging/handler`), with the provider's settings for it
/// (e.g. `subscriptions`) in the named `source_config`.
pub fn handler_link(
    provider_id: &str,
    component_id: &str,
    link_name: &str,
    source_config: &[&str],
) -> Result<Link> {
    Link::builder()
        .source_id(provider_id)
        .target(component_id)
        .name(link_name)
        .wit_namespace(WIT_NAMESPACE)
        .wit_package(WIT_PACKAGE)
        .interfaces(vec!["handler".to_owned()])
        .source_config(source_config.iter().map(|c| (*c).to_owned()).collect())
        .build()
        .map_err(|e| anyhow!(e))
}

/// The link over which a component sends through the provider
/// (`wasmcloud:messaging/consumer`).
pub fn consumer_link(component_id: &str, provider_id: &str, link_name: &str) -> Result<Link> {
    Link::builder()
        .source_id(component_id)
        .target(provider_id)
        .name(link_name)
        .wit_namespace(WIT_NAMESPACE)
        .wit_package(WIT_PACKAGE)
        .interfaces(vec!["consumer".to_owned()])
        .build()
        .map_err(|e| anyhow!(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive() {
        assert!(process_alive(std::process::id()));
    }

    #[test]
    fn lattice_names_differ() {
        assert_ne!(new_lattice_name(), new_lattice_name());
    }

    #[test]
    fn finds_processes_by_executable_folder() {
        let exe = std::env::current_exe().unwrap();
        let dir = exe.parent().unwrap();
        assert!(processes_running_from(dir).contains(&std::process::id()));
    }
}
