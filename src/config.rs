//! Configuration: the string maps that the host hands over (provider config,
//! link config, secrets) are parsed here, once, into typed settings. Nothing
//! outside this module looks at a raw map.
//!
//! Precedence for every key, highest first: link secrets (credential keys
//! only), link config, provider secrets (credential keys only), provider
//! config, built-in default.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tracing::{debug, warn};
use wasmcloud_provider_sdk::core::secrets::SecretValue;

use crate::subject::{self, SubjectPattern};

mod durable;
#[cfg(test)]
mod upstream_tests;

pub use durable::{
    default_durable_name, ConsumerSpec, DurableSettings, DurableSource, ManagedConsumer, StreamSpec,
};
use durable::{ACK_WAIT_MS, BACKOFF_MS};

/// Server used when neither the link nor the provider names one and the
/// host did not say where the lattice's NATS is.
pub const DEFAULT_CLUSTER_URI: &str = "nats://127.0.0.1:4222";

/// Comma-separated subjects to subscribe to; `subject|queue` joins a queue group.
pub const SUBSCRIPTIONS: &str = "subscriptions";
/// Comma-separated NATS server URLs; the client fails over between all of them.
pub const CLUSTER_URIS: &str = "cluster_uris";
/// User JWT for decentralised auth; needs `client_seed`.
pub const CLIENT_JWT: &str = "client_jwt";
/// Nkey seed that signs the server nonce for `client_jwt`.
pub const CLIENT_SEED: &str = "client_seed";
/// Nkey seed on its own (nkey auth without a JWT).
pub const NKEY_SEED: &str = "nkey_seed";
/// User name for user/password auth.
pub const USERNAME: &str = "username";
/// Password for user/password auth.
pub const PASSWORD: &str = "password";
/// Token auth.
pub const TOKEN: &str = "token";
/// Path of a `.creds` file (JWT and seed in one file), read again at every
/// (re)connect so that a rotated file is picked up without re-linking.
pub const CREDENTIALS_FILE: &str = "credentials_file";
/// PEM text of the CA that signs the server certificate.
pub const TLS_CA: &str = "tls_ca";
/// Path of a PEM file holding the CA that signs the server certificate.
pub const TLS_CA_FILE: &str = "tls_ca_file";
/// PEM text of the client certificate (chain) for servers that verify clients.
pub const TLS_CERT: &str = "tls_cert";
/// Path of a PEM file holding the client certificate (chain).
pub const TLS_CERT_FILE: &str = "tls_cert_file";
/// PEM text of the client certificate's private key.
pub const TLS_KEY: &str = "tls_key";
/// Path of a PEM file holding the client certificate's private key.
pub const TLS_KEY_FILE: &str = "tls_key_file";
/// Prefix for request inboxes instead of `_INBOX`.
pub const CUSTOM_INBOX_PREFIX: &str = "custom_inbox_prefix";
/// Seconds between client pings to the server.
pub const PING_INTERVAL_SEC: &str = "ping_interval_sec";
/// Deliveries in flight at once per handler link.
pub const MAX_IN_FLIGHT: &str = "max_in_flight";
/// How long one `handle-message` call may take.
pub const HANDLER_TIMEOUT_MS: &str = "handler_timeout_ms";
/// How long link delete and shutdown wait for in-flight deliveries.
pub const DRAIN_TIMEOUT_MS: &str = "drain_timeout_ms";
/// How long a publish may wait for the server to take the message.
pub const PUBLISH_TIMEOUT_MS: &str = "publish_timeout_ms";
/// Request timeout used when a component passes `timeout-ms` 0.
pub const REQUEST_TIMEOUT_MS: &str = "request_timeout_ms";
/// Largest `timeout-ms` a component may ask for.
pub const MAX_REQUEST_TIMEOUT_MS: &str = "max_request_timeout_ms";
/// How long a new link waits for the server to confirm its connection.
pub const CONNECT_TIMEOUT_MS: &str = "connect_timeout_ms";
/// Subject patterns a consumer link may send to (publish, request and
/// reply-to subjects); unset means every subject not denied.
pub const PUBLISH_ALLOW: &str = "publish_allow";
/// Subject patterns a consumer link may not send to; replaces
/// [`DEFAULT_PUBLISH_DENY`] when set (an empty value denies nothing).
pub const PUBLISH_DENY: &str = "publish_deny";

/// What a consumer link may not send to unless its `publish_deny` says
/// otherwise: the lattice's control plane (`wasmbus.>`), wRPC invocations of
/// other components and providers (`{lattice}.{target}.wrpc.>`), the
/// server's system account, and the JetStream, KV and object store APIs
/// where the host keeps its lattice data and config.
pub const DEFAULT_PUBLISH_DENY: &str = "wasmbus.>,*.*.wrpc.>,$SYS.>,$JS.API.>,$KV.>,$O.>";

/// How a key's value is treated when it is read and when it is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// An ordinary value: read from config, shown in errors.
    Plain,
    /// A credential: read from secrets before config, never shown.
    Secret,
    /// Server URLs, which may carry `user:password@`: read from secrets
    /// before config, shown with the user info removed.
    Urls,
    /// PEM text that is not a secret but too long to be useful in a message.
    Pem,
}

/// Every key the provider accepts, in provider config and in link config
/// (and, for credential keys, in secrets). A new key is added here, or, for
/// a durable delivery key, to `durable::KEYS` (all plain).
const KEYS: &[(&str, Kind)] = &[
    (SUBSCRIPTIONS, Kind::Plain),
    (CLUSTER_URIS, Kind::Urls),
    (CLIENT_JWT, Kind::Secret),
    (CLIENT_SEED, Kind::Secret),
    (NKEY_SEED, Kind::Secret),
    (USERNAME, Kind::Secret),
    (PASSWORD, Kind::Secret),
    (TOKEN, Kind::Secret),
    (CREDENTIALS_FILE, Kind::Plain),
    (TLS_CA, Kind::Pem),
    (TLS_CA_FILE, Kind::Plain),
    (TLS_CERT, Kind::Pem),
    (TLS_CERT_FILE, Kind::Plain),
    (TLS_KEY, Kind::Secret),
    (TLS_KEY_FILE, Kind::Plain),
    (CUSTOM_INBOX_PREFIX, Kind::Plain),
    (PING_INTERVAL_SEC, Kind::Plain),
    (MAX_IN_FLIGHT, Kind::Plain),
    (HANDLER_TIMEOUT_MS, Kind::Plain),
    (DRAIN_TIMEOUT_MS, Kind::Plain),
    (PUBLISH_TIMEOUT_MS, Kind::Plain),
    (REQUEST_TIMEOUT_MS, Kind::Plain),
    (MAX_REQUEST_TIMEOUT_MS, Kind::Plain),
    (CONNECT_TIMEOUT_MS, Kind::Plain),
    (PUBLISH_ALLOW, Kind::Plain),
    (PUBLISH_DENY, Kind::Plain),
];

/// Every key the provider accepts.
pub fn known_keys() -> impl Iterator<Item = &'static str> {
    KEYS.iter()
        .map(|(key, _)| *key)
        .chain(durable::KEYS.iter().copied())
}

fn kind(key: &str) -> Option<Kind> {
    KEYS.iter()
        .find(|(name, _)| *name == key)
        .map(|(_, kind)| *kind)
        .or_else(|| durable::KEYS.contains(&key).then_some(Kind::Plain))
}

