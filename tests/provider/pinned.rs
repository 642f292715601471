//! `priority_policy=pinned_client`: of the provider instances that share a
//! durable consumer, one receives at a time, so a link with
//! `max_in_flight=1` handles messages in order across hosts; when that
//! instance dies another takes over once the pin's time to live is up.
//! Each test applies to the servers on one side of 2.11 (the README's test
//! command runs this group on 2.15.1 and on 2.9.10) and says so when it
//! does not apply.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::support::{
    create_stream, jetstream_lattice, js, publish_stored, Behaviour, Lattice, Link, Received,
};

const COUNT: usize = 60;
/// The shortest time to live a link accepts.
const TTL: Duration = Duration::from_secs(10);

/// True if the lattice's server has priority groups (2.11 on).
fn has_priority_groups(lattice: &Lattice) -> bool {
    let version = lattice.client.server_info().version;
    let mut parts = version.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    (parts.next(), parts.next()) >= (Some(2), Some(11))
}

/// Says that a test does not apply to this run's server.
fn not_applicable(lattice: &Lattice, applies_to: &str) {
    let version = lattice.client.server_info().version;
    println!("nats-server {version}: this test applies to {applies_to} only");
}

fn pinned_link() -> Link {
    Link::handler(
        "worker",
        &[
            ("stream", "ORDERED"),
            ("max_in_flight", "1"),
            ("priority_policy", "pinned_client"),
            ("pinned_ttl_ms", &TTL.as_millis().to_string()),
            // Below the pin's time to live: a message the dead instance
            // held is redelivered before its successor is pinned.
            ("ack_wait_ms", "3000"),
        ],
    )
}

fn number(received: &Received) -> usize {
    std::str::from_utf8(&received.message.body)
        .expect("utf-8")
        .parse()
        .expect("a number")
}

fn strictly_increasing(numbers: &[usize]) -> bool {
    numbers.windows(2).all(|pair| pair[0] < pair[1])
}

#[tokio::test]
async fn one_instance_handles_in_order_and_another_takes_over_after_a_sigkill() {
    let lattice = jetstream_lattice().await;
    if !has_priority_groups(&lattice) {
        return not_applicable(&lattice, "nats-server 2.11 and later");
    }
    let js = js(&lattice);
    create_stream(&js, "ORDERED", &["ordered.>"]).await;
    let mut component = lattice
        .component("worker", Behaviour::slow(Duration::from_millis(50)))
        .await;
    let link = pinned_link();
    let mut providers = Vec::new();
    for key in ["pinned-a", "pinned-b"] {
        let provider = lattice.provider_with_key(key, &[]).await;
        provider.put_link(&link).await;
        providers.push(provider);
    }
    publish_stored(&js, "ordered.m", 0..COUNT).await;

    let first = component.take(COUNT / 3).await;
    let holder = first[0].source_id.clone().expect("the invoking provider");
    let index = providers
        .iter()
        .position(|p| Some(&p.key) == Some(&holder))
        .expect("a provider of this test");
    let status = providers.remove(index).signal("KILL").await;
    assert!(!status.success(), "killed: {status:?}");
    let killed_at = Instant::now();
    let standby = providers.pop().expect("the other provider");

    let mut all = first;
    let mut seen: BTreeSet<usize> = all.iter().map(number).collect();
    let deadline = Instant::now() + TTL * 4;
    while seen.len() < COUNT {
        let left = deadline.saturating_duration_since(Instant::now());
        // Not `next`: its own wait is shorter than a takeover may take.
        let Ok(Some(got)) = tokio::time::timeout(left, component.next_opt()).await else {
            panic!("{} of {COUNT} handled", seen.len());
        };
        seen.insert(number(&got));
        all.push(got);
    }

    let by = |key: &str| -> Vec<&Received> {
        all.iter()
            .filter(|r| r.source_id.as_deref() == Some(key))
            .collect()
    };
    let (held, took_over) = (by(&holder), by(&standby.key));
    assert_eq!(
        held.len() + took_over.len(),
        all.len(),
        "only two providers"
    );
    let held_numbers: Vec<usize> = held.iter().map(|r| number(r)).collect();
    let later_numbers: Vec<usize> = took_over.iter().map(|r| number(r)).collect();
    // While both ran, only the holder received, in order.
    let first_late = took_over.first().expect("the standby took over");
    assert!(
        first_late.at > killed_at,
        "the standby handled {} while the holder ran",
        number(first_late)
    );
    assert!(strictly_increasing(&held_numbers), "{held_numbers:?}");
    assert_eq!(held_numbers[0], 0);
    // The successor goes on where the holder stopped: at most the message
    // the holder was handling comes again, and nothing is skipped.
    assert!(strictly_increasing(&later_numbers), "{later_numbers:?}");
    let last_held = *held_numbers.last().unwrap();
    assert!(
        later_numbers[0] == last_held || later_numbers[0] == last_held + 1,
        "held up to {last_held}, the successor began at {}",
        later_numbers[0]
    );
    assert_eq!(seen, (0..COUNT).collect::<BTreeSet<_>>());
    let took = first_late.at.duration_since(killed_at);
    println!(
        "holder handled {}, successor {} (from {}), took over {took:?} after the SIGKILL",
        held.len(),
        took_over.len(),
        later_numbers[0]
    );
    // The pin expires TTL after the holder's last request; the successor's
    // waiting request is served then (its own requests last 5 s).
    assert!(
        took <= TTL + Duration::from_secs(5),
        "took over after {took:?}"
    );
}

#[tokio::test]
async fn on_a_server_before_2_11_health_names_the_servers_version() {
    let lattice = jetstream_lattice().await;
    let version = lattice.client.server_info().version;
    if has_priority_groups(&lattice) {
        return not_applicable(&lattice, "servers before 2.11");
    }
    let js = js(&lattice);
    create_stream(&js, "ORDERED", &["ordered.>"]).await;
    let _component = lattice.component("worker", Behaviour::default()).await;
    let provider = lattice.provider(&[]).await;
    provider.put_link(&pinned_link()).await;

    let expected = format!(
        "priority_policy=pinned_client needs nats-server 2.11 or later; this server is {version}"
    );
    let (healthy, health) = provider
        .wait_for_health("the version named", Duration::from_secs(10), |_, m| {
            m.contains(&expected)
        })
        .await;
    assert!(!healthy, "{health}");
    // Nothing was made that would hand messages to every instance.
    let consumers: Vec<_> = futures::StreamExt::collect::<Vec<_>>(
        js.get_stream("ORDERED")
            .await
            .expect("stream")
            .consumer_names(),
    )
    .await;
    assert!(consumers.is_empty(), "{consumers:?}");
}
