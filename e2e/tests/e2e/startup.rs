//! Links put while the provider starts (what wadm does on `wash app
//! deploy`): the host hands a starting provider the links it knows, and
//! publishes later ones once; none of them may be lost.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use messaging_nats_e2e::host::{consumer_link, handler_link, DEFAULT_LINK_NAME};
use messaging_nats_e2e::paths;

use crate::common::*;

/// Pause between link puts: the puts spread over the provider's whole
/// start-up, from before its process runs until after it listens.
const PUT_PAUSE: Duration = Duration::from_millis(2);

/// Puts go on this long after the provider first answers health.
const PUTS_AFTER_READY: Duration = Duration::from_millis(300);

#[tokio::test(flavor = "multi_thread")]
async fn links_put_while_the_provider_starts_are_all_applied() -> Result<()> {
    let lattice = Lattice::start().await?;
    let host = &lattice.host;
    host.put_config(PROVIDER_CONFIG, &[("cluster_uris", &lattice.nats.url())])
        .await?;
    host.put_config("echo-subscriptions", &[("subscriptions", SUBJECT)])
        .await?;
    host.put_config("race-subscriptions", &[("subscriptions", "race.>")])
        .await?;
    host.scale_component(COMPONENT_ID, &paths::echo_component_wasm()?, 100)
        .await?;

    host.request_provider_start(PROVIDER_ID, &provider_archive().await?, &[PROVIDER_CONFIG])
        .await?;
    // The echo component's links first, then a pair per racing component,
    // until a little after the provider answers.
    host.put_link(consumer_link(COMPONENT_ID, PROVIDER_ID, DEFAULT_LINK_NAME)?)
        .await?;
    host.put_link(handler_link(
        PROVIDER_ID,
        COMPONENT_ID,
        DEFAULT_LINK_NAME,
        &["echo-subscriptions"],
    )?)
    .await?;
    let deadline = Instant::now() + WAIT;
    let mut ready_at = None;
    let mut pairs = 0;
    while ready_at.is_none_or(|at: Instant| at.elapsed() < PUTS_AFTER_READY) {
        if Instant::now() > deadline {
            bail!("the provider did not answer health within {WAIT:?}");
        }
        let component = format!("race-{pairs}");
        host.put_link(consumer_link(&component, PROVIDER_ID, DEFAULT_LINK_NAME)?)
            .await?;
        // A source has one link per name and interface: the provider's
        // handler links need names of their own.
        host.put_link(handler_link(
            PROVIDER_ID,
            &component,
            &component,
            &["race-subscriptions"],
        )?)
        .await?;
        pairs += 1;
        if ready_at.is_none() && host.provider_health(PROVIDER_ID).await.is_ok() {
            ready_at = Some(Instant::now());
        }
        tokio::time::sleep(PUT_PAUSE).await;
    }
    // The provider holds what the lattice holds, read again each time (the
    // host records the last puts a moment after answering them). The host's
    // provider start rewrites the provider's stored spec (read, then written
    // back), so a handler link put in between is lost from the lattice
    // itself (wadm puts such a link again); consumer links are stored with
    // their component and are never lost so.
    let deadline = Instant::now() + WAIT;
    let (mut health, mut expected, mut handlers) = (String::new(), String::new(), 0);
    while !(health.starts_with(&expected)
        && expected.ends_with(&format!(" {} consumer links", pairs + 1)))
    {
        if Instant::now() > deadline {
            bail!(
                "after {pairs} racing link pairs, health still says {health:?}, not {expected:?} \
                 (what the lattice holds)"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let links = host.links().await?;
        handlers = links
            .iter()
            .filter(|l| l.source_id() == PROVIDER_ID)
            .count();
        let consumers = links.iter().filter(|l| l.target() == PROVIDER_ID).count();
        expected = format!("{handlers} handler links, {consumers} consumer links");
        if let Ok((_, message)) = host.provider_health(PROVIDER_ID).await {
            health = message;
        }
    }
    let lost_by_host = pairs + 1 - handlers;
    println!(
        "{pairs} link pairs put while the provider started; health: {health}; handler links \
         lost by the host's own provider start: {lost_by_host}"
    );
    lattice.wait_answering(SUBJECT).await?;
    lattice.host.stop().await
}