/// The one rule for showing a config value in an error, a log line or
/// Debug output: credentials are never shown, URLs lose their user info,
/// PEM text is named rather than printed; `None` means "do not show".
pub fn shown_value(key: &str, value: &str) -> Option<String> {
    match kind(key) {
        Some(Kind::Secret) => None,
        Some(Kind::Pem) => Some("<PEM text>".to_string()),
        Some(Kind::Urls) => Some(
            value
                .split(',')
                .map(|url| redact_url(url.trim()))
                .collect::<Vec<_>>()
                .join(","),
        ),
        Some(Kind::Plain) | None => Some(value.to_string()),
    }
}

/// Largest file the provider reads for a config key (CA, certificate, key,
/// credentials): real ones are a few KiB, and a bound keeps a path such as
/// `/dev/zero` or a huge file from exhausting memory.
pub const MAX_CONFIG_FILE_BYTES: u64 = 1024 * 1024;

/// Upper bound of `max_in_flight`: each delivery holds a task and a wRPC
/// exchange, and beyond this the lattice, not the provider, is the limit.
const MAX_IN_FLIGHT_LIMIT: usize = 4096;
const DEFAULT_MAX_IN_FLIGHT: usize = 64;
/// Matches the wRPC client's own default invocation timeout.
const DEFAULT_HANDLER_TIMEOUT: Duration = Duration::from_secs(10);
/// Long enough for typical handlers to finish; the host's shutdown delay
/// may cut a provider shutdown shorter (see README).
const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Link puts are handled one at a time by the SDK, so a link waiting for an
/// unreachable server must not hold the others up for long.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A rejected configuration value, naming the key and (where
/// [`shown_value`] allows) the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    key: String,
    value: Option<String>,
    reason: String,
}

impl ConfigError {
    /// A value of `key` that is wrong; shown only as [`shown_value`] allows.
    fn new(key: &str, value: &str, reason: impl Into<String>) -> Self {
        Self {
            key: key.to_string(),
            value: shown_value(key, value),
            reason: reason.into(),
        }
    }

    /// A problem with `key` as a whole (missing, conflicting), no value shown.
    fn about(key: &str, reason: impl Into<String>) -> Self {
        Self {
            key: key.to_string(),
            value: None,
            reason: reason.into(),
        }
    }

    /// The offending key.
    pub fn key(&self) -> &str {
        &self.key
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(value) => write!(
                f,
                "config key '{}' has invalid value {value:?}: {}",
                self.key, self.reason
            ),
            None => write!(f, "config key '{}': {}", self.key, self.reason),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Provider-level config and secrets: defaults under every link.
#[derive(Clone, Default)]
pub struct ProviderDefaults {
    config: HashMap<String, String>,
    secrets: HashMap<String, SecretValue>,
    /// The lattice's NATS URL, as the host gave it: the server of links that
    /// name none, so that a provider started without config talks to the
    /// NATS its host uses (no credentials are borrowed from the host).
    lattice_url: Option<String>,
}

impl ProviderDefaults {
    /// Takes the provider's merged named config and its secrets.
    pub fn new(config: &HashMap<String, String>, secrets: &HashMap<String, SecretValue>) -> Self {
        Self {
            config: config.clone(),
            secrets: secrets.clone(),
            lattice_url: None,
        }
    }

    /// Makes `url` (the lattice's NATS) the default of `cluster_uris`.
    pub fn with_lattice_url(mut self, url: &str) -> Self {
        self.lattice_url = Some(url.to_string()).filter(|url| !url.trim().is_empty());
        self
    }

    /// Replaces the config, as a provider config update does; the secrets
    /// the host gave at start stay.
    pub fn update_config(&mut self, config: &HashMap<String, String>) {
        self.config = config.clone();
    }

    /// Checks the defaults on their own, so that a broken default is
    /// reported when it arrives rather than on every link.
    pub fn check(&self) -> Result<(), ConfigError> {
        self.link_settings(&HashMap::new(), &HashMap::new())
            .map(|_| ())
    }

    /// Parses one handler link's settings: its config and secrets over
    /// these defaults.
    pub fn link_settings(
        &self,
        link_config: &HashMap<String, String>,
        link_secrets: &HashMap<String, SecretValue>,
    ) -> Result<LinkSettings, ConfigError> {
        self.settings_for(LinkRole::Handler, link_config, link_secrets)
    }

    /// Parses a link's settings for its role. `subscriptions` and the
    /// durable keys mean nothing on a consumer link and are not read there,
    /// as the v1 provider did not (wasmCloud's own examples set
    /// `subscriptions` on both links).
    pub fn settings_for(
        &self,
        role: LinkRole,
        link_config: &HashMap<String, String>,
        link_secrets: &HashMap<String, SecretValue>,
    ) -> Result<LinkSettings, ConfigError> {
        let mut values = HashMap::new();
        if let Some(url) = &self.lattice_url {
            values.insert(CLUSTER_URIS.to_string(), url.clone());
        }
        overlay(&mut values, &self.config, &self.secrets);
        // Authentication is one choice: a link that makes its own replaces
        // the provider's, rather than being refused as a second method.
        let names_auth = |key: &String| AUTH_KEYS.contains(&key.to_ascii_lowercase().as_str());
        if link_config.keys().any(names_auth) || link_secrets.keys().any(names_auth) {
            values.retain(|key, _| !AUTH_KEYS.contains(&key.as_str()));
        }
        overlay(&mut values, link_config, link_secrets);
        if role == LinkRole::Consumer {
            for key in std::iter::once(SUBSCRIPTIONS).chain(durable::KEYS.iter().copied()) {
                if values.remove(key).is_some() {
                    debug!(key, "handler link key on a consumer link is not used");
                }
            }
        }
        LinkSettings::from_values(&values)
    }
}

/// Which side of the messaging contract a link is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkRole {
    /// Provider -> component (`handler`): subscribes and delivers.
    Handler,
    /// Component -> provider (`consumer`): publishes and requests.
    Consumer,
}

/// The keys that choose how to authenticate; see [`parse_auth`].
const AUTH_KEYS: &[&str] = &[
    CLIENT_JWT,
    CLIENT_SEED,
    NKEY_SEED,
    USERNAME,
    PASSWORD,
    TOKEN,
    CREDENTIALS_FILE,
];

/// Lays config, then the keys among secrets that may come from secrets
/// (credentials and server URLs), over `values`, with keys folded to lower
/// case.
fn overlay(
    values: &mut HashMap<String, String>,
    config: &HashMap<String, String>,
    secrets: &HashMap<String, SecretValue>,
) {
    for (key, value) in config {
        let lower = key.to_ascii_lowercase();
        if lower != *key {
            // The v1 provider reads only lower-case keys. Here the key is
            // read as its lower-case form, unless that is also given, which
            // then wins: never one or the other at random.
            if config.contains_key(&lower) {
                warn!(key, "ignored: the same key in lower case is also set");
                continue;
            }
            warn!(
                key,
                read_as = lower,
                "upper-case config key read as lower case"
            );
        }
        warn_if_unknown(&lower);
        values.insert(lower, value.clone());
    }
    for (key, value) in secrets {
        let key = key.to_ascii_lowercase();
        if !matches!(kind(&key), Some(Kind::Secret | Kind::Urls)) {
            continue;
        }
        let text = match value {
            SecretValue::String(text) => Some(text.clone()),
            SecretValue::Bytes(bytes) => String::from_utf8(bytes.clone()).ok(),
        };
        match text {
            Some(text) => {
                values.insert(key, text);
            }
            None => warn!(key, "secret is not UTF-8 text and is ignored"),
        }
    }
}

/// Warns about a key the provider does not know, once per key per process.
/// `OTEL_*` keys belong to the SDK's observability set-up.
fn warn_if_unknown(key: &str) {
    static WARNED: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    if kind(key).is_some() || key.starts_with("otel_") {
        return;
    }
    let warned = WARNED.get_or_init(Default::default);
    let first_time = warned
        .lock()
        .map(|mut set| set.insert(key.to_string()))
        .unwrap_or(true);
    if first_time {
        warn!(key, "ignoring unknown config key");
    }
}

/// Everything one link needs, parsed and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkSettings {
    pub connection: ConnectionSettings,
    pub handler: HandlerSettings,
    pub consumer: ConsumerSettings,
}

