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

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::{debug, error, info, warn};
use wasmcloud_provider_sdk::get_connection;

use super::{role_of, LinkChange, LinkKey, LinkPut, MessagingProvider, Origin};
use crate::config::LinkRole;
use crate::lattice::{secret_names, ControlInterface, LatticeError, CTL_TIMEOUT};
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

/// Links the host deleted lately, with when.
#[derive(Default)]
pub(super) struct RecentDeletes {
    deletes: Mutex<Vec<(Instant, LinkRole, LinkKey)>>,
}

impl RecentDeletes {
    /// Notes that the host deleted the link of `role` under `key` now.
    pub(super) fn record(&self, role: LinkRole, key: &LinkKey) {
        let now = Instant::now();
        let mut deletes = lock(&self.deletes);
        deletes.retain(|(at, ..)| now.duration_since(*at) < DELETE_MEMORY);
        deletes.push((now, role, key.clone()));
    }

    /// True if the link was deleted at or after `since`.
    pub(super) fn deleted_since(&self, role: LinkRole, key: &LinkKey, since: Instant) -> bool {
        lock(&self.deletes)
            .iter()
            .any(|(at, k, deleted)| *at >= since && *k == role && deleted == key)
    }
}

impl MessagingProvider {
    /// Asks the lattice for the provider's links now (the provider's own
    /// link subscription was sent before, on the same connection, so the
    /// server has it once it routes this request), again [`SECOND_LOOK`]
    /// later, and after every reconnect of the lattice connection, until
    /// shutdown.
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
            poll.tick().await;
            let now = stats.connects.load(Ordering::Relaxed);
            if now != connects {
                connects = now;
                debug!("lattice connection re-established; asking for its links again");
                self.reconcile_reporting(&mut last_problem).await;
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
            let Some(role) = role_of(provider_id, &link.source_id, &link.target) else {
                continue;
            };
            let key = LinkKey::at(role, &link.source_id, &link.target, &link.name);
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
            let put = LinkPut {
                source_id: link.source_id.clone(),
                target_id: link.target.clone(),
                link_name: link.name.clone(),
                config,
                secrets: HashMap::new(),
                namespace: link.wit_namespace.clone(),
                package: link.wit_package.clone(),
                interfaces: link.interfaces.clone(),
            };
            // Each on its own: one waiting on its NATS does not hold up
            // the rest of the pass.
            let this = self.clone();
            let origin = Origin::Lattice { asked_at };
            self.state
                .tasks
                .spawn(async move { this.apply(LinkChange::put(role, put), origin).await });
        }
        // Each missed link applied is logged as it is (see `log_missed`).
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
