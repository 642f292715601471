//! Configuration: the string maps that the host hands over (provider config,
//! link config, secrets) are parsed here, once, into typed settings. Nothing
//! outside this module looks at a raw map.
//!
//! Every key is described once, in [`keys`]. Precedence for every key,
//! highest first: link secrets (credential keys only), link config,
//! provider secrets (credential keys only), provider config, the lattice's
//! NATS URL (for `cluster_uris`), built-in default. A blank value means
//! "not set", for every key.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tracing::{debug, warn};
use wasmcloud_provider_sdk::core::secrets::SecretValue;

use crate::subject::{self, SubjectPattern};
use crate::sync::lock;

mod auth;
mod durable;
mod files;
pub(crate) mod keys;
mod servers;
mod tls;
mod values;

#[cfg(test)]
mod tests;

pub(crate) use self::auth::Auth;
pub use self::durable::default_durable_name;
pub(crate) use self::durable::{ConsumerSpec, DurableSettings, DurableSource, ManagedConsumer};
pub(crate) use self::files::read_credentials;
pub(crate) use self::servers::Servers;
pub(crate) use self::tls::{Pem, TlsSettings};

use self::keys::{Kind, Links};
use self::values::Values;

/// The value of `publish_deny` that denies nothing (a blank value means the
/// default, as for every key).
const DENY_NOTHING: &str = "none";

/// Every key the provider accepts.
pub fn known_keys() -> impl Iterator<Item = &'static str> {
    keys::ALL.iter().map(|key| key.name)
}

/// The one rule for showing a config value in an error, a log line or
/// Debug output: credentials are never shown, URLs lose their user info,
/// PEM text is named rather than printed; `None` means "do not show".
pub(crate) fn shown_value(key: &str, value: &str) -> Option<String> {
    match keys::find(key).map(|key| key.kind) {
        Some(Kind::Secret) => None,
        Some(Kind::Pem) => Some("<PEM text>".to_string()),
        Some(Kind::Urls) => Some(servers::shown_list(value)),
        Some(Kind::Plain) | None => Some(value.to_string()),
    }
}

/// A rejected configuration value, naming the key and (where
/// [`shown_value`] allows) the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConfigError {
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
pub(crate) struct ProviderDefaults {
    config: HashMap<String, String>,
    secrets: HashMap<String, SecretValue>,
    /// The lattice's NATS URL, as the host gave it: the server of links that
    /// name none, so that a provider started without config talks to the
    /// NATS its host uses (no credentials are borrowed from the host).
    lattice_url: Option<String>,
}

impl ProviderDefaults {
    /// Takes the provider's merged named config and its secrets.
    pub(crate) fn new(
        config: &HashMap<String, String>,
        secrets: &HashMap<String, SecretValue>,
    ) -> Self {
        Self {
            config: config.clone(),
            secrets: secrets.clone(),
            lattice_url: None,
        }
    }

    /// Makes `url` (the lattice's NATS) the default of `cluster_uris`.
    pub(crate) fn with_lattice_url(mut self, url: &str) -> Self {
        self.lattice_url = Some(url.trim().to_string()).filter(|url| !url.is_empty());
        self
    }

    /// Replaces the config, as a provider config update does; the secrets
    /// the host gave at start stay.
    pub(crate) fn update_config(&mut self, config: &HashMap<String, String>) {
        self.config = config.clone();
    }

