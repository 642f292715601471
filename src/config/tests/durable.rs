//! The durable delivery keys and the v1 `consumers` list.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::stream::StorageType;

use super::*;
use crate::config::durable::StreamSpec;

/// The durable settings of a handler link with this config, parsed the
/// way the provider parses a link.
fn durable(pairs: &[(&str, &str)]) -> Result<DurableSettings, ConfigError> {
    settings(pairs).map(|settings| settings.handler.durable)
}

/// The error for a config that must be refused; it must name `key`.
fn rejected(pairs: &[(&str, &str)], key: &str) -> ConfigError {
    let err = durable(pairs).expect_err("must be rejected");
    assert_eq!(err.key, key, "{err}");
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
    let settings = durable(&[(STREAM.name, "ORDERS")]).expect("parses");
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
                    pinned_ttl: None,
                    create_stream: None,
                }),
                max_messages: None,
                max_bytes: None,
            }],
            backoff: vec![],
            dead_letter_subject: None,
            jetstream_domain: None,
        }
    );
}

#[test]
fn stream_subjects_and_storage_describe_a_stream_to_create() {
    let settings = durable(&[
        (STREAM.name, "ORDERS"),
        (STREAM_SUBJECTS.name, "orders.*, refunds.>"),
        (STREAM_STORAGE.name, "memory"),
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
        durable(&[(STREAM.name, "ORDERS"), (STREAM_SUBJECTS.name, "orders.>")]).expect("parses");
    let stream = managed(&settings).create_stream.clone().expect("a stream");
    assert_eq!(stream.storage, StorageType::File);
}

#[test]
fn durable_name_filter_subjects_ack_wait_and_max_deliver_are_taken_as_given() {
    let settings = durable(&[
        (STREAM.name, "ORDERS"),
        (DURABLE_NAME.name, "billing"),
        (FILTER_SUBJECTS.name, "orders.created,orders.paid"),
        (ACK_WAIT_MS.name, "1500"),
        (MAX_DELIVER.name, "4"),
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
        (STREAM.name, "ORDERS"),
        (DELIVER_POLICY.name, "by_start_sequence"),
        (START_SEQUENCE.name, "5"),
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
        (STREAM.name, "ORDERS"),
        (DELIVER_POLICY.name, "by_start_time"),
        (START_TIME.name, "2026-01-31T12:00:00Z"),
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
        let settings =
            durable(&[(STREAM.name, "ORDERS"), (DELIVER_POLICY.name, value)]).expect(value);
        assert_eq!(managed(&settings).deliver_policy, policy, "{value}");
    }
}

#[test]
fn backoff_gives_one_delay_per_failed_attempt_and_the_last_one_repeats() {
    let settings =
        durable(&[(STREAM.name, "ORDERS"), (BACKOFF_MS.name, "100, 200")]).expect("parses");
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
    let settings = durable(&[(STREAM.name, "ORDERS")]).expect("parses");
    assert_eq!(settings.backoff_after(1), None);
}

#[test]
fn backoff_may_have_one_delay_per_redelivery_that_max_deliver_allows() {
    let settings = durable(&[
        (STREAM.name, "ORDERS"),
        (MAX_DELIVER.name, "3"),
        (BACKOFF_MS.name, "100,200"),
    ])
    .expect("two delays for two redeliveries");
    assert_eq!(settings.backoff.len(), 2);
}

#[test]
fn v1_consumers_list_binds_existing_consumers_with_their_fetch_bounds() {
    let settings = durable(&[(
        CONSUMERS.name,
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
        durable(&[(CONSUMERS.name, r#"[{"stream":"S","consumer":"C"}]"#)]).expect("parses");
    assert_eq!(settings.sources[0].max_messages, None);
    assert_eq!(settings.sources[0].max_bytes, None);
}

#[test]
fn stream_and_consumers_together_give_the_managed_source_first_then_the_list() {
    let settings = durable(&[
        (STREAM.name, "ORDERS"),
        (CONSUMERS.name, r#"[{"stream":"S","consumer":"C"}]"#),
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
        (CONSUMERS.name, r#"[{"stream":"S","consumer":"C"}]"#),
        (BACKOFF_MS.name, "100"),
        (DEAD_LETTER_SUBJECT.name, "dead.letters"),
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
        (STREAM.name, "ORDERS"),
        (FILTER_SUBJECTS.name, "orders.>"),
        (MAX_DELIVER.name, "3"),
        (DEAD_LETTER_SUBJECT.name, "dead.orders"),
    ])
    .expect("parses");
    assert_eq!(settings.dead_letter_subject.as_deref(), Some("dead.orders"));
}

#[test]
fn durable_keys_on_a_consumer_link_are_ignored_not_rejected() {
    let config: HashMap<String, String> = [
        (DURABLE_NAME.name, "billing"),
        (ACK_WAIT_MS.name, "not a number"),
        (BACKOFF_MS.name, "x"),
        (DEAD_LETTER_SUBJECT.name, "dead.*"),
        (CONSUMERS.name, "not json"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let defaults = ProviderDefaults::default();
    assert!(defaults
        .settings_for(LinkRole::Handler, &config, &HashMap::new())
        .is_err());
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
    durable(&[(STREAM.name, "S"), (DURABLE_NAME.name, &name)]).expect("a valid consumer name");
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
    // The longest stream or consumer name nats-server accepts.
    assert_eq!(name.len(), 255);
    durable(&[(STREAM.name, "S"), (DURABLE_NAME.name, &name)]).expect("a valid consumer name");
}

// Rejections: each names its key.

#[test]
fn every_key_describing_the_stream_consumer_needs_stream() {
    for key in [
        STREAM_SUBJECTS.name,
        STREAM_STORAGE.name,
        DURABLE_NAME.name,
        FILTER_SUBJECTS.name,
        DELIVER_POLICY.name,
        START_SEQUENCE.name,
        START_TIME.name,
        ACK_WAIT_MS.name,
        MAX_DELIVER.name,
    ] {
        let err = rejected(&[(key, "1")], key);
        assert!(err.to_string().contains(STREAM.name), "{err}");
    }
}

#[test]
fn durable_name_needs_stream_even_with_a_consumers_list() {
    rejected(
        &[
            (CONSUMERS.name, r#"[{"stream":"S","consumer":"C"}]"#),
            (DURABLE_NAME.name, "billing"),
        ],
        DURABLE_NAME.name,
    );
}

#[test]
fn backoff_needs_stream_or_consumers() {
    let err = rejected(&[(BACKOFF_MS.name, "100")], BACKOFF_MS.name);
    assert!(err.to_string().contains(CONSUMERS.name), "{err}");
}

#[test]
fn dead_letter_subject_needs_stream_or_consumers() {
    let err = rejected(
        &[(DEAD_LETTER_SUBJECT.name, "dead.letters")],
        DEAD_LETTER_SUBJECT.name,
    );
    assert!(err.to_string().contains(CONSUMERS.name), "{err}");
}

#[test]
fn a_stream_name_with_a_dot_is_rejected() {
    rejected(&[(STREAM.name, "my.stream")], STREAM.name);
}

#[test]
fn a_stream_name_with_a_wildcard_is_rejected() {
    rejected(&[(STREAM.name, "my*stream")], STREAM.name);
}

#[test]
fn a_durable_name_with_a_dot_is_rejected() {
    rejected(
        &[(STREAM.name, "ORDERS"), (DURABLE_NAME.name, "a.b")],
        DURABLE_NAME.name,
    );
}

#[test]
fn stream_storage_other_than_file_or_memory_is_rejected() {
    let err = rejected(
        &[
            (STREAM.name, "ORDERS"),
            (STREAM_SUBJECTS.name, "orders.>"),
            (STREAM_STORAGE.name, "ssd"),
        ],
        STREAM_STORAGE.name,
    );
    assert!(err.to_string().contains("ssd"), "{err}");
}

#[test]
fn stream_storage_without_stream_subjects_is_rejected() {
    let err = rejected(
        &[(STREAM.name, "ORDERS"), (STREAM_STORAGE.name, "memory")],
        STREAM_STORAGE.name,
    );
    assert!(err.to_string().contains(STREAM_SUBJECTS.name), "{err}");
}

#[test]
fn an_unknown_deliver_policy_is_rejected() {
    let err = rejected(
        &[(STREAM.name, "ORDERS"), (DELIVER_POLICY.name, "sometimes")],
        DELIVER_POLICY.name,
    );
    assert!(err.to_string().contains("sometimes"), "{err}");
}

#[test]
fn by_start_sequence_without_start_sequence_is_rejected() {
    rejected(
        &[
            (STREAM.name, "ORDERS"),
            (DELIVER_POLICY.name, "by_start_sequence"),
        ],
        START_SEQUENCE.name,
    );
}

#[test]
fn by_start_time_without_start_time_is_rejected() {
    rejected(
        &[
            (STREAM.name, "ORDERS"),
            (DELIVER_POLICY.name, "by_start_time"),
        ],
        START_TIME.name,
    );
}

#[test]
fn start_sequence_with_another_deliver_policy_is_rejected() {
    rejected(
        &[
            (STREAM.name, "ORDERS"),
            (DELIVER_POLICY.name, "all"),
            (START_SEQUENCE.name, "5"),
        ],
        START_SEQUENCE.name,
    );
}

#[test]
fn start_time_with_another_deliver_policy_is_rejected() {
    rejected(
        &[
            (STREAM.name, "ORDERS"),
            (START_TIME.name, "2026-01-31T12:00:00Z"),
        ],
        START_TIME.name,
    );
}

#[test]
fn start_sequence_zero_is_rejected() {
    rejected(
        &[
            (STREAM.name, "ORDERS"),
            (DELIVER_POLICY.name, "by_start_sequence"),
            (START_SEQUENCE.name, "0"),
        ],
        START_SEQUENCE.name,
    );
}

#[test]
fn a_start_time_that_is_not_rfc_3339_is_rejected() {
    let err = rejected(
        &[
            (STREAM.name, "ORDERS"),
            (DELIVER_POLICY.name, "by_start_time"),
            (START_TIME.name, "yesterday"),
        ],
        START_TIME.name,
    );
    assert!(err.to_string().contains("yesterday"), "{err}");
}

#[test]
fn max_deliver_zero_is_rejected() {
    rejected(
        &[(STREAM.name, "ORDERS"), (MAX_DELIVER.name, "0")],
        MAX_DELIVER.name,
    );
}

#[test]
fn max_deliver_that_is_not_a_number_is_rejected() {
    rejected(
        &[(STREAM.name, "ORDERS"), (MAX_DELIVER.name, "abc")],
        MAX_DELIVER.name,
    );
}

#[test]
fn ack_wait_zero_is_rejected() {
    rejected(
        &[(STREAM.name, "ORDERS"), (ACK_WAIT_MS.name, "0")],
        ACK_WAIT_MS.name,
    );
}

#[test]
fn a_backoff_entry_that_is_not_a_delay_is_rejected_by_name() {
    let err = rejected(
        &[(STREAM.name, "ORDERS"), (BACKOFF_MS.name, "100,x")],
        BACKOFF_MS.name,
    );
    assert!(err.to_string().contains("\"x\""), "{err}");
}

#[test]
fn more_backoff_delays_than_redeliveries_allowed_by_max_deliver_are_rejected() {
    let err = rejected(
        &[
            (STREAM.name, "ORDERS"),
            (MAX_DELIVER.name, "2"),
            (BACKOFF_MS.name, "100,200"),
        ],
        BACKOFF_MS.name,
    );
    assert!(err.to_string().contains(MAX_DELIVER.name), "{err}");
}

#[test]
fn dead_letter_subject_without_max_deliver_on_a_stream_link_is_rejected() {
    let err = rejected(
        &[
            (STREAM.name, "ORDERS"),
            (DEAD_LETTER_SUBJECT.name, "dead.orders"),
        ],
        DEAD_LETTER_SUBJECT.name,
    );
    assert!(err.to_string().contains(MAX_DELIVER.name), "{err}");
}

#[test]
fn a_dead_letter_subject_with_a_wildcard_is_rejected() {
    let err = rejected(
        &[
            (STREAM.name, "ORDERS"),
            (MAX_DELIVER.name, "3"),
            (DEAD_LETTER_SUBJECT.name, "dead.*"),
        ],
        DEAD_LETTER_SUBJECT.name,
    );
    assert!(err.to_string().contains("wildcard"), "{err}");
}

#[test]
fn a_dead_letter_subject_matched_by_filter_subjects_is_rejected_as_a_loop() {
    let err = rejected(
        &[
            (STREAM.name, "ORDERS"),
            (FILTER_SUBJECTS.name, "orders.>"),
            (MAX_DELIVER.name, "3"),
            (DEAD_LETTER_SUBJECT.name, "orders.dead"),
        ],
        DEAD_LETTER_SUBJECT.name,
    );
    assert!(err.to_string().contains("orders.>"), "{err}");
}

#[test]
fn a_dead_letter_subject_matched_by_stream_subjects_is_rejected_as_a_loop() {
    let err = rejected(
        &[
            (STREAM.name, "ORDERS"),
            (STREAM_SUBJECTS.name, "orders.*"),
            (MAX_DELIVER.name, "3"),
            (DEAD_LETTER_SUBJECT.name, "orders.dead"),
        ],
        DEAD_LETTER_SUBJECT.name,
    );
    assert!(err.to_string().contains("orders.*"), "{err}");
}

#[test]
fn consumers_that_is_not_json_is_rejected() {
    rejected(&[(CONSUMERS.name, "S/C")], CONSUMERS.name);
}

#[test]
fn a_consumers_entry_without_consumer_is_rejected() {
    let err = rejected(&[(CONSUMERS.name, r#"[{"stream":"S"}]"#)], CONSUMERS.name);
    assert!(err.to_string().contains("`consumer`"), "{err}");
}

#[test]
fn a_consumers_entry_with_an_invalid_stream_name_is_rejected() {
    let err = rejected(
        &[(CONSUMERS.name, r#"[{"stream":"a.b","consumer":"C"}]"#)],
        CONSUMERS.name,
    );
    assert!(err.to_string().contains("entry 1"), "{err}");
}

#[test]
fn a_consumers_entry_with_max_messages_zero_is_rejected() {
    let err = rejected(
        &[(
            CONSUMERS.name,
            r#"[{"stream":"S","consumer":"C","max_messages":0}]"#,
        )],
        CONSUMERS.name,
    );
    assert!(err.to_string().contains("max_messages"), "{err}");
}

#[test]
fn pinned_client_gives_the_pin_its_ttl_with_the_servers_default() {
    let settings = durable(&[
        (STREAM.name, "ORDERS"),
        (PRIORITY_POLICY.name, "pinned_client"),
    ])
    .expect("parses");
    assert_eq!(
        managed(&settings).pinned_ttl,
        Some(Duration::from_secs(120))
    );
    let settings = durable(&[
        (STREAM.name, "ORDERS"),
        (PRIORITY_POLICY.name, "pinned_client"),
        (PINNED_TTL_MS.name, "15000"),
    ])
    .expect("parses");
    assert_eq!(managed(&settings).pinned_ttl, Some(Duration::from_secs(15)));
}

#[test]
fn a_priority_policy_other_than_pinned_client_is_refused_naming_the_key() {
    let err = rejected(
        &[(STREAM.name, "ORDERS"), (PRIORITY_POLICY.name, "overflow")],
        PRIORITY_POLICY.name,
    );
    assert!(err.to_string().contains("expected pinned_client"), "{err}");
}

#[test]
fn a_pinned_ttl_below_ten_seconds_or_without_the_policy_is_refused() {
    let err = rejected(
        &[
            (STREAM.name, "ORDERS"),
            (PRIORITY_POLICY.name, "pinned_client"),
            (PINNED_TTL_MS.name, "5000"),
        ],
        PINNED_TTL_MS.name,
    );
    assert!(err.to_string().contains("from 10000 to 3600000"), "{err}");
    rejected(
        &[(STREAM.name, "ORDERS"), (PINNED_TTL_MS.name, "20000")],
        PINNED_TTL_MS.name,
    );
    rejected(
        &[(PRIORITY_POLICY.name, "pinned_client")],
        PRIORITY_POLICY.name,
    );
}
