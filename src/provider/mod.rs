//! Provider glue: the host's link, health and shutdown calls, and the
//! `consumer` export that components call over wRPC.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};
use wasmcloud_provider_sdk::core::secrets::SecretValue;
use wasmcloud_provider_sdk::{
    get_connection, Context, HealthCheckRequest, HealthCheckResponse, LinkConfig, LinkDeleteInfo,
    Provider, ProviderConfigUpdate, ProviderInitConfig,
};

use crate::bindings::exports::wasmcloud::messaging::consumer;
use crate::config::{LinkRole, LinkSettings, ProviderDefaults};
use crate::connection::{ConnectionPool, NatsConnection, CLOSE_TIMEOUT};
use crate::consumer::{ConsumerError, ConsumerLink};
use crate::link::{HandlerLink, LinkCounters, Target, LONGEST_STOP};
use crate::message::BrokerMessage;
use crate::metrics::LinkMetrics;
use crate::sync::{read, write};

mod reconcile;

use self::reconcile::RecentDeletes;

const WIT_NAMESPACE: &str = "wasmcloud";
const WIT_PACKAGE: &str = "messaging";

/// A link as the provider tells it apart: the component at its other end
/// and its name.
#[derive(Clone, PartialEq, Eq, Hash)]
struct LinkKey {
    component_id: String,
    link_name: String,
}

impl LinkKey {
    fn new(component_id: &str, link_name: &str) -> Self {
        Self {
            component_id: component_id.to_string(),
            link_name: link_name.to_string(),
        }
    }

    /// A handler link: the provider is its source, the component its target.
    fn handler(link: &LinkPut<'_>) -> Self {
        Self::new(link.target_id, link.link_name)
    }

    /// A consumer link: the component is its source.
    fn consumer(link: &LinkPut<'_>) -> Self {
        Self::new(link.source_id, link.link_name)
    }
}

impl fmt::Display for LinkKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.component_id, self.link_name)
    }
}

/// A link put as the provider reads it, from the host (the SDK's
/// [`LinkConfig`]) or from the lattice's links (see [`reconcile`]).
struct LinkPut<'a> {
    source_id: &'a str,
    target_id: &'a str,
    link_name: &'a str,
    /// The config of the provider's end of the link.
    config: &'a HashMap<String, String>,
    secrets: &'a HashMap<String, SecretValue>,
    namespace: &'a str,
    package: &'a str,
    interfaces: &'a [String],
}

impl<'a> From<&'a LinkConfig<'a>> for LinkPut<'a> {
    fn from(link: &'a LinkConfig<'a>) -> Self {
        let (namespace, package, interfaces) = link.wit_metadata;
        Self {
            source_id: link.source_id,
            target_id: link.target_id,
            link_name: link.link_name,
            config: link.config,
            secrets: link.secrets,
            namespace,
            package,
            interfaces,
        }
    }
}

/// Where a link put comes from.
#[derive(Clone, Copy)]
enum PutOrigin {
    /// The host sent it (start-up data or `linkdefs.put`): it replaces
    /// whatever the provider holds for the link.
    Host,
    /// Found in the lattice's links, asked for at `asked_at` (see
    /// [`reconcile`]): applied only if the provider holds nothing for the
    /// link and the host did not delete it since, since any put or delete
    /// the host sent is as new or newer.
    Lattice { asked_at: Instant },
}

impl MessagingProvider {
    /// True if a put of `origin` is to be applied to the link of `role`
    /// under `key` now; logs one that was missed.
    fn applies(&self, origin: PutOrigin, role: LinkRole, key: &LinkKey) -> bool {
        let PutOrigin::Lattice { asked_at } = origin else {
            return true;
        };
        if self.holds(role, key) || self.state.deletes.deleted_since(role, key, asked_at) {
            return false;
        }
        info!(link = %key, "link missed while the provider was not listening; applying it as the lattice holds it");
        true
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
                link_changes: tokio::sync::Mutex::default(),
                handlers: RwLock::default(),
                consumers: RwLock::default(),
                rejected: RwLock::default(),
                stopping: CancellationToken::new(),
                deletes: RecentDeletes::default(),
                host_shutdown_done: CancellationToken::new(),
            }),
        }
    }
}

