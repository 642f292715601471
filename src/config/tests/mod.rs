//! Unit tests of the config parser, one behaviour each; the durable keys,
//! the descriptors and upstream's configs have files of their own.

use std::collections::HashMap;

use wasmcloud_provider_sdk::core::secrets::SecretValue;

use super::keys::*;
use super::servers::shown_list;
use super::*;

mod descriptors;
mod durable;
mod upstream;

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
    ProviderDefaults::default().settings_for(LinkRole::Handler, &map(pairs), &HashMap::new())
}

/// A consumer link's settings from its config alone.
pub(super) fn consumer_settings(pairs: &[(&str, &str)]) -> Result<LinkSettings, ConfigError> {
    ProviderDefaults::default().settings_for(LinkRole::Consumer, &map(pairs), &HashMap::new())
}

/// The servers of a link, as they are shown.
pub(super) fn servers(settings: &LinkSettings) -> Vec<String> {
    settings
        .connection
        .servers
        .addrs()
        .iter()
        .map(super::servers::shown)
        .collect()
}

#[test]
fn defaults_apply_when_nothing_is_set() {
    let s = settings(&[]).expect("defaults parse");
    assert_eq!(servers(&s), ["nats://127.0.0.1:4222"]);
    assert_eq!(s.connection.auth, Auth::None);
    assert_eq!(s.handler.max_in_flight, 64);
    assert!(s.handler.subscriptions.is_empty());
}

#[test]
fn the_lattice_url_is_the_server_of_links_that_name_none() {
    let defaults = ProviderDefaults::default().with_lattice_url("nats://lattice:4222");
    let s = defaults
        .settings_for(LinkRole::Handler, &HashMap::new(), &HashMap::new())
        .expect("parses");
    assert_eq!(servers(&s), ["nats://lattice:4222"]);

    let provider = ProviderDefaults::new(
        &map(&[(CLUSTER_URIS.name, "nats://p:4222")]),
        &HashMap::new(),
    )
    .with_lattice_url("nats://lattice:4222");
    let s = provider
        .settings_for(LinkRole::Handler, &HashMap::new(), &HashMap::new())
        .expect("parses");
    assert_eq!(servers(&s), ["nats://p:4222"], "provider config wins");
}

#[test]
fn subscriptions_split_on_commas_and_queue_groups_on_bars() {
    let s = settings(&[(SUBSCRIPTIONS.name, "a.b, c.*|workers ,d.>")]).expect("parses");
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
        let s = settings(&[(SUBSCRIPTIONS.name, value)]).expect("accepted");
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
    let s = settings(&[(CLUSTER_URIS.name, "nats://a:4222,nats://b:notaport,")]).expect("accepted");
    assert_eq!(servers(&s), ["nats://a:4222"]);
    let err =
        settings(&[(CLUSTER_URIS.name, "nats://b:notaport,nats://a:4222")]).expect_err("first bad");
    assert!(err.to_string().contains("entry 1"), "{err}");
    assert!(settings(&[(CLUSTER_URIS.name, ",")]).is_err());
}

#[test]
fn credentials_in_a_server_url_are_used_when_no_auth_key_is_set() {
    let s = settings(&[(CLUSTER_URIS.name, "nats://alice:p%40ss@h:4222")]).expect("parses");
    assert_eq!(
        s.connection.auth,
        Auth::UserPassword {
            user: "alice".into(),
            password: "p@ss".into()
        }
    );
    let s = settings(&[(CLUSTER_URIS.name, "tok3n@h:4222")]).expect("parses");
    assert_eq!(s.connection.auth, Auth::Token("tok3n".into()));
    let s =
        settings(&[(CLUSTER_URIS.name, "nats://a:b@h:4222"), (TOKEN.name, "t")]).expect("parses");
    assert_eq!(s.connection.auth, Auth::Token("t".into()));
}