impl LinkSettings {
    fn from_values(values: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let get = |key: &str| values.get(key).map(String::as_str);
        Ok(Self {
            connection: ConnectionSettings {
                servers: parse_servers(get(CLUSTER_URIS))?,
                auth: match parse_auth(&get)? {
                    Auth::None => url_credentials(get(CLUSTER_URIS)),
                    auth => auth,
                },
                tls: parse_tls(&get)?,
                custom_inbox_prefix: get(CUSTOM_INBOX_PREFIX)
                    .map(|prefix| parse_inbox_prefix(prefix.trim()))
                    .transpose()?,
                ping_interval: match get(PING_INTERVAL_SEC) {
                    // The v1 provider never read this key: its users' "0"
                    // means the client's default, not an error.
                    Some(v) if v.trim() == "0" => None,
                    Some(v) => Some(parse_duration(PING_INTERVAL_SEC, v, Duration::from_secs)?),
                    None => None,
                },
                connect_timeout: duration_ms(get, CONNECT_TIMEOUT_MS, DEFAULT_CONNECT_TIMEOUT)?,
            },
            handler: HandlerSettings {
                subscriptions: get(SUBSCRIPTIONS)
                    .map(parse_subscriptions)
                    .transpose()?
                    .unwrap_or_default(),
                max_in_flight: parse_max_in_flight(get(MAX_IN_FLIGHT))?,
                handler_timeout: duration_ms(get, HANDLER_TIMEOUT_MS, DEFAULT_HANDLER_TIMEOUT)?,
                drain_timeout: duration_ms(get, DRAIN_TIMEOUT_MS, DEFAULT_DRAIN_TIMEOUT)?,
                durable: durable::parse(get)?,
            },
            consumer: parse_consumer(get)?,
        })
    }
}

/// How to reach and authenticate to NATS. Links whose settings are equal
/// share one connection, so this is `Eq + Hash`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ConnectionSettings {
    /// Validated server URLs, as written.
    pub servers: Vec<String>,
    pub auth: Auth,
    pub tls: TlsSettings,
    pub custom_inbox_prefix: Option<String>,
    pub ping_interval: Option<Duration>,
    pub connect_timeout: Duration,
}

impl ConnectionSettings {
    /// The server list with any `user:password@` removed, for logs and errors.
    pub fn redacted_servers(&self) -> String {
        self.servers
            .iter()
            .map(|url| redact_url(url))
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl fmt::Debug for ConnectionSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionSettings")
            .field("servers", &self.redacted_servers())
            .field("auth", &self.auth)
            .field("tls", &self.tls)
            .field("custom_inbox_prefix", &self.custom_inbox_prefix)
            .field("ping_interval", &self.ping_interval)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// How the connection authenticates. `Debug` names the method only.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Auth {
    None,
    /// Decentralised auth: user JWT plus the seed that signs the nonce.
    Jwt {
        jwt: String,
        seed: String,
    },
    NKey {
        seed: String,
    },
    UserPassword {
        user: String,
        password: String,
    },
    Token(String),
    /// Read at every (re)connect, so that a rotated file takes effect.
    CredentialsFile(PathBuf),
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let method = match self {
            Auth::None => "none",
            Auth::Jwt { .. } => "jwt",
            Auth::NKey { .. } => "nkey",
            Auth::UserPassword { .. } => "user/password",
            Auth::Token(_) => "token",
            Auth::CredentialsFile(_) => "credentials file",
        };
        f.write_str(method)
    }
}

/// TLS to the server. `Debug` says what is set, never the key.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct TlsSettings {
    /// PEM text of the CA, from `tls_ca` or read from `tls_ca_file`.
    pub ca: Option<String>,
    /// Client certificate chain and private key, both PEM text.
    pub client: Option<(String, String)>,
}

impl TlsSettings {
    /// True when the connection must use TLS.
    pub fn required(&self) -> bool {
        self.ca.is_some() || self.client.is_some()
    }
}

impl fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSettings")
            .field("ca", &self.ca.is_some())
            .field("client_certificate", &self.client.is_some())
            .finish()
    }
}

/// One entry of `subscriptions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub subject: String,
    pub queue_group: Option<String>,
}

impl fmt::Display for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.queue_group {
            Some(queue) => write!(f, "{}|{queue}", self.subject),
            None => f.write_str(&self.subject),
        }
    }
}

/// Settings of a handler link (provider -> component).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerSettings {
    pub subscriptions: Vec<Subscription>,
    pub max_in_flight: usize,
    pub handler_timeout: Duration,
    pub drain_timeout: Duration,
    /// JetStream consumers the link also delivers from.
    pub durable: DurableSettings,
}

/// Settings of a consumer link (component -> provider).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerSettings {
    pub publish_timeout: Duration,
    pub default_request_timeout: Duration,
    pub max_request_timeout: Duration,
    pub access: SubjectAccess,
}

/// Which subjects a consumer link may send to, as NATS publish permissions
/// put it: allowed if `allow` is unset or a pattern in it matches, and no
/// pattern in `deny` matches (deny wins).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectAccess {
    allow: Option<Vec<SubjectPattern>>,
    deny: Vec<SubjectPattern>,
}

impl SubjectAccess {
    /// `Err` names the key and the pattern that refuses `subject`.
    pub fn check(&self, subject: &str) -> Result<(), String> {
        if let Some(pattern) = self.deny.iter().find(|p| p.matches(subject)) {
            return Err(format!("denied by {PUBLISH_DENY} pattern {pattern:?}"));
        }
        match &self.allow {
            Some(allow) if !allow.iter().any(|p| p.matches(subject)) => Err(format!(
                "not matched by any {PUBLISH_ALLOW} pattern ({})",
                allow
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            )),
            _ => Ok(()),
        }
    }
}