struct State {
    defaults: RwLock<ProviderDefaults>,
    pool: ConnectionPool,
    /// Link stops, drains, connection closes and the invocations of the
    /// `consumer` export run here, outside the SDK's command loop; shutdown
    /// waits for them.
    tasks: TaskTracker,
    /// Held across a handler link's start, so that changes to handler links
    /// never interleave. Every await under it is bounded by the link's
    /// `connect_timeout_ms`; health does not take it.
    link_changes: tokio::sync::Mutex<()>,
    /// The running handler links; this lock is never held across an await.
    handlers: RwLock<HashMap<LinkKey, RunningHandler>>,
    consumers: RwLock<HashMap<LinkKey, Arc<ConsumerLink>>>,
    /// Why the last put of a link was refused, until it is deleted or put
    /// again with settings that work: health says so.
    rejected: RwLock<HashMap<(LinkRole, LinkKey), String>>,
    /// Cancelled when shutdown starts: work that runs for the provider's
    /// life (the watch on the lattice's links) ends.
    stopping: CancellationToken,
    /// Deletes the host sent lately, so that a link found in the lattice's
    /// links just before its delete is not brought back.
    deletes: RecentDeletes,
    /// Cancelled once the host's shutdown call has drained everything.
    host_shutdown_done: CancellationToken,
}

/// A running handler link and the settings it runs with.
struct RunningHandler {
    settings: LinkSettings,
    link: HandlerLink,
}

/// The longest shutdown waits for links to drain and connections to close:
/// the longest stop of a link, then the close of connections.
const SHUTDOWN_TIMEOUT: Duration = LONGEST_STOP.saturating_add(CLOSE_TIMEOUT);

