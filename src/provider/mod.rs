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

mod clients;
mod feed;
mod reconcile;

use self::clients::ComponentClients;
use self::feed::{Seen, SDK_GRACE};
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

    /// The key of the link named `link_name` from `source_id` to `target`,
    /// of which the provider is the `role` end: the component is the other.
    fn at(role: LinkRole, source_id: &str, target: &str, link_name: &str) -> Self {
        match role {
            LinkRole::Handler => Self::new(target, link_name),
            LinkRole::Consumer => Self::new(source_id, link_name),
        }
    }
}

impl fmt::Display for LinkKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.component_id, self.link_name)
    }
}

/// A link put as the provider reads it: from the SDK (start-up data, or
/// its subscription), from its own subscription (see [`feed`]) or from the
/// lattice's links (see [`reconcile`]).
struct LinkPut {
    source_id: String,
    target_id: String,
    link_name: String,
    /// The config of the provider's end of the link.
    config: HashMap<String, String>,
    secrets: HashMap<String, SecretValue>,
    namespace: String,
    package: String,
    interfaces: Vec<String>,
}

impl From<&LinkConfig<'_>> for LinkPut {
    fn from(link: &LinkConfig<'_>) -> Self {
        let (namespace, package, interfaces) = link.wit_metadata;
        Self {
            source_id: link.source_id.to_string(),
            target_id: link.target_id.to_string(),
            link_name: link.link_name.to_string(),
            config: link.config.clone(),
            secrets: link.secrets.clone(),
            namespace: namespace.clone(),
            package: package.clone(),
            interfaces: interfaces.clone(),
        }
    }
}

impl LinkPut {
    /// The link's key: the component at its other end, and its name.
    fn key(&self, role: LinkRole) -> LinkKey {
        LinkKey::at(role, &self.source_id, &self.target_id, &self.link_name)
    }
}

/// Which end of a link from `source_id` to `target` the provider
/// `provider_id` is, if either.
fn role_of(provider_id: &str, source_id: &str, target: &str) -> Option<LinkRole> {
    if source_id == provider_id {
        Some(LinkRole::Handler)
    } else if target == provider_id {
        Some(LinkRole::Consumer)
    } else {
        None
    }
}

/// A put or delete of one link.
struct LinkChange {
    role: LinkRole,
    key: LinkKey,
    kind: ChangeKind,
}

enum ChangeKind {
    /// Boxed: a delete is a few bytes, a put a few hundred.
    Put(Box<LinkPut>),
    Delete,
    /// A put whose secrets could not be read, and why (naming no secret).
    Unreadable(String),
}

impl LinkChange {
    fn put(role: LinkRole, link: LinkPut) -> Self {
        Self {
            role,
            key: link.key(role),
            kind: ChangeKind::Put(Box::new(link)),
        }
    }

    fn delete(role: LinkRole, key: LinkKey) -> Self {
        Self {
            role,
            key,
            kind: ChangeKind::Delete,
        }
    }
}

/// Who hands a link put or delete over, which says whether it is applied.
#[derive(Clone, Copy)]
enum Origin {
    /// The provider's own subscription (see [`feed`]): in the order the
    /// host sent them, so always applied.
    Host,
    /// The SDK: the start-up data, or its subscriptions, which may hand a
    /// put and a delete over in either order. Applied unless the
    /// provider's own subscription has seen the link: what it saw is the
    /// same message or a newer one.
    Sdk,
    /// Found in the lattice's links, asked for at `asked_at` (see
    /// [`reconcile`]): applied only if the provider holds nothing for the
    /// link and the host did not delete it since, since any put or delete
    /// the host sent is as new or newer.
    Lattice { asked_at: Instant },
}

impl MessagingProvider {
    /// True if a put or delete from `origin` of the link of `role` under
    /// `key` is not to be applied: a newer one settled the link.
    fn superseded(&self, origin: Origin, role: LinkRole, key: &LinkKey) -> bool {
        match origin {
            Origin::Host => false,
            Origin::Sdk => {
                let seen = self.state.seen.contains(role, key);
                if seen {
                    debug!(link = %key, "link change from the SDK already taken in the host's order");
                }
                seen
            }
            Origin::Lattice { asked_at } => {
                self.holds(role, key) || self.state.deletes.deleted_since(role, key, asked_at)
            }
        }
    }

