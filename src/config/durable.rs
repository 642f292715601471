//! Durable (JetStream) delivery settings of a handler link: the keys that
//! sit next to `subscriptions` and the v1 host's `consumers` list, parsed
//! and checked together so that an inconsistent combination names its key.

use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::stream::StorageType;
use serde::Deserialize;

use super::{non_blank, parse_duration, parse_patterns, ConfigError};
use crate::subject::{self, SubjectPattern};

/// JetStream stream a handler link consumes durably; every other durable
/// key except `consumers`, `backoff_ms` and `dead_letter_subject` needs it.
pub const STREAM: &str = "stream";
/// Subjects of `stream`, to create it when it does not exist yet.
pub const STREAM_SUBJECTS: &str = "stream_subjects";
/// `file` or `memory`, for a stream created from `stream_subjects`.
pub const STREAM_STORAGE: &str = "stream_storage";
/// Durable consumer name; derived from the component id and link name
/// when unset.
pub const DURABLE_NAME: &str = "durable_name";
/// Subjects of the stream the consumer takes; all of them when unset.
pub const FILTER_SUBJECTS: &str = "filter_subjects";
/// Where a new consumer starts: `all`, `new`, `last`, `by_start_sequence`
/// or `by_start_time`.
pub const DELIVER_POLICY: &str = "deliver_policy";
/// First stream sequence for `deliver_policy=by_start_sequence`.
pub const START_SEQUENCE: &str = "start_sequence";
/// First publish time (RFC 3339) for `deliver_policy=by_start_time`.
pub const START_TIME: &str = "start_time";
/// How long the server waits for an ack before it redelivers.
pub const ACK_WAIT_MS: &str = "ack_wait_ms";
/// Delivery attempts per message; unlimited when unset.
pub const MAX_DELIVER: &str = "max_deliver";
/// Delays before redelivering a message whose handler failed: the first
/// after the first failure, and so on; the last one repeats.
pub const BACKOFF_MS: &str = "backoff_ms";
/// Where a message goes after its last failed attempt.
pub const DEAD_LETTER_SUBJECT: &str = "dead_letter_subject";
/// The v1 host's JetStream key: a JSON list of existing stream/consumer
/// pairs, each with optional `max_messages` and `max_bytes` per fetch.
pub const CONSUMERS: &str = "consumers";

/// Every durable key: they configure handler links only.
pub(super) const KEYS: &[&str] = &[
    STREAM,
    STREAM_SUBJECTS,
    STREAM_STORAGE,
    DURABLE_NAME,
    FILTER_SUBJECTS,
    DELIVER_POLICY,
    START_SEQUENCE,
    START_TIME,
    ACK_WAIT_MS,
    MAX_DELIVER,
    BACKOFF_MS,
    DEAD_LETTER_SUBJECT,
    CONSUMERS,
];

/// Keys that describe the consumer created on `stream`.
const NEEDS_STREAM: &[&str] = &[
    STREAM_SUBJECTS,
    STREAM_STORAGE,
    DURABLE_NAME,
    FILTER_SUBJECTS,
    DELIVER_POLICY,
    START_SEQUENCE,
    START_TIME,
    ACK_WAIT_MS,
    MAX_DELIVER,
];

/// The server's own default ack wait.
const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(30);
/// Longest name the server accepts for a stream or consumer.
const MAX_NAME_LEN: usize = 255;

/// The durable side of a handler link.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DurableSettings {
    /// One pull consumer per entry: the one from `stream` first, then the
    /// `consumers` list.
    pub sources: Vec<DurableSource>,
    /// Redelivery delays after a failed attempt (empty: the server's own
    /// redelivery after `ack_wait`).
    pub backoff: Vec<Duration>,
    pub dead_letter_subject: Option<String>,
}

impl DurableSettings {
    /// True when the link consumes from JetStream.
    pub fn is_enabled(&self) -> bool {
        !self.sources.is_empty()
    }

    /// The delay before the next attempt after `attempts` failed ones.
    pub fn backoff_after(&self, attempts: u64) -> Option<Duration> {
        let index = usize::try_from(attempts.saturating_sub(1)).unwrap_or(usize::MAX);
        self.backoff.get(index).or(self.backoff.last()).copied()
    }
}

