//! Provider glue: the host's link, health and shutdown calls, and the
//! `consumer` export that components call over wRPC.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};
use wasmcloud_provider_sdk::{
    get_connection, Context, HealthCheckRequest, HealthCheckResponse, LinkConfig, LinkDeleteInfo,
    Provider, ProviderConfigUpdate, ProviderInitConfig,
};

use crate::bindings::exports::wasmcloud::messaging::consumer;
use crate::config::{LinkRole, LinkSettings, ProviderDefaults};
use crate::connection::{ConnectionPool, NatsConnection};
use crate::consumer::{BrokerMessage, ConsumerError, ConsumerLink};
use crate::delivery::{Deliveries, Target};
use crate::metrics::{LinkMetrics, Operation};
use crate::trace_context;

const WIT_NAMESPACE: &str = "wasmcloud";
const WIT_PACKAGE: &str = "messaging";

/// A link as the provider tells it apart: the component at its other end
/// and its name.
#[derive(Clone, PartialEq, Eq, Hash)]
struct LinkKey {
    component_id: String,
    link_name: String,
}

impl fmt::Display for LinkKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.component_id, self.link_name)
    }
}

/// The messaging provider. Cheap to clone: clones share one state.
#[derive(Clone)]
pub struct MessagingProvider {
    state: Arc<State>,
}

impl Default for MessagingProvider {
    fn default() -> Self {
        let tasks = TaskTracker::new();
        Self {
            state: Arc::new(State {
                defaults: RwLock::default(),
                pool: ConnectionPool::new(tasks.clone()),
                tasks,
                handlers: Mutex::default(),
                consumers: RwLock::default(),
                host_shutdown_done: CancellationToken::new(),
            }),
        }
    }
}

struct State {
    defaults: RwLock<ProviderDefaults>,
    pool: ConnectionPool,
    /// Link stops, drains and connection closes run here, outside the SDK's
    /// command loop; shutdown waits for them.
    tasks: TaskTracker,
    /// Held across a link's start, so that changes to one handler link never
    /// interleave. Every await under it is bounded by the link's
    /// `connect_timeout_ms`.
    handlers: Mutex<HashMap<LinkKey, Deliveries>>,
    consumers: RwLock<HashMap<LinkKey, Arc<ConsumerLink>>>,
    /// Cancelled once the host's shutdown call has drained everything.
    host_shutdown_done: CancellationToken,
}

/// The longest shutdown waits for links to drain and connections to close:
/// the largest accepted `drain_timeout_ms`, then the close of connections.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(65);

impl MessagingProvider {
    /// Stops every link: handler links drain (concurrently, each within its
    /// drain timeout), consumer links go, and connections close; returns
    /// once all of that is done or after [`SHUTDOWN_TIMEOUT`].
    pub async fn shutdown_now(&self) {
        let handlers: Vec<_> = self.state.handlers.lock().await.drain().collect();
        for (_, link) in handlers {
            self.state.tasks.spawn(link.stop());
        }
        self.write_consumers().clear();
        self.state.tasks.close();
        if tokio::time::timeout(SHUTDOWN_TIMEOUT, self.state.tasks.wait())
            .await
            .is_err()
        {
            warn!(
                running = self.state.tasks.len(),
                "links and connections still closing after the shutdown timeout"
            );
        }
        info!("all links stopped");
    }

    /// Resolves once the host's shutdown call has been handled (the links
    /// drained); the SDK answers the host right after.
    pub async fn host_shutdown_done(&self) {
        self.state.host_shutdown_done.cancelled().await;
    }

    // The std locks below are never held across an await or a panic-prone
    // call; a poisoned one still holds consistent data, so it is used as is.

    fn defaults(&self) -> ProviderDefaults {
        let defaults = self.state.defaults.read();
        defaults.unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn write_defaults(&self) -> RwLockWriteGuard<'_, ProviderDefaults> {
        let defaults = self.state.defaults.write();
        defaults.unwrap_or_else(PoisonError::into_inner)
    }