    /// Checks the defaults on their own, so that a broken default is
    /// reported when it arrives rather than on every link.
    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        self.settings_for(LinkRole::Handler, &HashMap::new(), &HashMap::new())
            .map(|_| ())
    }

    /// Parses a link's settings for its role: its config and secrets over
    /// these defaults. Keys of the other role mean nothing here and are
    /// not read, as the v1 provider did not (wasmCloud's own examples set
    /// `subscriptions` on both links).
    pub(crate) fn settings_for(
        &self,
        role: LinkRole,
        link_config: &HashMap<String, String>,
        link_secrets: &HashMap<String, SecretValue>,
    ) -> Result<LinkSettings, ConfigError> {
        let mut values = HashMap::new();
        if let Some(url) = &self.lattice_url {
            values.insert(keys::CLUSTER_URIS.name.to_string(), url.clone());
        }
        overlay(&mut values, &self.config, &self.secrets);
        // Authentication is one choice: a link that makes its own replaces
        // the provider's, rather than being refused as a second method.
        let names_auth = |key: &String| auth::keys().any(|auth| key.eq_ignore_ascii_case(auth));
        let makes_auth = link_config
            .iter()
            .any(|(key, value)| names_auth(key) && !value.trim().is_empty())
            || link_secrets.keys().any(names_auth);
        if makes_auth {
            values.retain(|key, _| !auth::keys().any(|auth| auth == key));
        }
        overlay(&mut values, link_config, link_secrets);
        let other = match role {
            LinkRole::Handler => Links::Consumer,
            LinkRole::Consumer => Links::Handler,
        };
        for key in keys::ALL.iter().filter(|key| key.links == other) {
            if values.remove(key.name).is_some() {
                debug!(key = key.name, "key of the other kind of link is not used");
            }
        }
        LinkSettings::parse(&Values(&values))
    }
}

/// Which side of the messaging contract a link is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum LinkRole {
    /// Provider -> component (`handler`): subscribes and delivers.
    Handler,
    /// Component -> provider (`consumer`): publishes and requests.
    Consumer,
}

impl LinkRole {
    /// The interface of `wasmcloud:messaging` a link of this role names.
    pub(crate) fn interface(self) -> &'static str {
        match self {
            LinkRole::Handler => "handler",
            LinkRole::Consumer => "consumer",
        }
    }
}

/// Lays config, then the keys among secrets that may come from secrets
/// (credentials and server URLs), over `values`, with keys folded to lower
/// case. A blank value is not set: it leaves the value below it (the
/// provider's, or the lattice's server) in place.
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
        if !value.trim().is_empty() {
            values.insert(lower, value.clone());
        }
    }
    for (key, value) in secrets {
        let key = key.to_ascii_lowercase();
        if !matches!(
            keys::find(&key).map(|key| key.kind),
            Some(Kind::Secret | Kind::Urls)
        ) {
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
    if keys::find(key).is_some() || key.starts_with("otel_") {
        return;
    }
    let warned = WARNED.get_or_init(Default::default);
    if lock(warned).insert(key.to_string()) {
        warn!(key, "ignoring unknown config key");
    }
}

/// Everything one link needs, parsed and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LinkSettings {
    pub(crate) connection: ConnectionSettings,
    pub(crate) handler: HandlerSettings,
    pub(crate) consumer: ConsumerSettings,
}

impl LinkSettings {
    fn parse(values: &Values<'_>) -> Result<Self, ConfigError> {
        let domain = parse_jetstream_domain(values)?;
        Ok(Self {
            connection: ConnectionSettings::parse(values)?,
            handler: HandlerSettings::parse(values, domain.clone())?,
            consumer: ConsumerSettings::parse(values, domain)?,
        })
    }
}

/// `jetstream_domain`: one subject token, as the server names a domain
/// (`$JS.<domain>.API` is the subject of its API).
fn parse_jetstream_domain(values: &Values<'_>) -> Result<Option<String>, ConfigError> {
    let key = &keys::JETSTREAM_DOMAIN;
    let Some(domain) = values.get(key) else {
        return Ok(None);
    };
    let domain = domain.trim();
    if let Some(c) = domain
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '.' | '*' | '>'))
    {
        return Err(ConfigError::new(
            key.name,
            domain,
            format!("a domain is one subject token without wildcards and may not contain {c:?}"),
        ));
    }
    subject::check_publish_subject(domain)
        .map_err(|reason| ConfigError::new(key.name, domain, reason))?;
    Ok(Some(domain.to_string()))
}

