//! NATS connections: one per distinct [`ConnectionSettings`], shared by the
//! links that have those settings. A link holds a [`Lease`]; the connection
//! closes itself when the last lease is dropped, so nobody releases anything
//! by hand.
//!
//! A connection is a supervisor task and its current client. Each client
//! gives up after [`MAX_RECONNECT_ATTEMPTS`] failed attempts in a row; while
//! leases remain the supervisor then starts a new client, so a live link
//! reconnects for as long as the outage lasts, while a released connection
//! to an unreachable server ends by itself instead of retrying forever.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use async_nats::client::RequestErrorKind;
use async_nats::connection::State;
use async_nats::{ClientError, ConnectOptions, Event, ServerError};
use bytes::Bytes;
use tokio::sync::{watch, Notify};
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::config::{self, Auth, ConnectionSettings};
use crate::sync::lock;

mod tls;

/// Name the provider's connections carry in the server's connection list.
const CLIENT_NAME: &str = "wasmcloud-messaging-nats";

/// Failed connection attempts after which a client gives up (see the module
/// doc). With [`reconnect_delay`] that is about 25 s of trying.
const MAX_RECONNECT_ATTEMPTS: usize = 10;

/// How long closing a released connection may take to flush what it still
/// holds before the client is dropped; the server may be unreachable.
pub(crate) const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Delay before reconnect attempt `attempt`: at once, then doubling from
/// 250 ms up to 4 s, as the NATS client's own default does.
fn reconnect_delay(attempt: usize) -> Duration {
    match attempt {
        0 | 1 => Duration::ZERO,
        n => Duration::from_millis(250u64 << (n - 2).min(4)),
    }
}

/// A share of a NATS connection. Clones share it too; the connection closes
/// when the last lease is gone.
#[derive(Clone)]
pub(crate) struct Lease(Arc<NatsConnection>);

impl std::ops::Deref for Lease {
    type Target = NatsConnection;

    fn deref(&self) -> &NatsConnection {
        &self.0
    }
}

/// A NATS connection shared by the links with equal settings.
pub(crate) struct NatsConnection {
    /// Server list without credentials, for logs and errors.
    pub(crate) servers: String,
    current: watch::Receiver<async_nats::Client>,
    signals: Arc<Signals>,
    /// Stops the supervisor (which then closes the client) when the last
    /// lease drops.
    _supervisor: DropGuard,
    /// Removes this connection's pool entry when it drops.
    pool: Weak<PoolEntries>,
    settings: ConnectionSettings,
}

/// What the client's event callback learns, for the supervisor, for health
/// and for naming links in logs.
#[derive(Default)]
struct Signals {
    /// The current client gave up reconnecting.
    gave_up: Notify,
    /// Subjects the server refused subscriptions to (permissions), until the
    /// next reconnect.
    refused: Mutex<HashSet<String>>,
    /// Which link subscribed to which subject, to name the link in logs.
    subscribers: Mutex<HashMap<String, Vec<String>>>,
    /// One warning per outage; the rest of the attempts are debug lines.
    outage_reported: AtomicBool,
    /// Messages the client dropped because a subscription's buffer was full
    /// (its reader was starved of CPU).
    client_dropped: AtomicU64,
    /// Counts the client's (re)connections: what a connection lost (pull
    /// requests waiting on the server, above all) must be asked for again.
    connected: watch::Sender<u64>,
    /// The server's `max_payload` as last read, 0 until read again: a
    /// publish checks it, and reading it from the client copies the whole
    /// server info. Cleared on every (re)connection and new client.
    max_payload: AtomicUsize,
}

impl NatsConnection {
    /// The current client. Take it per call: it changes when a client that
    /// gave up reconnecting is replaced.
    pub(crate) fn client(&self) -> async_nats::Client {
        self.current.borrow().clone()
    }

    /// A JetStream context on the current client, for the API of `domain`
    /// (`$JS.<domain>.API`) or, without one, of the server's own JetStream.
    pub(crate) fn jetstream(&self, domain: Option<&str>) -> async_nats::jetstream::Context {
        async_nats::jetstream::with_prefix(self.client(), &jetstream_api(domain))
    }

    /// A receiver that changes at every (re)connection of the client.
    pub(crate) fn watch_connected(&self) -> watch::Receiver<u64> {
        self.signals.connected.subscribe()
    }

