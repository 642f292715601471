//! Provider glue: the host's link, health and shutdown calls, and the
//! `consumer` export that components call over wRPC.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;
use futures::future::join_all;
use tokio::sync::Mutex;
use tracing::{debug, error, info, warn};
use wasmcloud_provider_sdk::{
    get_connection, Context, HealthCheckRequest, HealthCheckResponse, LinkConfig, LinkDeleteInfo,
    Provider, ProviderConfigUpdate, ProviderInitConfig,
};

use crate::bindings::exports::wasmcloud::messaging::consumer;
use crate::config::{ConnectionSettings, LinkSettings, ProviderDefaults};
use crate::connection::{ConnectionPool, NatsConnection};
use crate::consumer::{BrokerMessage, ConsumerError, ConsumerLink};
use crate::delivery::{Deliveries, Target};
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

/// A handler link (provider -> component) in service.
struct HandlerLink {
    deliveries: Deliveries,
    connection: Arc<NatsConnection>,
    connection_settings: ConnectionSettings,
}

/// The messaging provider. Cheap to clone: clones share one state.
#[derive(Clone, Default)]
pub struct MessagingProvider {
    state: Arc<State>,
}

#[derive(Default)]
struct State {
    defaults: RwLock<ProviderDefaults>,
    pool: ConnectionPool,
    /// Held across a link's start and stop, so that changes to one handler
    /// link never interleave.
    handlers: Mutex<HashMap<LinkKey, HandlerLink>>,
    consumers: RwLock<HashMap<LinkKey, Arc<ConsumerLink>>>,
}

impl MessagingProvider {
    /// Stops every link: handler links drain (concurrently, each within its
    /// drain timeout), then all connections are closed.
    pub async fn shutdown_now(&self) {
        let handlers: Vec<_> = self.state.handlers.lock().await.drain().collect();
        join_all(handlers.into_iter().map(|(_, link)| link.deliveries.stop())).await;
        self.write_consumers().clear();
        self.state.pool.close_all().await;
        info!("all links stopped");
    }

    // The std locks below are never held across an await or a panic-prone
    // call; a poisoned one still holds consistent data, so it is used as is.