#[test]
fn subscriptions_on_a_consumer_link_are_not_read() {
    let config: HashMap<String, String> =
        [(SUBSCRIPTIONS.name.to_string(), "not..valid".to_string())].into();
    let defaults = ProviderDefaults::default();
    assert!(defaults
        .settings_for(LinkRole::Handler, &config, &HashMap::new())
        .is_err());
    let s = defaults
        .settings_for(LinkRole::Consumer, &config, &HashMap::new())
        .expect("accepted");
    assert!(s.handler.subscriptions.is_empty());
}

#[test]
fn a_wildcard_at_the_end_of_the_inbox_prefix_is_dropped() {
    let s = settings(&[(CUSTOM_INBOX_PREFIX.name, "_TEST.>")]).expect("accepted");
    assert_eq!(s.connection.custom_inbox_prefix.as_deref(), Some("_TEST"));
}

#[test]
fn ping_interval_zero_means_the_client_default() {
    let s = settings(&[(PING_INTERVAL_SEC.name, "0")]).expect("accepted");
    assert_eq!(s.connection.ping_interval, None);
}

#[test]
fn a_lower_case_key_wins_over_the_same_key_in_upper_case() {
    for _ in 0..20 {
        let s = settings(&[(MAX_IN_FLIGHT.name, "5"), ("MAX_IN_FLIGHT", "9")]).expect("parses");
        assert_eq!(s.handler.max_in_flight, 5);
    }
}

#[test]
fn every_cluster_uri_is_kept() {
    let s = settings(&[(CLUSTER_URIS.name, "nats://a:4222,nats://b:4223")]).expect("parses");
    assert_eq!(servers(&s), ["nats://a:4222", "nats://b:4223"]);
}

#[test]
fn keys_are_case_insensitive() {
    let s = settings(&[("MAX_IN_FLIGHT", "3")]).expect("parses");
    assert_eq!(s.handler.max_in_flight, 3);
}

#[test]
fn link_config_overrides_provider_config() {
    let provider: HashMap<String, String> =
        [(MAX_IN_FLIGHT.name.to_string(), "7".to_string())].into();
    let defaults = ProviderDefaults::new(&provider, &HashMap::new());
    defaults.check().expect("valid");
    let link: HashMap<String, String> = [(MAX_IN_FLIGHT.name.to_string(), "9".to_string())].into();
    let s = defaults
        .settings_for(LinkRole::Handler, &link, &HashMap::new())
        .expect("parses");
    assert_eq!(s.handler.max_in_flight, 9);
    let s = defaults
        .settings_for(LinkRole::Handler, &HashMap::new(), &HashMap::new())
        .expect("parses");
    assert_eq!(s.handler.max_in_flight, 7);
}

#[test]
fn secrets_win_over_config_for_credentials() {
    let config: HashMap<String, String> = [
        (USERNAME.name.to_string(), "u".to_string()),
        (PASSWORD.name.to_string(), "from-config".to_string()),
    ]
    .into();
    let secrets: HashMap<String, SecretValue> = [(
        PASSWORD.name.to_string(),
        SecretValue::String("from-secret".into()),
    )]
    .into();
    let s = ProviderDefaults::default()
        .settings_for(LinkRole::Handler, &config, &secrets)
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
    let err = settings(&[(NKEY_SEED.name, "SUAnotarealseed")]).expect_err("rejected");
    assert!(!err.to_string().contains("SUAnotarealseed"), "{err}");
    let s = settings(&[
        (TOKEN.name, "s3cr3t"),
        (CLUSTER_URIS.name, "nats://me:pw@host:4222"),
    ])
    .expect("parses");
    let debug = format!("{:?}", s.connection);
    assert!(
        !debug.contains("s3cr3t") && !debug.contains("pw@"),
        "{debug}"
    );
}