    fn read_consumers(&self) -> RwLockReadGuard<'_, HashMap<LinkKey, Arc<ConsumerLink>>> {
        let consumers = self.state.consumers.read();
        consumers.unwrap_or_else(PoisonError::into_inner)
    }

    fn write_consumers(&self) -> RwLockWriteGuard<'_, HashMap<LinkKey, Arc<ConsumerLink>>> {
        let consumers = self.state.consumers.write();
        consumers.unwrap_or_else(PoisonError::into_inner)
    }

    /// Parses a link's settings, naming the link in the error.
    fn link_settings(
        &self,
        role: LinkRole,
        link: &LinkConfig<'_>,
        key: &LinkKey,
    ) -> anyhow::Result<LinkSettings> {
        self.defaults()
            .settings_for(role, link.config, link.secrets)
            .map_err(|err| anyhow!("link {key} rejected: {err}"))
    }

    /// The consumer link of the calling component, under the link name it
    /// called with; calls from components without one are refused.
    fn consumer_link(&self, cx: Option<&Context>) -> Result<Arc<ConsumerLink>, String> {
        let component_id = cx
            .and_then(|cx| cx.component.as_deref())
            .filter(|id| !id.is_empty() && *id != "<unknown>")
            .ok_or("invocation carries no source component id; refused")?;
        let link_name = cx.map_or("default", Context::link_name);
        let key = LinkKey {
            component_id: component_id.to_string(),
            link_name: link_name.to_string(),
        };
        self.read_consumers().get(&key).cloned().ok_or_else(|| {
            format!(
                "component {component_id:?} has no {WIT_NAMESPACE}:{WIT_PACKAGE}/consumer link \
                 named {link_name:?} to this provider"
            )
        })
    }

    /// Starts a handler link. A link that replaces another starts first; the
    /// old one drains in the background only once the new one runs, and
    /// stays if the new one fails.
    async fn start_handler_link(&self, link: LinkConfig<'_>) -> anyhow::Result<()> {
        let key = LinkKey {
            component_id: link.target_id.to_string(),
            link_name: link.link_name.to_string(),
        };
        check_interface(&link, "handler")?;
        let settings = self.link_settings(LinkRole::Handler, &link, &key)?;
        if settings.handler.subscriptions.is_empty() && !settings.handler.durable.is_enabled() {
            warn!(link = %key, "handler link has no subscriptions and no stream; it will deliver nothing");
        }

        let mut handlers = self.state.handlers.lock().await;
        let connection = self.state.pool.acquire(&settings.connection).await?;
        // Subscribes on the lattice's NATS, which may be unreachable too.
        let wrpc = tokio::time::timeout(
            settings.connection.connect_timeout,
            get_connection()
                .get_wrpc_client_custom(&key.component_id, Some(settings.handler.handler_timeout)),
        )
        .await
        .map_err(|_| anyhow!("link {key} rejected: the lattice's NATS did not take the wRPC client's subscription in time"))?
        .with_context(|| format!("link {key} rejected: cannot create the wRPC client"))?;
        let target = Target {
            component_id: key.component_id.as_str().into(),
            link_name: key.link_name.as_str().into(),
            wrpc,
            metrics: Arc::new(LinkMetrics::new(&key.component_id, &key.link_name)),
        };
        let subscriptions = settings
            .handler
            .subscriptions
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let durable = settings
            .handler
            .durable
            .sources
            .iter()
            .map(|source| source.stream.as_str())
            .collect::<Vec<_>>()
            .join(",");
        let servers = connection.servers.clone();
        let deliveries = Deliveries::start(
            connection,
            settings.handler,
            settings.connection.connect_timeout,
            target,
        )
        .await
        .with_context(|| format!("link {key} rejected"))?;
        info!(link = %key, subscriptions, streams = durable, servers, "handler link ready");
        if let Some(old) = handlers.insert(key.clone(), deliveries) {
            info!(link = %key, "replaced handler link draining");
            self.state.tasks.spawn(old.stop());
        }
        Ok(())
    }

    async fn start_consumer_link(&self, link: LinkConfig<'_>) -> anyhow::Result<()> {
        let key = LinkKey {
            component_id: link.source_id.to_string(),
            link_name: link.link_name.to_string(),
        };
        check_interface(&link, "consumer")?;
        let settings = self.link_settings(LinkRole::Consumer, &link, &key)?;
        let connection = self.state.pool.acquire(&settings.connection).await?;
        let servers = connection.servers.clone();
        let consumer = Arc::new(ConsumerLink {
            connection,
            settings: settings.consumer,
            metrics: LinkMetrics::new(&key.component_id, &key.link_name),
        });
        // The replaced link's connection lease goes with it.
        self.write_consumers().insert(key.clone(), consumer);
        info!(link = %key, servers, "consumer link ready");
        Ok(())
    }
}

