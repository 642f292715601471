//! Every config key the provider reads, one descriptor each: its name,
//! which links it applies to, how it is kept secret, the form and bounds
//! of its value, its default and one line of documentation. Parsing, the
//! list of known keys, the limits and the README's key tables all come
//! from here; a new key is one entry in [`key_table!`] plus its use.

use std::time::Duration;

/// One config key.
#[derive(Debug)]
pub(crate) struct Key {
    pub(crate) name: &'static str,
    pub(crate) links: Links,
    pub(crate) kind: Kind,
    pub(crate) form: Form,
    /// Which table of the README documents it.
    #[cfg_attr(not(test), allow(dead_code, reason = "read by the README check"))]
    pub(crate) table: Table,
    /// What it means, as the README says it.
    #[cfg_attr(not(test), allow(dead_code, reason = "read by the README check"))]
    pub(crate) doc: &'static str,
}

/// Which links read a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Links {
    Every,
    /// Provider -> component (`handler`) links only.
    Handler,
    /// Component -> provider (`consumer`) links only.
    Consumer,
}

/// How a key's value is treated when it is read and when it is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
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

/// The form of a key's value, with its bounds and default.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Form {
    /// Text its own parser checks; `default` says, in words, what unset
    /// means.
    Text {
        #[cfg_attr(not(test), allow(dead_code, reason = "read by the README check"))]
        default: &'static str,
    },
    /// A whole number from `min` to `max`.
    Count {
        min: u64,
        max: u64,
        default: Default,
    },
    /// A duration in whole units (`unit`: milliseconds or seconds) from
    /// `min` (at least 1) to `max`: a zero timeout or interval is never what
    /// anybody means, unless `zero_means_default` (then `0` is read as
    /// unset).
    Duration {
        unit: Unit,
        min: u64,
        max: u64,
        default: Default,
        zero_means_default: bool,
    },
    /// A comma-separated list of such durations.
    Durations { unit: Unit, max: u64 },
}

/// The default of a number.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Default {
    Value(u64),
    /// No number: what unset means, in words.
    Unset(
        #[cfg_attr(not(test), allow(dead_code, reason = "read by the README check"))] &'static str,
    ),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unit {
    Millis,
    Seconds,
}

impl Unit {
    pub(crate) fn of(self, n: u64) -> Duration {
        match self {
            Unit::Millis => Duration::from_millis(n),
            Unit::Seconds => Duration::from_secs(n),
        }
    }
}

/// The README tables keys are documented in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Table {
    /// Connection, authentication, delivery and publishing.
    Links,
    /// Durable (JetStream) delivery.
    Durable,
}