#[test]
fn link_authentication_replaces_the_providers() {
    let provider: HashMap<String, String> = [(USERNAME.name.to_string(), "p".to_string())].into();
    let secrets: HashMap<String, SecretValue> =
        [(PASSWORD.name.to_string(), SecretValue::String("pw".into()))].into();
    let defaults = ProviderDefaults::new(&provider, &secrets);
    let link: HashMap<String, String> = [(TOKEN.name.to_string(), "t".to_string())].into();
    let s = defaults
        .settings_for(LinkRole::Handler, &link, &HashMap::new())
        .expect("parses");
    assert_eq!(s.connection.auth, Auth::Token("t".into()));
    let s = defaults
        .settings_for(LinkRole::Handler, &HashMap::new(), &HashMap::new())
        .expect("parses");
    assert!(matches!(s.connection.auth, Auth::UserPassword { .. }));
}

#[test]
fn provider_secrets_survive_a_config_update() {
    let secrets: HashMap<String, SecretValue> =
        [(PASSWORD.name.to_string(), SecretValue::String("pw".into()))].into();
    let mut defaults = ProviderDefaults::new(&HashMap::new(), &secrets);
    defaults.update_config(&[(USERNAME.name.to_string(), "u".to_string())].into());
    let s = defaults
        .settings_for(LinkRole::Handler, &HashMap::new(), &HashMap::new())
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
fn two_auth_methods_are_rejected() {
    let err = settings(&[
        (TOKEN.name, "t"),
        (USERNAME.name, "u"),
        (PASSWORD.name, "p"),
    ])
    .expect_err("rejected");
    assert!(err.to_string().contains("choose one"), "{err}");
}

#[test]
fn request_default_above_maximum_is_rejected() {
    let err = consumer_settings(&[
        (REQUEST_TIMEOUT_MS.name, "5000"),
        (MAX_REQUEST_TIMEOUT_MS.name, "1000"),
    ])
    .expect_err("rejected");
    assert_eq!(err.key, REQUEST_TIMEOUT_MS.name);
}

#[test]
fn shown_servers_hide_user_info() {
    assert_eq!(shown_list("nats://u:p@h:1"), "nats://<redacted>@h:1");
    assert_eq!(shown_list("h:1"), "nats://h:1");
    assert_eq!(shown_list("tls://token@h"), "tls://<redacted>@h:4222");
}

#[test]
fn shown_servers_split_user_info_at_the_last_at_sign() {
    let shown = shown_list("nats://u:p@ss@h:4222");
    assert_eq!(shown, "nats://<redacted>@h:4222");
    assert!(!shown.contains("ss@"), "{shown}");
}

#[test]
fn username_and_password_both_come_from_secrets() {
    let secrets: HashMap<String, SecretValue> = [
        (
            USERNAME.name.to_string(),
            SecretValue::String("alice".into()),
        ),
        (
            PASSWORD.name.to_string(),
            SecretValue::String("pw-1".into()),
        ),
    ]
    .into();
    let s = ProviderDefaults::default()
        .settings_for(LinkRole::Handler, &HashMap::new(), &secrets)
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
    let err = consumer_settings(&[(PASSWORD.name, "pw-quoted-nowhere")]).expect_err("rejected");
    assert_eq!(err.key, USERNAME.name);
    assert!(
        !format!("{err} {err:?}").contains("pw-quoted-nowhere"),
        "{err}"
    );
}

#[test]
fn every_credential_error_hides_the_values() {
    let cases: &[&[(&str, &str)]] = &[
        &[(USERNAME.name, "user-value-1")],
        &[(CLIENT_JWT.name, "jwt-value-1")],
        &[(CLIENT_SEED.name, "seed-value-1")],
        &[(NKEY_SEED.name, "seed-value-1")],
        &[(TOKEN.name, "token-value-1"), (PASSWORD.name, "pw-value-1")],
        &[
            (TLS_KEY.name, "key-value-1"),
            (TLS_CERT.name, "cert-value-1"),
        ],
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
    let s =
        consumer_settings(&[(CLUSTER_URIS.name, "nats://u:pw-in-url@h:4222,")]).expect("accepted");
    assert_eq!(servers(&s), ["nats://<redacted>@h:4222"]);
    assert!(!format!("{s:?}").contains("pw-in-url"));
}

#[test]
fn unparseable_cluster_uri_is_named_by_position_not_shown() {
    let err = consumer_settings(&[(CLUSTER_URIS.name, "nats://u:pw-x@h:notaport,nats://h:1")])
        .expect_err("rejected");
    let text = err.to_string();
    assert!(text.contains("entry 1"), "{text}");
    assert!(!text.contains("pw-x"), "{text}");
}

#[test]
fn shown_value_is_the_one_rule_for_every_kind_of_key() {
    assert_eq!(shown_value(PASSWORD.name, "x"), None);
    assert_eq!(shown_value(TLS_KEY.name, "x"), None);
    assert_eq!(shown_value(TLS_CA.name, "x").as_deref(), Some("<PEM text>"));
    assert_eq!(
        shown_value(CLUSTER_URIS.name, "nats://a:b@h:1, h:2").as_deref(),
        Some("nats://<redacted>@h:1,nats://h:2")
    );
    assert_eq!(shown_value(MAX_IN_FLIGHT.name, "x").as_deref(), Some("x"));
}

#[test]
fn tls_ca_file_that_is_not_a_regular_file_is_refused_unread() {
    let err = consumer_settings(&[(TLS_CA_FILE.name, "/dev/zero")]).expect_err("rejected");
    assert_eq!(err.key, TLS_CA_FILE.name);
    assert!(err.to_string().contains("not a regular file"), "{err}");
}

#[test]
fn tls_ca_file_over_the_size_limit_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.pem");
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(super::files::MAX_CONFIG_FILE_BYTES + 1)
        .unwrap();
    let err =
        consumer_settings(&[(TLS_CA_FILE.name, path.to_str().unwrap())]).expect_err("rejected");
    assert!(err.to_string().contains("larger than the limit"), "{err}");
}

#[test]
fn client_certificate_without_key_is_rejected_naming_the_missing_key() {
    let err = consumer_settings(&[(TLS_CERT.name, "pem")]).expect_err("rejected");
    assert_eq!(err.key, TLS_CERT.name);
    assert!(err.to_string().contains(TLS_KEY.name), "{err}");
}

#[test]
fn consumer_links_may_not_send_to_the_lattice_by_default() {
    let access = consumer_settings(&[]).unwrap().consumer.access;
    for subject in [
        "wasmbus.ctl.v1.default.host.ping",
        "wasmbus.rpc.default.p.health",
        "default.echo.wrpc.0.0.1.wasmcloud:messaging/handler@0.2.0.handle-message",
        "$SYS.REQ.SERVER.PING",
        "$JS.API.STREAM.name.DELETE.x",
        "$KV.CONFIGDATA_default.x",
    ] {
        let err = access.check(subject).expect_err(subject);
        assert!(err.contains(PUBLISH_DENY.name), "{err}");
    }
    assert!(access.check("orders.created").is_ok());
    assert!(access.check("_INBOX.abc.def").is_ok());
}

#[test]
fn a_link_opts_in_to_denied_subjects_by_replacing_publish_deny() {
    let access = consumer_settings(&[(PUBLISH_DENY.name, "$SYS.>")])
        .unwrap()
        .consumer
        .access;
    assert!(access.check("wasmbus.ctl.x").is_ok());
    assert!(access.check("$SYS.x").is_err());
    let access = consumer_settings(&[(PUBLISH_DENY.name, "none")])
        .unwrap()
        .consumer
        .access;
    assert!(access.check("$SYS.x").is_ok());
}

#[test]
fn a_blank_value_is_unset_for_every_key() {
    // Blank allow list: every subject not denied; blank deny list: the
    // default; blank server list: the default server.
    let blank = consumer_settings(&[
        (PUBLISH_ALLOW.name, " "),
        (PUBLISH_DENY.name, ""),
        (CLUSTER_URIS.name, ""),
    ])
    .expect("blank values are unset");
    let unset = consumer_settings(&[]).expect("defaults");
    assert_eq!(blank, unset);
    assert!(blank.consumer.access.check("orders.created").is_ok());
    assert!(blank.consumer.access.check("$SYS.x").is_err());
    for key in ALL {
        let s = match key.links {
            Links::Consumer => consumer_settings(&[(key.name, "  ")]),
            Links::Handler | Links::Every => settings(&[(key.name, "  ")]),
        };
        assert!(s.is_ok(), "{}: blank refused: {:?}", key.name, s.err());
    }
}

#[test]
fn a_blank_link_value_leaves_the_providers_value_in_place() {
    let provider = map(&[
        (CLUSTER_URIS.name, "nats://provider:4222"),
        (PUBLISH_DENY.name, "secret.>"),
    ]);
    let defaults =
        ProviderDefaults::new(&provider, &HashMap::new()).with_lattice_url("nats://lattice:4222");
    let blank = defaults
        .settings_for(
            LinkRole::Consumer,
            &map(&[(CLUSTER_URIS.name, " "), (PUBLISH_DENY.name, "")]),
            &HashMap::new(),
        )
        .unwrap();
    let unset = defaults
        .settings_for(LinkRole::Consumer, &HashMap::new(), &HashMap::new())
        .unwrap();
    assert_eq!(blank, unset);
    assert!(blank.consumer.access.check("secret.x").is_err());
    assert!(blank.consumer.access.check("$SYS.x").is_ok());
}

#[test]
fn publish_allow_limits_a_link_to_its_patterns() {
    let access = consumer_settings(&[(PUBLISH_ALLOW.name, "orders.>, audit.*")])
        .unwrap()
        .consumer
        .access;
    assert!(access.check("orders.created.eu").is_ok());
    assert!(access.check("audit.x").is_ok());
    let err = access.check("billing.x").expect_err("not allowed");
    assert!(err.contains(PUBLISH_ALLOW.name), "{err}");
}

#[test]
fn bad_subject_pattern_is_rejected_naming_the_key() {
    let err = consumer_settings(&[(PUBLISH_ALLOW.name, "a.>.b")]).expect_err("rejected");
    assert_eq!(err.key, PUBLISH_ALLOW.name);
}

#[test]
fn credentials_file_is_checked_when_the_link_is_put() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("user.creds");
    std::fs::write(&path, "no blocks here").unwrap();
    let err = settings(&[(CREDENTIALS_FILE.name, path.to_str().unwrap())]).expect_err("bad");
    assert_eq!(err.key, CREDENTIALS_FILE.name);
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
            prop::sample::select(ALL.iter().map(|k| k.name.to_string()).collect::<Vec<_>>()),
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
            if let Err(err) = ProviderDefaults::default().settings_for(LinkRole::Handler, &config, &secrets) {
                prop_assert!(find(&err.key).is_some(), "unknown key in {err}");
                let text = format!("{err} {err:?}");
                for (key, value) in &given {
                    match find(&key.to_ascii_lowercase()).map(|key| key.kind) {
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

#[test]
fn jetstream_domain_reaches_durable_delivery_and_confirmed_publishes() {
    let handler = settings(&[("stream", "ORDERS"), ("jetstream_domain", " hub ")]).expect("parses");
    assert_eq!(
        handler.handler.durable.jetstream_domain.as_deref(),
        Some("hub")
    );
    let consumer = consumer_settings(&[
        ("jetstream_publish", "orders.>"),
        ("jetstream_domain", "hub"),
    ])
    .expect("parses");
    assert_eq!(consumer.consumer.jetstream_domain.as_deref(), Some("hub"));
    let unset = settings(&[("stream", "ORDERS")]).expect("parses");
    assert_eq!(unset.handler.durable.jetstream_domain, None);
}

#[test]
fn a_jetstream_domain_of_more_than_one_token_is_rejected_naming_it() {
    for bad in ["hub.east", "hub*", "h b"] {
        let err = settings(&[("stream", "ORDERS"), ("jetstream_domain", bad)])
            .expect_err("must be rejected");
        let text = err.to_string();
        assert!(
            text.contains("jetstream_domain") && text.contains(bad),
            "{text}"
        );
    }
}
