//! The key descriptors against what they drive: every bound and default as
//! parsing applies it, and the README's key tables.

use super::*;

/// Config that makes `key` meaningful: durable keys need a stream.
fn with_context<'a>(key: &'a Key, value: &'a str) -> Vec<(&'a str, &'a str)> {
    let mut pairs = vec![(key.name, value)];
    if key.table == Table::Durable && key.name != STREAM.name {
        pairs.push((STREAM.name, "S"));
    }
    if key.name == MAX_REQUEST_TIMEOUT_MS.name {
        // The default request timeout may not exceed it.
        pairs.push((REQUEST_TIMEOUT_MS.name, "1"));
    }
    if key.name == PINNED_TTL_MS.name {
        pairs.push((PRIORITY_POLICY.name, "pinned_client"));
    }
    if key.name == REQUEST_TIMEOUT_MS.name {
        // The default may not exceed the largest timeout a component asks for.
        pairs.push((MAX_REQUEST_TIMEOUT_MS.name, value));
    }
    pairs
}

fn parse(key: &Key, value: &str) -> Result<LinkSettings, ConfigError> {
    let pairs = with_context(key, value);
    match key.links {
        Links::Consumer => consumer_settings(&pairs),
        Links::Handler | Links::Every => settings(&pairs),
    }
}

#[test]
fn every_duration_is_accepted_within_its_range_only() {
    let mut checked = Vec::new();
    for key in ALL {
        let (min, max, zero_means_default) = match key.form {
            Form::Duration {
                min,
                max,
                zero_means_default,
                ..
            } => (min, max, zero_means_default),
            Form::Durations { max, .. } => (1, max, false),
            Form::Text { .. } | Form::Count { .. } => continue,
        };
        let at_max = parse(key, &max.to_string());
        assert!(at_max.is_ok(), "{}={max}: {:?}", key.name, at_max.err());
        let at_min = parse(key, &min.to_string());
        assert!(at_min.is_ok(), "{}={min}: {:?}", key.name, at_min.err());
        for bad in [(max + 1).to_string(), (min - 1).to_string()] {
            if zero_means_default && bad == "0" {
                continue;
            }
            let err = parse(key, &bad).expect_err(&format!("{}={bad}", key.name));
            assert_eq!(err.key, key.name, "{err}");
            assert!(
                err.to_string().contains(&format!("{min} to {max}")),
                "{err}"
            );
        }
        checked.push(key.name);
    }
    assert_eq!(
        checked,
        [
            "ping_interval_sec",
            "connect_timeout_ms",
            "handler_timeout_ms",
            "drain_timeout_ms",
            "publish_timeout_ms",
            "request_timeout_ms",
            "max_request_timeout_ms",
            "ack_wait_ms",
            "backoff_ms",
            "pinned_ttl_ms",
        ]
    );
}

#[test]
fn every_count_is_accepted_within_its_range_only() {
    for key in ALL {
        let Form::Count { min, max, .. } = key.form else {
            continue;
        };
        let extra: &[(&str, &str)] = if key.name == START_SEQUENCE.name {
            &[(DELIVER_POLICY.name, "by_start_sequence")]
        } else {
            &[]
        };
        let parse_with = |value: &str| {
            let mut pairs = with_context(key, value);
            pairs.extend_from_slice(extra);
            settings(&pairs)
        };
        assert!(parse_with(&min.to_string()).is_ok(), "{}={min}", key.name);
        assert!(parse_with(&max.to_string()).is_ok(), "{}={max}", key.name);
        let below = parse_with(&(min - 1).to_string()).expect_err(key.name);
        assert_eq!(below.key, key.name, "{below}");
        if max < u64::MAX {
            let above = parse_with(&(max + 1).to_string()).expect_err(key.name);
            assert_eq!(above.key, key.name, "{above}");
        }
    }
}

#[test]
fn numbers_without_a_value_take_their_default() {
    let handler = settings(&[]).expect("defaults");
    let consumer = consumer_settings(&[]).expect("defaults");
    let expect = |key: &Key| match key.form {
        Form::Duration {
            unit,
            default: keys::Default::Value(n),
            ..
        } => Some(unit.of(n)),
        _ => None,
    };
    assert_eq!(
        Some(handler.connection.connect_timeout),
        expect(&CONNECT_TIMEOUT_MS)
    );
    assert_eq!(
        Some(handler.handler.handler_timeout),
        expect(&HANDLER_TIMEOUT_MS)
    );
    assert_eq!(
        Some(handler.handler.drain_timeout),
        expect(&DRAIN_TIMEOUT_MS)
    );
    assert_eq!(
        Some(consumer.consumer.publish_timeout),
        expect(&PUBLISH_TIMEOUT_MS)
    );
    assert_eq!(
        Some(consumer.consumer.default_request_timeout),
        expect(&REQUEST_TIMEOUT_MS)
    );
    assert_eq!(
        Some(consumer.consumer.max_request_timeout),
        expect(&MAX_REQUEST_TIMEOUT_MS)
    );
    assert_eq!(handler.handler.max_in_flight, 64);
}

#[test]
fn known_keys_are_the_descriptors() {
    let names: Vec<_> = known_keys().collect();
    assert_eq!(names.len(), ALL.len());
    let unique: std::collections::HashSet<_> = names.iter().collect();
    assert_eq!(unique.len(), names.len(), "a key is described twice");
    for key in ALL {
        assert!(!key.doc.is_empty(), "{} has no doc line", key.name);
        assert_eq!(key.name, key.name.to_ascii_lowercase());
    }
}

/// The default of `key`, as the README shows it.
fn shown_default(key: &Key) -> String {
    match key.form {
        Form::Text { default } => default.to_string(),
        Form::Count { default, .. } | Form::Duration { default, .. } => match default {
            keys::Default::Value(n) => n.to_string(),
            keys::Default::Unset(words) => words.to_string(),
        },
        Form::Durations { .. } => "none".to_string(),
    }
}

/// The range of a number, as the README shows it.
fn shown_range(key: &Key) -> Option<String> {
    match key.form {
        Form::Text { .. } => None,
        Form::Count { min, max, .. } if max == u64::MAX => Some(format!("from {min}")),
        Form::Count { min, max, .. } => Some(format!("{min}..{max}")),
        Form::Duration {
            max,
            zero_means_default: true,
            ..
        } => Some(format!("0..{max}")),
        Form::Duration { min, max, .. } => Some(format!("{min}..{max}")),
        Form::Durations { max, .. } => Some(format!("1..{max}")),
    }
}

/// A README table of the keys of `table`, as the README must show it.
fn readme_table(table: Table) -> String {
    let mut out = String::from("| key | links | default | meaning |\n|---|---|---|---|\n");
    for key in ALL.iter().filter(|key| key.table == table) {
        let secret = if key.kind == Kind::Secret {
            " *secret*"
        } else {
            ""
        };
        let links = match key.links {
            Links::Every => "all",
            Links::Handler => "handler",
            Links::Consumer => "consumer",
        };
        let range = shown_range(key)
            .map(|range| format!(" ({range})"))
            .unwrap_or_default();
        out.push_str(&format!(
            "| `{}`{secret} | {links} | {} | {}{range} |\n",
            key.name,
            shown_default(key),
            key.doc
        ));
    }
    out
}

#[test]
fn readme_key_tables_are_the_descriptors() {
    for (name, table) in [("links", Table::Links), ("durable", Table::Durable)] {
        let expected = readme_table(table);
        assert_eq!(
            crate::readme::section("keys", name),
            expected,
            "README table {name:?} differs from src/config/keys.rs; it should read:\n{expected}"
        );
    }
}