/// Declares every key as a constant and lists them all in [`ALL`].
macro_rules! key_table {
    ($($(#[$attr:meta])* $id:ident = $key:expr;)*) => {
        $($(#[$attr])* pub(crate) const $id: Key = $key;)*
        /// Every key the provider reads, in the README's order.
        pub(crate) const ALL: &[Key] = &[$($id),*];
    };
}

/// Why a duration has its bound: `connect_timeout_ms` and
/// `publish_timeout_ms` hold up a link put or a component's call,
/// `drain_timeout_ms` holds up shutdown; a handler or request that takes
/// longer than ten minutes is a job, not a message.
const TEN_MINUTES_MS: u64 = 600_000;
const ONE_MINUTE_MS: u64 = 60_000;

/// The shortest `pinned_ttl_ms`: the instance holding the pin keeps it by
/// asking for messages, which it does at least every 5 s while it has
/// room; twice that leaves room for one slow round trip.
const PINNED_TTL_MIN_MS: u64 = 10_000;

/// The largest accepted `handler_timeout_ms`.
pub(crate) const MAX_HANDLER_TIMEOUT: Duration = Duration::from_millis(TEN_MINUTES_MS);

/// The largest accepted `drain_timeout_ms`, which bounds a shutdown.
pub(crate) const MAX_DRAIN_TIMEOUT: Duration = Duration::from_millis(ONE_MINUTE_MS);

/// The default of `publish_deny`, written once for the key's table entry
/// and for the parser.
macro_rules! default_publish_deny {
    () => {
        "wasmbus.>,*.*.wrpc.>,$SYS.>,$JS.API.>,$KV.>,$O.>"
    };
}

/// What a consumer link may not send to unless its `publish_deny` says
/// otherwise: the lattice's control plane (`wasmbus.>`), wRPC invocations of
/// other components and providers (`{lattice}.{target}.wrpc.>`), the
/// server's system account, and the JetStream, KV and object store APIs
/// where the host keeps its lattice data and config.
pub(crate) const DEFAULT_PUBLISH_DENY: &str = default_publish_deny!();

key_table! {
    SUBSCRIPTIONS = Key {
        name: "subscriptions",
        links: Links::Handler,
        kind: Kind::Plain,
        form: Form::Text { default: "none" },
        table: Table::Links,
        doc: "comma-separated subjects; `subject\\|queue` joins queue group `queue`; wildcards `*` and `>` allowed",
    };
    CLUSTER_URIS = Key {
        name: "cluster_uris",
        links: Links::Every,
        kind: Kind::Urls,
        form: Form::Text { default: "the lattice's NATS" },
        table: Table::Links,
        doc: "comma-separated server URLs; the client uses all of them for connecting and failover. Unset, links use the NATS server the host gave the provider for the lattice (without its credentials)",
    };
    CLIENT_JWT = Key {
        name: "client_jwt",
        links: Links::Every,
        kind: Kind::Secret,
        form: Form::Text { default: "" },
        table: Table::Links,
        doc: "user JWT (decentralised auth); needs `client_seed`",
    };
    CLIENT_SEED = Key {
        name: "client_seed",
        links: Links::Every,
        kind: Kind::Secret,
        form: Form::Text { default: "" },
        table: Table::Links,
        doc: "nkey seed that signs the server's nonce for `client_jwt`",
    };
    NKEY_SEED = Key {
        name: "nkey_seed",
        links: Links::Every,
        kind: Kind::Secret,
        form: Form::Text { default: "" },
        table: Table::Links,
        doc: "nkey authentication without a JWT",
    };
    USERNAME = Key {
        name: "username",
        links: Links::Every,
        kind: Kind::Secret,
        form: Form::Text { default: "" },
        table: Table::Links,
        doc: "user/password authentication; needs `password`",
    };
    PASSWORD = Key {
        name: "password",
        links: Links::Every,
        kind: Kind::Secret,
        form: Form::Text { default: "" },
        table: Table::Links,
        doc: "the password for `username`",
    };
    TOKEN = Key {
        name: "token",
        links: Links::Every,
        kind: Kind::Secret,
        form: Form::Text { default: "" },
        table: Table::Links,
        doc: "token authentication",
    };
    CREDENTIALS_FILE = Key {
        name: "credentials_file",
        links: Links::Every,
        kind: Kind::Plain,
        form: Form::Text { default: "" },
        table: Table::Links,
        doc: "path of a `.creds` file (user JWT and seed); checked when the link is put and read again at every reconnect, so a rotated file takes effect without re-linking",
    };
    TLS_CA = Key {
        name: "tls_ca",
        links: Links::Every,
        kind: Kind::Pem,
        form: Form::Text { default: "" },
        table: Table::Links,
        doc: "PEM text of the CA for the server's certificate; turns TLS on",
    };
    TLS_CA_FILE = Key {
        name: "tls_ca_file",
        links: Links::Every,
        kind: Kind::Plain,
        form: Form::Text { default: "" },
        table: Table::Links,
        doc: "path of a PEM file with that CA; checked when the link is put and read again at every connect, so a renewed file takes effect without re-linking",
    };
    TLS_CERT = Key {
        name: "tls_cert",
        links: Links::Every,
        kind: Kind::Pem,
        form: Form::Text { default: "" },
        table: Table::Links,
        doc: "PEM text of a client certificate (chain), for servers that verify clients; needs `tls_key` or `tls_key_file`; turns TLS on",
    };
    TLS_CERT_FILE = Key {
        name: "tls_cert_file",
        links: Links::Every,
        kind: Kind::Plain,
        form: Form::Text { default: "" },
        table: Table::Links,
        doc: "path of a PEM file with that certificate (read again at every connect whose server asks for a client certificate, so a renewed file takes effect without re-linking)",
    };
    TLS_KEY = Key {
        name: "tls_key",
        links: Links::Every,
        kind: Kind::Secret,
        form: Form::Text { default: "" },
        table: Table::Links,
        doc: "PEM text of the client certificate's private key",
    };
    TLS_KEY_FILE = Key {
        name: "tls_key_file",
        links: Links::Every,
        kind: Kind::Plain,
        form: Form::Text { default: "" },
        table: Table::Links,
        doc: "path of a PEM file with that key (read with the certificate)",
    };
    CUSTOM_INBOX_PREFIX = Key {
        name: "custom_inbox_prefix",
        links: Links::Every,
        kind: Kind::Plain,
        form: Form::Text { default: "`_INBOX`" },
        table: Table::Links,
        doc: "prefix of request reply subjects",
    };
    PING_INTERVAL_SEC = Key {
        name: "ping_interval_sec",
        links: Links::Every,
        kind: Kind::Plain,
        form: Form::Duration {
            unit: Unit::Seconds,
            min: 1,
            max: 3_600,
            default: Default::Unset("client default (60)"),
            zero_means_default: true,
        },
        table: Table::Links,
        // The v1 provider never read this key: its users' `0` means the
        // client's default, not an error.
        doc: "seconds between pings to the server; `0` means the client's default",
    };
    CONNECT_TIMEOUT_MS = Key {
        name: "connect_timeout_ms",
        links: Links::Every,
        kind: Kind::Plain,
        // Link puts are handled one at a time by the SDK, so a link waiting
        // for an unreachable server must not hold the others up for long.
        form: Form::Duration {
            unit: Unit::Millis,
            min: 1,
            max: ONE_MINUTE_MS,
            default: Default::Value(2_000),
            zero_means_default: false,
        },
        table: Table::Links,
        doc: "how long a new link waits for its connection and for the server to confirm its subscriptions (a round trip); after that the link is kept and connects in the background (the host's put of a consumer link waits this long at most for its own connection)",
    };
    MAX_IN_FLIGHT = Key {
        name: "max_in_flight",
        links: Links::Handler,
        kind: Kind::Plain,
        // Each delivery holds a wRPC exchange; beyond this the lattice, not
        // the provider, is the limit.
        form: Form::Count {
            min: 1,
            max: 4_096,
            default: Default::Value(64),
        },
        table: Table::Links,
        doc: "`handle-message` calls running at once for the whole link, whatever source (subscriptions, `stream`, `consumers`) the messages come from; sources with messages waiting take free slots in turn; `1` delivers strictly in order per subscription",
    };
    HANDLER_TIMEOUT_MS = Key {
        name: "handler_timeout_ms",
        links: Links::Handler,
        kind: Kind::Plain,
        // The wRPC client's own default invocation timeout.
        form: Form::Duration {
            unit: Unit::Millis,
            min: 1,
            max: MAX_HANDLER_TIMEOUT.as_millis() as u64,
            default: Default::Value(10_000),
            zero_means_default: false,
        },
        table: Table::Links,
        doc: "how long one `handle-message` call may take",
    };
    DRAIN_TIMEOUT_MS = Key {
        name: "drain_timeout_ms",
        links: Links::Handler,
        kind: Kind::Plain,
        // Long enough for typical handlers; the host's shutdown delay may
        // cut a provider shutdown shorter (see the README).
        form: Form::Duration {
            unit: Unit::Millis,
            min: 1,
            max: ONE_MINUTE_MS,
            default: Default::Value(2_000),
            zero_means_default: false,
        },
        table: Table::Links,
        doc: "on link delete or shutdown, how long in-flight calls may finish before they are aborted",
    };
    PUBLISH_TIMEOUT_MS = Key {
        name: "publish_timeout_ms",
        links: Links::Consumer,
        kind: Kind::Plain,
        form: Form::Duration {
            unit: Unit::Millis,
            min: 1,
            max: ONE_MINUTE_MS,
            default: Default::Value(5_000),
            zero_means_default: false,
        },
        table: Table::Links,
        doc: "how long `publish` waits for the server to take a message",
    };
    REQUEST_TIMEOUT_MS = Key {
        name: "request_timeout_ms",
        links: Links::Consumer,
        kind: Kind::Plain,
        form: Form::Duration {
            unit: Unit::Millis,
            min: 1,
            max: TEN_MINUTES_MS,
            default: Default::Value(5_000),
            zero_means_default: false,
        },
        table: Table::Links,
        doc: "request timeout when `timeout-ms` is 0",
    };
    MAX_REQUEST_TIMEOUT_MS = Key {
        name: "max_request_timeout_ms",
        links: Links::Consumer,
        kind: Kind::Plain,
        form: Form::Duration {
            unit: Unit::Millis,
            min: 1,
            max: TEN_MINUTES_MS,
            default: Default::Value(60_000),
            zero_means_default: false,
        },
        table: Table::Links,
        doc: "the largest `timeout-ms` accepted",
    };
    PUBLISH_ALLOW = Key {
        name: "publish_allow",
        links: Links::Consumer,
        kind: Kind::Plain,
        form: Form::Text { default: "unset (all)" },
        table: Table::Links,
        doc: "comma-separated subject patterns (`*`, `>`) the component may publish, request and use as reply-to; unset allows every subject not denied",
    };
    PUBLISH_DENY = Key {
        name: "publish_deny",
        links: Links::Consumer,
        kind: Kind::Plain,
        form: Form::Text { default: concat!("`", default_publish_deny!(), "`") },
        table: Table::Links,
        doc: "subject patterns the component may not send to; deny wins over allow. Setting it replaces the default; `none` denies nothing",
    };
    JETSTREAM_PUBLISH = Key {
        name: "jetstream_publish",
        links: Links::Consumer,
        kind: Kind::Plain,
        form: Form::Text { default: "none" },
        table: Table::Links,
        doc: "comma-separated subject patterns whose publishes go through JetStream: `publish` returns `Ok` only once a stream has stored the message, with a `Nats-Msg-Id` the provider makes, so that one sent again after a lost acknowledgement (within `publish_timeout_ms`) is stored once; a `reply-to` is refused there (a stream keeps none). Other subjects stay core publishes",
    };
    JETSTREAM_DOMAIN = Key {
        name: "jetstream_domain",
        links: Links::Every,
        kind: Kind::Plain,
        form: Form::Text { default: "the JetStream of the server the link connects to" },
        table: Table::Links,
        doc: "the JetStream domain whose streams the link uses (durable delivery, and the stream look-up of `jetstream_publish`): its API is `$JS.<domain>.API`, so a provider connected to a leaf node consumes from and publishes into a stream of the hub's domain",
    };
    STREAM = Key {
        name: "stream",
        links: Links::Handler,
        kind: Kind::Plain,
        form: Form::Text { default: "none" },
        table: Table::Durable,
        doc: "the stream to consume; turns durable delivery on. Every key below except `backoff_ms`, `dead_letter_subject` and `consumers` needs it",
    };
    STREAM_SUBJECTS = Key {
        name: "stream_subjects",
        links: Links::Handler,
        kind: Kind::Plain,
        form: Form::Text { default: "none" },
        table: Table::Durable,
        doc: "comma-separated subjects: create `stream` with them if it does not exist (it is never changed if it does)",
    };
    STREAM_STORAGE = Key {
        name: "stream_storage",
        links: Links::Handler,
        kind: Kind::Plain,
        form: Form::Text { default: "`file`" },
        table: Table::Durable,
        doc: "`file` or `memory`, for a stream created from `stream_subjects`",
    };
    DURABLE_NAME = Key {
        name: "durable_name",
        links: Links::Handler,
        kind: Kind::Plain,
        form: Form::Text { default: "derived" },
        table: Table::Durable,
        doc: "the durable consumer's name; by default `wasmcloud-<component>-<link name>-<hash>`, the same for every restart and re-link of that component and link name, so delivery resumes where it stopped",
    };
    FILTER_SUBJECTS = Key {
        name: "filter_subjects",
        links: Links::Handler,
        kind: Kind::Plain,
        form: Form::Text { default: "all of the stream" },
        table: Table::Durable,
        doc: "comma-separated subjects of the stream the consumer takes (more than one needs nats-server 2.10: on an older server, which would ignore them, the consumer is not made and health says why)",
    };
    DELIVER_POLICY = Key {
        name: "deliver_policy",
        links: Links::Handler,
        kind: Kind::Plain,
        form: Form::Text { default: "`all`" },
        table: Table::Durable,
        doc: "where a new consumer starts: `all`, `new`, `last`, `by_start_sequence` (with `start_sequence`) or `by_start_time` (with `start_time`)",
    };
    START_SEQUENCE = Key {
        name: "start_sequence",
        links: Links::Handler,
        kind: Kind::Plain,
        form: Form::Count {
            min: 1,
            max: u64::MAX,
            default: Default::Unset("none"),
        },
        table: Table::Durable,
        doc: "the first stream sequence for `deliver_policy=by_start_sequence`",
    };
    START_TIME = Key {
        name: "start_time",
        links: Links::Handler,
        kind: Kind::Plain,
        form: Form::Text { default: "none" },
        table: Table::Durable,
        doc: "the first publish time for `deliver_policy=by_start_time`, RFC 3339 such as `2026-01-31T12:00:00Z`",
    };
    ACK_WAIT_MS = Key {
        name: "ack_wait_ms",
        links: Links::Handler,
        kind: Kind::Plain,
        // The server's own default; at most half a day.
        form: Form::Duration {
            unit: Unit::Millis,
            min: 1,
            max: 43_200_000,
            default: Default::Value(30_000),
            zero_means_default: false,
        },
        table: Table::Durable,
        doc: "how long the server waits for an ack before it redelivers; a call that runs longer is kept alive with in-progress acks every half `ack_wait_ms`",
    };
    MAX_DELIVER = Key {
        name: "max_deliver",
        links: Links::Handler,
        kind: Kind::Plain,
        form: Form::Count {
            min: 1,
            max: 1_000_000,
            default: Default::Unset("unlimited"),
        },
        table: Table::Durable,
        doc: "attempts per message",
    };
    BACKOFF_MS = Key {
        name: "backoff_ms",
        links: Links::Handler,
        kind: Kind::Plain,
        // At most an hour between two attempts.
        form: Form::Durations {
            unit: Unit::Millis,
            max: 3_600_000,
        },
        table: Table::Durable,
        doc: "comma-separated delays before the 1st, 2nd, ... redelivery of a message whose handler failed; the last one repeats. At most `max_deliver - 1` entries. Without it a failed message is redelivered at once",
    };
    DEAD_LETTER_SUBJECT = Key {
        name: "dead_letter_subject",
        links: Links::Handler,
        kind: Kind::Plain,
        form: Form::Text { default: "none" },
        table: Table::Durable,
        doc: "where a message goes after its last attempt failed; needs `max_deliver` (or a `consumers` consumer with one) and a stream that stores this subject; may not be matched by the link's `filter_subjects` or `stream_subjects` (dead letters would come back)",
    };
    PRIORITY_POLICY = Key {
        name: "priority_policy",
        links: Links::Handler,
        kind: Kind::Plain,
        form: Form::Text { default: "none" },
        table: Table::Durable,
        doc: "`pinned_client`: of all provider instances with this link (sharing its consumer), one at a time receives, so messages are handled in order across hosts; when it stops asking for messages for `pinned_ttl_ms` another takes over. Needs nats-server 2.11 or later (on an older server the consumer is not made and health names the server's version)",
    };
    PINNED_TTL_MS = Key {
        name: "pinned_ttl_ms",
        links: Links::Handler,
        kind: Kind::Plain,
        // The server's own default; at most an hour.
        form: Form::Duration {
            unit: Unit::Millis,
            min: PINNED_TTL_MIN_MS,
            max: 3_600_000,
            default: Default::Value(120_000),
            zero_means_default: false,
        },
        table: Table::Durable,
        doc: "with `priority_policy=pinned_client`: how long the instance receiving may go without asking for messages before another takes over (it asks every 5 s while it has room). A handler that runs longer than this can lose the pin; set `ack_wait_ms` below it so that a message the lost instance held is redelivered before the next one",
    };
    CONSUMERS = Key {
        name: "consumers",
        links: Links::Handler,
        kind: Kind::Plain,
        form: Form::Text { default: "none" },
        table: Table::Durable,
        doc: "the v1 host's key, unchanged: a JSON list of `{\"stream\", \"consumer\", \"max_messages\", \"max_bytes\"}` binding existing pull consumers (their own ack wait and max deliver apply); `max_messages` and `max_bytes` bound each fetch",
    };
}

/// The descriptor of `name` (lower case), if the provider reads it.
pub(crate) fn find(name: &str) -> Option<&'static Key> {
    ALL.iter().find(|key| key.name == name)
}