    /// Applies a put or delete from `origin`.
    async fn apply(&self, change: LinkChange, origin: Origin) {
        let LinkChange { role, key, kind } = change;
        match (kind, role) {
            (ChangeKind::Put(link), LinkRole::Handler) => {
                self.put_handler_link(&link, key, origin).await;
            }
            (ChangeKind::Put(link), LinkRole::Consumer) => {
                self.put_consumer_link(&link, key, origin).await;
            }
            (ChangeKind::Delete, LinkRole::Handler) => self.delete_handler_link(&key, origin).await,
            (ChangeKind::Delete, LinkRole::Consumer) => self.delete_consumer_link(&key, origin),
            (ChangeKind::Unreadable(reason), role) => {
                if !self.superseded(origin, role, &key) {
                    let result = Err(anyhow!("link {key} rejected: {reason}"));
                    self.record_rejection(role, key, result);
                }
            }
        }
    }

    /// Takes a put or delete the SDK handed over. Once the provider follows
    /// the host's links itself, it is looked at [`SDK_GRACE`] later (see
    /// [`feed`]). Runs outside the SDK's command loop either way.
    ///
    /// A change the provider's own subscription has already seen is
    /// dropped at once: that subscription gets this message too, or has
    /// had a newer one. Only the rest wait, each in a small task: the
    /// change is applied in a future of its own, made after the wait (a
    /// host that puts thousands of links at once would otherwise hold a
    /// link start's whole future per link for the grace period).
    fn take_from_sdk(&self, change: LinkChange) {
        let grace = self.state.seen.following().then_some(SDK_GRACE);
        if grace.is_some() && self.superseded(Origin::Sdk, change.role, &change.key) {
            return;
        }
        let this = self.clone();
        let stopping = self.state.stopping.clone();
        self.state
            .tasks
            .spawn(stopping.run_until_cancelled_owned(async move {
                if let Some(grace) = grace {
                    tokio::time::sleep(grace).await;
                }
                Box::pin(this.apply(change, Origin::Sdk)).await;
            }));
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
                seen: Seen::default(),
                clients: ComponentClients::default(),
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
    /// Boxed: a link's settings and engine are a kilobyte or so, and a
    /// table grows by doubling, so inline entries would leave up to half of
    /// that unused per link.
    handlers: RwLock<HashMap<LinkKey, Box<RunningHandler>>>,
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
    /// The links the provider's own subscription has seen (see [`feed`]).
    seen: Seen,
    /// The wRPC client of each component with a handler link.
    clients: ComponentClients,
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
        link: &LinkPut,
        key: &LinkKey,
    ) -> anyhow::Result<LinkSettings> {
        let defaults = read(&self.state.defaults).clone();
        defaults
            .settings_for(role, &link.config, &link.secrets)
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

    /// Applies a handler link put. Starts and deletes of handler links run
    /// one at a time, under `link_changes`: those from the provider's own
    /// subscription in the order the host sent them.
    async fn put_handler_link(&self, link: &LinkPut, key: LinkKey, origin: Origin) {
        let _changes = self.state.link_changes.lock().await;
        if self.state.tasks.is_closed() || self.superseded(origin, LinkRole::Handler, &key) {
            return; // shutting down, or a newer put or delete settled the link
        }
        log_missed(origin, &key);
        let result = async {
            check_interface(link, LinkRole::Handler.interface())?;
            let settings = self.link_settings(LinkRole::Handler, link, &key)?;
            let handler = &settings.handler;
            if handler.subscriptions.is_empty() && !handler.durable.is_enabled() {
                warn!(link = %key, "handler link has no subscriptions and no stream; it will deliver nothing");
            }
            self.start_handler_link(&key, settings).await
        }
        .await;
        self.record_rejection(LinkRole::Handler, key, result);
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
            self.state.clients.get(&key.component_id),
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
        let replaced = write(&self.state.handlers)
            .insert(key.clone(), Box::new(RunningHandler { settings, link }));
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

    /// Applies a consumer link put: the link is ready once its connection
    /// is taken from the pool (bounded by its `connect_timeout_ms`).
    async fn put_consumer_link(&self, link: &LinkPut, key: LinkKey, origin: Origin) {
        // Checked before the connect too: a put settled already would open
        // a connection only to close it.
        if self.superseded(origin, LinkRole::Consumer, &key) {
            return;
        }
        let result = async {
            check_interface(link, LinkRole::Consumer.interface())?;
            let settings = self.link_settings(LinkRole::Consumer, link, &key)?;
            let connection = self.state.pool.acquire(&settings.connection).await?;
            anyhow::Ok((settings, connection))
        }
        .await;
        // A put or delete handled while this one waited on NATS is newer.
        // (Checked and inserted without a yield in between.)
        if self.superseded(origin, LinkRole::Consumer, &key) {
            return;
        }
        log_missed(origin, &key);
        let result = result.map(|(settings, connection)| {
            let servers = connection.servers.clone();
            let consumer = Arc::new(ConsumerLink {
                connection,
                settings: settings.consumer,
                metrics: LinkMetrics::new(&key.component_id, &key.link_name),
            });
            // The replaced link's connection lease goes with it.
            write(&self.state.consumers).insert(key.clone(), consumer);
            info!(link = %key, servers, "consumer link ready");
        });
        self.record_rejection(LinkRole::Consumer, key, result);
    }

    /// Applies a handler link delete: the link is removed at once and
    /// drains in the background.
    async fn delete_handler_link(&self, key: &LinkKey, origin: Origin) {
        let changes = self.state.link_changes.lock().await;
        if self.superseded(origin, LinkRole::Handler, key) {
            return;
        }
        self.state.deletes.record(LinkRole::Handler, key);
        write(&self.state.rejected).remove(&(LinkRole::Handler, key.clone()));
        let removed = write(&self.state.handlers).remove(key);
        drop(changes);
        if let Some(running) = removed {
            info!(link = %key, "handler link deleted");
            self.state.tasks.spawn(running.link.stop());
        }
    }

    fn delete_consumer_link(&self, key: &LinkKey, origin: Origin) {
        if self.superseded(origin, LinkRole::Consumer, key) {
            return;
        }
        self.state.deletes.record(LinkRole::Consumer, key);
        write(&self.state.rejected).remove(&(LinkRole::Consumer, key.clone()));
        if write(&self.state.consumers).remove(key).is_some() {
            info!(link = %key, "consumer link deleted");
        }
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

/// Logs a put from the lattice's links as it is applied.
fn log_missed(origin: Origin, key: &LinkKey) {
    if let Origin::Lattice { .. } = origin {
        info!(link = %key, "link missed while the provider was not listening; applying it as the lattice holds it");
    }
}

fn join(items: impl Iterator<Item = String>) -> String {
    items.collect::<Vec<_>>().join(",")
}

/// Refuses a link that is not for `wasmcloud:messaging/<interface>`.
fn check_interface(link: &LinkPut, interface: &str) -> anyhow::Result<()> {
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
        forget_in_sdk(&self.state.tasks, link.source_id, link.target_id);
        self.take_from_sdk(LinkChange::put(LinkRole::Handler, LinkPut::from(&link)));
        Ok(())
    }

    async fn receive_link_config_as_target(&self, link: LinkConfig<'_>) -> anyhow::Result<()> {
        forget_in_sdk(&self.state.tasks, link.source_id, link.target_id);
        self.take_from_sdk(LinkChange::put(LinkRole::Consumer, LinkPut::from(&link)));
        Ok(())
    }

    async fn delete_link_as_source(&self, info: impl LinkDeleteInfo) -> anyhow::Result<()> {
        let key = LinkKey::new(info.get_target_id(), info.get_link_name());
        self.take_from_sdk(LinkChange::delete(LinkRole::Handler, key));
        Ok(())
    }

    async fn delete_link_as_target(&self, info: impl LinkDeleteInfo) -> anyhow::Result<()> {
        let key = LinkKey::new(info.get_source_id(), info.get_link_name());
        self.take_from_sdk(LinkChange::delete(LinkRole::Consumer, key));
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
    fn shutdown_waits_66_seconds_at_most_as_the_readme_says() {
        // README, "The host is always answered": the largest drain time,
        // 3 s for the naks of what it aborted, 1 s to write out the
        // unsubscribes, 2 s to close connections.
        assert_eq!(SHUTDOWN_TIMEOUT, Duration::from_secs(66));
    }
}
