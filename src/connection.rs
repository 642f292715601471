//! NATS connections: one per distinct [`ConnectionSettings`], shared by the
//! links that have those settings, closed when the last of them goes.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;

use anyhow::{anyhow, Context as _};
use async_nats::client::RequestErrorKind;
use async_nats::connection::State;
use async_nats::{ConnectOptions, Event, ServerAddr};
use bytes::Bytes;
use tokio::sync::Mutex;
use tracing::{debug, error, info, warn};

use crate::config::{Auth, ConnectionSettings};

/// Name the provider's connections carry in the server's connection list.
const CLIENT_NAME: &str = "wasmcloud-messaging-nats";

/// A NATS client and what it is for.
#[derive(Debug)]
pub struct NatsConnection {
    pub client: async_nats::Client,
    /// Server list without credentials, for logs and errors.
    pub servers: String,
}

impl NatsConnection {
    /// True while the client has a live connection to a server.
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == State::Connected
    }

    /// Waits until the server has processed everything this client sent
    /// before (subscriptions, unsubscriptions, messages). A flush only empties
    /// the client's buffer; this makes a request to a subject that nobody
    /// serves, which the server answers with "no responders" in order.
    pub async fn round_trip(&self) -> Result<(), async_nats::RequestError> {
        let nobody = self.client.new_inbox();
        match self.client.request(nobody, Bytes::new()).await {
            Err(err) if err.kind() != RequestErrorKind::NoResponders => Err(err),
            _ => Ok(()),
        }
    }

    /// A word for the connection state, for health messages and errors.
    pub fn state(&self) -> &'static str {
        match self.client.connection_state() {
            State::Connected => "connected",
            State::Disconnected => "disconnected",
            State::Pending => "not yet connected",
        }
    }
}

/// Shared connections, counted by the links using them.
#[derive(Default)]
pub struct ConnectionPool {
    entries: Mutex<HashMap<ConnectionSettings, (Arc<NatsConnection>, usize)>>,
}

impl ConnectionPool {
    /// Returns the connection for these settings, opening it if no link
    /// uses one yet. The caller must [`release`](Self::release) it.
    pub async fn acquire(
        &self,
        settings: &ConnectionSettings,
    ) -> anyhow::Result<Arc<NatsConnection>> {
        let mut entries = self.entries.lock().await;
        if let Some((connection, users)) = entries.get_mut(settings) {
            *users += 1;
            return Ok(Arc::clone(connection));
        }
        let connection = Arc::new(connect(settings).await?);
        entries.insert(settings.clone(), (Arc::clone(&connection), 1));
        Ok(connection)
    }

    /// Gives back a connection; the last user closes it after its pending
    /// messages are flushed.
    pub async fn release(&self, settings: &ConnectionSettings) {
        let mut entries = self.entries.lock().await;
        let Some((_, users)) = entries.get_mut(settings) else {
            return;
        };
        *users -= 1;
        if *users > 0 {
            return;
        }
        if let Some((connection, _)) = entries.remove(settings) {
            close(&connection).await;
        }
    }

    /// Closes every connection (provider shutdown).
    pub async fn close_all(&self) {
        let drained: Vec<_> = self.entries.lock().await.drain().collect();
        for (_, (connection, _)) in drained {
            close(&connection).await;
        }
    }
}

async fn close(connection: &NatsConnection) {
    debug!(servers = connection.servers, "closing NATS connection");
    if let Err(err) = connection.client.drain().await {
        warn!(servers = connection.servers, %err, "failed to drain NATS connection");
    }
}

/// Opens a client. The first connection is made in the background
/// (`retry_on_initial_connect`), so a link whose server is down is kept and
/// starts working when the server comes up; health reports it meanwhile.
async fn connect(settings: &ConnectionSettings) -> anyhow::Result<NatsConnection> {
    let servers_label = settings.redacted_servers();
    let addrs = settings
        .servers
        .iter()
        .map(|url| ServerAddr::from_str(url))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| anyhow!("invalid server URL in {servers_label}: {err}"))?;

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
        Auth::CredentialsFile(path) => ConnectOptions::with_credentials_file(path)
            .await
            .with_context(|| format!("cannot read credentials_file {}", path.display()))?,
    };
    if let Some(pem) = &settings.tls_ca {
        options = options
            .tls_client_config(tls_config(pem)?)
            .require_tls(true);
    }
    if let Some(prefix) = &settings.custom_inbox_prefix {
        options = options.custom_inbox_prefix(prefix);
    }
    if let Some(interval) = settings.ping_interval {
        options = options.ping_interval(interval);
    }
    let label = servers_label.clone();
    options = options
        .name(CLIENT_NAME)
        .connection_timeout(settings.connect_timeout)
        .retry_on_initial_connect()
        .event_callback(move |event| {
            let servers = label.clone();
            async move { log_event(&servers, event) }
        });

    let client = options
        .connect(addrs)
        .await
        .with_context(|| format!("cannot connect to NATS at {servers_label}"))?;
    Ok(NatsConnection {
        client,
        servers: servers_label,
    })
}

fn log_event(servers: &str, event: Event) {
    match event {
        Event::Connected => info!(servers, "NATS connection up"),
        Event::Disconnected => warn!(servers, "NATS connection lost, reconnecting"),
        Event::LameDuckMode => warn!(servers, "NATS server entered lame duck mode"),
        Event::Draining => debug!(servers, "NATS connection draining"),
        Event::Closed => debug!(servers, "NATS connection closed"),
        Event::SlowConsumer(sid) => error!(
            servers,
            sid, "subscription fell behind: NATS dropped messages for it"
        ),
        Event::ServerError(err) => error!(servers, %err, "NATS server error"),
        Event::ClientError(err) => error!(servers, %err, "NATS client error"),
    }
}

/// A TLS client configuration that trusts the CA certificates in `pem`.
fn tls_config(pem: &str) -> anyhow::Result<async_nats::rustls::ClientConfig> {
    use async_nats::rustls;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_bytes()) {
        roots
            .add(cert.context("invalid PEM in the TLS CA")?)
            .context("invalid certificate in the TLS CA")?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS set-up failed")?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
