//! `--only links`: what handler links cost at scale. For each count, a
//! fresh provider gets that many handler links (one subscription each, put
//! as fast as the host can send them), each to a component of its own (a
//! host with that many components; one wildcard wRPC server here answers
//! for all of them), then again all to one component (whose links share
//! its wRPC client); and the same count of subscriptions is made by a bare
//! NATS client in a process of its own, the floor:
//!
//! - resident memory a link (a subscription): RSS once all deliver, less
//!   RSS before the first put, over the count;
//! - time from the last put until every link has delivered a message
//!   (each subject is published to again every round until it has);
//! - health's slowest answer from the first put until the last link is
//!   gone (a request every 100 ms; one with no answer in 1 s counts);
//! - time from the first delete until every link has stopped.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use futures::StreamExt as _;
use messaging_nats_harness::{round_trip, Behaviour, Lattice, Link, Provider, ServerExt as _};

use crate::{provider_options, Report};

/// How often a round publishes to the subjects not delivered yet, and how
/// often health is asked.
const ROUND: Duration = Duration::from_millis(50);
const HEALTH_EVERY: Duration = Duration::from_millis(100);
/// Longest wait for all links to deliver, or all to stop: far beyond the
/// targets (5 s), so that a miss is measured rather than cut off.
const GIVE_UP: Duration = Duration::from_secs(20);

/// Which of `n` subjects have delivered, and when the last first did.
struct Seen {
    seen: Mutex<(Vec<bool>, Option<Instant>)>,
    distinct: AtomicUsize,
}

impl Seen {
    fn new(n: usize) -> Arc<Self> {
        Arc::new(Self {
            seen: Mutex::new((vec![false; n], None)),
            distinct: AtomicUsize::new(0),
        })
    }

