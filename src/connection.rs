//! NATS connections: one per distinct [`ConnectionSettings`], shared by the
//! links that have those settings, closed when the last of them goes.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use anyhow::{anyhow, Context as _};
use async_nats::client::RequestErrorKind;
use async_nats::connection::State;
use async_nats::{ConnectOptions, Event, ServerAddr};
use bytes::Bytes;
use tokio::sync::Mutex;
use tracing::{debug, error, info, warn};

use crate::config::{self, Auth, ConnectionSettings, TlsSettings};

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
            .tls_client_config(tls_config(&settings.tls)?)
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

/// A TLS client configuration: trusts the configured CA (else the
/// platform's roots as async-nats would) and presents the client
/// certificate when one is set.
fn tls_config(tls: &TlsSettings) -> anyhow::Result<async_nats::rustls::ClientConfig> {
    use async_nats::rustls;
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca {
        Some(pem) => {
            for cert in rustls_pemfile::certs(&mut pem.as_bytes()) {
                roots
                    .add(cert.context("invalid PEM in the TLS CA")?)
                    .context("invalid certificate in the TLS CA")?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs()
                .context("cannot load the platform's CA certificates")?;
            roots.add_parsable_certificates(native);
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS set-up failed")?
        .with_root_certificates(roots);
    Ok(match &tls.client {
        Some((cert_pem, key_pem)) => {
            let chain = rustls_pemfile::certs(&mut cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .context("invalid PEM in the TLS client certificate")?;
            // No context from the parser here: its message could quote key
            // material.
            let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
                .ok()
                .flatten()
                .ok_or_else(|| anyhow!("tls_key holds no usable private key"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|_| anyhow!("the TLS client certificate does not match its key"))?
        }
        None => builder.with_no_client_auth(),
    })
}