fn parse_consumer<'a>(
    get: impl Fn(&str) -> Option<&'a str> + Copy,
) -> Result<ConsumerSettings, ConfigError> {
    let settings = ConsumerSettings {
        publish_timeout: duration_ms(get, PUBLISH_TIMEOUT_MS, DEFAULT_PUBLISH_TIMEOUT)?,
        default_request_timeout: duration_ms(get, REQUEST_TIMEOUT_MS, DEFAULT_REQUEST_TIMEOUT)?,
        max_request_timeout: duration_ms(get, MAX_REQUEST_TIMEOUT_MS, DEFAULT_MAX_REQUEST_TIMEOUT)?,
        access: SubjectAccess {
            allow: get(PUBLISH_ALLOW)
                .map(|value| parse_patterns(PUBLISH_ALLOW, value))
                .transpose()?,
            deny: parse_patterns(
                PUBLISH_DENY,
                get(PUBLISH_DENY).unwrap_or(DEFAULT_PUBLISH_DENY),
            )?,
        },
    };
    if settings.default_request_timeout > settings.max_request_timeout {
        return Err(ConfigError::new(
            REQUEST_TIMEOUT_MS,
            &settings.default_request_timeout.as_millis().to_string(),
            format!(
                "must not exceed {MAX_REQUEST_TIMEOUT_MS} ({} ms)",
                settings.max_request_timeout.as_millis()
            ),
        ));
    }
    Ok(settings)
}

/// A comma-separated list of subject patterns; empty entries are skipped,
/// so an empty value is an empty list.
fn parse_patterns(key: &str, value: &str) -> Result<Vec<SubjectPattern>, ConfigError> {
    value
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            SubjectPattern::parse(entry)
                .map_err(|reason| ConfigError::new(key, value, format!("{entry:?}: {reason}")))
        })
        .collect()
}

fn parse_servers(value: Option<&str>) -> Result<Vec<String>, ConfigError> {
    let Some(value) = value else {
        return Ok(vec![DEFAULT_CLUSTER_URI.to_string()]);
    };
    let mut servers = Vec::new();
    for (index, entry) in value.split(',').map(str::trim).enumerate() {
        let position = index + 1;
        if entry.is_empty() {
            warn!(
                key = CLUSTER_URIS,
                position, "empty entry in the list is skipped"
            );
            continue;
        }
        // An unparseable URL cannot be redacted: one that may hold user
        // info (an '@') is named by its position only.
        if let Err(err) = async_nats::ServerAddr::from_str(entry) {
            let named = if entry.contains('@') {
                format!("entry {position}")
            } else {
                format!("entry {position} ({entry:?})")
            };
            let reason = format!("{named} is not a NATS server URL: {err}");
            if !servers.is_empty() {
                // The v1 provider used only the first entry: a bad later one
                // is left out rather than failing the link.
                warn!(key = CLUSTER_URIS, reason, "entry left out");
                continue;
            }
            return Err(ConfigError::about(CLUSTER_URIS, reason));
        }
        servers.push(entry.to_string());
    }
    if servers.is_empty() {
        return Err(ConfigError::about(CLUSTER_URIS, "names no server"));
    }
    Ok(servers)
}

/// The value of `key` without surrounding white space, or `None` when it
/// is absent or blank: a blank value means "not set".
fn non_blank<'a>(get: impl Fn(&str) -> Option<&'a str>, key: &str) -> Option<&'a str> {
    get(key).map(str::trim).filter(|v| !v.is_empty())
}

fn parse_auth<'a>(get: &impl Fn(&str) -> Option<&'a str>) -> Result<Auth, ConfigError> {
    let jwt = non_blank(get, CLIENT_JWT);
    let client_seed = non_blank(get, CLIENT_SEED);
    let nkey_seed = non_blank(get, NKEY_SEED);
    let user = non_blank(get, USERNAME);
    let password = non_blank(get, PASSWORD);
    let token = non_blank(get, TOKEN);
    let creds = non_blank(get, CREDENTIALS_FILE);

    let methods: Vec<(&str, &str)> = [
        (
            jwt.is_some() || client_seed.is_some(),
            (CLIENT_JWT, "client_jwt/client_seed"),
        ),
        (nkey_seed.is_some(), (NKEY_SEED, NKEY_SEED)),
        (
            user.is_some() || password.is_some(),
            (USERNAME, "username/password"),
        ),
        (token.is_some(), (TOKEN, TOKEN)),
        (creds.is_some(), (CREDENTIALS_FILE, CREDENTIALS_FILE)),
    ]
    .into_iter()
    .filter_map(|(set, names)| set.then_some(names))
    .collect();
    if let [(key, first), (_, second), ..] = methods.as_slice() {
        return Err(ConfigError::about(
            key,
            format!("choose one authentication method, found both {first} and {second}"),
        ));
    }

    let check_seed = |key: &str, seed: &str| {
        nkeys::KeyPair::from_seed(seed)
            .map(|_| ())
            .map_err(|_| ConfigError::about(key, "not a valid nkey seed"))
    };
    Ok(
        match (jwt, client_seed, nkey_seed, user, password, token, creds) {
            (Some(jwt), Some(seed), ..) => {
                check_seed(CLIENT_SEED, seed)?;
                Auth::Jwt {
                    jwt: jwt.to_string(),
                    seed: seed.to_string(),
                }
            }
            (Some(_), None, ..) => {
                return Err(ConfigError::about(
                    CLIENT_SEED,
                    "is required with client_jwt",
                ))
            }
            (None, Some(_), ..) => {
                return Err(ConfigError::about(
                    CLIENT_JWT,
                    "is required with client_seed",
                ))
            }
            (_, _, Some(seed), ..) => {
                check_seed(NKEY_SEED, seed)?;
                Auth::NKey {
                    seed: seed.to_string(),
                }
            }
            (_, _, _, Some(user), Some(password), ..) => Auth::UserPassword {
                user: user.to_string(),
                password: password.to_string(),
            },
            (_, _, _, Some(_), None, ..) => {
                return Err(ConfigError::about(PASSWORD, "is required with username"))
            }
            (_, _, _, None, Some(_), ..) => {
                return Err(ConfigError::about(USERNAME, "is required with password"))
            }
            (_, _, _, _, _, Some(token), _) => Auth::Token(token.to_string()),
            (.., Some(path)) => {
                // Checked now so that a missing or broken file rejects the
                // link with a clear error; read again at every connect.
                read_credentials(Path::new(path))
                    .map_err(|reason| ConfigError::new(CREDENTIALS_FILE, path, reason))?;
                Auth::CredentialsFile(PathBuf::from(path))
            }
            _ => Auth::None,
        },
    )
}

/// Credentials written into a server URL (`nats://user:password@host` or
/// `nats://token@host`), used when no authentication key is set: the NATS
/// client does not apply them itself. The first URL that has any wins.
fn url_credentials(servers: Option<&str>) -> Auth {
    let decode = |text: &str| {
        percent_encoding::percent_decode_str(text)
            .decode_utf8_lossy()
            .into_owned()
    };
    servers
        .into_iter()
        .flat_map(|list| list.split(','))
        .filter_map(|entry| {
            let entry = entry.trim();
            if entry.contains("://") {
                url::Url::parse(entry).ok()
            } else {
                url::Url::parse(&format!("nats://{entry}")).ok()
            }
        })
        .find_map(|url| match (url.username(), url.password()) {
            ("", None) => None,
            (user, Some(password)) => Some(Auth::UserPassword {
                user: decode(user),
                password: decode(password),
            }),
            (token, None) => Some(Auth::Token(decode(token))),
        })
        .unwrap_or(Auth::None)
}

/// A user JWT and seed, as a `.creds` file holds them.
pub struct Credentials {
    pub jwt: String,
    pub seed: String,
}