/// How to reach and authenticate to NATS. Links whose settings are equal
/// share one connection, so this is `Eq + Hash`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct ConnectionSettings {
    pub(crate) servers: Servers,
    pub(crate) auth: Auth,
    pub(crate) tls: TlsSettings,
    pub(crate) custom_inbox_prefix: Option<String>,
    pub(crate) ping_interval: Option<Duration>,
    pub(crate) connect_timeout: Duration,
}

impl ConnectionSettings {
    fn parse(values: &Values<'_>) -> Result<Self, ConfigError> {
        let servers = Servers::parse(
            values
                .get(&keys::CLUSTER_URIS)
                .unwrap_or(servers::DEFAULT_SERVER),
        )?;
        let auth = match auth::parse(values)? {
            Some(auth) => auth,
            None => servers.credentials().unwrap_or(Auth::None),
        };
        Ok(Self {
            auth,
            servers,
            tls: TlsSettings::parse(values)?,
            custom_inbox_prefix: values
                .get(&keys::CUSTOM_INBOX_PREFIX)
                .map(parse_inbox_prefix)
                .transpose()?,
            ping_interval: values.duration(&keys::PING_INTERVAL_SEC)?,
            connect_timeout: values.duration_or_default(&keys::CONNECT_TIMEOUT_MS)?,
        })
    }
}

impl fmt::Debug for ConnectionSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionSettings")
            .field("servers", &self.servers)
            .field("auth", &self.auth)
            .field("tls", &self.tls)
            .field("custom_inbox_prefix", &self.custom_inbox_prefix)
            .field("ping_interval", &self.ping_interval)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// One entry of `subscriptions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Subscription {
    pub(crate) subject: String,
    pub(crate) queue_group: Option<String>,
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
pub(crate) struct HandlerSettings {
    pub(crate) subscriptions: Vec<Subscription>,
    pub(crate) max_in_flight: usize,
    pub(crate) handler_timeout: Duration,
    pub(crate) drain_timeout: Duration,
    /// JetStream consumers the link also delivers from.
    pub(crate) durable: DurableSettings,
}

impl HandlerSettings {
    fn parse(values: &Values<'_>, domain: Option<String>) -> Result<Self, ConfigError> {
        // At most 4,096 (the key's bound): it fits.
        let max_in_flight =
            usize::try_from(values.count_or_default(&keys::MAX_IN_FLIGHT)?).unwrap_or(usize::MAX);
        Ok(Self {
            subscriptions: values
                .get(&keys::SUBSCRIPTIONS)
                .map(parse_subscriptions)
                .transpose()?
                .unwrap_or_default(),
            max_in_flight,
            handler_timeout: values.duration_or_default(&keys::HANDLER_TIMEOUT_MS)?,
            drain_timeout: values.duration_or_default(&keys::DRAIN_TIMEOUT_MS)?,
            durable: durable::parse(values, domain)?,
        })
    }
}

/// Settings of a consumer link (component -> provider).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConsumerSettings {
    pub(crate) publish_timeout: Duration,
    pub(crate) default_request_timeout: Duration,
    pub(crate) max_request_timeout: Duration,
    pub(crate) access: SubjectAccess,
    /// Subjects published through JetStream, confirmed by a stream.
    pub(crate) jetstream: Vec<SubjectPattern>,
    /// The JetStream domain those streams are in (`None`: the server's own).
    pub(crate) jetstream_domain: Option<String>,
}