impl MessagingProvider {
    /// Stops every link: handler links drain (concurrently, each within its
    /// drain timeout), consumer links go, and connections close; returns
    /// once all of that is done or after [`SHUTDOWN_TIMEOUT`].
    pub async fn shutdown_now(&self) {
        self.state.stopping.cancel();
        // After the link starts already asked for (each bounded by its
        // connect timeout): one that finished after this would be left
        // running.
        let changes = self.state.link_changes.lock().await;
        let handlers: Vec<_> = write(&self.state.handlers).drain().collect();
        for (_, running) in handlers {
            self.state.tasks.spawn(running.link.stop());
        }
        write(&self.state.consumers).clear();
        // Link starts still queued see a closed tracker and do nothing.
        self.state.tasks.close();
        drop(changes);
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

    /// The tracker that the provider's work runs on, for the invocations
    /// of its export.
    pub fn tasks(&self) -> &TaskTracker {
        &self.state.tasks
    }

    /// Parses a link's settings, naming the link in the error.
    fn link_settings(
        &self,
        role: LinkRole,
        link: &LinkPut<'_>,
        key: &LinkKey,
    ) -> anyhow::Result<LinkSettings> {
        let defaults = read(&self.state.defaults).clone();
        defaults
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
        let key = LinkKey::new(component_id, link_name);
        read(&self.state.consumers)
            .get(&key)
            .cloned()
            .ok_or_else(|| {
                format!(
                    "component {component_id:?} has no {WIT_NAMESPACE}:{WIT_PACKAGE}/consumer \
                     link named {link_name:?} to this provider"
                )
            })
    }

    /// Takes a handler link put: its settings are checked now (a bad one
    /// is refused at once), and the link starts on the task tracker, so
    /// that the host's other calls (health above all) are not held up
    /// while it waits on NATS. Starts and deletes of handler links run one
    /// at a time, in the order the host sent them.
    fn put_handler_link(&self, link: &LinkPut<'_>, origin: PutOrigin) -> anyhow::Result<()> {
        let key = LinkKey::handler(link);
        check_interface(link, LinkRole::Handler.interface())?;
        let settings = self.link_settings(LinkRole::Handler, link, &key)?;
        let handler = &settings.handler;
        if handler.subscriptions.is_empty() && !handler.durable.is_enabled() {
            warn!(link = %key, "handler link has no subscriptions and no stream; it will deliver nothing");
        }
        let this = self.clone();
        self.state.tasks.spawn(async move {
            let _changes = this.state.link_changes.lock().await;
            if this.state.tasks.is_closed() {
                return; // the provider is shutting down
            }
            // Every put and delete the host sent before has been handled
            // (the lock is taken in order): one of them settled the link.
            if !this.applies(origin, LinkRole::Handler, &key) {
                return;
            }
            let result = this.start_handler_link(&key, settings).await;
            this.record_rejection(LinkRole::Handler, key, result);
        });
        Ok(())
    }

    /// Starts a handler link. A link that replaces another starts first; the
    /// old one drains in the background only once the new one runs, and
    /// stays if the new one fails. Every await here is bounded by the
    /// link's `connect_timeout_ms`.
    async fn start_handler_link(
        &self,
        key: &LinkKey,
        settings: LinkSettings,
    ) -> anyhow::Result<()> {
        if read(&self.state.handlers)
            .get(key)
            .is_some_and(|running| running.settings == settings)
        {
            info!(link = %key, "handler link put again with the same settings; kept as it runs");
            return Ok(());
        }
        let handler = &settings.handler;
        let deadline = tokio::time::Instant::now() + settings.connection.connect_timeout;
        let connection = self.state.pool.acquire(&settings.connection).await?;
        // Subscribes on the lattice's NATS, which may be unreachable too.
        let wrpc = tokio::time::timeout_at(
            deadline,
            get_connection().get_wrpc_client_custom(&key.component_id, Some(handler.handler_timeout)),
        )
        .await
        .map_err(|_| anyhow!("link {key} rejected: the lattice's NATS did not take the wRPC client's subscription in time"))?
        .with_context(|| format!("link {key} rejected: cannot create the wRPC client"))?;
        let target = Target {
            component_id: key.component_id.as_str().into(),
            link_name: key.link_name.as_str().into(),
            wrpc,
            counters: Arc::new(LinkCounters::new(&key.component_id, &key.link_name)),
            timeout: handler.handler_timeout,
        };
        let servers = connection.servers.clone();
        let link = HandlerLink::start(connection, handler, target, deadline, &self.state.tasks)
            .await
            .map_err(|err| anyhow!("link {key} rejected: {err}"))?;
        let subscriptions = join(handler.subscriptions.iter().map(ToString::to_string));
        let streams = join(handler.durable.sources.iter().map(|s| s.stream.clone()));
        info!(link = %key, subscriptions, streams, servers, "handler link ready");
        let replaced =
            write(&self.state.handlers).insert(key.clone(), RunningHandler { settings, link });
        if let Some(old) = replaced {
            info!(link = %key, "replaced handler link draining");
            self.state.tasks.spawn(old.link.stop());
        }
        Ok(())
    }

    /// Keeps why a link put was refused, for health, and logs it (the SDK
    /// only logs that it failed); a link taken clears what was kept.
    fn record_rejection(&self, role: LinkRole, key: LinkKey, result: anyhow::Result<()>) {
        let mut rejected = write(&self.state.rejected);
        match result {
            Ok(()) => {
                rejected.remove(&(role, key));
            }
            Err(err) => {
                let reason = format!("{err:#}");
                error!(error = %reason, "link rejected");
                rejected.insert((role, key), reason);
            }
        }
    }

    /// Settles a link put the provider answered: a refusal is kept for
    /// health; a link taken is forgotten in the SDK's own table (see
    /// [`forget_in_sdk`]).
    fn settle_link_put(
        &self,
        role: LinkRole,
        key: LinkKey,
        link: &LinkPut<'_>,
        result: anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let reply = match &result {
            Ok(()) => {
                forget_in_sdk(&self.state.tasks, link.source_id, link.target_id);
                Ok(())
            }
            Err(err) => Err(anyhow!("{err:#}")),
        };
        self.record_rejection(role, key, result);
        reply
    }

    async fn start_consumer_link(
        &self,
        link: &LinkPut<'_>,
        origin: PutOrigin,
    ) -> anyhow::Result<()> {
        let key = LinkKey::consumer(link);
        check_interface(link, LinkRole::Consumer.interface())?;
        let settings = self.link_settings(LinkRole::Consumer, link, &key)?;
        let connection = self.state.pool.acquire(&settings.connection).await?;
        let servers = connection.servers.clone();
        let consumer = Arc::new(ConsumerLink {
            connection,
            settings: settings.consumer,
            metrics: LinkMetrics::new(&key.component_id, &key.link_name),
        });
        // A put or delete the host sent while this one waited on NATS is
        // newer. (Checked and inserted without a yield in between.)
        if !self.applies(origin, LinkRole::Consumer, &key) {
            return Ok(());
        }
        // The replaced link's connection lease goes with it.
        write(&self.state.consumers).insert(key.clone(), consumer);
        info!(link = %key, servers, "consumer link ready");
        Ok(())
    }

    /// True if the provider runs the link of `role` under `key`, or keeps
    /// why it refused it.
    fn holds(&self, role: LinkRole, key: &LinkKey) -> bool {
        let running = match role {
            LinkRole::Handler => read(&self.state.handlers).contains_key(key),
            LinkRole::Consumer => read(&self.state.consumers).contains_key(key),
        };
        running || read(&self.state.rejected).contains_key(&(role, key.clone()))
    }
}

fn join(items: impl Iterator<Item = String>) -> String {
    items.collect::<Vec<_>>().join(",")
}

/// Refuses a link that is not for `wasmcloud:messaging/<interface>`.
fn check_interface(link: &LinkPut<'_>, interface: &str) -> anyhow::Result<()> {
    let LinkPut {
        namespace,
        package,
        interfaces,
        ..
    } = link;
    if *namespace != WIT_NAMESPACE
        || *package != WIT_PACKAGE
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

/// A consumer link's connection problem, for health.
fn connection_problem(key: &LinkKey, connection: &NatsConnection) -> Option<String> {
    (!connection.is_connected()).then(|| {
        format!(
            "consumer link {key}: NATS at {} is {}",
            connection.servers,
            connection.state()
        )
    })
}

/// The SDK ignores a link put whose source, target, interface and name it
/// has seen before, even when the link's config changed (`wash link put`
/// again, wadm linking with renamed config). Once the SDK has recorded a
/// link the provider took, it is removed from the SDK's table again, so
/// that every put reaches the provider, which compares settings itself.
/// The SDK records the link right after the provider's call returns,
/// without yielding; this task runs after that.
fn forget_in_sdk(tasks: &TaskTracker, source_id: &str, target_id: &str) {
    let (source_id, target_id) = (source_id.to_string(), target_id.to_string());
    tasks.spawn(async move {
        tokio::task::yield_now().await;
        get_connection().delete_link(&source_id, &target_id).await;
    });
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
        *write(&self.state.defaults) = defaults;
        Ok(())
    }

    async fn on_config_update(&self, update: impl ProviderConfigUpdate) -> anyhow::Result<()> {
        let mut defaults = write(&self.state.defaults);
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
        let link = LinkPut::from(&link);
        let result = self.put_handler_link(&link, PutOrigin::Host);
        self.settle_link_put(LinkRole::Handler, LinkKey::handler(&link), &link, result)
    }

    async fn receive_link_config_as_target(&self, link: LinkConfig<'_>) -> anyhow::Result<()> {
        let link = LinkPut::from(&link);
        let result = self.start_consumer_link(&link, PutOrigin::Host).await;
        self.settle_link_put(LinkRole::Consumer, LinkKey::consumer(&link), &link, result)
    }

    async fn delete_link_as_source(&self, info: impl LinkDeleteInfo) -> anyhow::Result<()> {
        let key = LinkKey::new(info.get_target_id(), info.get_link_name());
        self.state.deletes.record(LinkRole::Handler, &key);
        // After any start of the link the host sent before (one still
        // waiting on NATS would put the link back). The host is answered at
        // once; the link drains in the background.
        let this = self.clone();
        self.state.tasks.spawn(async move {
            let changes = this.state.link_changes.lock().await;
            write(&this.state.rejected).remove(&(LinkRole::Handler, key.clone()));
            let removed = write(&this.state.handlers).remove(&key);
            drop(changes);
            this.state.deletes.carried_out();
            if let Some(running) = removed {
                info!(link = %key, "handler link deleted");
                running.link.stop().await;
            }
        });
        Ok(())
    }

    async fn delete_link_as_target(&self, info: impl LinkDeleteInfo) -> anyhow::Result<()> {
        let key = LinkKey::new(info.get_source_id(), info.get_link_name());
        self.state.deletes.record(LinkRole::Consumer, &key);
        write(&self.state.rejected).remove(&(LinkRole::Consumer, key.clone()));
        if write(&self.state.consumers).remove(&key).is_some() {
            info!(link = %key, "consumer link deleted");
        }
        self.state.deletes.carried_out();
        Ok(())
    }

    /// Reads state only, under locks never held across an await: it never
    /// waits on a NATS server, nor on a link put that does.
    async fn health_request(&self, _: &HealthCheckRequest) -> anyhow::Result<HealthCheckResponse> {
        let handlers = read(&self.state.handlers);
        let consumers = read(&self.state.consumers);
        let mut problems: Vec<String> = read(&self.state.rejected)
            .iter()
            .map(|((role, _), reason)| format!("{} {reason}", role.interface()))
            .collect();
        for (key, running) in handlers.iter() {
            problems.extend(
                running
                    .link
                    .problems()
                    .into_iter()
                    .map(|problem| format!("handler link {key}: {problem}")),
            );
        }
        for (key, link) in consumers.iter() {
            problems.extend(connection_problem(key, &link.connection));
        }
        let counts = format!(
            "{} handler links, {} consumer links",
            handlers.len(),
            consumers.len()
        );
        // Lag is not a problem: it follows, healthy or not.
        let lags: String = handlers
            .iter()
            .flat_map(|(key, running)| {
                running
                    .link
                    .lags()
                    .into_iter()
                    .map(move |lag| format!("; handler link {key}: {lag}"))
            })
            .collect();
        Ok(if problems.is_empty() {
            HealthCheckResponse {
                healthy: true,
                message: Some(format!("{counts}; all NATS connections up{lags}")),
            }
        } else {
            HealthCheckResponse {
                healthy: false,
                message: Some(format!("{counts}; {}{lags}", problems.join("; "))),
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
            Err(refused) => return Ok(Err(refused)),
        };
        Ok(told("publish", link.publish(msg, cx.as_ref()).await))
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
            Err(refused) => return Ok(Err(refused)),
        };
        let reply = link.request(subject, body, timeout_ms, cx.as_ref()).await;
        Ok(told("request", reply))
    }
}

/// A consumer call's outcome as the component gets it; a failure is also
/// logged (at debug: the component is told, and may retry).
fn told<T>(operation: &str, result: Result<T, ConsumerError>) -> Result<T, String> {
    result.map_err(|err| {
        debug!(error = %err, operation, "consumer call failed");
        err.to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shutdown_waits_65_seconds_at_most_as_the_readme_says() {
        // README, "The host is always answered": the largest drain time,
        // 3 s for the naks of what it aborted, 2 s to close connections.
        assert_eq!(SHUTDOWN_TIMEOUT, Duration::from_secs(65));
    }
}
