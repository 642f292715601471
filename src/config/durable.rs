//! Durable (JetStream) delivery settings of a handler link: the keys that
//! sit next to `subscriptions` and the v1 host's `consumers` list, parsed
//! and checked together so that an inconsistent combination names its key.

use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::stream::StorageType;
use serde::Deserialize;

use super::keys::{
    Key, ACK_WAIT_MS, BACKOFF_MS, CONSUMERS, DEAD_LETTER_SUBJECT, DELIVER_POLICY, DURABLE_NAME,
    FILTER_SUBJECTS, MAX_DELIVER, PINNED_TTL_MS, PRIORITY_POLICY, START_SEQUENCE, START_TIME,
    STREAM, STREAM_STORAGE, STREAM_SUBJECTS,
};
use super::values::Values;
use super::{parse_patterns, ConfigError};
use crate::subject::{self, SubjectPattern};

/// Keys that describe the consumer created on `stream`.
const NEEDS_STREAM: &[&Key] = &[
    &STREAM_SUBJECTS,
    &STREAM_STORAGE,
    &DURABLE_NAME,
    &FILTER_SUBJECTS,
    &DELIVER_POLICY,
    &START_SEQUENCE,
    &START_TIME,
    &ACK_WAIT_MS,
    &MAX_DELIVER,
    &PRIORITY_POLICY,
    &PINNED_TTL_MS,
];

/// Longest name the server accepts for a stream or consumer.
const MAX_NAME_LEN: usize = 255;

/// The durable side of a handler link.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct DurableSettings {
    /// One pull consumer per entry: the one from `stream` first, then the
    /// `consumers` list.
    pub(crate) sources: Vec<DurableSource>,
    /// Redelivery delays after a failed attempt (empty: the server's own
    /// redelivery after `ack_wait`).
    pub(crate) backoff: Vec<Duration>,
    pub(crate) dead_letter_subject: Option<String>,
    /// The JetStream domain of the streams (`None`: the server's own).
    pub(crate) jetstream_domain: Option<String>,
}

impl DurableSettings {
    /// True when the link consumes from JetStream.
    pub(crate) fn is_enabled(&self) -> bool {
        !self.sources.is_empty()
    }

    /// The delay before the next attempt after `attempts` failed ones.
    pub(crate) fn backoff_after(&self, attempts: u64) -> Option<Duration> {
        let index = usize::try_from(attempts.saturating_sub(1)).unwrap_or(usize::MAX);
        self.backoff.get(index).or(self.backoff.last()).copied()
    }
}

/// One pull consumer a handler link fetches from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DurableSource {
    pub(crate) stream: String,
    pub(crate) consumer: ConsumerSpec,
    /// Most messages one fetch asks for (it never asks for more than the
    /// link can deliver now).
    pub(crate) max_messages: Option<usize>,
    /// Most bytes one fetch asks for.
    pub(crate) max_bytes: Option<usize>,
}

/// How the provider finds the consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ConsumerSpec {
    /// Created, or updated to these settings, at link start.
    Managed(ManagedConsumer),
    /// Bound as it exists (the v1 `consumers` key): its own settings apply.
    Existing { name: String },
}

/// A consumer the provider creates from the link's keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ManagedConsumer {
    /// `None`: derived from the link, see [`default_durable_name`].
    pub(crate) name: Option<String>,
    pub(crate) filter_subjects: Vec<String>,
    pub(crate) deliver_policy: DeliverPolicy,
    pub(crate) ack_wait: Duration,
    pub(crate) max_deliver: Option<i64>,
    /// `Some` with `priority_policy=pinned_client`: the pin's time to live.
    pub(crate) pinned_ttl: Option<Duration>,
    /// Create the stream with these settings when it does not exist.
    pub(crate) create_stream: Option<StreamSpec>,
}

/// A stream to create when missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StreamSpec {
    pub(crate) subjects: Vec<String>,
    pub(crate) storage: StorageType,
}