impl ConsumerSettings {
    fn parse(values: &Values<'_>, jetstream_domain: Option<String>) -> Result<Self, ConfigError> {
        let settings = Self {
            publish_timeout: values.duration_or_default(&keys::PUBLISH_TIMEOUT_MS)?,
            default_request_timeout: values.duration_or_default(&keys::REQUEST_TIMEOUT_MS)?,
            max_request_timeout: values.duration_or_default(&keys::MAX_REQUEST_TIMEOUT_MS)?,
            access: SubjectAccess {
                allow: values
                    .get(&keys::PUBLISH_ALLOW)
                    .map(|value| parse_patterns(&keys::PUBLISH_ALLOW, value))
                    .transpose()?,
                deny: match values.get(&keys::PUBLISH_DENY) {
                    Some(DENY_NOTHING) => Vec::new(),
                    Some(value) => parse_patterns(&keys::PUBLISH_DENY, value)?,
                    None => parse_patterns(&keys::PUBLISH_DENY, keys::DEFAULT_PUBLISH_DENY)?,
                },
            },
            jetstream: values
                .get(&keys::JETSTREAM_PUBLISH)
                .map(|value| parse_patterns(&keys::JETSTREAM_PUBLISH, value))
                .transpose()?
                .unwrap_or_default(),
            jetstream_domain,
        };
        if settings.default_request_timeout > settings.max_request_timeout {
            return Err(ConfigError::new(
                keys::REQUEST_TIMEOUT_MS.name,
                &settings.default_request_timeout.as_millis().to_string(),
                format!(
                    "must not exceed {} ({} ms)",
                    keys::MAX_REQUEST_TIMEOUT_MS.name,
                    settings.max_request_timeout.as_millis()
                ),
            ));
        }
        Ok(settings)
    }
}

/// Which subjects a consumer link may send to, as NATS publish permissions
/// put it: allowed if `allow` is unset or a pattern in it matches, and no
/// pattern in `deny` matches (deny wins).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SubjectAccess {
    allow: Option<Vec<SubjectPattern>>,
    deny: Vec<SubjectPattern>,
}

impl SubjectAccess {
    /// `Err` names the key and the pattern that refuses `subject`.
    pub(crate) fn check(&self, subject: &str) -> Result<(), String> {
        if let Some(pattern) = self.deny.iter().find(|p| p.matches(subject)) {
            return Err(format!(
                "denied by {} pattern {pattern:?}",
                keys::PUBLISH_DENY.name
            ));
        }
        match &self.allow {
            Some(allow) if !allow.iter().any(|p| p.matches(subject)) => Err(format!(
                "not matched by any {} pattern ({})",
                keys::PUBLISH_ALLOW.name,
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

/// A comma-separated list of subject patterns; empty entries are skipped.
fn parse_patterns(key: &keys::Key, value: &str) -> Result<Vec<SubjectPattern>, ConfigError> {
    value
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            SubjectPattern::parse(entry)
                .map_err(|reason| ConfigError::new(key.name, value, format!("{entry:?}: {reason}")))
        })
        .collect()
}

fn parse_inbox_prefix(prefix: &str) -> Result<String, ConfigError> {
    let key = keys::CUSTOM_INBOX_PREFIX.name;
    // A prefix ending in a wildcard (`_TEST.>`, as the v1 provider's own
    // tests write it) names the inboxes under it: the wildcard is dropped.
    let prefix = match prefix
        .strip_suffix(".>")
        .or_else(|| prefix.strip_suffix(".*"))
    {
        Some(stem) => {
            warn!(
                key,
                prefix = stem,
                "wildcard at the end of the prefix dropped"
            );
            stem
        }
        None => prefix,
    };
    subject::check_publish_subject(prefix)
        .map_err(|reason| ConfigError::new(key, prefix, reason))?;
    Ok(prefix.to_string())
}

fn parse_subscriptions(value: &str) -> Result<Vec<Subscription>, ConfigError> {
    let key = keys::SUBSCRIPTIONS.name;
    if value.split(',').any(|entry| entry.trim().is_empty()) {
        // The v1 provider skips them too (`a,b,` and `a,,b` are common).
        warn!(key, "empty entries in the list are skipped");
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
                ConfigError::new(key, value, format!("subject {subject:?}: {reason}"))
            })?;
            if let Some(queue) = queue_group {
                subject::check_queue_group(queue).map_err(|reason| {
                    ConfigError::new(
                        key,
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