    /// A receiver that sees each new client (for resubscribing).
    pub(crate) fn watch_client(&self) -> watch::Receiver<async_nats::Client> {
        self.current.clone()
    }

    /// True while the client has a live connection to a server.
    pub(crate) fn is_connected(&self) -> bool {
        self.client().connection_state() == State::Connected
    }

    /// A word for the connection state, for health messages and errors.
    /// A client is `Pending` until it first connects, and so is the new
    /// client that replaces one which gave up reconnecting: once this
    /// connection has been up, that is an outage ("disconnected").
    pub(crate) fn state(&self) -> &'static str {
        match self.client().connection_state() {
            State::Connected => "connected",
            State::Disconnected => "disconnected",
            State::Pending if *self.signals.connected.borrow() > 0 => "disconnected",
            State::Pending => "not yet connected",
        }
    }

    /// The server's `max_payload`, or NATS's default before the first
    /// connection tells it.
    pub(crate) fn max_payload(&self) -> usize {
        match self.server_max_payload() {
            0 => 1024 * 1024,
            n => n,
        }
    }

    /// The server's `max_payload`, 0 while no server has told it.
    pub(crate) fn server_max_payload(&self) -> usize {
        match self.signals.max_payload.load(Ordering::Relaxed) {
            0 => {
                let read = self.client().server_info().max_payload;
                self.signals.max_payload.store(read, Ordering::Relaxed);
                read
            }
            cached => cached,
        }
    }

    /// Waits until the server has processed everything this client sent
    /// before (subscriptions, unsubscriptions, messages). A flush only empties
    /// the client's buffer; this makes a request to a subject that nobody
    /// serves, which the server answers with "no responders" in order.
    /// Callers bound it: while disconnected it waits for the reconnect.
    pub(crate) async fn round_trip(&self) -> Result<(), async_nats::RequestError> {
        match self
            .request(self.client().new_inbox(), Bytes::new(), None)
            .await
        {
            Err(err) if err.kind() != RequestErrorKind::NoResponders => Err(err),
            _ => Ok(()),
        }
    }

    /// Sends a request and waits for its first reply. Each request has an
    /// inbox subscription of its own, which goes when the future is dropped
    /// (on the caller's timeout too): the client's shared reply map would
    /// keep an entry for every request that never got a reply.
    pub(crate) async fn request(
        &self,
        subject: String,
        payload: Bytes,
        headers: Option<async_nats::HeaderMap>,
    ) -> Result<async_nats::Message, async_nats::RequestError> {
        let client = self.client();
        let mut request = async_nats::Request::new()
            .payload(payload)
            .inbox(client.new_inbox())
            .timeout(None);
        if let Some(headers) = headers {
            request = request.headers(headers);
        }
        client.send_request(subject, request).await
    }

    /// Subjects of `subjects` that the server refused to let this connection
    /// subscribe to.
    pub(crate) fn refused<'a>(&self, subjects: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
        let refused = lock(&self.signals.refused);
        subjects.filter(|s| refused.contains(*s)).collect()
    }

    /// Records that `link` subscribes to `subject`, so that a refusal by the
    /// server is logged naming the link; undone when the guard drops.
    pub(crate) fn register_subscriber(&self, link: &str, subject: &str) -> SubscriberRecord {
        lock(&self.signals.subscribers)
            .entry(subject.to_string())
            .or_default()
            .push(link.to_string());
        SubscriberRecord {
            signals: Arc::clone(&self.signals),
            link: link.to_string(),
            subject: subject.to_string(),
        }
    }
}

/// A link's entry in its connection's subscriber list; see
/// [`NatsConnection::register_subscriber`].
pub(crate) struct SubscriberRecord {
    signals: Arc<Signals>,
    link: String,
    subject: String,
}

impl Drop for SubscriberRecord {
    fn drop(&mut self) {
        let mut subscribers = lock(&self.signals.subscribers);
        if let Some(links) = subscribers.get_mut(&self.subject) {
            if let Some(at) = links.iter().position(|l| *l == self.link) {
                links.swap_remove(at);
            }
            if links.is_empty() {
                subscribers.remove(&self.subject);
            }
        }
    }
}

impl Drop for NatsConnection {
    fn drop(&mut self) {
        if let Some(entries) = self.pool.upgrade() {
            let mut entries = lock(&entries.0);
            // Only this connection's own entry: a new one for the same
            // settings may already stand there.
            if entries
                .get(&self.settings)
                .is_some_and(|entry| entry.strong_count() == 0)
            {
                entries.remove(&self.settings);
            }
        }
    }
}

