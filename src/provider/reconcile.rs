//! Links the provider missed: a host publishes each link put once, on core
//! NATS, so a put sent while the provider was not listening (starting up,
//! or with its lattice connection down) is lost, and nothing sends it again
//! (wasmCloud's start-up race, wasmcloud-otp #361). Once the provider
//! listens, and after every reconnect of its lattice connection, it asks
//! the lattice for its links ([`crate::lattice`]) and applies those it
//! holds nothing for, as the host would have sent them.
//!
//! A link whose config names secrets (`SECRET_*`) cannot be applied this
//! way: only the host fetches and decrypts them. Such a link is not run
//! with part of its settings; health names it until it is put again or
//! deleted.

use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::{debug, error, info, warn};
use wasmcloud_provider_sdk::core::secrets::SecretValue;
use wasmcloud_provider_sdk::get_connection;

use super::{LinkKey, LinkPut, MessagingProvider, PutOrigin};
use crate::config::LinkRole;
use crate::lattice::{secret_names, ControlInterface, LatticeError, StoredLink, CTL_TIMEOUT};
use crate::sync::lock;
use crate::sync::write;

/// When the links are asked for again after the first time: a host
/// publishes a put before it records the link, and another host answering
/// may not have seen the link yet; a second look a little later finds it.
const SECOND_LOOK: Duration = Duration::from_secs(3);

/// How often the lattice connection's reconnect count is read.
const RECONNECT_POLL: Duration = Duration::from_secs(2);

/// How long a delete is remembered: longer than one pass of asking for
/// links and their config takes at most, so that a link deleted after the
/// lattice was asked is not brought back by that pass.
const DELETE_MEMORY: Duration = CTL_TIMEOUT.saturating_mul(20);

/// How long after a delete the lattice's links are looked at again: long
/// enough for the host to have recorded the put that the delete overtook
/// (a host records a put only after it publishes it), short enough that
/// the link is back before a component notices much; [`SECOND_LOOK`]
/// later they are looked at once more.
const AFTER_DELETE: Duration = Duration::from_millis(250);

/// Links the host deleted lately, with when.
#[derive(Default)]
pub(super) struct RecentDeletes {
    deletes: Mutex<Vec<(Instant, LinkRole, LinkKey)>>,
    /// Told once a delete has been carried out.
    done: tokio::sync::Notify,
}

impl RecentDeletes {
    /// Notes that the host deleted the link of `role` under `key` now.
    pub(super) fn record(&self, role: LinkRole, key: &LinkKey) {
        let now = Instant::now();
        let mut deletes = lock(&self.deletes);
        deletes.retain(|(at, ..)| now.duration_since(*at) < DELETE_MEMORY);
        deletes.push((now, role, key.clone()));
    }

    /// A delete has been carried out: the lattice's links are looked at
    /// again (see [`MessagingProvider::watch_lattice_links`]).
    pub(super) fn carried_out(&self) {
        self.done.notify_one();
    }

    /// True if the link was deleted at or after `since`.
    pub(super) fn deleted_since(&self, role: LinkRole, key: &LinkKey, since: Instant) -> bool {
        lock(&self.deletes)
            .iter()
            .any(|(at, k, deleted)| *at >= since && *k == role && deleted == key)
    }
}

impl MessagingProvider {
    /// Asks the lattice for the provider's links now (the SDK's link
    /// subscriptions were sent before, on the same connection, so the server
    /// has them once it routes this request), again [`SECOND_LOOK`] later,
    /// after every reconnect of the lattice connection, and [`AFTER_DELETE`]
    /// (then [`SECOND_LOOK`]) after a link delete, until shutdown.
    ///
    /// After a delete because the SDK receives puts and deletes on two
    /// subscriptions and hands them over through a `select!` that takes
    /// either first when both wait: a delete the host sent before a put of
    /// the same link (wadm replacing a link whose config names changed)
    /// can reach the provider after that put, and the link would be gone
    /// while the host holds it. The host's links say what stands.
    pub fn watch_lattice_links(&self) {
        let this = self.clone();
        self.state.tasks.spawn(async move {
            let stopping = this.state.stopping.clone();
            stopping
                .run_until_cancelled(this.reconcile_for_life())
                .await;
        });
    }