/// Refuses a link that is not for `wasmcloud:messaging/<interface>`.
fn check_interface(link: &LinkConfig<'_>, interface: &str) -> anyhow::Result<()> {
    let (namespace, package, interfaces) = link.wit_metadata;
    if namespace != WIT_NAMESPACE
        || package != WIT_PACKAGE
        || !interfaces.iter().any(|i| i == interface)
    {
        bail!(
            "link {} -> {} is for {namespace}:{package}/{{{}}}; this provider serves only \
             {WIT_NAMESPACE}:{WIT_PACKAGE}/{interface} in this direction",
            link.source_id,
            link.target_id,
            interfaces.join(",")
        );
    }
    Ok(())
}

/// A link's connection problem, for health.
fn connection_problem(kind: &str, key: &LinkKey, connection: &NatsConnection) -> Option<String> {
    (!connection.is_connected()).then(|| {
        format!(
            "{kind} link {key}: NATS at {} is {}",
            connection.servers,
            connection.state()
        )
    })
}

/// Logs a rejected link with its reason; the SDK only logs that it failed.
fn log_rejection(result: anyhow::Result<()>) -> anyhow::Result<()> {
    if let Err(err) = &result {
        error!(error = %format!("{err:#}"), "link rejected");
    }
    result
}

impl Provider for MessagingProvider {
    async fn init(&self, init: impl ProviderInitConfig) -> anyhow::Result<()> {
        let mut defaults = ProviderDefaults::new(init.get_config(), init.get_secrets());
        if let Ok(host) = wasmcloud_provider_sdk::provider::load_host_data() {
            defaults = defaults.with_lattice_url(&host.lattice_rpc_url);
        }
        if let Err(err) = defaults.check() {
            error!(error = %err, "provider config is invalid; links that do not override it will be rejected");
        }
        *self.write_defaults() = defaults;
        Ok(())
    }

    async fn on_config_update(&self, update: impl ProviderConfigUpdate) -> anyhow::Result<()> {
        let mut defaults = self.write_defaults();
        // Secrets are not part of an update: the provider's secrets stay.
        defaults.update_config(update.get_values());
        if let Err(err) = defaults.check() {
            error!(error = %err, "updated provider config is invalid");
        }
        drop(defaults);
        info!("provider config updated; it applies to links put from now on");
        Ok(())
    }

    async fn receive_link_config_as_source(&self, link: LinkConfig<'_>) -> anyhow::Result<()> {
        log_rejection(self.start_handler_link(link).await)
    }

    async fn receive_link_config_as_target(&self, link: LinkConfig<'_>) -> anyhow::Result<()> {
        log_rejection(self.start_consumer_link(link).await)
    }

    async fn delete_link_as_source(&self, info: impl LinkDeleteInfo) -> anyhow::Result<()> {
        let key = LinkKey {
            component_id: info.get_target_id().to_string(),
            link_name: info.get_link_name().to_string(),
        };
        let removed = self.state.handlers.lock().await.remove(&key);
        if let Some(link) = removed {
            // Drains in the background: the host's other calls are not held
            // up for up to the link's drain timeout.
            self.state.tasks.spawn(link.stop());
            info!(link = %key, "handler link deleted");
        }
        Ok(())
    }