/// Reads and parses a `.creds` file (bounded). The error names what is
/// wrong, never the content.
pub fn read_credentials(path: &Path) -> Result<Credentials, String> {
    let text = read_bounded(path)?;
    // A creds file holds two armoured blocks: the user JWT, then the seed.
    // Each block's body is the first non-empty line after its opening line.
    let block = |opening: &str| {
        let mut lines = text.lines().map(str::trim);
        lines.find(|line| line.starts_with("-----BEGIN") && line.contains(opening))?;
        lines.find(|line| !line.is_empty()).map(str::to_string)
    };
    let jwt = block("USER JWT").ok_or("holds no user JWT block")?;
    let seed = block("NKEY SEED").ok_or("holds no nkey seed block")?;
    nkeys::KeyPair::from_seed(&seed).map_err(|_| "its nkey seed is not valid")?;
    Ok(Credentials { jwt, seed })
}

/// Reads a file named in config: a regular file (not a device or pipe,
/// which could block or never end) of at most [`MAX_CONFIG_FILE_BYTES`].
pub fn read_bounded(path: &Path) -> Result<String, String> {
    use std::io::Read as _;
    let metadata = std::fs::metadata(path).map_err(|err| format!("cannot read: {err}"))?;
    if !metadata.is_file() {
        return Err("is not a regular file".into());
    }
    let file = std::fs::File::open(path).map_err(|err| format!("cannot read: {err}"))?;
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|err| format!("cannot read: {err}"))?;
    if bytes.len() as u64 > MAX_CONFIG_FILE_BYTES {
        return Err(format!(
            "is larger than the limit of {MAX_CONFIG_FILE_BYTES} bytes"
        ));
    }
    String::from_utf8(bytes).map_err(|_| "is not UTF-8 text".into())
}

/// PEM text from a key holding it or a key naming a file; not both.
fn pem_from<'a>(
    get: &impl Fn(&str) -> Option<&'a str>,
    text_key: &'static str,
    file_key: &'static str,
) -> Result<Option<(&'static str, String)>, ConfigError> {
    match (get(text_key), get(file_key)) {
        (Some(_), Some(_)) => Err(ConfigError::about(
            file_key,
            format!("set either {text_key} or {file_key}, not both"),
        )),
        (Some(text), None) => Ok(Some((text_key, text.to_string()))),
        (None, Some(path)) => read_bounded(Path::new(path))
            .map(|pem| Some((file_key, pem)))
            .map_err(|reason| ConfigError::new(file_key, path, reason)),
        (None, None) => Ok(None),
    }
}

/// Checks that `pem` (the value of `key`) holds at least one certificate.
fn check_certificates(key: &str, pem: &str) -> Result<(), ConfigError> {
    let certs = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| ConfigError::about(key, format!("not valid PEM: {err}")))?;
    if certs.is_empty() {
        return Err(ConfigError::about(
            key,
            "holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)",
        ));
    }
    Ok(())
}

fn parse_tls<'a>(get: &impl Fn(&str) -> Option<&'a str>) -> Result<TlsSettings, ConfigError> {
    let ca = match pem_from(get, TLS_CA, TLS_CA_FILE)? {
        Some((key, pem)) => {
            check_certificates(key, &pem)?;
            Some(pem)
        }
        None => None,
    };
    let cert = pem_from(get, TLS_CERT, TLS_CERT_FILE)?;
    let key = pem_from(get, TLS_KEY, TLS_KEY_FILE)?;
    let client = match (cert, key) {
        (Some((cert_key, cert)), Some((key_key, key))) => {
            check_certificates(cert_key, &cert)?;
            // The parser's error could quote key material: not passed on.
            match rustls_pemfile::private_key(&mut key.as_bytes()) {
                Ok(Some(_)) => {}
                _ => {
                    return Err(ConfigError::about(
                        key_key,
                        "holds no PEM private key (expected -----BEGIN PRIVATE KEY----- or \
                         an RSA or EC key)",
                    ))
                }
            }
            Some((cert, key))
        }
        (Some((cert_key, _)), None) => {
            return Err(ConfigError::about(
                cert_key,
                format!("needs the client certificate's key in {TLS_KEY} or {TLS_KEY_FILE}"),
            ))
        }
        (None, Some((key_key, _))) => {
            return Err(ConfigError::about(
                key_key,
                format!("needs the client certificate in {TLS_CERT} or {TLS_CERT_FILE}"),
            ))
        }
        (None, None) => None,
    };
    Ok(TlsSettings { ca, client })
}

fn parse_inbox_prefix(prefix: &str) -> Result<String, ConfigError> {
    // A prefix ending in a wildcard (`_TEST.>`, as the v1 provider's own
    // tests write it) names the inboxes under it: the wildcard is dropped.
    let prefix = match prefix
        .strip_suffix(".>")
        .or_else(|| prefix.strip_suffix(".*"))
    {
        Some(stem) => {
            warn!(
                key = CUSTOM_INBOX_PREFIX,
                prefix = stem,
                "wildcard at the end of the prefix dropped"
            );
            stem
        }
        None => prefix,
    };
    subject::check_publish_subject(prefix)
        .map_err(|reason| ConfigError::new(CUSTOM_INBOX_PREFIX, prefix, reason))?;
    Ok(prefix.to_string())
}

fn parse_subscriptions(value: &str) -> Result<Vec<Subscription>, ConfigError> {
    if value.trim().is_empty() {
        return Ok(Vec::new());
    }
    if value.split(',').any(|entry| entry.trim().is_empty()) {
        // The v1 provider skips them too (`a,b,` and `a,,b` are common).
        warn!(key = SUBSCRIPTIONS, "empty entries in the list are skipped");
    }
    value
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            let (subject, queue_group) = match entry.split_once('|') {
                Some((subject, queue)) => (subject.trim(), Some(queue.trim())),
                None => (entry, None),
            };
            subject::check_subscribe_subject(subject).map_err(|reason| {
                ConfigError::new(
                    SUBSCRIPTIONS,
                    value,
                    format!("subject {subject:?}: {reason}"),
                )
            })?;
            if let Some(queue) = queue_group {
                subject::check_queue_group(queue).map_err(|reason| {
                    ConfigError::new(
                        SUBSCRIPTIONS,
                        value,
                        format!("queue group {queue:?} of {subject:?}: {reason}"),
                    )
                })?;
            }
            Ok(Subscription {
                subject: subject.to_string(),
                queue_group: queue_group.map(str::to_string),
            })
        })
        .collect()
}

fn parse_max_in_flight(value: Option<&str>) -> Result<usize, ConfigError> {
    let Some(value) = value else {
        return Ok(DEFAULT_MAX_IN_FLIGHT);
    };
    match value.trim().parse::<usize>() {
        Ok(n) if (1..=MAX_IN_FLIGHT_LIMIT).contains(&n) => Ok(n),
        _ => Err(ConfigError::new(
            MAX_IN_FLIGHT,
            value,
            format!("expected a whole number from 1 to {MAX_IN_FLIGHT_LIMIT}"),
        )),
    }
}

/// The largest value each duration key accepts, in its own unit. Why each
/// bound: `connect_timeout_ms` and `publish_timeout_ms` hold up a link put or
/// a component's call; `drain_timeout_ms` holds up shutdown; a handler or
/// request that takes longer than ten minutes is a job, not a message.
const DURATION_MAXIMA: &[(&str, u64)] = &[
    (CONNECT_TIMEOUT_MS, 60_000),
    (PUBLISH_TIMEOUT_MS, 60_000),
    (DRAIN_TIMEOUT_MS, 60_000),
    (HANDLER_TIMEOUT_MS, 600_000),
    (REQUEST_TIMEOUT_MS, 600_000),
    (MAX_REQUEST_TIMEOUT_MS, 600_000),
    (PING_INTERVAL_SEC, 3_600),
    (ACK_WAIT_MS, 43_200_000),
    (BACKOFF_MS, 3_600_000),
];