struct PoolEntries(Mutex<HashMap<ConnectionSettings, Weak<NatsConnection>>>);

/// The shared connections. Supervisors run on the provider's task tracker,
/// so that shutdown waits for connections to close.
pub(crate) struct ConnectionPool {
    entries: Arc<PoolEntries>,
    /// Opening is serialised so that two links with equal settings do not
    /// both open a connection.
    opening: tokio::sync::Mutex<()>,
    tasks: TaskTracker,
}

impl ConnectionPool {
    pub(crate) fn new(tasks: TaskTracker) -> Self {
        Self {
            entries: Arc::new(PoolEntries(Mutex::default())),
            opening: tokio::sync::Mutex::default(),
            tasks,
        }
    }

    /// A lease on the connection for these settings, opened if no link uses
    /// one yet. Returns at once: the client connects in the background, and
    /// a link whose server is down is kept and works once it comes up.
    pub(crate) async fn acquire(&self, settings: &ConnectionSettings) -> anyhow::Result<Lease> {
        let _opening = self.opening.lock().await;
        if let Some(existing) = lock(&self.entries.0).get(settings).and_then(Weak::upgrade) {
            return Ok(Lease(existing));
        }
        let signals = Arc::new(Signals::default());
        let client = connect(settings, &signals, &self.tasks).await?;
        let (current, watch) = watch::channel(client);
        let stop = CancellationToken::new();
        self.tasks.spawn(supervise(
            settings.clone(),
            Arc::clone(&signals),
            current,
            stop.clone(),
            self.tasks.clone(),
        ));
        let connection = Arc::new(NatsConnection {
            servers: settings.servers.to_string(),
            current: watch,
            signals,
            _supervisor: stop.drop_guard(),
            pool: Arc::downgrade(&self.entries),
            settings: settings.clone(),
        });
        lock(&self.entries.0).insert(settings.clone(), Arc::downgrade(&connection));
        Ok(Lease(connection))
    }
}

/// Keeps a connection's client alive: replaces a client that gave up
/// reconnecting while the connection is leased; once the last lease drops,
/// closes the client within [`CLOSE_TIMEOUT`] and ends.
async fn supervise(
    settings: ConnectionSettings,
    signals: Arc<Signals>,
    current: watch::Sender<async_nats::Client>,
    stop: CancellationToken,
    tasks: TaskTracker,
) {
    let servers = settings.servers.to_string();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            () = signals.gave_up.notified() => {
                warn!(
                    servers,
                    attempts = MAX_RECONNECT_ATTEMPTS,
                    "NATS server still unreachable; starting a new client"
                );
                match connect(&settings, &signals, &tasks).await {
                    Ok(client) => {
                        current.send_replace(client);
                        signals.max_payload.store(0, Ordering::Relaxed);
                    }
                    // Settings were valid when the first client was made;
                    // only the platform (e.g. its CA store) can fail here.
                    Err(err) => error!(servers, error = %format!("{err:#}"), "cannot start a new NATS client"),
                }
            }
        }
    }
    let client = current.borrow().clone();
    let client_dropped = signals.client_dropped.load(Ordering::Relaxed);
    if client_dropped > 0 {
        warn!(
            servers,
            client_dropped,
            "closing a NATS connection whose client dropped messages (slow consumer)"
        );
    }
    debug!(servers, "closing NATS connection");
    match tokio::time::timeout(CLOSE_TIMEOUT, client.drain()).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => debug!(servers, %err, "NATS connection closed without draining"),
        Err(_) => debug!(servers, "NATS connection not drained in time; dropped"),
    }
}

