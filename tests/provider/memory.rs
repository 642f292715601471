//! Memory stays bounded and is given back: bursts into a slow component,
//! requests that never get a reply, links put and deleted many times. The
//! figures are printed; the bounds asserted are wide, for a noisy machine.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;

use crate::support::{
    round_trip, stop_figures, Behaviour, Caller, Lattice, Link, NatsServer, Provider,
};

const MIB: u64 = 1024;

/// Publishes `n` messages of `size` bytes to `subject` as fast as the client
/// takes them, sampling the provider's RSS; returns the peak in KiB.
async fn burst(
    lattice: &Lattice,
    provider: &Provider,
    subject: &str,
    n: usize,
    size: usize,
) -> u64 {
    let body = bytes::Bytes::from(vec![b'x'; size]);
    let mut peak = provider.rss_kib();
    for i in 0..n {
        lattice
            .client
            .publish(subject.to_string(), body.clone())
            .await
            .unwrap();
        if i % 1000 == 0 {
            peak = peak.max(provider.rss_kib());
        }
    }
    lattice.client.flush().await.unwrap();
    for _ in 0..20 {
        peak = peak.max(provider.rss_kib());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    peak
}

/// A burst of `n` messages of `size` bytes; the provider's RSS may grow by
/// `peak_growth` KiB at most while it lasts, and keep `kept_growth` KiB of
/// it once the link is gone (what the allocator holds on to for reuse).
async fn burst_into_a_slow_handler(n: usize, size: usize, peak_growth: u64, kept_growth: u64) {
    let lattice = Lattice::start().await;
    let provider = lattice.provider(&[]).await;
    let component = lattice
        .component("c", Behaviour::slow(Duration::from_millis(20)))
        .await;
    let link = Link::handler(
        "c",
        &[
            ("subscriptions", "burst"),
            ("max_in_flight", "16"),
            ("drain_timeout_ms", "500"),
        ],
    );
    provider.put_link(&link).await;
    let idle = provider.rss_kib();

    let peak = burst(&lattice, &provider, "burst", n, size).await;
    provider.delete_link(&link).await;
    provider
        .logs
        .wait_for(0, "the link's stop", |l| l.contains("handler link stopped"))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = provider.rss_kib();
    let figures = stop_figures(&provider);
    let accounted: u64 = figures.iter().map(|(_, n)| n).sum();
    println!(
        "burst of {n} x {size} B into a 20 ms handler, max_in_flight 16: RSS idle {} MiB, \
         peak {} MiB, after {} MiB; peak in flight {}; {figures:?}",
        idle / MIB,
        peak / MIB,
        after / MIB,
        component.peak_in_flight()
    );

    assert_eq!(component.peak_in_flight(), 16);
    // When the provider is starved of CPU (other tests), the NATS client's
    // own buffer can overflow first; those drops are counted too, and said
    // when the connection closes.
    provider
        .logs
        .wait_for(0, "the connection's close", |l| {
            l.contains("closing NATS connection")
        })
        .await;
    let client_dropped: u64 = provider
        .logs
        .lines()
        .iter()
        .find_map(|l| {
            let rest = l.split("client_dropped=").nth(1)?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or(0);
    if client_dropped == 0 {
        assert_eq!(
            accounted, n as u64,
            "messages lost without being counted: {figures:?}"
        );
    } else {
        // The client reports each drop through a bounded event queue, which
        // can itself overflow: the drops are said, not always each one, so
        // the sum can fall short of `n` but never exceed it.
        assert!(
            provider
                .logs
                .lines()
                .iter()
                .any(|l| l.contains("the NATS client dropped messages")),
            "the client's drops were not logged"
        );
        assert!(
            accounted + client_dropped <= n as u64,
            "more accounted than sent: link {figures:?}, client {client_dropped}"
        );
    }
    assert!(
        peak < idle + peak_growth,
        "peak {peak} KiB over idle {idle} KiB"
    );
    assert!(
        after < idle + kept_growth,
        "after {after} KiB over idle {idle} KiB"
    );
}

#[tokio::test]
async fn a_burst_of_small_messages_into_a_slow_handler_stays_bounded() {
    // The link's queue: at most 65,536 messages, a few MiB at this size.
    burst_into_a_slow_handler(200_000, 16, 64 * MIB, 32 * MIB).await;
}

#[tokio::test]
async fn a_burst_of_large_messages_into_a_slow_handler_stays_bounded() {
    // The link's queue: at most 32 MiB (2 x max_in_flight x max_payload),
    // and what the NATS client holds for it meanwhile.
    burst_into_a_slow_handler(2_000, 256 * 1024, 128 * MIB, 32 * MIB).await;
}

/// What became of requests that get no reply.
#[derive(Debug, Default)]
struct Unanswered {
    /// Answered by the provider with its "no reply" error.
    timed_out: usize,
    /// Answered by the provider with another error (a few kept).
    other_errors: Vec<String>,
    /// The wRPC call itself failed: the invocation or its answer was lost.
    lost: usize,
}

/// Sends `n` requests that get no reply, `concurrency` at a time.
async fn unanswered_requests(caller: &Arc<Caller>, n: usize, concurrency: usize) -> Unanswered {
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let caller = Arc::clone(caller);
        workers.push(tokio::spawn(async move {
            let mut seen = Unanswered::default();
            for _ in (w..n).step_by(concurrency) {
                match caller.request("silent", b"?", 5).await {
                    Ok(Err(err)) if err.contains("no reply") => seen.timed_out += 1,
                    Ok(Err(err)) => seen.other_errors.push(err),
                    Ok(Ok(reply)) => seen.other_errors.push(format!("answered: {reply:?}")),
                    Err(_) => seen.lost += 1,
                }
            }
            seen
        }));
    }
    let mut all = Unanswered::default();
    for worker in workers {
        let seen = worker.await.unwrap();
        all.timed_out += seen.timed_out;
        all.lost += seen.lost;
        all.other_errors.extend(seen.other_errors);
    }
    all
}

#[tokio::test]
async fn requests_that_get_no_reply_leave_nothing_behind() {
    let lattice = Lattice::start().await;
    let provider = lattice.provider(&[]).await;
    let component = lattice.component("c", Behaviour::default()).await;
    provider.put_link(&Link::consumer("c", &[])).await;
    let mut silent = lattice.client.subscribe("silent").await.unwrap();
    round_trip(&lattice.client).await;
    let swallow = tokio::spawn(async move { while silent.next().await.is_some() {} });
    let caller = Arc::new(component.caller(&provider.key).await);
    let subscriptions = || provider_subscriptions(&lattice.nats);
    let subs_before = subscriptions();
    let idle = provider.rss_kib();
    let started = Instant::now();

    // Two rounds: the first sets the allocator's high-water mark, the
    // second shows whether anything grows per request.
    let n = 50_000;
    let first = unanswered_requests(&caller, n, 100).await;
    let after_first = provider.rss_kib();
    let second = unanswered_requests(&caller, n, 100).await;
    let after_second = provider.rss_kib();
    // The last requests' unsubscriptions may still be on their way.
    let settle = Instant::now() + Duration::from_secs(2);
    while subscriptions() != subs_before && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let subs_after = subscriptions();
    swallow.abort();
    println!(
        "{} unanswered requests in {:?}: {} timed out, {} wRPC calls lost, {} other errors; \
         RSS idle {} MiB, after {n} {} MiB, after {} {} MiB; provider subscriptions \
         {subs_before} before, {subs_after} after",
        2 * n,
        started.elapsed(),
        first.timed_out + second.timed_out,
        first.lost + second.lost,
        first.other_errors.len() + second.other_errors.len(),
        idle / MIB,
        after_first / MIB,
        2 * n,
        after_second / MIB
    );

    // Every request the provider took ends with its own timeout error.
    assert!(
        first.other_errors.is_empty() && second.other_errors.is_empty(),
        "{:?} {:?}",
        &first.other_errors[..first.other_errors.len().min(5)],
        &second.other_errors[..second.other_errors.len().min(5)]
    );
    // wRPC over NATS now and then loses an invocation: about 1 in 10^4 on
    // a quiet machine, a few in 10^3 while other builds run beside.
    assert!(
        first.lost + second.lost <= 2 * n / 100,
        "{} of {} wRPC calls lost",
        first.lost + second.lost,
        2 * n
    );
    assert_eq!(subs_after, subs_before, "inbox subscriptions left behind");
    assert!(
        after_second < after_first + 8 * MIB,
        "grew by {} KiB over the second {n} requests",
        after_second.saturating_sub(after_first)
    );
}

/// Subscriptions the provider's data connections hold on `server`.
fn provider_subscriptions(server: &NatsServer) -> u64 {
    server
        .connections()
        .iter()
        .filter(|c| c["name"] == "wasmcloud-messaging-nats")
        .map(|c| c["subscriptions"].as_u64().unwrap_or(0))
        .sum()
}

#[tokio::test]
async fn a_thousand_link_cycles_leave_no_connection_behind() {
    let lattice = Lattice::start().await;
    let mut down = NatsServer::start();
    let down_url = down.url();
    down.kill();
    let provider = lattice.provider(&[]).await;
    let idle = provider.rss_kib();
    let started = Instant::now();

    for i in 0..1000 {
        let link = if i % 2 == 0 {
            Link::consumer("c", &[])
        } else {
            Link::consumer(
                "c",
                &[("cluster_uris", &down_url), ("connect_timeout_ms", "100")],
            )
        };
        provider.put_link(&link).await;
        provider.delete_link(&link).await;
    }
    let cycles = started.elapsed();
    let (_, health) = provider.health().await.unwrap();
    let connected = lattice
        .nats
        .connections()
        .iter()
        .filter(|c| c["name"] == "wasmcloud-messaging-nats")
        .count();
    // Each released client to the down server gives up within ~25 s.
    let deadline = Instant::now() + Duration::from_secs(60);
    while provider.logs.count(|l| l.contains("NATS client gave up")) < 500 {
        assert!(
            Instant::now() < deadline,
            "{} of 500 released clients gave up",
            provider.logs.count(|l| l.contains("NATS client gave up"))
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let after = provider.rss_kib();
    println!(
        "1,000 link put/delete cycles (half to a down server) in {cycles:?}: RSS idle {} MiB, after {} MiB",
        idle / MIB,
        after / MIB
    );

    assert!(
        health.starts_with("0 handler links, 0 consumer links"),
        "{health}"
    );
    assert_eq!(connected, 0, "connections to the live server left open");
    assert_eq!(
        provider.logs.count(|l| l.contains("starting a new client")),
        0
    );
    assert!(
        after < idle + 32 * MIB,
        "after {after} KiB over idle {idle} KiB"
    );
}

/// wRPC clients' inbox subscriptions (`_INBOX.<id>.>`) on the provider's
/// lattice connection: one per wRPC client.
fn wrpc_inboxes(server: &NatsServer) -> usize {
    server
        .connections()
        .iter()
        .filter(|c| c["name"] == "messaging-nats")
        .flat_map(|c| {
            c["subscriptions_list"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter(|s| {
            s.as_str()
                .is_some_and(|s| s.starts_with("_INBOX.") && s.ends_with(".>"))
        })
        .count()
}

#[tokio::test]
async fn handler_links_of_one_component_share_a_wrpc_client_that_goes_with_the_last() {
    let lattice = Lattice::start().await;
    let provider = lattice.provider(&[]).await;
    let mut component = lattice.component("w", Behaviour::default()).await;
    let before = wrpc_inboxes(&lattice.nats);
    let first = Link::handler("w", &[("subscriptions", "jobs.first")]).named("first");
    let second = Link::handler("w", &[("subscriptions", "jobs.second")]).named("second");
    provider.put_link(&first).await;
    provider.put_link(&second).await;
    for subject in ["jobs.first", "jobs.second"] {
        lattice.client.publish(subject, "x".into()).await.unwrap();
        assert_eq!(component.next().await.message.subject, subject);
    }
    assert_eq!(
        wrpc_inboxes(&lattice.nats),
        before + 1,
        "one client for both links"
    );

    provider.delete_link(&first).await;
    lattice
        .client
        .publish("jobs.second", "y".into())
        .await
        .unwrap();
    assert_eq!(component.next().await.message.body.as_ref(), b"y");
    assert_eq!(
        wrpc_inboxes(&lattice.nats),
        before + 1,
        "the second link keeps it"
    );

    provider.delete_link(&second).await;
    // The client's subscription goes when its routing task ends, which the
    // last link's stop sets off.
    let deadline = Instant::now() + Duration::from_secs(10);
    while wrpc_inboxes(&lattice.nats) != before {
        assert!(
            Instant::now() < deadline,
            "the wRPC client outlived the last link of its component: {} inboxes, {before} before",
            wrpc_inboxes(&lattice.nats)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