/// Reads a key holding milliseconds, or the default when it is absent.
fn duration_ms<'a>(
    get: impl Fn(&str) -> Option<&'a str>,
    key: &str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    get(key).map_or(Ok(default), |value| {
        parse_duration(key, value, Duration::from_millis)
    })
}

/// Parses a whole number of some unit from 1 to the key's maximum (no zero:
/// a zero timeout or interval is never what anybody means).
fn parse_duration(
    key: &str,
    value: &str,
    unit: fn(u64) -> Duration,
) -> Result<Duration, ConfigError> {
    let max = DURATION_MAXIMA
        .iter()
        .find(|(name, _)| *name == key)
        .map_or(u64::MAX, |(_, max)| *max);
    match value.trim().parse::<u64>() {
        Ok(n) if (1..=max).contains(&n) => Ok(unit(n)),
        _ => Err(ConfigError::new(
            key,
            value,
            format!("expected a whole number from 1 to {max}"),
        )),
    }
}

/// A server URL fit to show: user info (`user:password@`, a token, an nkey)
/// replaced by `<redacted>@`. The URL is taken apart as a URL parser does
/// (user info ends at the last `@` before the host), and one that does not
/// parse is not shown at all.
pub fn redact_url(url: &str) -> String {
    let parsed = if url.contains("://") {
        url::Url::parse(url)
    } else {
        url::Url::parse(&format!("nats://{url}"))
    };
    let Ok(parsed) = parsed else {
        return "<unparseable URL>".to_string();
    };
    let user_info = if parsed.username().is_empty() && parsed.password().is_none() {
        ""
    } else {
        "<redacted>@"
    };
    let host = parsed.host_str().unwrap_or_default();
    match parsed.port() {
        Some(port) => format!("{}://{user_info}{host}:{port}", parsed.scheme()),
        None => format!("{}://{user_info}{host}", parsed.scheme()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An owned config map from a test's literal pairs.
    pub(super) fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// A handler link's settings from its config alone, parsed as the
    /// provider parses a link.
    pub(super) fn settings(pairs: &[(&str, &str)]) -> Result<LinkSettings, ConfigError> {
        ProviderDefaults::default().link_settings(&map(pairs), &HashMap::new())
    }

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let s = settings(&[]).expect("defaults parse");
        assert_eq!(s.connection.servers, vec![DEFAULT_CLUSTER_URI]);
        assert_eq!(s.connection.auth, Auth::None);
        assert_eq!(s.handler.max_in_flight, 64);
        assert!(s.handler.subscriptions.is_empty());
    }

    #[test]
    fn the_lattice_url_is_the_server_of_links_that_name_none() {
        let defaults = ProviderDefaults::default().with_lattice_url("nats://lattice:4222");
        let s = defaults
            .link_settings(&HashMap::new(), &HashMap::new())
            .expect("parses");
        assert_eq!(s.connection.servers, vec!["nats://lattice:4222"]);

        let provider =
            ProviderDefaults::new(&map(&[(CLUSTER_URIS, "nats://p:4222")]), &HashMap::new())
                .with_lattice_url("nats://lattice:4222");
        let s = provider
            .link_settings(&HashMap::new(), &HashMap::new())
            .expect("parses");
        assert_eq!(
            s.connection.servers,
            vec!["nats://p:4222"],
            "provider config wins"
        );
    }

    #[test]
    fn subscriptions_split_on_commas_and_queue_groups_on_bars() {
        let s = settings(&[(SUBSCRIPTIONS, "a.b, c.*|workers ,d.>")]).expect("parses");
        let subs: Vec<String> = s
            .handler
            .subscriptions
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(subs, ["a.b", "c.*|workers", "d.>"]);
    }

    #[test]
    fn empty_subscription_entries_are_skipped_as_the_v1_provider_does() {
        for value in ["a,,b", "a,b,", ",a,b"] {
            let s = settings(&[(SUBSCRIPTIONS, value)]).expect("accepted");
            let subjects: Vec<_> = s
                .handler
                .subscriptions
                .iter()
                .map(|s| s.subject.as_str())
                .collect();
            assert_eq!(subjects, ["a", "b"], "{value}");
        }
    }

    #[test]
    fn a_bad_cluster_uri_after_the_first_is_left_out() {
        let s = settings(&[(CLUSTER_URIS, "nats://a:4222,nats://b:notaport,")]).expect("accepted");
        assert_eq!(s.connection.servers, ["nats://a:4222"]);
        let err =
            settings(&[(CLUSTER_URIS, "nats://b:notaport,nats://a:4222")]).expect_err("first bad");
        assert!(err.to_string().contains("entry 1"), "{err}");
        assert!(settings(&[(CLUSTER_URIS, ",")]).is_err());
    }

    #[test]
    fn credentials_in_a_server_url_are_used_when_no_auth_key_is_set() {
        let s = settings(&[(CLUSTER_URIS, "nats://alice:p%40ss@h:4222")]).expect("parses");
        assert_eq!(
            s.connection.auth,
            Auth::UserPassword {
                user: "alice".into(),
                password: "p@ss".into()
            }
        );
        let s = settings(&[(CLUSTER_URIS, "tok3n@h:4222")]).expect("parses");
        assert_eq!(s.connection.auth, Auth::Token("tok3n".into()));
        let s = settings(&[(CLUSTER_URIS, "nats://a:b@h:4222"), (TOKEN, "t")]).expect("parses");
        assert_eq!(s.connection.auth, Auth::Token("t".into()));
    }

    #[test]
    fn subscriptions_on_a_consumer_link_are_not_read() {
        let config: HashMap<String, String> =
            [(SUBSCRIPTIONS.to_string(), "not..valid".to_string())].into();
        let defaults = ProviderDefaults::default();
        assert!(defaults.link_settings(&config, &HashMap::new()).is_err());
        let s = defaults
            .settings_for(LinkRole::Consumer, &config, &HashMap::new())
            .expect("accepted");
        assert!(s.handler.subscriptions.is_empty());
    }

    #[test]
    fn a_wildcard_at_the_end_of_the_inbox_prefix_is_dropped() {
        let s = settings(&[(CUSTOM_INBOX_PREFIX, "_TEST.>")]).expect("accepted");
        assert_eq!(s.connection.custom_inbox_prefix.as_deref(), Some("_TEST"));
    }

    #[test]
    fn ping_interval_zero_means_the_client_default() {
        let s = settings(&[(PING_INTERVAL_SEC, "0")]).expect("accepted");
        assert_eq!(s.connection.ping_interval, None);
    }

    #[test]
    fn a_lower_case_key_wins_over_the_same_key_in_upper_case() {
        for _ in 0..20 {
            let s = settings(&[(MAX_IN_FLIGHT, "5"), ("MAX_IN_FLIGHT", "9")]).expect("parses");
            assert_eq!(s.handler.max_in_flight, 5);
        }
    }

    #[test]
    fn every_cluster_uri_is_kept() {
        let s = settings(&[(CLUSTER_URIS, "nats://a:4222,nats://b:4223")]).expect("parses");
        assert_eq!(s.connection.servers.len(), 2);
    }

    #[test]
    fn keys_are_case_insensitive() {
        let s = settings(&[("MAX_IN_FLIGHT", "3")]).expect("parses");
        assert_eq!(s.handler.max_in_flight, 3);
    }

    #[test]
    fn link_config_overrides_provider_config() {
        let provider: HashMap<String, String> =
            [(MAX_IN_FLIGHT.to_string(), "7".to_string())].into();
        let defaults = ProviderDefaults::new(&provider, &HashMap::new());
        defaults.check().expect("valid");
        let link: HashMap<String, String> = [(MAX_IN_FLIGHT.to_string(), "9".to_string())].into();
        let s = defaults
            .link_settings(&link, &HashMap::new())
            .expect("parses");
        assert_eq!(s.handler.max_in_flight, 9);
        let s = defaults
            .link_settings(&HashMap::new(), &HashMap::new())
            .expect("parses");
        assert_eq!(s.handler.max_in_flight, 7);
    }

    #[test]
    fn secrets_win_over_config_for_credentials() {
        let config: HashMap<String, String> = [
            (USERNAME.to_string(), "u".to_string()),
            (PASSWORD.to_string(), "from-config".to_string()),
        ]
        .into();
        let secrets: HashMap<String, SecretValue> = [(
            PASSWORD.to_string(),
            SecretValue::String("from-secret".into()),
        )]
        .into();
        let s = ProviderDefaults::default()
            .link_settings(&config, &secrets)
            .expect("parses");
        assert_eq!(
            s.connection.auth,
            Auth::UserPassword {
                user: "u".into(),
                password: "from-secret".into()
            }
        );
    }

    #[test]
    fn credential_values_never_appear_in_errors_or_debug() {
        let err = settings(&[(NKEY_SEED, "SUAnotarealseed")]).expect_err("rejected");
        assert!(!err.to_string().contains("SUAnotarealseed"), "{err}");
        let s = settings(&[(TOKEN, "s3cr3t"), (CLUSTER_URIS, "nats://me:pw@host:4222")])
            .expect("parses");
        let debug = format!("{:?}", s.connection);
        assert!(
            !debug.contains("s3cr3t") && !debug.contains("pw@"),
            "{debug}"
        );
    }

    #[test]
    fn link_authentication_replaces_the_providers() {
        let provider: HashMap<String, String> = [(USERNAME.to_string(), "p".to_string())].into();
        let secrets: HashMap<String, SecretValue> =
            [(PASSWORD.to_string(), SecretValue::String("pw".into()))].into();
        let defaults = ProviderDefaults::new(&provider, &secrets);
        let link: HashMap<String, String> = [(TOKEN.to_string(), "t".to_string())].into();
        let s = defaults
            .link_settings(&link, &HashMap::new())
            .expect("parses");
        assert_eq!(s.connection.auth, Auth::Token("t".into()));
        let s = defaults
            .link_settings(&HashMap::new(), &HashMap::new())
            .expect("parses");
        assert!(matches!(s.connection.auth, Auth::UserPassword { .. }));
    }

    #[test]
    fn provider_secrets_survive_a_config_update() {
        let secrets: HashMap<String, SecretValue> =
            [(PASSWORD.to_string(), SecretValue::String("pw".into()))].into();
        let mut defaults = ProviderDefaults::new(&HashMap::new(), &secrets);
        defaults.update_config(&[(USERNAME.to_string(), "u".to_string())].into());
        let s = defaults
            .link_settings(&HashMap::new(), &HashMap::new())
            .expect("parses");
        assert_eq!(
            s.connection.auth,
            Auth::UserPassword {
                user: "u".into(),
                password: "pw".into()
            }
        );
    }

    #[test]
    fn durations_above_their_documented_maximum_are_rejected() {
        let err = settings(&[(DRAIN_TIMEOUT_MS, "86400000")]).expect_err("too long");
        assert!(err.to_string().contains("from 1 to 60000"), "{err}");
        assert!(settings(&[(DRAIN_TIMEOUT_MS, "60000")]).is_ok());
        assert!(settings(&[(PING_INTERVAL_SEC, "3601")]).is_err());
    }

    #[test]
    fn two_auth_methods_are_rejected() {
        let err =
            settings(&[(TOKEN, "t"), (USERNAME, "u"), (PASSWORD, "p")]).expect_err("rejected");
        assert!(err.to_string().contains("choose one"), "{err}");
    }

    #[test]
    fn request_default_above_maximum_is_rejected() {
        let err = settings(&[
            (REQUEST_TIMEOUT_MS, "5000"),
            (MAX_REQUEST_TIMEOUT_MS, "1000"),
        ])
        .expect_err("rejected");
        assert_eq!(err.key(), REQUEST_TIMEOUT_MS);
    }

    #[test]
    fn redact_url_hides_user_info() {
        assert_eq!(redact_url("nats://u:p@h:1"), "nats://<redacted>@h:1");
        assert_eq!(redact_url("h:1"), "nats://h:1");
        assert_eq!(redact_url("tls://token@h"), "tls://<redacted>@h");
    }

    #[test]
    fn redact_url_splits_user_info_at_the_last_at_sign() {
        let shown = redact_url("nats://u:p@ss@h:4222");
        assert_eq!(shown, "nats://<redacted>@h:4222");
        assert!(!shown.contains("ss@"), "{shown}");
    }

    #[test]
    fn username_and_password_both_come_from_secrets() {
        let secrets: HashMap<String, SecretValue> = [
            (USERNAME.to_string(), SecretValue::String("alice".into())),
            (PASSWORD.to_string(), SecretValue::String("pw-1".into())),
        ]
        .into();
        let s = ProviderDefaults::default()
            .link_settings(&HashMap::new(), &secrets)
            .expect("parses");
        assert_eq!(
            s.connection.auth,
            Auth::UserPassword {
                user: "alice".into(),
                password: "pw-1".into()
            }
        );
    }

    #[test]
    fn password_without_username_is_rejected_without_quoting_it() {
        let err = settings(&[(PASSWORD, "pw-quoted-nowhere")]).expect_err("rejected");
        assert_eq!(err.key(), USERNAME);
        assert!(
            !format!("{err} {err:?}").contains("pw-quoted-nowhere"),
            "{err}"
        );
    }

    #[test]
    fn every_credential_error_hides_the_values() {
        let cases: &[&[(&str, &str)]] = &[
            &[(USERNAME, "user-value-1")],
            &[(CLIENT_JWT, "jwt-value-1")],
            &[(CLIENT_SEED, "seed-value-1")],
            &[(NKEY_SEED, "seed-value-1")],
            &[(TOKEN, "token-value-1"), (PASSWORD, "pw-value-1")],
            &[(TLS_KEY, "key-value-1"), (TLS_CERT, "cert-value-1")],
        ];
        for pairs in cases {
            let err = settings(pairs).expect_err("rejected");
            let text = format!("{err} {err:?}");
            for (_, value) in *pairs {
                assert!(!text.contains(value), "{text}");
            }
        }
    }

    #[test]
    fn trailing_comma_in_cluster_uris_is_skipped_without_printing_the_list() {
        let s = settings(&[(CLUSTER_URIS, "nats://u:pw-in-url@h:4222,")]).expect("accepted");
        assert_eq!(s.connection.servers.len(), 1);
        assert!(!format!("{s:?}").contains("pw-in-url"));
    }

    #[test]
    fn unparseable_cluster_uri_is_named_by_position_not_shown() {
        let err = settings(&[(CLUSTER_URIS, "nats://u:pw-x@h:notaport,nats://h:1")])
            .expect_err("rejected");
        let text = err.to_string();
        assert!(text.contains("entry 1"), "{text}");
        assert!(!text.contains("pw-x"), "{text}");
    }

    #[test]
    fn shown_value_is_the_one_rule_for_every_kind_of_key() {
        assert_eq!(shown_value(PASSWORD, "x"), None);
        assert_eq!(shown_value(TLS_KEY, "x"), None);
        assert_eq!(shown_value(TLS_CA, "x").as_deref(), Some("<PEM text>"));
        assert_eq!(
            shown_value(CLUSTER_URIS, "nats://a:b@h:1, h:2").as_deref(),
            Some("nats://<redacted>@h:1,nats://h:2")
        );
        assert_eq!(shown_value(MAX_IN_FLIGHT, "x").as_deref(), Some("x"));
    }

    #[test]
    fn tls_ca_file_that_is_not_a_regular_file_is_refused_unread() {
        let err = settings(&[(TLS_CA_FILE, "/dev/zero")]).expect_err("rejected");
        assert_eq!(err.key(), TLS_CA_FILE);
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }

    #[test]
    fn tls_ca_file_over_the_size_limit_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.pem");
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(MAX_CONFIG_FILE_BYTES + 1).unwrap();
        let err = settings(&[(TLS_CA_FILE, path.to_str().unwrap())]).expect_err("rejected");
        assert!(err.to_string().contains("larger than the limit"), "{err}");
    }

    #[test]
    fn client_certificate_without_key_is_rejected_naming_the_missing_key() {
        let err = settings(&[(TLS_CERT, "pem")]).expect_err("rejected");
        assert_eq!(err.key(), TLS_CERT);
        assert!(err.to_string().contains(TLS_KEY), "{err}");
    }

    #[test]
    fn consumer_links_may_not_send_to_the_lattice_by_default() {
        let access = settings(&[]).unwrap().consumer.access;
        for subject in [
            "wasmbus.ctl.v1.default.host.ping",
            "wasmbus.rpc.default.p.health",
            "default.echo.wrpc.0.0.1.wasmcloud:messaging/handler@0.2.0.handle-message",
            "$SYS.REQ.SERVER.PING",
            "$JS.API.STREAM.DELETE.x",
            "$KV.CONFIGDATA_default.x",
        ] {
            let err = access.check(subject).expect_err(subject);
            assert!(err.contains(PUBLISH_DENY), "{err}");
        }
        assert!(access.check("orders.created").is_ok());
        assert!(access.check("_INBOX.abc.def").is_ok());
    }

    #[test]
    fn a_link_opts_in_to_denied_subjects_by_replacing_publish_deny() {
        let access = settings(&[(PUBLISH_DENY, "$SYS.>")])
            .unwrap()
            .consumer
            .access;
        assert!(access.check("wasmbus.ctl.x").is_ok());
        assert!(access.check("$SYS.x").is_err());
        let access = settings(&[(PUBLISH_DENY, "")]).unwrap().consumer.access;
        assert!(access.check("$SYS.x").is_ok());
    }

    #[test]
    fn publish_allow_limits_a_link_to_its_patterns() {
        let access = settings(&[(PUBLISH_ALLOW, "orders.>, audit.*")])
            .unwrap()
            .consumer
            .access;
        assert!(access.check("orders.created.eu").is_ok());
        assert!(access.check("audit.x").is_ok());
        let err = access.check("billing.x").expect_err("not allowed");
        assert!(err.contains(PUBLISH_ALLOW), "{err}");
    }

    #[test]
    fn bad_subject_pattern_is_rejected_naming_the_key() {
        let err = settings(&[(PUBLISH_ALLOW, "a.>.b")]).expect_err("rejected");
        assert_eq!(err.key(), PUBLISH_ALLOW);
    }

    #[test]
    fn credentials_file_is_checked_when_the_link_is_put() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("user.creds");
        std::fs::write(&path, "no blocks here").unwrap();
        let err = settings(&[(CREDENTIALS_FILE, path.to_str().unwrap())]).expect_err("bad");
        assert_eq!(err.key(), CREDENTIALS_FILE);
        assert!(err.to_string().contains("no user JWT"), "{err}");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Values marked so that any appearance in an error is found.
        fn marked_secret() -> impl Strategy<Value = String> {
            "[a-zA-Z0-9]{4,10}".prop_map(|tail| format!("S3CR3T{tail}"))
        }

        /// Any value: text, numbers, URLs with and without marked user info.
        fn value() -> impl Strategy<Value = String> {
            prop_oneof![
                any::<String>(),
                "[0-9]{1,9}",
                "[a-z.*>|, ]{0,20}",
                marked_secret(),
                marked_secret().prop_map(|s| format!("nats://user:{s}@h:4222,")),
                marked_secret().prop_map(|s| format!("nats://u:{s}@ss@h:4222")),
                marked_secret().prop_map(|s| format!("{s}@h:x")),
            ]
        }

        fn key() -> impl Strategy<Value = String> {
            prop_oneof![
                prop::sample::select(KEYS.iter().map(|(k, _)| k.to_string()).collect::<Vec<_>>()),
                "[a-z_]{1,12}",
            ]
        }

        proptest! {
            #[test]
            fn rejections_name_a_known_key_and_show_no_secret(
                config in prop::collection::hash_map(key(), value(), 0..8),
                secrets in prop::collection::hash_map(key(), value(), 0..4),
            ) {
                let secrets: HashMap<String, SecretValue> = secrets
                    .into_iter()
                    .map(|(k, v)| (k, SecretValue::String(v)))
                    .collect();
                let given: Vec<(String, String)> = config
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .chain(secrets.iter().map(|(k, v)| match v {
                        SecretValue::String(v) => (k.clone(), v.clone()),
                        SecretValue::Bytes(_) => (k.clone(), String::new()),
                    }))
                    .collect();
                if let Err(err) = ProviderDefaults::default().link_settings(&config, &secrets) {
                    prop_assert!(kind(err.key()).is_some(), "unknown key in {err}");
                    let text = format!("{err} {err:?}");
                    for (key, value) in &given {
                        match kind(&key.to_ascii_lowercase()) {
                            // Marked values stand only in the user info of
                            // these URLs.
                            Some(Kind::Urls) if value.contains("S3CR3T") => {
                                let start = value.find("S3CR3T").unwrap_or_default();
                                let token: String = value[start..]
                                    .chars()
                                    .take_while(char::is_ascii_alphanumeric)
                                    .collect();
                                let shown_elsewhere = given
                                    .iter()
                                    .any(|(k, v)| k != key && v.contains(&token));
                                prop_assert!(
                                    shown_elsewhere || !text.contains(&token),
                                    "URL user info shown: {text}"
                                );
                            }
                            Some(Kind::Secret) if value.trim().len() >= 4 => {
                                prop_assert!(!text.contains(value.trim()), "secret shown: {text}");
                            }
                            _ => {}
                        }
                    }
                }
            }
        }
    }
}