/// Opens a client that connects in the background (`retry_on_initial_connect`).
/// `tasks` runs the checks its events ask for.
async fn connect(
    settings: &ConnectionSettings,
    signals: &Arc<Signals>,
    tasks: &TaskTracker,
) -> anyhow::Result<async_nats::Client> {
    let servers_label = settings.servers.to_string();
    let addrs = settings.servers.addrs().to_vec();

    let mut options = match &settings.auth {
        Auth::None => ConnectOptions::new(),
        Auth::Jwt { jwt, seed } => {
            let key_pair = Arc::new(
                nkeys::KeyPair::from_seed(seed).map_err(|_| anyhow!("client_seed is not valid"))?,
            );
            ConnectOptions::with_jwt(jwt.clone(), move |nonce| {
                let key_pair = Arc::clone(&key_pair);
                async move { key_pair.sign(&nonce).map_err(async_nats::AuthError::new) }
            })
        }
        Auth::NKey { seed } => ConnectOptions::with_nkey(seed.clone()),
        Auth::UserPassword { user, password } => {
            ConnectOptions::with_user_and_password(user.clone(), password.clone())
        }
        Auth::Token(token) => ConnectOptions::with_token(token.clone()),
        Auth::CredentialsFile(path) => {
            // Read at every (re)connect rather than once, so that a rotated
            // file (a new user JWT) takes effect without re-linking.
            let path = Arc::new(path.clone());
            ConnectOptions::with_auth_callback(move |nonce| {
                let path = Arc::clone(&path);
                async move { sign_with_credentials_file(&path, &nonce) }
            })
        }
    };
    if settings.tls.required() {
        options = options
            .tls_client_config(tls::client_config(&settings.tls)?)
            .require_tls(true);
    }
    if let Some(prefix) = &settings.custom_inbox_prefix {
        options = options.custom_inbox_prefix(prefix);
    }
    if let Some(interval) = settings.ping_interval {
        options = options.ping_interval(interval);
    }
    let events = Arc::clone(signals);
    let label = servers_label.clone();
    let tls_probe = settings.tls.required().then(|| settings.clone());
    let tasks = tasks.clone();
    options = options
        .name(CLIENT_NAME)
        .connection_timeout(settings.connect_timeout)
        .retry_on_initial_connect()
        .max_reconnects(MAX_RECONNECT_ATTEMPTS)
        .reconnect_delay_callback(reconnect_delay)
        .event_callback(move |event| {
            let events = Arc::clone(&events);
            let servers = label.clone();
            let tls_probe = tls_probe.clone();
            let tasks = tasks.clone();
            async move {
                if on_event(&servers, &events, event) {
                    if let Some(settings) = tls_probe {
                        // The client reports a failed TLS handshake only as
                        // "IO error": find out why, once per outage.
                        tasks.spawn(explain_tls_failure(settings));
                    }
                }
            }
        });

    // With retry_on_initial_connect this returns once the client is set up;
    // the bound is for safety, not for the connection itself.
    tokio::time::timeout(settings.connect_timeout, options.connect(addrs))
        .await
        .map_err(|_| anyhow!("NATS client for {servers_label} not set up in time"))?
        .with_context(|| format!("cannot connect to NATS at {servers_label}"))
}

/// Logs `event` and tells the supervisor what it needs to know. True for
/// the first failed connection attempt of an outage.
fn on_event(servers: &str, signals: &Signals, event: Event) -> bool {
    match event {
        Event::Connected => {
            signals.outage_reported.store(false, Ordering::Relaxed);
            signals.connected.send_modify(|count| *count += 1);
            signals.max_payload.store(0, Ordering::Relaxed);
            // The server checks permissions again on resubscription.
            lock(&signals.refused).clear();
            info!(servers, "NATS connection up");
        }
        Event::Disconnected => warn!(servers, "NATS connection lost, reconnecting"),
        Event::LameDuckMode => warn!(servers, "NATS server entered lame duck mode"),
        Event::Draining => debug!(servers, "NATS connection draining"),
        Event::Closed => debug!(servers, "NATS connection closed"),
        Event::SlowConsumer(sid) => {
            let dropped = signals.client_dropped.fetch_add(1, Ordering::Relaxed) + 1;
            // One line per power of two, not one per message.
            if dropped.is_power_of_two() {
                error!(
                    servers,
                    sid, dropped, "a subscription fell behind: the NATS client dropped messages"
                );
            }
        }
        Event::ServerError(ServerError::Other(message)) => match refused_subject(&message) {
            Some(subject) => {
                let links = lock(&signals.subscribers)
                    .get(&subject)
                    .map(|links| links.join(","))
                    .unwrap_or_default();
                error!(
                    servers,
                    subject, links, "NATS server refused the subscription (permissions violation)"
                );
                lock(&signals.refused).insert(subject);
            }
            None => error!(servers, error = message, "NATS server error"),
        },
        Event::ServerError(err) => error!(servers, %err, "NATS server error"),
        Event::ClientError(ClientError::MaxReconnects) => {
            info!(
                servers,
                attempts = MAX_RECONNECT_ATTEMPTS,
                "NATS client gave up reconnecting"
            );
            signals.gave_up.notify_one();
        }
        Event::ClientError(err) => {
            if signals.outage_reported.swap(true, Ordering::Relaxed) {
                debug!(servers, %err, "NATS connection attempt failed");
            } else {
                error!(servers, %err, "NATS connection attempt failed; retrying");
                return true;
            }
        }
    }
    false
}

