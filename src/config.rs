//! Configuration: the string maps that the host hands over (provider config,
//! link config, secrets) are parsed here, once, into typed settings. Nothing
//! outside this module looks at a raw map.
//!
//! Precedence for every key, highest first: link secrets (credential keys
//! only), link config, provider secrets (credential keys only), provider
//! config, built-in default.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tracing::warn;
use wasmcloud_provider_sdk::core::secrets::SecretValue;

use crate::subject;

/// Server used when neither the link nor the provider names one.
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
/// Path of a `.creds` file (JWT and seed in one file).
pub const CREDENTIALS_FILE: &str = "credentials_file";
/// PEM text of the CA that signs the server certificate.
pub const TLS_CA: &str = "tls_ca";
/// Path of a PEM file holding the CA that signs the server certificate.
pub const TLS_CA_FILE: &str = "tls_ca_file";
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

/// Every key the provider accepts, in provider config and in link config.
pub const KNOWN_KEYS: &[&str] = &[
    SUBSCRIPTIONS,
    CLUSTER_URIS,
    CLIENT_JWT,
    CLIENT_SEED,
    NKEY_SEED,
    USERNAME,
    PASSWORD,
    TOKEN,
    CREDENTIALS_FILE,
    TLS_CA,
    TLS_CA_FILE,
    CUSTOM_INBOX_PREFIX,
    PING_INTERVAL_SEC,
    MAX_IN_FLIGHT,
    HANDLER_TIMEOUT_MS,
    DRAIN_TIMEOUT_MS,
    PUBLISH_TIMEOUT_MS,
    REQUEST_TIMEOUT_MS,
    MAX_REQUEST_TIMEOUT_MS,
    CONNECT_TIMEOUT_MS,
];

/// Keys whose values are credentials: read from secrets before config, and
/// never printed.
pub const SECRET_KEYS: &[&str] = &[CLIENT_JWT, CLIENT_SEED, NKEY_SEED, PASSWORD, TOKEN];

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

/// A rejected configuration value, naming the key and (unless it is a
/// secret) the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    key: String,
    value: Option<String>,
    reason: String,
}