    fn defaults(&self) -> ProviderDefaults {
        let defaults = self.state.defaults.read();
        defaults.unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn set_defaults(&self, defaults: ProviderDefaults) {
        let current = self.state.defaults.write();
        *current.unwrap_or_else(PoisonError::into_inner) = defaults;
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
    fn link_settings(&self, link: &LinkConfig<'_>, key: &LinkKey) -> anyhow::Result<LinkSettings> {
        self.defaults()
            .link_settings(link.config, link.secrets)
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

    async fn start_handler_link(&self, link: LinkConfig<'_>) -> anyhow::Result<()> {
        let key = LinkKey {
            component_id: link.target_id.to_string(),
            link_name: link.link_name.to_string(),
        };
        check_interface(&link, "handler")?;
        let settings = self.link_settings(&link, &key)?;
        if settings.handler.subscriptions.is_empty() {
            warn!(link = %key, "handler link has no subscriptions; it will deliver nothing");
        }

        let mut handlers = self.state.handlers.lock().await;
        if let Some(old) = handlers.remove(&key) {
            info!(link = %key, "replacing handler link");
            self.stop_handler_link(old).await;
        }
        let connection = self.state.pool.acquire(&settings.connection).await?;
        let wrpc = get_connection()
            .get_wrpc_client_custom(&key.component_id, Some(settings.handler.handler_timeout))
            .await
            .context("cannot create the wRPC client for the component")?;
        let target = Target {
            component_id: key.component_id.as_str().into(),
            link_name: key.link_name.as_str().into(),
            wrpc,
        };
        let subscriptions = settings
            .handler
            .subscriptions
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let started = Deliveries::start(
            Arc::clone(&connection),
            settings.handler,
            settings.connection.connect_timeout,
            target,
        )
        .await;
        match started {
            Ok(deliveries) => {
                info!(link = %key, subscriptions, servers = connection.servers, "handler link ready");
                handlers.insert(
                    key,
                    HandlerLink {
                        deliveries,
                        connection,
                        connection_settings: settings.connection,
                    },
                );
                Ok(())
            }
            Err(err) => {
                self.state.pool.release(&settings.connection).await;
                Err(err.context(format!("link {key} rejected")))
            }
        }
    }

    async fn stop_handler_link(&self, link: HandlerLink) {
        link.deliveries.stop().await;
        self.state.pool.release(&link.connection_settings).await;
    }

    async fn start_consumer_link(&self, link: LinkConfig<'_>) -> anyhow::Result<()> {
        let key = LinkKey {
            component_id: link.source_id.to_string(),
            link_name: link.link_name.to_string(),
        };
        check_interface(&link, "consumer")?;
        let settings = self.link_settings(&link, &key)?;
        let connection = self.state.pool.acquire(&settings.connection).await?;
        let servers = connection.servers.clone();
        let consumer = Arc::new(ConsumerLink {
            connection,
            connection_settings: settings.connection,
            settings: settings.consumer,
        });
        let replaced = self.write_consumers().insert(key.clone(), consumer);
        if let Some(old) = replaced {
            self.state.pool.release(&old.connection_settings).await;
        }
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

/// Logs a rejected link with its reason; the SDK only logs that it failed.
fn log_rejection(result: anyhow::Result<()>) -> anyhow::Result<()> {
    if let Err(err) = &result {
        error!(error = %format!("{err:#}"), "link rejected");
    }
    result
}

impl Provider for MessagingProvider {
    async fn init(&self, init: impl ProviderInitConfig) -> anyhow::Result<()> {
        let defaults = ProviderDefaults::new(init.get_config(), init.get_secrets());
        if let Err(err) = defaults.check() {
            error!(error = %err, "provider config is invalid; links that do not override it will be rejected");
        }
        self.set_defaults(defaults);
        Ok(())
    }

    async fn on_config_update(&self, update: impl ProviderConfigUpdate) -> anyhow::Result<()> {
        let defaults = ProviderDefaults::new(update.get_values(), &HashMap::new());
        if let Err(err) = defaults.check() {
            error!(error = %err, "updated provider config is invalid");
        }
        self.set_defaults(defaults);
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
        let mut handlers = self.state.handlers.lock().await;
        if let Some(link) = handlers.remove(&key) {
            self.stop_handler_link(link).await;
            info!(link = %key, "handler link deleted");
        }
        Ok(())
    }

    async fn delete_link_as_target(&self, info: impl LinkDeleteInfo) -> anyhow::Result<()> {
        let key = LinkKey {
            component_id: info.get_source_id().to_string(),
            link_name: info.get_link_name().to_string(),
        };
        let removed = self.write_consumers().remove(&key);
        if let Some(link) = removed {
            self.state.pool.release(&link.connection_settings).await;
            info!(link = %key, "consumer link deleted");
        }
        Ok(())
    }

    async fn health_request(&self, _: &HealthCheckRequest) -> anyhow::Result<HealthCheckResponse> {
        let handlers = self.state.handlers.lock().await;
        let consumers = self.read_consumers();
        let links = handlers
            .iter()
            .map(|(key, link)| ("handler", key, link.connection.as_ref()))
            .chain(
                consumers
                    .iter()
                    .map(|(key, link)| ("consumer", key, link.connection.as_ref())),
            );
        let down: Vec<String> = links
            .filter(|(_, _, connection)| !connection.is_connected())
            .map(|(kind, key, connection)| {
                format!(
                    "{kind} link {key}: NATS at {} is {}",
                    connection.servers,
                    connection.state()
                )
            })
            .collect();
        let counts = format!(
            "{} handler links, {} consumer links",
            handlers.len(),
            consumers.len()
        );
        Ok(if down.is_empty() {
            HealthCheckResponse {
                healthy: true,
                message: Some(format!("{counts}; all NATS connections up")),
            }
        } else {
            HealthCheckResponse {
                healthy: false,
                message: Some(format!("{counts}; {}", down.join("; "))),
            }
        })
    }

    async fn shutdown(&self) -> anyhow::Result<()> {
        info!("shutdown requested by the host, draining");
        self.shutdown_now().await;
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
        Ok(link.publish(msg, headers).await.map_err(|err| {
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
        Ok(link
            .request(subject, body, timeout_ms, headers)
            .await
            .map_err(|err| {
                debug!(error = %err, "request failed");
                err.to_string()
            }))
    }
}