    async fn delete_link_as_target(&self, info: impl LinkDeleteInfo) -> anyhow::Result<()> {
        let key = LinkKey {
            component_id: info.get_source_id().to_string(),
            link_name: info.get_link_name().to_string(),
        };
        if self.write_consumers().remove(&key).is_some() {
            info!(link = %key, "consumer link deleted");
        }
        Ok(())
    }

    /// Reads state only; never waits on a NATS server.
    async fn health_request(&self, _: &HealthCheckRequest) -> anyhow::Result<HealthCheckResponse> {
        let handlers = self.state.handlers.lock().await;
        let consumers = self.read_consumers();
        let mut problems = Vec::new();
        for (key, link) in handlers.iter() {
            problems.extend(connection_problem("handler", key, &link.connection));
            let subjects = link.subscriptions.iter().map(|s| s.subject.as_str());
            for subject in link.connection.refused(subjects) {
                problems.push(format!(
                    "handler link {key}: NATS server refused the subscription to {subject:?} \
                     (permissions violation)"
                ));
            }
            for problem in link.status.problems() {
                problems.push(format!("handler link {key}: {problem}"));
            }
            if !link.status.subscribed.load(Ordering::Relaxed) {
                problems.push(format!(
                    "handler link {key}: no open subscription (waiting for a new NATS connection)"
                ));
            }
        }
        for (key, link) in consumers.iter() {
            problems.extend(connection_problem("consumer", key, &link.connection));
        }
        let counts = format!(
            "{} handler links, {} consumer links",
            handlers.len(),
            consumers.len()
        );
        Ok(if problems.is_empty() {
            HealthCheckResponse {
                healthy: true,
                message: Some(format!("{counts}; all NATS connections up")),
            }
        } else {
            HealthCheckResponse {
                healthy: false,
                message: Some(format!("{counts}; {}", problems.join("; "))),
            }
        })
    }

    async fn shutdown(&self) -> anyhow::Result<()> {
        info!("shutdown requested by the host, draining");
        self.shutdown_now().await;
        self.state.host_shutdown_done.cancel();
        Ok(())
    }
}

impl consumer::Handler<Option<Context>> for MessagingProvider {
    async fn publish(
        &self,
        cx: Option<Context>,
        msg: BrokerMessage,
    ) -> anyhow::Result<Result<(), String>> {
        let link = match self.consumer_link(cx.as_ref()) {
            Ok(link) => link,
            Err(refusal) => return Ok(Err(refusal)),
        };
        let headers = match trace_context::from_invocation(cx.as_ref()) {
            Ok(headers) => headers,
            Err(reason) => return Ok(Err(ConsumerError::InvalidHeader(reason).to_string())),
        };
        let started = std::time::Instant::now();
        let result = link.publish(msg, headers).await;
        link.metrics
            .sent(Operation::Publish, started.elapsed(), result.is_ok());
        Ok(result.map_err(|err| {
            debug!(error = %err, "publish failed");
            err.to_string()
        }))
    }

    async fn request(
        &self,
        cx: Option<Context>,
        subject: String,
        body: Bytes,
        timeout_ms: u32,
    ) -> anyhow::Result<Result<BrokerMessage, String>> {
        let link = match self.consumer_link(cx.as_ref()) {
            Ok(link) => link,
            Err(refusal) => return Ok(Err(refusal)),
        };
        let headers = match trace_context::from_invocation(cx.as_ref()) {
            Ok(headers) => headers,
            Err(reason) => return Ok(Err(ConsumerError::InvalidHeader(reason).to_string())),
        };
        let started = std::time::Instant::now();
        let result = link.request(subject, body, timeout_ms, headers).await;
        link.metrics
            .sent(Operation::Request, started.elapsed(), result.is_ok());
        Ok(result.map_err(|err| {
            debug!(error = %err, "request failed");
            err.to_string()
        }))
    }
}