impl ConfigError {
    fn new(key: &str, value: &str, reason: impl Into<String>) -> Self {
        let shown = (!SECRET_KEYS.contains(&key)).then(|| value.to_string());
        Self {
            key: key.to_string(),
            value: shown,
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
            None => write!(
                f,
                "config key '{}' (value hidden, it is a credential): {}",
                self.key, self.reason
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Provider-level config and secrets: defaults under every link.
#[derive(Clone, Default)]
pub struct ProviderDefaults {
    values: HashMap<String, String>,
}

impl ProviderDefaults {
    /// Takes the provider's merged named config and its secrets.
    pub fn new(config: &HashMap<String, String>, secrets: &HashMap<String, SecretValue>) -> Self {
        let mut values = HashMap::new();
        overlay(&mut values, config, secrets);
        Self { values }
    }

    /// Checks the defaults on their own, so that a broken default is
    /// reported when it arrives rather than on every link.
    pub fn check(&self) -> Result<(), ConfigError> {
        LinkSettings::from_values(&self.values).map(|_| ())
    }

    /// Parses one link's settings: its config and secrets over these defaults.
    pub fn link_settings(
        &self,
        link_config: &HashMap<String, String>,
        link_secrets: &HashMap<String, SecretValue>,
    ) -> Result<LinkSettings, ConfigError> {
        let mut values = self.values.clone();
        overlay(&mut values, link_config, link_secrets);
        LinkSettings::from_values(&values)
    }
}

/// Lays config, then the credential keys among secrets, over `values`, with
/// keys folded to lower case.
fn overlay(
    values: &mut HashMap<String, String>,
    config: &HashMap<String, String>,
    secrets: &HashMap<String, SecretValue>,
) {
    for (key, value) in config {
        let key = key.to_ascii_lowercase();
        warn_if_unknown(&key);
        values.insert(key, value.clone());
    }
    for (key, value) in secrets {
        let key = key.to_ascii_lowercase();
        if !SECRET_KEYS.contains(&key.as_str()) {
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
    if KNOWN_KEYS.contains(&key) || key.starts_with("otel_") {
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
                auth: parse_auth(&get)?,
                tls_ca: parse_tls_ca(get(TLS_CA), get(TLS_CA_FILE))?,
                custom_inbox_prefix: get(CUSTOM_INBOX_PREFIX)
                    .map(|prefix| parse_inbox_prefix(prefix.trim()))
                    .transpose()?,
                ping_interval: get(PING_INTERVAL_SEC)
                    .map(|v| parse_duration(PING_INTERVAL_SEC, v, Duration::from_secs))
                    .transpose()?,
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
    /// PEM text of the CA, from `tls_ca` or read from `tls_ca_file`.
    pub tls_ca: Option<String>,
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
            .field("tls_ca", &self.tls_ca.as_ref().map(|_| "<pem>"))
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
}

/// Settings of a consumer link (component -> provider).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerSettings {
    pub publish_timeout: Duration,
    pub default_request_timeout: Duration,
    pub max_request_timeout: Duration,
}

fn parse_consumer<'a>(
    get: impl Fn(&str) -> Option<&'a str> + Copy,
) -> Result<ConsumerSettings, ConfigError> {
    let settings = ConsumerSettings {
        publish_timeout: duration_ms(get, PUBLISH_TIMEOUT_MS, DEFAULT_PUBLISH_TIMEOUT)?,
        default_request_timeout: duration_ms(get, REQUEST_TIMEOUT_MS, DEFAULT_REQUEST_TIMEOUT)?,
        max_request_timeout: duration_ms(get, MAX_REQUEST_TIMEOUT_MS, DEFAULT_MAX_REQUEST_TIMEOUT)?,
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

fn parse_servers(value: Option<&str>) -> Result<Vec<String>, ConfigError> {
    let Some(value) = value else {
        return Ok(vec![DEFAULT_CLUSTER_URI.to_string()]);
    };
    let mut servers = Vec::new();
    for entry in value.split(',').map(str::trim) {
        if entry.is_empty() {
            return Err(ConfigError::new(
                CLUSTER_URIS,
                value,
                "empty entry in the comma-separated list",
            ));
        }
        async_nats::ServerAddr::from_str(entry).map_err(|err| {
            ConfigError::new(
                CLUSTER_URIS,
                &redact_url(entry),
                format!("not a NATS server URL: {err}"),
            )
        })?;
        servers.push(entry.to_string());
    }
    Ok(servers)
}

fn parse_auth<'a>(get: &impl Fn(&str) -> Option<&'a str>) -> Result<Auth, ConfigError> {
    let present = |key: &str| get(key).map(str::trim).filter(|v| !v.is_empty());
    let jwt = present(CLIENT_JWT);
    let client_seed = present(CLIENT_SEED);
    let nkey_seed = present(NKEY_SEED);
    let user = present(USERNAME);
    let password = present(PASSWORD);
    let token = present(TOKEN);
    let creds = present(CREDENTIALS_FILE);

    let methods: Vec<&str> = [
        (
            jwt.is_some() || client_seed.is_some(),
            "client_jwt/client_seed",
        ),
        (nkey_seed.is_some(), NKEY_SEED),
        (user.is_some() || password.is_some(), "username/password"),
        (token.is_some(), TOKEN),
        (creds.is_some(), CREDENTIALS_FILE),
    ]
    .into_iter()
    .filter_map(|(set, name)| set.then_some(name))
    .collect();
    if let [first, second, ..] = methods.as_slice() {
        let key = match *first {
            "client_jwt/client_seed" => CLIENT_JWT,
            "username/password" => USERNAME,
            other => other,
        };
        return Err(ConfigError {
            key: key.to_string(),
            value: None,
            reason: format!("choose one authentication method, found both {first} and {second}"),
        });
    }

    let check_seed = |key: &str, seed: &str| {
        nkeys::KeyPair::from_seed(seed)
            .map(|_| ())
            .map_err(|_| ConfigError::new(key, seed, "not a valid nkey seed"))
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
            (Some(jwt), None, ..) => {
                return Err(ConfigError::new(
                    CLIENT_SEED,
                    jwt,
                    "is required with client_jwt",
                ))
            }
            (None, Some(seed), ..) => {
                return Err(ConfigError::new(
                    CLIENT_JWT,
                    seed,
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
            (_, _, _, Some(user), None, ..) => {
                return Err(ConfigError::new(
                    PASSWORD,
                    user,
                    "is required with username",
                ))
            }
            (_, _, _, None, Some(password), ..) => {
                return Err(ConfigError::new(
                    USERNAME,
                    password,
                    "is required with password",
                ))
            }
            (_, _, _, _, _, Some(token), _) => Auth::Token(token.to_string()),
            (.., Some(path)) => Auth::CredentialsFile(PathBuf::from(path)),
            _ => Auth::None,
        },
    )
}

fn parse_tls_ca(text: Option<&str>, file: Option<&str>) -> Result<Option<String>, ConfigError> {
    let (key, value, pem) = match (text, file) {
        (Some(_), Some(file)) => {
            return Err(ConfigError::new(
                TLS_CA_FILE,
                file,
                "set either tls_ca or tls_ca_file, not both",
            ))
        }
        (Some(text), None) => (TLS_CA, "<pem>", text.to_string()),
        (None, Some(path)) => {
            let pem = std::fs::read_to_string(path).map_err(|err| {
                ConfigError::new(TLS_CA_FILE, path, format!("cannot read: {err}"))
            })?;
            (TLS_CA_FILE, path, pem)
        }
        (None, None) => return Ok(None),
    };
    let certs = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| ConfigError::new(key, value, format!("not valid PEM: {err}")))?;
    if certs.is_empty() {
        return Err(ConfigError::new(
            key,
            value,
            "holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)",
        ));
    }
    Ok(Some(pem))
}

fn parse_inbox_prefix(prefix: &str) -> Result<String, ConfigError> {
    subject::check_publish_subject(prefix)
        .map_err(|reason| ConfigError::new(CUSTOM_INBOX_PREFIX, prefix, reason))?;
    Ok(prefix.to_string())
}

fn parse_subscriptions(value: &str) -> Result<Vec<Subscription>, ConfigError> {
    if value.trim().is_empty() {
        return Ok(Vec::new());
    }
    value
        .split(',')
        .map(str::trim)
        .map(|entry| {
            if entry.is_empty() {
                return Err(ConfigError::new(
                    SUBSCRIPTIONS,
                    value,
                    "empty subscription entry in the comma-separated list",
                ));
            }
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

/// Parses a positive whole number of some unit (no zero: a zero timeout or
/// interval is never what anybody means).
fn parse_duration(
    key: &str,
    value: &str,
    unit: fn(u64) -> Duration,
) -> Result<Duration, ConfigError> {
    match value.trim().parse::<u64>() {
        Ok(n) if (1..=86_400_000).contains(&n) => Ok(unit(n)),
        _ => Err(ConfigError::new(
            key,
            value,
            "expected a whole number from 1 to 86400000",
        )),
    }
}

/// Removes `user:password@` from a URL so that it can be logged.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let rest = match rest.split_once('@') {
        Some((_, host)) => format!("<redacted>@{host}"),
        None => rest.to_string(),
    };
    match scheme {
        Some(scheme) => format!("{scheme}://{rest}"),
        None => rest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Result<LinkSettings, ConfigError> {
        let config = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ProviderDefaults::default().link_settings(&config, &HashMap::new())
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
    fn empty_subscription_entry_is_rejected_naming_the_key() {
        let err = settings(&[(SUBSCRIPTIONS, "a,,b")]).expect_err("rejected");
        assert_eq!(err.key(), SUBSCRIPTIONS);
        assert!(
            err.to_string().contains("empty subscription entry"),
            "{err}"
        );
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
        assert_eq!(redact_url("h:1"), "h:1");
    }
}