    async fn reconcile_for_life(&self) {
        let stats = get_connection().nats.statistics();
        let mut connects = stats.connects.load(Ordering::Relaxed);
        let mut last_problem = None;
        self.reconcile_reporting(&mut last_problem).await;
        tokio::time::sleep(SECOND_LOOK).await;
        self.reconcile_reporting(&mut last_problem).await;
        let mut poll = tokio::time::interval(RECONNECT_POLL);
        loop {
            tokio::select! {
                _ = poll.tick() => {
                    let now = stats.connects.load(Ordering::Relaxed);
                    if now != connects {
                        connects = now;
                        debug!("lattice connection re-established; asking for its links again");
                        self.reconcile_reporting(&mut last_problem).await;
                    }
                }
                () = self.state.deletes.done.notified() => {
                    debug!("a link was deleted; asking the lattice which links stand");
                    for wait in [AFTER_DELETE, SECOND_LOOK] {
                        tokio::time::sleep(wait).await;
                        self.reconcile_reporting(&mut last_problem).await;
                    }
                }
            }
        }
    }

    /// One look at the lattice's links (more than one pass if a pass went
    /// stale); a failure is a warning the first time it is seen.
    async fn reconcile_reporting(&self, last_problem: &mut Option<LatticeError>) {
        loop {
            match self.reconcile().await {
                Ok(Pass::Stale) => continue,
                Ok(Pass::Done) => *last_problem = None,
                Err(problem) => {
                    if last_problem.as_ref() != Some(&problem) {
                        warn!(%problem, "cannot ask the lattice for this provider's links; a link put while the provider was not listening stays missing");
                    }
                    *last_problem = Some(problem);
                }
            }
            return;
        }
    }

    /// Applies every link of this provider that the lattice holds and the
    /// provider does not.
    async fn reconcile(&self) -> Result<Pass, LatticeError> {
        let connection = get_connection();
        let provider_id = connection.provider_key();
        let ctl = ControlInterface {
            nats: &connection.nats,
            lattice: &connection.lattice,
        };
        let asked_at = Instant::now();
        let links = ctl.links().await?;
        let (mut own, mut missed) = (0, 0);
        for link in &links {
            let Some((role, key)) = end_of(link, provider_id) else {
                continue;
            };
            own += 1;
            if asked_at.elapsed() > DELETE_MEMORY / 2 {
                // Deletes from before this pass are being forgotten: the
                // rest is asked for again.
                return Ok(Pass::Stale);
            }
            // Checked again when applied: a put may arrive meanwhile.
            if self.holds(role, &key) {
                continue;
            }
            missed += 1;
            let names = link.config_names_for(provider_id);
            let secrets = secret_names(names);
            if !secrets.is_empty() {
                let reason = format!(
                    "link {key} was missed while the provider was not listening, and names \
                     secrets ({}) that only the host can decrypt; put the link again or restart \
                     the provider",
                    secrets.join(",")
                );
                error!(error = %reason, "link missed");
                write(&self.state.rejected).insert((role, key), reason);
                continue;
            }
            let config = match ctl.merged_config(names).await {
                Ok(config) => config,
                // The host skips such a link as well.
                Err(problem) => {
                    warn!(link = %key, %problem, "missed link not applied: its config cannot be resolved");
                    continue;
                }
            };
            let secrets = std::collections::HashMap::<String, SecretValue>::new();
            let link_config = LinkPut {
                source_id: &link.source_id,
                target_id: &link.target,
                link_name: &link.name,
                config: &config,
                secrets: &secrets,
                namespace: &link.wit_namespace,
                package: &link.wit_package,
                interfaces: &link.interfaces,
            };
            let origin = PutOrigin::Lattice { asked_at };
            let result = if role == LinkRole::Handler {
                self.put_handler_link(&link_config, origin)
            } else {
                self.start_consumer_link(&link_config, origin).await
            };
            if result.is_err() {
                self.record_rejection(role, key, result);
            }
        }
        // Each missed link applied is logged as it is (see `applies`).
        info!(
            links = own,
            not_held = missed,
            "checked the lattice's links for any this provider missed"
        );
        Ok(Pass::Done)
    }
}

/// How a pass over the lattice's links ended.
enum Pass {
    Done,
    /// It ran so long that the lattice's answer is stale.
    Stale,
}

/// Which end of `link` this provider is, and the link's key, if it is one.
fn end_of(link: &StoredLink, provider_id: &str) -> Option<(LinkRole, LinkKey)> {
    if link.source_id == provider_id {
        Some((LinkRole::Handler, LinkKey::new(&link.target, &link.name)))
    } else if link.target == provider_id {
        Some((
            LinkRole::Consumer,
            LinkKey::new(&link.source_id, &link.name),
        ))
    } else {
        None
    }
}
