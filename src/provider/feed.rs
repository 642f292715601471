//! The host's link puts and deletes in the order the host sent them.
//!
//! The SDK takes puts and deletes from two subscriptions and hands them
//! over through a `select!` that takes either first when both wait, so a
//! delete the host sent before a put of the same link (wadm replacing a
//! link whose config names changed) can reach the provider after that put,
//! and the link would be gone while the host holds it. Once the SDK has
//! handed over the links of the start-up data, the provider follows both
//! subjects itself on one subscription of the SDK's lattice client
//! (`wasmbus.rpc.<lattice>.*.linkdefs.*`, filtered to this provider's key
//! and xkey): a subscription gets one publisher's messages in the order
//! they were sent, so it applies each put and delete in the host's order.
//!
//! The SDK still hands every put and delete over. Those come after the
//! same message has reached the provider's own subscription, unless the
//! host published it before that subscription existed (between the SDK's
//! subscribe and the provider's). So a put or delete the SDK hands over is
//! looked at [`SDK_GRACE`] later and applied only if the provider's own
//! subscription has seen nothing of that link (see [`Origin::Sdk`]).

use std::collections::{HashMap, HashSet};
use std::mem;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use tracing::{debug, warn};
use wasmcloud_provider_sdk::core::secrets::SecretValue;
use wasmcloud_provider_sdk::core::InterfaceLinkDefinition;
use wasmcloud_provider_sdk::get_connection;

use super::{role_of, ChangeKind, LinkChange, LinkKey, LinkPut, MessagingProvider, Origin};
use crate::config::LinkRole;
use crate::sync::lock;

/// How long after the SDK hands over a put or delete it is looked at: the
/// provider's own subscription has seen the same message by then, unless
/// the host sent it before that subscription existed. (The copy for the
/// provider's subscription arrives on the same connection as the SDK's,
/// usually in the same read; its reader does nothing else.)
pub(super) const SDK_GRACE: Duration = Duration::from_secs(1);

/// How long a link seen on the provider's own subscription is remembered:
/// far longer than the SDK takes to hand over the same message (its
/// command loop only waits on the provider's quick answers).
const SEEN_MEMORY: Duration = Duration::from_secs(60);

/// The links the provider's own subscription has seen lately.
pub(super) struct Seen {
    inner: Mutex<SeenSets>,
}

/// Two generations, swapped every [`SEEN_MEMORY`]: a link is remembered
/// for one to two of those, at a constant cost per link seen.
struct SeenSets {
    following: bool,
    current: HashSet<(LinkRole, LinkKey)>,
    previous: HashSet<(LinkRole, LinkKey)>,
    since: Instant,
}

impl Default for Seen {
    fn default() -> Self {
        Self {
            inner: Mutex::new(SeenSets {
                following: false,
                current: HashSet::new(),
                previous: HashSet::new(),
                since: Instant::now(),
            }),
        }
    }
}

impl Seen {
    /// True once the provider follows the host's link subjects itself.
    pub(super) fn following(&self) -> bool {
        lock(&self.inner).following
    }

    fn start_following(&self) {
        lock(&self.inner).following = true;
    }

    fn record(&self, role: LinkRole, key: &LinkKey) {
        let mut sets = lock(&self.inner);
        if sets.since.elapsed() >= SEEN_MEMORY {
            sets.previous = mem::take(&mut sets.current);
            sets.since = Instant::now();
        }
        sets.current.insert((role, key.clone()));
    }

    /// True if the provider's own subscription has seen a put or delete of
    /// this link lately.
    pub(super) fn contains(&self, role: LinkRole, key: &LinkKey) -> bool {
        let sets = lock(&self.inner);
        let entry = (role, key.clone());
        sets.current.contains(&entry) || sets.previous.contains(&entry)
    }
}