/// One pull consumer a handler link fetches from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurableSource {
    pub stream: String,
    pub consumer: ConsumerSpec,
    /// Most messages one fetch asks for (never more than free delivery slots).
    pub max_messages: Option<usize>,
    /// Most bytes one fetch asks for.
    pub max_bytes: Option<usize>,
}

/// How the provider finds the consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsumerSpec {
    /// Created, or updated to these settings, at link start.
    Managed(ManagedConsumer),
    /// Bound as it exists (the v1 `consumers` key): its own settings apply.
    Existing { name: String },
}

/// A consumer the provider creates from the link's keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedConsumer {
    /// `None`: derived from the link, see [`default_durable_name`].
    pub name: Option<String>,
    pub filter_subjects: Vec<String>,
    pub deliver_policy: DeliverPolicy,
    pub ack_wait: Duration,
    pub max_deliver: Option<i64>,
    /// Create the stream with these settings when it does not exist.
    pub create_stream: Option<StreamSpec>,
}

/// A stream to create when missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSpec {
    pub subjects: Vec<String>,
    pub storage: StorageType,
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
pub(super) fn parse<'a>(
    get: impl Fn(&str) -> Option<&'a str> + Copy,
) -> Result<DurableSettings, ConfigError> {
    let mut sources = Vec::new();
    match non_blank(get, STREAM) {
        Some(stream) => {
            check_name(STREAM, stream)?;
            sources.push(DurableSource {
                stream: stream.to_string(),
                consumer: ConsumerSpec::Managed(parse_managed(get)?),
                max_messages: None,
                max_bytes: None,
            });
        }
        None => {
            if let Some(key) = NEEDS_STREAM
                .iter()
                .find(|key| non_blank(get, key).is_some())
            {
                return Err(ConfigError::about(
                    key,
                    format!("needs '{STREAM}', the JetStream stream to consume"),
                ));
            }
        }
    }
    if let Some(value) = non_blank(get, CONSUMERS) {
        sources.extend(parse_consumers(value)?);
    }

    let backoff = match non_blank(get, BACKOFF_MS) {
        Some(value) => value
            .split(',')
            .map(str::trim)
            .map(|entry| {
                parse_duration(BACKOFF_MS, entry, Duration::from_millis).map_err(|_| {
                    ConfigError::new(
                        BACKOFF_MS,
                        value,
                        format!("entry {entry:?} is not a delay of 1 to 3,600,000 ms"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?,
        None => Vec::new(),
    };
    let dead_letter_subject = non_blank(get, DEAD_LETTER_SUBJECT)
        .map(|value| {
            subject::check_publish_subject(value)
                .map(|()| value.to_string())
                .map_err(|reason| ConfigError::new(DEAD_LETTER_SUBJECT, value, reason))
        })
        .transpose()?;
    if sources.is_empty() {
        for key in [BACKOFF_MS, DEAD_LETTER_SUBJECT] {
            if non_blank(get, key).is_some() {
                return Err(ConfigError::about(
                    key,
                    format!(
                        "needs '{STREAM}' or '{CONSUMERS}': it applies to durable delivery only"
                    ),
                ));
            }
        }
    }
    let settings = DurableSettings {
        sources,
        backoff,
        dead_letter_subject,
    };
    check_consistency(&settings)?;
    Ok(settings)
}

fn parse_managed<'a>(
    get: impl Fn(&str) -> Option<&'a str> + Copy,
) -> Result<ManagedConsumer, ConfigError> {
    let name = non_blank(get, DURABLE_NAME)
        .map(|name| check_name(DURABLE_NAME, name).map(|()| name.to_string()))
        .transpose()?;
    let subjects = |key: &str| -> Result<Vec<String>, ConfigError> {
        Ok(non_blank(get, key)
            .map(|value| parse_patterns(key, value))
            .transpose()?
            .unwrap_or_default()
            .iter()
            .map(SubjectPattern::to_string)
            .collect())
    };
    let filter_subjects = subjects(FILTER_SUBJECTS)?;
    let stream_subjects = subjects(STREAM_SUBJECTS)?;
    let storage = match non_blank(get, STREAM_STORAGE) {
        None | Some("file") => StorageType::File,
        Some("memory") => StorageType::Memory,
        Some(other) => {
            return Err(ConfigError::new(
                STREAM_STORAGE,
                other,
                "expected file or memory",
            ))
        }
    };
    if non_blank(get, STREAM_STORAGE).is_some() && stream_subjects.is_empty() {
        return Err(ConfigError::about(
            STREAM_STORAGE,
            format!("applies only to a stream created from '{STREAM_SUBJECTS}', which is not set"),
        ));
    }
    let max_deliver = non_blank(get, MAX_DELIVER)
        .map(|value| match value.parse::<i64>() {
            Ok(n) if (1..=1_000_000).contains(&n) => Ok(n),
            _ => Err(ConfigError::new(
                MAX_DELIVER,
                value,
                "expected a whole number of attempts from 1 to 1000000",
            )),
        })
        .transpose()?;
    Ok(ManagedConsumer {
        name,
        filter_subjects,
        deliver_policy: parse_deliver_policy(get)?,
        ack_wait: non_blank(get, ACK_WAIT_MS)
            .map(|value| parse_duration(ACK_WAIT_MS, value, Duration::from_millis))
            .transpose()?
            .unwrap_or(DEFAULT_ACK_WAIT),
        max_deliver,
        create_stream: (!stream_subjects.is_empty()).then_some(StreamSpec {
            subjects: stream_subjects,
            storage,
        }),
    })
}

fn parse_deliver_policy<'a>(
    get: impl Fn(&str) -> Option<&'a str> + Copy,
) -> Result<DeliverPolicy, ConfigError> {
    let policy = non_blank(get, DELIVER_POLICY).unwrap_or("all");
    let sequence = non_blank(get, START_SEQUENCE);
    let time = non_blank(get, START_TIME);
    let unused = |key: &str, wanted: &str| {
        ConfigError::about(
            key,
            format!("is used only with {DELIVER_POLICY}={wanted}, not {policy}"),
        )
    };
    if sequence.is_some() && policy != "by_start_sequence" {
        return Err(unused(START_SEQUENCE, "by_start_sequence"));
    }
    if time.is_some() && policy != "by_start_time" {
        return Err(unused(START_TIME, "by_start_time"));
    }
    let needed =
        |key: &str| ConfigError::about(key, format!("is required with {DELIVER_POLICY}={policy}"));
    Ok(match policy {
        "all" => DeliverPolicy::All,
        "new" => DeliverPolicy::New,
        "last" => DeliverPolicy::Last,
        "by_start_sequence" => {
            let value = sequence.ok_or_else(|| needed(START_SEQUENCE))?;
            match value.parse::<u64>() {
                Ok(start_sequence) if start_sequence >= 1 => {
                    DeliverPolicy::ByStartSequence { start_sequence }
                }
                _ => {
                    return Err(ConfigError::new(
                        START_SEQUENCE,
                        value,
                        "expected a stream sequence number from 1",
                    ))
                }
            }
        }
        "by_start_time" => {
            let value = time.ok_or_else(|| needed(START_TIME))?;
            let start_time =
                time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339)
                    .map_err(|err| {
                        ConfigError::new(
                            START_TIME,
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
                DELIVER_POLICY,
                other,
                "expected all, new, last, by_start_sequence or by_start_time",
            ))
        }
    })
}

fn parse_consumers(value: &str) -> Result<Vec<DurableSource>, ConfigError> {
    let entries: Vec<V1Consumer> = serde_json::from_str(value).map_err(|err| {
        ConfigError::about(
            CONSUMERS,
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
                check_name(CONSUMERS, value).map_err(|err| {
                    ConfigError::about(
                        CONSUMERS,
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
                        CONSUMERS,
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
fn check_name(key: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() {
        return Err(ConfigError::about(key, "a name is required"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(ConfigError::about(
            key,
            format!("name longer than {MAX_NAME_LEN} bytes"),
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '.' | '*' | '>' | '/' | '\\'))
    {
        return Err(ConfigError::new(
            key,
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
                    BACKOFF_MS,
                    format!(
                        "has {} delays but {MAX_DELIVER}={max_deliver} allows only {retries} \
                         redeliveries",
                        settings.backoff.len()
                    ),
                ));
            }
        }
        if settings.dead_letter_subject.is_some() && managed.max_deliver.is_none() {
            return Err(ConfigError::about(
                DEAD_LETTER_SUBJECT,
                format!("needs '{MAX_DELIVER}': without a last attempt nothing is dead-lettered"),
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
                    DEAD_LETTER_SUBJECT,
                    dead_letter,
                    format!("is matched by {pattern:?}, which this link consumes: dead letters would come back"),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::config::{LinkRole, ProviderDefaults};

    /// The durable settings of a handler link with this config, parsed the
    /// way the provider parses a link.
    fn durable(pairs: &[(&str, &str)]) -> Result<DurableSettings, ConfigError> {
        crate::config::tests::settings(pairs).map(|settings| settings.handler.durable)
    }

    /// The error for a config that must be refused; it must name `key`.
    fn rejected(pairs: &[(&str, &str)], key: &str) -> ConfigError {
        let err = durable(pairs).expect_err("must be rejected");
        assert_eq!(err.key(), key, "{err}");
        assert!(err.to_string().contains(key), "{err}");
        err
    }

    /// The consumer of the one source, which must be managed.
    fn managed(settings: &DurableSettings) -> &ManagedConsumer {
        assert_eq!(settings.sources.len(), 1, "{settings:?}");
        match &settings.sources[0].consumer {
            ConsumerSpec::Managed(managed) => managed,
            other => panic!("expected a managed consumer, got {other:?}"),
        }
    }

    // Accepted configurations.

    #[test]
    fn no_durable_keys_leave_durable_delivery_off() {
        let settings = durable(&[]).expect("parses");
        assert!(!settings.is_enabled());
        assert_eq!(settings, DurableSettings::default());
    }

    #[test]
    fn stream_alone_gives_one_managed_consumer_with_the_defaults() {
        let settings = durable(&[(STREAM, "ORDERS")]).expect("parses");
        assert!(settings.is_enabled());
        assert_eq!(
            settings,
            DurableSettings {
                sources: vec![DurableSource {
                    stream: "ORDERS".into(),
                    consumer: ConsumerSpec::Managed(ManagedConsumer {
                        name: None,
                        filter_subjects: vec![],
                        deliver_policy: DeliverPolicy::All,
                        ack_wait: Duration::from_secs(30),
                        max_deliver: None,
                        create_stream: None,
                    }),
                    max_messages: None,
                    max_bytes: None,
                }],
                backoff: vec![],
                dead_letter_subject: None,
            }
        );
    }

    #[test]
    fn stream_subjects_and_storage_describe_a_stream_to_create() {
        let settings = durable(&[
            (STREAM, "ORDERS"),
            (STREAM_SUBJECTS, "orders.*, refunds.>"),
            (STREAM_STORAGE, "memory"),
        ])
        .expect("parses");
        assert_eq!(
            managed(&settings).create_stream,
            Some(StreamSpec {
                subjects: vec!["orders.*".into(), "refunds.>".into()],
                storage: StorageType::Memory,
            })
        );
    }

    #[test]
    fn a_stream_to_create_is_stored_in_files_by_default() {
        let settings =
            durable(&[(STREAM, "ORDERS"), (STREAM_SUBJECTS, "orders.>")]).expect("parses");
        let stream = managed(&settings).create_stream.clone().expect("a stream");
        assert_eq!(stream.storage, StorageType::File);
    }

    #[test]
    fn durable_name_filter_subjects_ack_wait_and_max_deliver_are_taken_as_given() {
        let settings = durable(&[
            (STREAM, "ORDERS"),
            (DURABLE_NAME, "billing"),
            (FILTER_SUBJECTS, "orders.created,orders.paid"),
            (ACK_WAIT_MS, "1500"),
            (MAX_DELIVER, "4"),
        ])
        .expect("parses");
        let consumer = managed(&settings);
        assert_eq!(consumer.name.as_deref(), Some("billing"));
        assert_eq!(consumer.filter_subjects, ["orders.created", "orders.paid"]);
        assert_eq!(consumer.ack_wait, Duration::from_millis(1500));
        assert_eq!(consumer.max_deliver, Some(4));
    }

    #[test]
    fn deliver_policy_by_start_sequence_starts_at_start_sequence() {
        let settings = durable(&[
            (STREAM, "ORDERS"),
            (DELIVER_POLICY, "by_start_sequence"),
            (START_SEQUENCE, "5"),
        ])
        .expect("parses");
        assert_eq!(
            managed(&settings).deliver_policy,
            DeliverPolicy::ByStartSequence { start_sequence: 5 }
        );
    }

    #[test]
    fn deliver_policy_by_start_time_starts_at_an_rfc_3339_start_time() {
        let settings = durable(&[
            (STREAM, "ORDERS"),
            (DELIVER_POLICY, "by_start_time"),
            (START_TIME, "2026-01-31T12:00:00Z"),
        ])
        .expect("parses");
        match managed(&settings).deliver_policy {
            DeliverPolicy::ByStartTime { start_time } => {
                assert_eq!(start_time.unix_timestamp(), 1_769_860_800);
            }
            other => panic!("expected by_start_time, got {other:?}"),
        }
    }

    #[test]
    fn deliver_policies_new_and_last_are_accepted() {
        for (value, policy) in [("new", DeliverPolicy::New), ("last", DeliverPolicy::Last)] {
            let settings = durable(&[(STREAM, "ORDERS"), (DELIVER_POLICY, value)]).expect(value);
            assert_eq!(managed(&settings).deliver_policy, policy, "{value}");
        }
    }

    #[test]
    fn backoff_gives_one_delay_per_failed_attempt_and_the_last_one_repeats() {
        let settings = durable(&[(STREAM, "ORDERS"), (BACKOFF_MS, "100, 200")]).expect("parses");
        assert_eq!(
            settings.backoff,
            [Duration::from_millis(100), Duration::from_millis(200)]
        );
        assert_eq!(settings.backoff_after(1), Some(Duration::from_millis(100)));
        assert_eq!(settings.backoff_after(2), Some(Duration::from_millis(200)));
        assert_eq!(settings.backoff_after(9), Some(Duration::from_millis(200)));
    }

    #[test]
    fn without_backoff_there_is_no_delay_before_a_redelivery() {
        let settings = durable(&[(STREAM, "ORDERS")]).expect("parses");
        assert_eq!(settings.backoff_after(1), None);
    }

    #[test]
    fn backoff_may_have_one_delay_per_redelivery_that_max_deliver_allows() {
        let settings = durable(&[
            (STREAM, "ORDERS"),
            (MAX_DELIVER, "3"),
            (BACKOFF_MS, "100,200"),
        ])
        .expect("two delays for two redeliveries");
        assert_eq!(settings.backoff.len(), 2);
    }

    #[test]
    fn v1_consumers_list_binds_existing_consumers_with_their_fetch_bounds() {
        let settings = durable(&[(
            CONSUMERS,
            r#"[{"stream":"S","consumer":"C","max_messages":10,"max_bytes":1000}]"#,
        )])
        .expect("parses");
        assert!(settings.is_enabled());
        assert_eq!(
            settings.sources,
            [DurableSource {
                stream: "S".into(),
                consumer: ConsumerSpec::Existing { name: "C".into() },
                max_messages: Some(10),
                max_bytes: Some(1000),
            }]
        );
    }

    #[test]
    fn v1_consumers_fetch_bounds_are_optional() {
        let settings =
            durable(&[(CONSUMERS, r#"[{"stream":"S","consumer":"C"}]"#)]).expect("parses");
        assert_eq!(settings.sources[0].max_messages, None);
        assert_eq!(settings.sources[0].max_bytes, None);
    }

    #[test]
    fn stream_and_consumers_together_give_the_managed_source_first_then_the_list() {
        let settings = durable(&[
            (STREAM, "ORDERS"),
            (CONSUMERS, r#"[{"stream":"S","consumer":"C"}]"#),
        ])
        .expect("parses");
        assert_eq!(settings.sources.len(), 2);
        assert_eq!(settings.sources[0].stream, "ORDERS");
        assert!(matches!(
            settings.sources[0].consumer,
            ConsumerSpec::Managed(_)
        ));
        assert_eq!(settings.sources[1].stream, "S");
        assert_eq!(
            settings.sources[1].consumer,
            ConsumerSpec::Existing { name: "C".into() }
        );
    }

    #[test]
    fn backoff_and_dead_letter_subject_apply_to_a_consumers_list_without_stream() {
        let settings = durable(&[
            (CONSUMERS, r#"[{"stream":"S","consumer":"C"}]"#),
            (BACKOFF_MS, "100"),
            (DEAD_LETTER_SUBJECT, "dead.letters"),
        ])
        .expect("an existing consumer brings its own max_deliver");
        assert_eq!(settings.backoff, [Duration::from_millis(100)]);
        assert_eq!(
            settings.dead_letter_subject.as_deref(),
            Some("dead.letters")
        );
    }

    #[test]
    fn dead_letter_subject_with_max_deliver_is_accepted_on_a_stream_link() {
        let settings = durable(&[
            (STREAM, "ORDERS"),
            (FILTER_SUBJECTS, "orders.>"),
            (MAX_DELIVER, "3"),
            (DEAD_LETTER_SUBJECT, "dead.orders"),
        ])
        .expect("parses");
        assert_eq!(settings.dead_letter_subject.as_deref(), Some("dead.orders"));
    }

    #[test]
    fn durable_keys_on_a_consumer_link_are_ignored_not_rejected() {
        let config: HashMap<String, String> = [
            (DURABLE_NAME, "billing"),
            (ACK_WAIT_MS, "not a number"),
            (BACKOFF_MS, "x"),
            (DEAD_LETTER_SUBJECT, "dead.*"),
            (CONSUMERS, "not json"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let defaults = ProviderDefaults::default();
        assert!(defaults.link_settings(&config, &HashMap::new()).is_err());
        let settings = defaults
            .settings_for(LinkRole::Consumer, &config, &HashMap::new())
            .expect("accepted");
        assert!(!settings.handler.durable.is_enabled());
    }

    // The default consumer name.

    #[test]
    fn default_durable_name_replaces_characters_a_consumer_name_may_not_hold() {
        let name = default_durable_name("my.component", "default");
        assert!(
            name.starts_with("wasmcloud-my_component-default-"),
            "{name}"
        );
        check_name(DURABLE_NAME, &name).expect("a valid consumer name");
    }

    #[test]
    fn default_durable_name_never_changes_between_versions() {
        // A new name would orphan every deployed consumer and start over.
        assert_eq!(
            default_durable_name("echo", "default"),
            "wasmcloud-echo-default-db3e7e9559dc1493"
        );
    }

    #[test]
    fn default_durable_names_of_pairs_that_read_alike_differ() {
        assert_ne!(
            default_durable_name("a-b", "c"),
            default_durable_name("a", "b-c")
        );
        assert_ne!(
            default_durable_name("my.component", "default"),
            default_durable_name("my_component", "default")
        );
    }

    #[test]
    fn default_durable_name_is_stable_for_the_same_component_and_link() {
        assert_eq!(
            default_durable_name("my.component", "default"),
            default_durable_name("my.component", "default")
        );
        assert_ne!(
            default_durable_name("my.component", "default"),
            default_durable_name("my.component", "other")
        );
    }

    #[test]
    fn default_durable_name_is_cut_to_the_longest_name_the_server_accepts() {
        let name = default_durable_name(&"x".repeat(400), "default");
        assert_eq!(name.len(), MAX_NAME_LEN);
        check_name(DURABLE_NAME, &name).expect("a valid consumer name");
    }

    // Rejections: each names its key.

    #[test]
    fn every_key_describing_the_stream_consumer_needs_stream() {
        for key in [
            STREAM_SUBJECTS,
            STREAM_STORAGE,
            DURABLE_NAME,
            FILTER_SUBJECTS,
            DELIVER_POLICY,
            START_SEQUENCE,
            START_TIME,
            ACK_WAIT_MS,
            MAX_DELIVER,
        ] {
            let err = rejected(&[(key, "1")], key);
            assert!(err.to_string().contains(STREAM), "{err}");
        }
    }

    #[test]
    fn durable_name_needs_stream_even_with_a_consumers_list() {
        rejected(
            &[
                (CONSUMERS, r#"[{"stream":"S","consumer":"C"}]"#),
                (DURABLE_NAME, "billing"),
            ],
            DURABLE_NAME,
        );
    }

    #[test]
    fn backoff_needs_stream_or_consumers() {
        let err = rejected(&[(BACKOFF_MS, "100")], BACKOFF_MS);
        assert!(err.to_string().contains(CONSUMERS), "{err}");
    }

    #[test]
    fn dead_letter_subject_needs_stream_or_consumers() {
        let err = rejected(
            &[(DEAD_LETTER_SUBJECT, "dead.letters")],
            DEAD_LETTER_SUBJECT,
        );
        assert!(err.to_string().contains(CONSUMERS), "{err}");
    }

    #[test]
    fn a_stream_name_with_a_dot_is_rejected() {
        rejected(&[(STREAM, "my.stream")], STREAM);
    }

    #[test]
    fn a_stream_name_with_a_wildcard_is_rejected() {
        rejected(&[(STREAM, "my*stream")], STREAM);
    }

    #[test]
    fn a_durable_name_with_a_dot_is_rejected() {
        rejected(&[(STREAM, "ORDERS"), (DURABLE_NAME, "a.b")], DURABLE_NAME);
    }

    #[test]
    fn stream_storage_other_than_file_or_memory_is_rejected() {
        let err = rejected(
            &[
                (STREAM, "ORDERS"),
                (STREAM_SUBJECTS, "orders.>"),
                (STREAM_STORAGE, "ssd"),
            ],
            STREAM_STORAGE,
        );
        assert!(err.to_string().contains("ssd"), "{err}");
    }

    #[test]
    fn stream_storage_without_stream_subjects_is_rejected() {
        let err = rejected(
            &[(STREAM, "ORDERS"), (STREAM_STORAGE, "memory")],
            STREAM_STORAGE,
        );
        assert!(err.to_string().contains(STREAM_SUBJECTS), "{err}");
    }

    #[test]
    fn an_unknown_deliver_policy_is_rejected() {
        let err = rejected(
            &[(STREAM, "ORDERS"), (DELIVER_POLICY, "sometimes")],
            DELIVER_POLICY,
        );
        assert!(err.to_string().contains("sometimes"), "{err}");
    }

    #[test]
    fn by_start_sequence_without_start_sequence_is_rejected() {
        rejected(
            &[(STREAM, "ORDERS"), (DELIVER_POLICY, "by_start_sequence")],
            START_SEQUENCE,
        );
    }

    #[test]
    fn by_start_time_without_start_time_is_rejected() {
        rejected(
            &[(STREAM, "ORDERS"), (DELIVER_POLICY, "by_start_time")],
            START_TIME,
        );
    }

    #[test]
    fn start_sequence_with_another_deliver_policy_is_rejected() {
        rejected(
            &[
                (STREAM, "ORDERS"),
                (DELIVER_POLICY, "all"),
                (START_SEQUENCE, "5"),
            ],
            START_SEQUENCE,
        );
    }

    #[test]
    fn start_time_with_another_deliver_policy_is_rejected() {
        rejected(
            &[(STREAM, "ORDERS"), (START_TIME, "2026-01-31T12:00:00Z")],
            START_TIME,
        );
    }

    #[test]
    fn start_sequence_zero_is_rejected() {
        rejected(
            &[
                (STREAM, "ORDERS"),
                (DELIVER_POLICY, "by_start_sequence"),
                (START_SEQUENCE, "0"),
            ],
            START_SEQUENCE,
        );
    }

    #[test]
    fn a_start_time_that_is_not_rfc_3339_is_rejected() {
        let err = rejected(
            &[
                (STREAM, "ORDERS"),
                (DELIVER_POLICY, "by_start_time"),
                (START_TIME, "yesterday"),
            ],
            START_TIME,
        );
        assert!(err.to_string().contains("yesterday"), "{err}");
    }

    #[test]
    fn max_deliver_zero_is_rejected() {
        rejected(&[(STREAM, "ORDERS"), (MAX_DELIVER, "0")], MAX_DELIVER);
    }

    #[test]
    fn max_deliver_that_is_not_a_number_is_rejected() {
        rejected(&[(STREAM, "ORDERS"), (MAX_DELIVER, "abc")], MAX_DELIVER);
    }

    #[test]
    fn ack_wait_zero_is_rejected() {
        rejected(&[(STREAM, "ORDERS"), (ACK_WAIT_MS, "0")], ACK_WAIT_MS);
    }

    #[test]
    fn a_backoff_entry_that_is_not_a_delay_is_rejected_by_name() {
        let err = rejected(&[(STREAM, "ORDERS"), (BACKOFF_MS, "100,x")], BACKOFF_MS);
        assert!(err.to_string().contains("\"x\""), "{err}");
    }

    #[test]
    fn more_backoff_delays_than_redeliveries_allowed_by_max_deliver_are_rejected() {
        let err = rejected(
            &[
                (STREAM, "ORDERS"),
                (MAX_DELIVER, "2"),
                (BACKOFF_MS, "100,200"),
            ],
            BACKOFF_MS,
        );
        assert!(err.to_string().contains(MAX_DELIVER), "{err}");
    }

    #[test]
    fn dead_letter_subject_without_max_deliver_on_a_stream_link_is_rejected() {
        let err = rejected(
            &[(STREAM, "ORDERS"), (DEAD_LETTER_SUBJECT, "dead.orders")],
            DEAD_LETTER_SUBJECT,
        );
        assert!(err.to_string().contains(MAX_DELIVER), "{err}");
    }

    #[test]
    fn a_dead_letter_subject_with_a_wildcard_is_rejected() {
        let err = rejected(
            &[
                (STREAM, "ORDERS"),
                (MAX_DELIVER, "3"),
                (DEAD_LETTER_SUBJECT, "dead.*"),
            ],
            DEAD_LETTER_SUBJECT,
        );
        assert!(err.to_string().contains("wildcard"), "{err}");
    }

    #[test]
    fn a_dead_letter_subject_matched_by_filter_subjects_is_rejected_as_a_loop() {
        let err = rejected(
            &[
                (STREAM, "ORDERS"),
                (FILTER_SUBJECTS, "orders.>"),
                (MAX_DELIVER, "3"),
                (DEAD_LETTER_SUBJECT, "orders.dead"),
            ],
            DEAD_LETTER_SUBJECT,
        );
        assert!(err.to_string().contains("orders.>"), "{err}");
    }

    #[test]
    fn a_dead_letter_subject_matched_by_stream_subjects_is_rejected_as_a_loop() {
        let err = rejected(
            &[
                (STREAM, "ORDERS"),
                (STREAM_SUBJECTS, "orders.*"),
                (MAX_DELIVER, "3"),
                (DEAD_LETTER_SUBJECT, "orders.dead"),
            ],
            DEAD_LETTER_SUBJECT,
        );
        assert!(err.to_string().contains("orders.*"), "{err}");
    }

    #[test]
    fn consumers_that_is_not_json_is_rejected() {
        rejected(&[(CONSUMERS, "S/C")], CONSUMERS);
    }

    #[test]
    fn a_consumers_entry_without_consumer_is_rejected() {
        let err = rejected(&[(CONSUMERS, r#"[{"stream":"S"}]"#)], CONSUMERS);
        assert!(err.to_string().contains("`consumer`"), "{err}");
    }

    #[test]
    fn a_consumers_entry_with_an_invalid_stream_name_is_rejected() {
        let err = rejected(
            &[(CONSUMERS, r#"[{"stream":"a.b","consumer":"C"}]"#)],
            CONSUMERS,
        );
        assert!(err.to_string().contains("entry 1"), "{err}");
    }

    #[test]
    fn a_consumers_entry_with_max_messages_zero_is_rejected() {
        let err = rejected(
            &[(
                CONSUMERS,
                r#"[{"stream":"S","consumer":"C","max_messages":0}]"#,
            )],
            CONSUMERS,
        );
        assert!(err.to_string().contains("max_messages"), "{err}");
    }
}