/// The durable consumer name of a link that names none: stable across
/// restarts and re-links of the same component and link name, so that
/// delivery resumes where it stopped. Characters a consumer name may not
/// hold become `_`, and a hash of the exact pair keeps two pairs that read
/// alike (`a-b`/`c` and `a`/`b-c`, `my.c` and `my_c`) apart.
pub fn default_durable_name(component_id: &str, link_name: &str) -> String {
    let readable: String = format!("wasmcloud-{component_id}-{link_name}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(MAX_NAME_LEN - 17)
        .collect();
    format!("{readable}-{:016x}", fnv1a(&[component_id, link_name]))
}

/// FNV-1a over the parts, each ended by a zero byte: a hash that never
/// changes between versions or platforms, as a stored consumer name needs.
fn fnv1a(parts: &[&str]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in parts.iter().flat_map(|part| part.bytes().chain([0])) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// One entry of the v1 `consumers` list, as the v1 host reads it.
#[derive(Deserialize)]
struct V1Consumer {
    stream: String,
    consumer: String,
    #[serde(default)]
    max_messages: Option<usize>,
    #[serde(default)]
    max_bytes: Option<usize>,
}

/// Parses the durable keys of a link (see the module doc).
pub(super) fn parse(
    values: &Values<'_>,
    jetstream_domain: Option<String>,
) -> Result<DurableSettings, ConfigError> {
    let mut sources = Vec::new();
    match values.get(&STREAM) {
        Some(stream) => {
            check_name(&STREAM, stream)?;
            sources.push(DurableSource {
                stream: stream.to_string(),
                consumer: ConsumerSpec::Managed(parse_managed(values)?),
                max_messages: None,
                max_bytes: None,
            });
        }
        None => {
            if let Some(key) = NEEDS_STREAM.iter().find(|key| values.has(key)) {
                return Err(ConfigError::about(
                    key.name,
                    format!("needs '{}', the JetStream stream to consume", STREAM.name),
                ));
            }
        }
    }
    if let Some(value) = values.get(&CONSUMERS) {
        sources.extend(parse_consumers(value)?);
    }

    let backoff = values.durations(&BACKOFF_MS)?;
    let dead_letter_subject = values
        .get(&DEAD_LETTER_SUBJECT)
        .map(|value| {
            subject::check_publish_subject(value)
                .map(|()| value.to_string())
                .map_err(|reason| ConfigError::new(DEAD_LETTER_SUBJECT.name, value, reason))
        })
        .transpose()?;
    if sources.is_empty() {
        if let Some(key) = [&BACKOFF_MS, &DEAD_LETTER_SUBJECT]
            .into_iter()
            .find(|key| values.has(key))
        {
            return Err(ConfigError::about(
                key.name,
                format!(
                    "needs '{}' or '{}': it applies to durable delivery only",
                    STREAM.name, CONSUMERS.name
                ),
            ));
        }
    }
    let settings = DurableSettings {
        sources,
        backoff,
        dead_letter_subject,
        jetstream_domain,
    };
    check_consistency(&settings)?;
    Ok(settings)
}

fn parse_managed(values: &Values<'_>) -> Result<ManagedConsumer, ConfigError> {
    let name = values
        .get(&DURABLE_NAME)
        .map(|name| check_name(&DURABLE_NAME, name).map(|()| name.to_string()))
        .transpose()?;
    let subjects = |key: &Key| -> Result<Vec<String>, ConfigError> {
        Ok(values
            .get(key)
            .map(|value| parse_patterns(key, value))
            .transpose()?
            .unwrap_or_default()
            .iter()
            .map(SubjectPattern::to_string)
            .collect())
    };
    let filter_subjects = subjects(&FILTER_SUBJECTS)?;
    let stream_subjects = subjects(&STREAM_SUBJECTS)?;
    let storage = match values.get(&STREAM_STORAGE) {
        None | Some("file") => StorageType::File,
        Some("memory") => StorageType::Memory,
        Some(other) => {
            return Err(ConfigError::new(
                STREAM_STORAGE.name,
                other,
                "expected file or memory",
            ))
        }
    };
    if values.has(&STREAM_STORAGE) && stream_subjects.is_empty() {
        return Err(ConfigError::about(
            STREAM_STORAGE.name,
            format!(
                "applies only to a stream created from '{}', which is not set",
                STREAM_SUBJECTS.name
            ),
        ));
    }
    let max_deliver = values
        .count(&MAX_DELIVER)?
        .map(|n| i64::try_from(n).unwrap_or(i64::MAX));
    Ok(ManagedConsumer {
        name,
        filter_subjects,
        deliver_policy: parse_deliver_policy(values)?,
        ack_wait: values.duration_or_default(&ACK_WAIT_MS)?,
        max_deliver,
        pinned_ttl: parse_pinned_ttl(values)?,
        create_stream: (!stream_subjects.is_empty()).then_some(StreamSpec {
            subjects: stream_subjects,
            storage,
        }),
    })
}

/// The pin's time to live with `priority_policy=pinned_client`, `None`
/// without a priority policy.
fn parse_pinned_ttl(values: &Values<'_>) -> Result<Option<Duration>, ConfigError> {
    match values.get(&PRIORITY_POLICY) {
        None => match values.has(&PINNED_TTL_MS) {
            true => Err(ConfigError::about(
                PINNED_TTL_MS.name,
                format!("is used only with {}=pinned_client", PRIORITY_POLICY.name),
            )),
            false => Ok(None),
        },
        Some("pinned_client") => Ok(Some(values.duration_or_default(&PINNED_TTL_MS)?)),
        Some(other) => Err(ConfigError::new(
            PRIORITY_POLICY.name,
            other,
            "expected pinned_client",
        )),
    }
}

fn parse_deliver_policy(values: &Values<'_>) -> Result<DeliverPolicy, ConfigError> {
    let policy = values.get(&DELIVER_POLICY).unwrap_or("all");
    let unused = |key: &Key, wanted: &str| {
        ConfigError::about(
            key.name,
            format!(
                "is used only with {}={wanted}, not {policy}",
                DELIVER_POLICY.name
            ),
        )
    };
    if values.has(&START_SEQUENCE) && policy != "by_start_sequence" {
        return Err(unused(&START_SEQUENCE, "by_start_sequence"));
    }
    if values.has(&START_TIME) && policy != "by_start_time" {
        return Err(unused(&START_TIME, "by_start_time"));
    }
    let needed = |key: &Key| {
        ConfigError::about(
            key.name,
            format!("is required with {}={policy}", DELIVER_POLICY.name),
        )
    };
    Ok(match policy {
        "all" => DeliverPolicy::All,
        "new" => DeliverPolicy::New,
        "last" => DeliverPolicy::Last,
        "by_start_sequence" => DeliverPolicy::ByStartSequence {
            start_sequence: values
                .count(&START_SEQUENCE)?
                .ok_or_else(|| needed(&START_SEQUENCE))?,
        },
        "by_start_time" => {
            let value = values.get(&START_TIME).ok_or_else(|| needed(&START_TIME))?;
            let start_time =
                time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339)
                    .map_err(|err| {
                        ConfigError::new(
                            START_TIME.name,
                            value,
                            format!(
                                "expected an RFC 3339 time such as 2026-01-31T12:00:00Z ({err})"
                            ),
                        )
                    })?;
            DeliverPolicy::ByStartTime { start_time }
        }
        other => {
            return Err(ConfigError::new(
                DELIVER_POLICY.name,
                other,
                "expected all, new, last, by_start_sequence or by_start_time",
            ))
        }
    })
}

fn parse_consumers(value: &str) -> Result<Vec<DurableSource>, ConfigError> {
    let entries: Vec<V1Consumer> = serde_json::from_str(value).map_err(|err| {
        ConfigError::about(
            CONSUMERS.name,
            format!(
                "expected a JSON list of {{\"stream\", \"consumer\", \"max_messages\", \
                 \"max_bytes\"}} objects: {err}"
            ),
        )
    })?;
    entries
        .into_iter()
        .enumerate()
        .map(|(index, entry)| {
            let name = |what: &str, value: &str| {
                check_name(&CONSUMERS, value).map_err(|err| {
                    ConfigError::about(
                        CONSUMERS.name,
                        format!("entry {}: {what}: {}", index + 1, err.reason),
                    )
                })
            };
            name("stream", &entry.stream)?;
            name("consumer", &entry.consumer)?;
            for (field, bound) in [
                ("max_messages", entry.max_messages),
                ("max_bytes", entry.max_bytes),
            ] {
                if bound == Some(0) {
                    return Err(ConfigError::about(
                        CONSUMERS.name,
                        format!("entry {}: {field} must be at least 1", index + 1),
                    ));
                }
            }
            Ok(DurableSource {
                stream: entry.stream,
                consumer: ConsumerSpec::Existing {
                    name: entry.consumer,
                },
                max_messages: entry.max_messages,
                max_bytes: entry.max_bytes,
            })
        })
        .collect()
}

/// A stream or consumer name as the server accepts it.
fn check_name(key: &Key, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() {
        return Err(ConfigError::about(key.name, "a name is required"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(ConfigError::about(
            key.name,
            format!("name longer than {MAX_NAME_LEN} bytes"),
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '.' | '*' | '>' | '/' | '\\'))
    {
        return Err(ConfigError::new(
            key.name,
            name,
            format!("a stream or consumer name may not contain {c:?}"),
        ));
    }
    Ok(())
}

/// Combinations that each parse but do not work together.
fn check_consistency(settings: &DurableSettings) -> Result<(), ConfigError> {
    let managed = settings
        .sources
        .iter()
        .find_map(|source| match &source.consumer {
            ConsumerSpec::Managed(managed) => Some(managed),
            ConsumerSpec::Existing { .. } => None,
        });
    if let Some(managed) = managed {
        if let Some(max_deliver) = managed.max_deliver {
            let retries = usize::try_from(max_deliver - 1).unwrap_or(0);
            if settings.backoff.len() > retries {
                return Err(ConfigError::about(
                    BACKOFF_MS.name,
                    format!(
                        "has {} delays but {}={max_deliver} allows only {retries} redeliveries",
                        settings.backoff.len(),
                        MAX_DELIVER.name
                    ),
                ));
            }
        }
        if settings.dead_letter_subject.is_some() && managed.max_deliver.is_none() {
            return Err(ConfigError::about(
                DEAD_LETTER_SUBJECT.name,
                format!(
                    "needs '{}': without a last attempt nothing is dead-lettered",
                    MAX_DELIVER.name
                ),
            ));
        }
    }
    if let Some(dead_letter) = &settings.dead_letter_subject {
        // A dead letter that the same link consumes again would loop.
        let consumed = managed.into_iter().flat_map(|managed| {
            managed.filter_subjects.iter().chain(
                managed
                    .create_stream
                    .iter()
                    .flat_map(|stream| stream.subjects.iter()),
            )
        });
        for pattern in consumed {
            if SubjectPattern::parse(pattern).is_ok_and(|p| p.matches(dead_letter)) {
                return Err(ConfigError::new(
                    DEAD_LETTER_SUBJECT.name,
                    dead_letter,
                    format!("is matched by {pattern:?}, which this link consumes: dead letters would come back"),
                ));
            }
        }
    }
    Ok(())
}