impl MessagingProvider {
    /// Follows the host's link puts and deletes on a subscription of the
    /// SDK's lattice client, applying each in the order the host sent it,
    /// until shutdown. Called once the SDK has handed over the links of the
    /// start-up data, before its command loop runs.
    pub async fn follow_host_links(&self) -> anyhow::Result<()> {
        let connection = get_connection();
        let subject = format!("wasmbus.rpc.{}.*.linkdefs.*", connection.lattice);
        // Only queues the SUB on the client: this waits on no server.
        let mut subscription = connection.nats.subscribe(subject.clone()).await?;
        self.state.seen.start_following();
        debug!(%subject, "following the host's link puts and deletes");
        let provider_key = connection.provider_key().to_string();
        let provider_xkey = connection.provider_xkey.public_key();
        // Unbounded: the reader records each link as it arrives, whatever
        // the applier waits on (a link's connect); the host sends one
        // message per link change.
        let (changes, mut pending) = tokio::sync::mpsc::unbounded_channel();
        let this = self.clone();
        let reader = async move {
            while let Some(message) = subscription.next().await {
                let Some(change) = read_link_message(
                    &message.subject,
                    &message.payload,
                    &provider_key,
                    &provider_xkey,
                ) else {
                    continue;
                };
                this.state.seen.record(change.role, &change.key);
                if changes.send(change).is_err() {
                    return;
                }
            }
        };
        let this = self.clone();
        let applier = async move {
            while let Some(change) = pending.recv().await {
                this.apply(change, Origin::Host).await;
            }
        };
        let stopping = &self.state.stopping;
        self.state
            .tasks
            .spawn(stopping.clone().run_until_cancelled_owned(reader));
        self.state
            .tasks
            .spawn(stopping.clone().run_until_cancelled_owned(applier));
        Ok(())
    }
}

/// The link change a message on a `linkdefs` subject asks for, if it is for
/// this provider.
fn read_link_message(
    subject: &str,
    payload: &[u8],
    provider_key: &str,
    provider_xkey: &str,
) -> Option<LinkChange> {
    let mut tokens = subject.rsplit('.');
    let (verb, _, addressee) = (tokens.next()?, tokens.next()?, tokens.next()?);
    // Hosts 1.1 and later address puts to the provider's xkey, older
    // ones to its key; deletes go to its key.
    let put = match verb {
        "put" if addressee == provider_xkey || addressee == provider_key => true,
        "del" if addressee == provider_key => false,
        _ => return None,
    };
    let link: InterfaceLinkDefinition = match serde_json::from_slice(payload) {
        Ok(link) => link,
        Err(err) => {
            warn!(%subject, error = %err, "link message is not a link definition; ignored");
            return None;
        }
    };
    let Some(role) = role_of(provider_key, &link.source_id, &link.target) else {
        warn!(%subject, source = %link.source_id, target = %link.target, "link message names neither end as this provider; ignored");
        return None;
    };
    let (config, sealed) = match role {
        LinkRole::Handler => (link.source_config, link.source_secrets),
        LinkRole::Consumer => (link.target_config, link.target_secrets),
    };
    let link = LinkPut {
        source_id: link.source_id,
        target_id: link.target,
        link_name: link.name,
        config,
        secrets: HashMap::new(),
        namespace: link.wit_namespace,
        package: link.wit_package,
        interfaces: link.interfaces,
    };
    if !put {
        return Some(LinkChange::delete(role, link.key(role)));
    }
    Some(match open_secrets(sealed.as_deref()) {
        Ok(secrets) => LinkChange::put(role, LinkPut { secrets, ..link }),
        Err(reason) => LinkChange {
            role,
            key: link.key(role),
            kind: ChangeKind::Unreadable(reason),
        },
    })
}

/// Opens the secrets the host sealed for this provider's xkey. The error
/// names no secret: it says only why they could not be read.
fn open_secrets(sealed: Option<&[u8]>) -> Result<HashMap<String, SecretValue>, String> {
    let Some(sealed) = sealed else {
        return Ok(HashMap::new());
    };
    let connection = get_connection();
    let opened = connection
        .provider_xkey
        .open(sealed, &connection.host_xkey)
        .map_err(|_| {
            "its secrets are not sealed for this provider's xkey by its host".to_string()
        })?;
    serde_json::from_slice(&opened)
        .map_err(|_| "its secrets, once opened, are not a map of secret values".to_string())
}
