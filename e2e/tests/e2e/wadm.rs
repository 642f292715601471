//! The shipped `wadm.yaml` deployed by the real wadm (in this process, next
//! to the embedded host), as `wash app deploy` deploys it: the application
//! reaches Deployed, messages flow, a new version of the manifest changes
//! what the provider does, and undeploying removes everything.

use std::time::{Duration, Instant};

use crate::common::*;
use anyhow::{bail, Context as _, Result};
use async_nats::client::RequestErrorKind;
use messaging_nats_e2e::host::process_alive;
use messaging_nats_e2e::paths::repo_root;
use messaging_nats_e2e::wadm::Wadm;

/// The application `wadm.yaml` defines.
const APP: &str = "messaging-nats-echo";

/// The repository's `wadm.yaml`, as shipped.
fn shipped_manifest() -> Result<String> {
    let path = repo_root().join("wadm.yaml");
    std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))
}

/// `text` with `from` replaced by `to`, which must occur exactly once.
fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "{from:?} in the manifest");
    text.replacen(from, to, 1)
}

/// A lattice with nothing deployed, and wadm beside its host.
async fn start() -> Result<(Lattice, Wadm)> {
    Lattice::with_wadm().await
}

/// Deploys `yaml` as `wash app deploy` would from the repository root, and
/// waits until wadm reports it deployed and it answers on `subject`.
async fn deploy(lattice: &Lattice, wadm: &Wadm, yaml: &str, subject: &str) -> Result<()> {
    wadm.deploy(yaml, &repo_root()).await?;
    wadm.wait_deployed(APP).await?;
    lattice.wait_answering(subject).await
}

/// Stops wadm (so that it does not start what the host stops), then the
/// host.
async fn stop(lattice: Lattice, wadm: Wadm) -> Result<()> {
    drop(wadm);
    lattice.host.stop().await
}

/// Sends `bodies` as requests on `subject` all at once and returns the
/// replies in the order of `bodies`.
async fn requests(
    client: &async_nats::Client,
    subject: &str,
    bodies: &[&str],
) -> Result<Vec<String>> {
    let calls = bodies.iter().map(|body| {
        let client = client.clone();
        let body = body.to_string();
        let subject = subject.to_string();
        async move {
            let reply = tokio::time::timeout(WAIT, client.request(subject.clone(), body.into()))
                .await
                .with_context(|| format!("no reply on {subject} within {WAIT:?}"))??;
            Ok::<_, anyhow::Error>(String::from_utf8_lossy(&reply.payload).into_owned())
        }
    });
    futures::future::try_join_all(calls).await
}

/// The (start, end) of each `sleep` call, as the echo component reports
/// them ("slept N ms from START to END", in microseconds).
fn intervals(replies: &[String]) -> Result<Vec<(u128, u128)>> {
    replies
        .iter()
        .map(|reply| {
            let rest = reply
                .split_once(" from ")
                .with_context(|| format!("not a sleep reply: {reply:?}"))?
                .1;
            let (start, end) = rest
                .split_once(" to ")
                .with_context(|| format!("not a sleep reply: {reply:?}"))?;
            Ok((start.parse()?, end.parse()?))
        })
        .collect()
}

/// True if any two of the calls ran at the same time.
fn any_overlap(intervals: &[(u128, u128)]) -> bool {
    let mut sorted = intervals.to_vec();
    sorted.sort();
    sorted.windows(2).any(|pair| pair[1].0 < pair[0].1)
}

#[tokio::test(flavor = "multi_thread")]
async fn wadm_deploys_the_shipped_manifest_and_messages_flow() -> Result<()> {
    let (lattice, wadm) = start().await?;
    let mut events = lattice.subscribe(EVENT_SUBJECT).await?;

    deploy(&lattice, &wadm, &shipped_manifest()?, SUBJECT).await?;
    quiet(&mut events, Duration::from_millis(300)).await;
    let reply = lattice.client.request(SUBJECT, "hello".into()).await?;

    assert_eq!(text(&reply), "echo: HELLO");
    assert_eq!(text(&next(&mut events, WAIT).await?), "handled 5 bytes");
    stop(lattice, wadm).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_manifest_version_changes_subscriptions_max_in_flight_and_instances() -> Result<()> {
    const SLEEPS: [&str; 4] = ["sleep 300"; 4];
    let (lattice, wadm) = start().await?;
    let v1 = shipped_manifest()?;
    deploy(&lattice, &wadm, &v1, SUBJECT).await?;

    // v2: two instances of echo, a second subject, one call at a time. wadm
    // puts a link again only when the names of its config change.
    let v2 = replace_once(&v1, "version: v0.1.0", "version: v0.2.0");
    let v2 = replace_once(&v2, "instances: 1", "instances: 2");
    let v2 = replace_once(
        &v2,
        "subscriptions: demo.in",
        "subscriptions: demo.in,demo.more",
    );
    let v2 = replace_once(&v2, "max_in_flight: \"64\"", "max_in_flight: \"1\"");
    let v2 = replace_once(
        &v2,
        "name: echo-subscriptions",
        "name: echo-subscriptions-v2",
    );
    deploy(&lattice, &wadm, &v2, "demo.more").await?;
    let one_at_a_time = intervals(&requests(&lattice.client, SUBJECT, &SLEEPS).await?)?;
    let inventory = lattice.host.inventory().await?;

    // v3: the same with 64 calls at once: the two instances overlap.
    let v3 = replace_once(&v2, "version: v0.2.0", "version: v0.3.0");
    let v3 = replace_once(&v3, "max_in_flight: \"1\"", "max_in_flight: \"64\"");
    let v3 = replace_once(
        &v3,
        "name: echo-subscriptions-v2",
        "name: echo-subscriptions-v3",
    );
    deploy(&lattice, &wadm, &v3, SUBJECT).await?;
    let many_at_a_time = intervals(&requests(&lattice.client, SUBJECT, &SLEEPS).await?)?;

    let echo = inventory
        .components()
        .iter()
        .find(|c| c.id().ends_with("echo"))
        .context("echo not in the host's inventory")?;
    assert_eq!(echo.max_instances(), 2, "{echo:?}");
    assert!(
        !any_overlap(&one_at_a_time),
        "with max_in_flight 1 no two calls may overlap: {one_at_a_time:?}"
    );
    assert!(
        any_overlap(&many_at_a_time),
        "with max_in_flight 64 and two instances the calls should overlap: {many_at_a_time:?}"
    );
    stop(lattice, wadm).await
}

#[tokio::test(flavor = "multi_thread")]
async fn undeploying_deletes_the_links_and_stops_the_provider() -> Result<()> {
    let (lattice, wadm) = start().await?;
    deploy(&lattice, &wadm, &shipped_manifest()?, SUBJECT).await?;
    let pids = lattice.host.provider_processes();
    assert_eq!(pids.len(), 1, "one provider process expected: {pids:?}");

    wadm.undeploy(APP).await?;

    let deadline = Instant::now() + WAIT;
    loop {
        let inventory = lattice.host.inventory().await?;
        let links = lattice.host.links().await?;
        let running = pids.iter().any(|pid| process_alive(*pid));
        if inventory.providers().is_empty() && links.is_empty() && !running {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "after undeploy: providers {:?}, links {links:?}, process running {running}",
                inventory.providers()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let error = lattice
        .client
        .request(SUBJECT, "hello".into())
        .await
        .expect_err("nobody should serve the subject any more");
    assert_eq!(error.kind(), RequestErrorKind::NoResponders);
    stop(lattice, wadm).await
}