/// Logs why a TLS connection to the servers fails, found by a handshake of
/// its own with the same TLS settings (bounded by the connect timeout).
async fn explain_tls_failure(settings: ConnectionSettings) {
    let servers = settings.servers.to_string();
    let Ok(config) = tls::client_config(&settings.tls) else {
        return;
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    for addr in settings.servers.addrs() {
        let (host, port) = (addr.host().to_string(), addr.port());
        let handshake = async {
            let mut tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            // The server speaks first: one INFO line in plain text, then TLS.
            read_line(&mut tcp).await?;
            let name = rustls_pki_types::ServerName::try_from(host.clone())
                .map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidInput, err))?;
            connector.connect(name, tcp).await.map(drop)
        };
        match tokio::time::timeout(settings.connect_timeout, handshake).await {
            Ok(Err(err)) if err.kind() != std::io::ErrorKind::ConnectionRefused => {
                error!(servers, server = %format!("{host}:{port}"), reason = %err, "TLS connection to the NATS server fails");
                return;
            }
            _ => {}
        }
    }
}

/// Reads up to a newline (at most 64 KiB, the INFO line of a server).
async fn read_line(tcp: &mut tokio::net::TcpStream) -> std::io::Result<()> {
    use tokio::io::AsyncReadExt as _;
    let mut byte = [0u8; 1];
    for _ in 0..64 * 1024 {
        if tcp.read(&mut byte).await? == 0 || byte[0] == b'\n' {
            return Ok(());
        }
    }
    Ok(())
}

/// The subject of a server error `Permissions Violation for Subscription to
/// "x"`, if it is one.
fn refused_subject(message: &str) -> Option<String> {
    const PREFIX: &str = "permissions violation for subscription to ";
    let lower = message.to_ascii_lowercase();
    let at = lower.find(PREFIX)? + PREFIX.len();
    let rest = message.get(at..)?.trim();
    let subject = rest.trim_matches(|c| c == '"' || c == '\'');
    // A queue subscription is reported as `"subject" using queue "q"`.
    let subject = subject.split('"').next().unwrap_or(subject);
    (!subject.is_empty()).then(|| subject.to_string())
}

/// The subject prefix of the JetStream API of `domain` (`$JS.<domain>.API`),
/// or of the server's own JetStream (`$JS.API`).
pub(crate) fn jetstream_api(domain: Option<&str>) -> String {
    match domain {
        Some(domain) => format!("$JS.{domain}.API"),
        None => "$JS.API".to_string(),
    }
}

/// Signs the server's nonce with the seed of a `.creds` file, read now.
fn sign_with_credentials_file(
    path: &Path,
    nonce: &[u8],
) -> Result<async_nats::Auth, async_nats::AuthError> {
    let credentials = config::read_credentials(path).map_err(|reason| {
        async_nats::AuthError::new(format!("credentials_file {}: {reason}", path.display()))
    })?;
    let key_pair = nkeys::KeyPair::from_seed(&credentials.seed)
        .map_err(|_| async_nats::AuthError::new("credentials_file: invalid nkey seed"))?;
    let signature = key_pair
        .sign(nonce)
        .map_err(|_| async_nats::AuthError::new("credentials_file: cannot sign the nonce"))?;
    let mut auth = async_nats::Auth::new();
    auth.jwt = Some(credentials.jwt);
    auth.signature = Some(signature);
    Ok(auth)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_subjects_are_read_from_server_errors() {
        assert_eq!(
            refused_subject("Permissions Violation for Subscription to \"secret.x\""),
            Some("secret.x".into())
        );
        assert_eq!(
            refused_subject("permissions violation for subscription to \"a.b\" using queue \"q\""),
            Some("a.b".into())
        );
        assert_eq!(refused_subject("Maximum Payload Violation"), None);
    }

    #[test]
    fn reconnect_delays_grow_to_four_seconds() {
        let delays: Vec<u64> = (1..=8)
            .map(|n| reconnect_delay(n).as_millis() as u64)
            .collect();
        assert_eq!(delays, [0, 250, 500, 1000, 2000, 4000, 4000, 4000]);
    }
}