    /// Marks subject index `i` (the subject's last token) as delivered.
    fn mark(&self, subject: &str) {
        let Some(i) = subject
            .rsplit('.')
            .next()
            .and_then(|i| i.parse::<usize>().ok())
        else {
            return;
        };
        let mut seen = self.seen.lock().expect("seen lock");
        if seen.0.get(i) == Some(&false) {
            seen.0[i] = true;
            seen.1 = Some(Instant::now());
            self.distinct.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn missing(&self) -> Vec<usize> {
        let seen = self.seen.lock().expect("seen lock");
        (0..seen.0.len()).filter(|i| !seen.0[*i]).collect()
    }

    fn last_first_delivery(&self) -> Option<Instant> {
        self.seen.lock().expect("seen lock").1
    }
}

/// Publishes once to each subject `prefix.i` not delivered yet, every
/// round, until all of them were; returns how long after `since` the last
/// one first delivered.
async fn until_all_deliver(
    client: &async_nats::Client,
    prefix: &str,
    seen: &Seen,
    since: Instant,
) -> anyhow::Result<Duration> {
    loop {
        let missing = seen.missing();
        if missing.is_empty() {
            let last = seen.last_first_delivery().context("nothing delivered")?;
            return Ok(last.saturating_duration_since(since));
        }
        if since.elapsed() > GIVE_UP {
            bail!(
                "{} of {} subjects under {prefix} never delivered",
                missing.len(),
                missing.len() + seen.distinct.load(Ordering::SeqCst)
            );
        }
        for i in missing {
            client
                .publish(format!("{prefix}.{i}"), Bytes::from_static(b"x"))
                .await?;
        }
        client.flush().await?;
        tokio::time::sleep(ROUND).await;
    }
}

/// Health's slowest answer while `work` runs, and how many requests got
/// none within a second.
async fn with_health<T>(
    provider: &Provider,
    work: impl std::future::Future<Output = T>,
) -> (T, Duration, usize) {
    let stop = tokio::sync::Notify::new();
    let probe = async {
        let (mut worst, mut unanswered) = (Duration::ZERO, 0);
        loop {
            let started = Instant::now();
            if provider.health().await.is_err() {
                unanswered += 1;
            }
            worst = worst.max(started.elapsed());
            tokio::select! {
                () = stop.notified() => return (worst, unanswered),
                () = tokio::time::sleep(HEALTH_EVERY) => {}
            }
        }
    };
    let work = async {
        let out = work.await;
        stop.notify_one();
        out
    };
    let (out, (worst, unanswered)) = tokio::join!(work, probe);
    (out, worst, unanswered)
}

/// The figures of one count, through the provider and for the bare client.
/// `hold`: how long to wait once all links deliver, before the deletes
/// (`--hold SECS`, to take a heap profile of the provider at that point).
pub(crate) async fn links(
    lattice: &Lattice,
    counts: &[usize],
    hold: Option<Duration>,
    report: &mut Report,
) -> anyhow::Result<()> {
    for &n in counts {
        through_provider(lattice, n, Components::Each, hold, report).await?;
        through_provider(lattice, n, Components::One, hold, report).await?;
        bare_client(lattice, n, report).await?;
    }
    Ok(())
}

/// Which components the links go to.
#[derive(Clone, Copy)]
enum Components {
    /// A component each: `c<n>-<i>`.
    Each,
    /// All to one component.
    One,
}

async fn through_provider(
    lattice: &Lattice,
    n: usize,
    components: Components,
    hold: Option<Duration>,
    report: &mut Report,
) -> anyhow::Result<()> {
    let (label, serving) = match components {
        Components::Each => ("a component each", "*".to_string()),
        Components::One => ("one component", format!("one{n}")),
    };
    let provider = lattice
        .provider_with(provider_options(&format!("links-{n}"), None))
        .await;
    // `*` in the component id: the wRPC server answers for every component
    // of the lattice.
    let mut component = lattice.component(&serving, Behaviour::default()).await;
    let component_of = |i: usize| match components {
        Components::Each => format!("c{n}-{i}"),
        Components::One => serving.clone(),
    };
    let seen = Seen::new(n);
    let reader = {
        let seen = Arc::clone(&seen);
        tokio::spawn(async move {
            while let Some(received) = component.next_opt().await {
                seen.mark(&received.message.subject);
            }
        })
    };
    let prefix = format!("links.{n}");
    let all: Vec<Link> = (0..n)
        .map(|i| {
            Link::handler(
                &component_of(i),
                &[("subscriptions", &format!("{prefix}.{i}"))],
            )
            .named(&format!("l{i}"))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = provider.rss_kib();

    let publisher = lattice.nats.client().await;
    let work = async {
        for link in &all {
            provider.send_link_put(link).await;
        }
        round_trip(&lattice.client).await;
        let delivering = until_all_deliver(&publisher, &prefix, &seen, Instant::now()).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss = provider.rss_kib();
        if let Some(hold) = hold {
            println!("  all {n} links delivering; holding for {hold:?} (--hold)");
            tokio::time::sleep(hold).await;
        }

        let deleting = Instant::now();
        for link in &all {
            provider.send_link_delete(link).await;
        }
        while provider
            .logs
            .count(|line| line.contains("handler link stopped"))
            < n
        {
            if deleting.elapsed() > GIVE_UP {
                bail!("not every link stopped within {GIVE_UP:?}");
            }
            tokio::time::sleep(ROUND).await;
        }
        anyhow::Ok((delivering, rss, deleting.elapsed()))
    };
    let (figures, worst, unanswered) = with_health(&provider, work).await;
    let (delivering, rss, deleted) = figures.with_context(|| {
        let lines = provider.logs.lines();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        format!("the provider's last lines:\n{tail}")
    })?;
    let after = provider.rss_kib();
    reader.abort();
    provider.shutdown().await;

    let per_link = rss.saturating_sub(idle) as f64 / n as f64;
    let name = |figure: &str| format!("{n} links, {label}: {figure}");
    report.add(&name("RSS idle"), idle as f64 / 1024.0, "MiB");
    report.add(&name("RSS"), rss as f64 / 1024.0, "MiB");
    report.add(&name("RSS a link"), per_link, "KiB");
    report.add(
        &name("all delivering after the last put"),
        delivering.as_secs_f64(),
        "s",
    );
    report.add(
        &name("health, slowest answer"),
        worst.as_secs_f64() * 1000.0,
        "ms",
    );
    report.add(
        &name("health requests unanswered in 1 s"),
        unanswered as f64,
        "requests",
    );
    report.add(
        &name("all stopped after the first delete"),
        deleted.as_secs_f64(),
        "s",
    );
    report.add(&name("RSS after the deletes"), after as f64 / 1024.0, "MiB");
    Ok(())
}

/// The floor: a NATS client with `n` subscriptions in a process of its own
/// (this program run as `bare-subscriptions`), read by one task.
async fn bare_client(lattice: &Lattice, n: usize, report: &mut Report) -> anyhow::Result<()> {
    let prefix = format!("bare.{n}");
    let listener = lattice.nats.client().await;
    let mut seen_subjects = listener.subscribe(format!("{prefix}.seen")).await?;
    round_trip(&listener).await;
    let seen = Seen::new(n);
    let reader = {
        let seen = Arc::clone(&seen);
        tokio::spawn(async move {
            while let Some(msg) = seen_subjects.next().await {
                seen.mark(&String::from_utf8_lossy(&msg.payload));
            }
        })
    };
    let mut child = BareProcess::start(&lattice.nats.url(), &prefix, n).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = child.rss_kib()?;
    let publisher = lattice.nats.client().await;
    let started = Instant::now();
    child.tell("subscribe").await?;
    child.wait_for("subscribed").await?;
    let subscribed = started.elapsed();
    let delivering = until_all_deliver(&publisher, &prefix, &seen, Instant::now()).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss = child.rss_kib()?;
    let deleting = Instant::now();
    child.tell("unsubscribe").await?;
    child.wait_for("unsubscribed").await?;
    let deleted = deleting.elapsed();
    reader.abort();

    let per_link = rss.saturating_sub(idle) as f64 / n as f64;
    report.add(
        &format!("{n} subscriptions, bare client: RSS idle"),
        idle as f64 / 1024.0,
        "MiB",
    );
    report.add(
        &format!("{n} subscriptions, bare client: RSS"),
        rss as f64 / 1024.0,
        "MiB",
    );
    report.add(
        &format!("{n} subscriptions, bare client: RSS a subscription"),
        per_link,
        "KiB",
    );
    report.add(
        &format!("{n} subscriptions, bare client: subscribed and confirmed"),
        subscribed.as_secs_f64(),
        "s",
    );
    report.add(
        &format!("{n} subscriptions, bare client: all delivering after that"),
        delivering.as_secs_f64(),
        "s",
    );
    report.add(
        &format!("{n} subscriptions, bare client: all unsubscribed and confirmed"),
        deleted.as_secs_f64(),
        "s",
    );
    Ok(())
}

/// This program run as `bare-subscriptions <nats url> <prefix> <n>`: on
/// `subscribe` (a line on standard input) it subscribes to `<prefix>.0` ..
/// `<prefix>.<n-1>`, confirms with a server round trip and says
/// `subscribed`; each message it receives is answered by its subject on
/// `<prefix>.seen`; on `unsubscribe` it drops them all, confirms, and says
/// `unsubscribed`.
pub(crate) async fn serve_bare(args: &[String]) -> anyhow::Result<()> {
    use tokio::io::AsyncBufReadExt as _;
    let [url, prefix, n] = args else {
        bail!("usage: bare-subscriptions <nats url> <prefix> <n>");
    };
    let n: usize = n.parse().context("n")?;
    let client = async_nats::connect(url.as_str()).await?;
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    println!("ready");
    let seen = format!("{prefix}.seen");
    let mut reading = None;
    while let Some(line) = lines.next_line().await? {
        match line.as_str() {
            "subscribe" => {
                let mut subscribers = Vec::with_capacity(n);
                for i in 0..n {
                    subscribers.push(client.subscribe(format!("{prefix}.{i}")).await?);
                }
                round_trip(&client).await;
                let mut all = futures::stream::select_all(subscribers);
                let (client, seen) = (client.clone(), seen.clone());
                reading = Some(tokio::spawn(async move {
                    while let Some(msg) = all.next().await {
                        let _ = client
                            .publish(seen.clone(), Bytes::from(msg.subject.to_string()))
                            .await;
                    }
                }));
                println!("subscribed");
            }
            "unsubscribe" => {
                if let Some(reading) = reading.take() {
                    // Dropping each subscriber sends its UNSUB.
                    reading.abort();
                    let _ = reading.await;
                }
                round_trip(&client).await;
                println!("unsubscribed");
            }
            _ => bail!("unknown command {line:?}"),
        }
    }
    Ok(())
}

/// The bare client's process, killed on drop.
struct BareProcess {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl BareProcess {
    async fn start(url: &str, prefix: &str, n: usize) -> anyhow::Result<Self> {
        use tokio::io::AsyncBufReadExt as _;
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .args(["bare-subscriptions", url, prefix, &n.to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child.stdin.take().context("child stdin")?;
        let stdout = tokio::io::BufReader::new(child.stdout.take().context("child stdout")?);
        let mut process = Self {
            child,
            stdin,
            stdout: stdout.lines(),
        };
        process.wait_for("ready").await?;
        Ok(process)
    }

    async fn tell(&mut self, command: &str) -> anyhow::Result<()> {
        use tokio::io::AsyncWriteExt as _;
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await?;
        Ok(self.stdin.flush().await?)
    }

    async fn wait_for(&mut self, word: &str) -> anyhow::Result<()> {
        let line = tokio::time::timeout(GIVE_UP, self.stdout.next_line())
            .await
            .with_context(|| format!("the bare client did not say {word:?}"))??;
        if line.as_deref().map(str::trim) != Some(word) {
            bail!("the bare client said {line:?}, not {word:?}");
        }
        Ok(())
    }

    fn rss_kib(&self) -> anyhow::Result<u64> {
        let pid = self.child.id().context("the bare client exited")?;
        messaging_nats_harness::rss_kib(pid).context("VmRSS of the bare client")
    }
}
