//! The dispatcher of one handler link: the one place its deliveries run.
//!
//! Sources (the core subscriptions, each JetStream consumer) run as tasks
//! of their own and only hand messages over through a [`Feed`]; whatever a
//! source waits on (a subscribe, a consumer look-up, a fetch, a server that
//! does not answer) never holds up a delivery, its in-progress acks or its
//! ack. The dispatcher owns:
//!
//! - the messages waiting for a slot, one queue per source;
//! - the link's `max_in_flight` slots: a freed slot goes to the sources
//!   with messages waiting in turn, so that a flood on one source cannot
//!   starve another;
//! - the deliveries running, each driven to its end (ack or nak included).
//!
//! On stop it withdraws what a source wants back (a JetStream message is
//! nak'd, so that another instance takes it at once) and delivers the rest;
//! at the drain timeout what still waits is dropped and counted.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::stream::FuturesUnordered;
use futures::StreamExt as _;
use tokio::sync::{mpsc, watch};
use tracing::warn;

use super::counters::{LinkCounters, Undelivered};
use super::drain::Drain;

/// A delivery (or a withdrawal) as the dispatcher runs it.
pub(crate) type DeliveryFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A message a source handed over.
pub(crate) trait Pending: Send {
    /// The NATS message: its subject for the log line of a drop, its size
    /// for the bound of its source's queue.
    fn nats_message(&self) -> &async_nats::Message;
    /// Its delivery, run while it holds a slot: the `handle-message` call
    /// and whatever settles the message afterwards.
    fn deliver(self: Box<Self>) -> DeliveryFuture;
    /// What becomes of it when it is not delivered: `None` if it is only
    /// counted as dropped, else the future that gives it back.
    fn withdraw(self: Box<Self>) -> Option<DeliveryFuture>;
}

/// What a source's waiting messages do when the link starts to stop.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum AtStop {
    /// Still delivered, until the drain time is up (core NATS: nobody
    /// else would get them).
    Deliver,
    /// Withdrawn at once (JetStream: the server gives them to another
    /// instance).
    Withdraw,
}

/// The most a source's queue holds; beyond it new messages are dropped
/// and counted (a core subscription cannot be slowed down).
#[derive(Clone, Copy)]
pub(crate) struct QueueBound {
    pub(crate) messages: usize,
    pub(crate) bytes: usize,
}

/// How much a source may ask its server for now, for a pull consumer's
/// fetch size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Room {
    /// Slots of the link free now.
    pub(crate) free: usize,
    /// This source's messages waiting or being delivered.
    pub(crate) held: usize,
    /// The link's `max_in_flight` divided among its sources.
    pub(crate) fair_share: usize,
    pub(crate) max_in_flight: usize,
}

/// A source's side of the dispatcher.
pub(crate) struct Feed {
    source: usize,
    messages: mpsc::UnboundedSender<(usize, Box<dyn Pending>)>,
    held: Arc<AtomicUsize>,
    free: Arc<AtomicUsize>,
    settled: watch::Receiver<()>,
    fair_share: usize,
    max_in_flight: usize,
}

impl Feed {
    /// Hands `message` over. It counts as held by this source from now
    /// until it is settled or withdrawn.
    pub(crate) fn send(&self, message: Box<dyn Pending>) {
        self.held.fetch_add(1, Ordering::Relaxed);
        if self.messages.send((self.source, message)).is_err() {
            // The dispatcher ends only after every feed is gone.
            self.held.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// What this source may ask for now.
    pub(crate) fn room(&self) -> Room {
        Room {
            free: self.free.load(Ordering::Relaxed),
            held: self.held.load(Ordering::Relaxed),
            fair_share: self.fair_share,
            max_in_flight: self.max_in_flight,
        }
    }

    /// Resolves once a message of the link was settled since the last
    /// call: there may be room again.
    pub(crate) async fn settled(&mut self) {
        if self.settled.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// One source's waiting messages.
struct SourceQueue {
    waiting: VecDeque<Box<dyn Pending>>,
    bytes: usize,
    bound: Option<QueueBound>,
    at_stop: AtStop,
    held: Arc<AtomicUsize>,
}

impl SourceQueue {
    fn has_room_for(&self, message: &dyn Pending) -> bool {
        self.bound.is_none_or(|bound| {
            self.waiting.len() < bound.messages && self.bytes + size(message) <= bound.bytes
        })
    }

    fn push(&mut self, message: Box<dyn Pending>) {
        self.bytes += size(message.as_ref());
        self.waiting.push_back(message);
    }

    fn pop(&mut self) -> Option<Box<dyn Pending>> {
        let message = self.waiting.pop_front()?;
        self.bytes -= size(message.as_ref());
        if self.waiting.is_empty() && self.waiting.capacity() > 1024 {
            // Give the memory of a burst back.
            self.waiting = VecDeque::new();
        }
        Some(message)
    }
}

/// The dispatcher of one link, before it runs: sources get their feeds
/// from it.
pub(crate) struct Dispatcher {
    queues: Vec<SourceQueue>,
    messages: mpsc::UnboundedReceiver<(usize, Box<dyn Pending>)>,
    sender: mpsc::UnboundedSender<(usize, Box<dyn Pending>)>,
    max_in_flight: usize,
    fair_share: usize,
    free: Arc<AtomicUsize>,
    settled: watch::Sender<()>,
    counters: Arc<LinkCounters>,
    drain: Drain,
}

impl Dispatcher {
    /// A dispatcher for `sources` sources sharing `max_in_flight` slots.
    pub(crate) fn new(
        max_in_flight: usize,
        sources: usize,
        counters: Arc<LinkCounters>,
        drain: Drain,
    ) -> Self {
        let (sender, messages) = mpsc::unbounded_channel();
        Self {
            queues: Vec::with_capacity(sources),
            messages,
            sender,
            max_in_flight,
            fair_share: max_in_flight.div_ceil(sources.max(1)),
            free: Arc::new(AtomicUsize::new(max_in_flight)),
            settled: watch::Sender::new(()),
            counters,
            drain,
        }
    }

    /// The feed of a new source.
    pub(crate) fn feed(&mut self, at_stop: AtStop, bound: Option<QueueBound>) -> Feed {
        let held = Arc::new(AtomicUsize::new(0));
        self.queues.push(SourceQueue {
            waiting: VecDeque::new(),
            bytes: 0,
            bound,
            at_stop,
            held: Arc::clone(&held),
        });
        Feed {
            source: self.queues.len() - 1,
            messages: self.sender.clone(),
            held,
            free: Arc::clone(&self.free),
            settled: self.settled.subscribe(),
            fair_share: self.fair_share,
            max_in_flight: self.max_in_flight,
        }
    }

    /// Delivers until every source has ended and every message is settled.
    pub(crate) async fn run(self) {
        let Self {
            mut queues,
            mut messages,
            sender,
            max_in_flight,
            free,
            settled,
            counters,
            drain,
            ..
        } = self;
        // Only the sources' feeds keep the channel open.
        drop(sender);
        let mut running = FuturesUnordered::new();
        let mut taken = 0;
        let mut turn = 0;
        let mut sources_done = false;
        let mut stopping = false;
        let mut aborted = false;
        loop {
            // Free slots go to the queues in turn, one message each.
            while taken < max_in_flight && !aborted {
                let Some(source) = next_in_turn(&queues, turn, stopping) else {
                    break;
                };
                turn = source + 1;
                if let Some(message) = queues[source].pop() {
                    taken += 1;
                    running.push(Running {
                        slot_of: Some(source),
                        future: message.deliver(),
                    });
                }
            }
            free.store(max_in_flight - taken, Ordering::Relaxed);
            if sources_done && running.is_empty() && queues.iter().all(|q| q.waiting.is_empty()) {
                break;
            }
            tokio::select! {
                biased;
                () = drain.aborted(), if !aborted => {
                    aborted = true;
                    let mut dropped = 0;
                    for queue in &mut queues {
                        while let Some(message) = queue.pop() {
                            dropped += u64::from(withdraw(message, queue, &mut running, &counters));
                        }
                    }
                    if dropped > 0 {
                        warn!(dropped, "messages not yet delivered were dropped at the drain timeout");
                    }
                }
                () = drain.stopping(), if !stopping => {
                    stopping = true;
                    for queue in queues.iter_mut().filter(|q| q.at_stop == AtStop::Withdraw) {
                        while let Some(message) = queue.pop() {
                            let _ = withdraw(message, queue, &mut running, &counters);
                        }
                    }
                }
                Some(slot_of) = running.next(), if !running.is_empty() => {
                    if let Some(source) = slot_of {
                        taken -= 1;
                        queues[source].held.fetch_sub(1, Ordering::Relaxed);
                        settled.send_replace(());
                    }
                }
                message = messages.recv(), if !sources_done => match message {
                    Some((source, message)) => {
                        let queue = &mut queues[source];
                        if aborted || (stopping && queue.at_stop == AtStop::Withdraw) {
                            let _ = withdraw(message, queue, &mut running, &counters);
                        } else if queue.has_room_for(message.as_ref()) {
                            queue.push(message);
                        } else {
                            queue.held.fetch_sub(1, Ordering::Relaxed);
                            let dropped = counters.dropped(Undelivered::QueueFull, 1);
                            // One line per power of two, not one per message.
                            if dropped.is_power_of_two() {
                                warn!(
                                    subject = message.nats_message().subject.as_str(),
                                    dropped,
                                    "handler link is behind: its queue is full, message dropped"
                                );
                            }
                        }
                    }
                    None => sources_done = true,
                },
            }
        }
    }
}

/// The bytes `message` takes, as the server counted them.
fn size(message: &dyn Pending) -> usize {
    let msg = message.nats_message();
    msg.length.max(msg.payload.len())
}

/// The next queue from `turn` on, in a circle, with a message to deliver.
fn next_in_turn(queues: &[SourceQueue], turn: usize, stopping: bool) -> Option<usize> {
    let n = queues.len();
    (0..n).map(|i| (turn + i) % n).find(|&source| {
        let queue = &queues[source];
        let withdrawn = stopping && queue.at_stop == AtStop::Withdraw;
        !queue.waiting.is_empty() && !withdrawn
    })
}

/// Gives `message` back, or counts it dropped at the drain timeout (then
/// returns true); either way it is no longer held by its source.
fn withdraw(
    message: Box<dyn Pending>,
    queue: &SourceQueue,
    running: &mut FuturesUnordered<Running>,
    counters: &LinkCounters,
) -> bool {
    queue.held.fetch_sub(1, Ordering::Relaxed);
    match message.withdraw() {
        Some(give_back) => {
            running.push(Running {
                slot_of: None,
                future: give_back,
            });
            false
        }
        None => {
            counters.dropped(Undelivered::DrainTimeout, 1);
            true
        }
    }
}

/// A delivery or a withdrawal running.
struct Running {
    /// The source whose delivery holds one of the link's slots; `None`
    /// for a withdrawal, which holds none.
    slot_of: Option<usize>,
    future: DeliveryFuture,
}

impl Future for Running {
    type Output = Option<usize>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        this.future.as_mut().poll(cx).map(|()| this.slot_of)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::sync::Semaphore;

    use super::*;

    /// A message whose delivery is logged when it starts and ends only when
    /// the test lets one through `gate`.
    struct Probe {
        msg: async_nats::Message,
        name: String,
        log: Arc<Mutex<Vec<String>>>,
        gate: Arc<Semaphore>,
        gives_back: bool,
    }

    impl Pending for Probe {
        fn nats_message(&self) -> &async_nats::Message {
            &self.msg
        }

        fn deliver(self: Box<Self>) -> DeliveryFuture {
            Box::pin(async move {
                self.log.lock().unwrap().push(self.name.clone());
                self.gate.acquire().await.unwrap().forget();
            })
        }

        fn withdraw(self: Box<Self>) -> Option<DeliveryFuture> {
            self.gives_back.then(|| -> DeliveryFuture {
                Box::pin(async move {
                    self.log.lock().unwrap().push(format!("back {}", self.name));
                })
            })
        }
    }

    struct Bench {
        log: Arc<Mutex<Vec<String>>>,
        gate: Arc<Semaphore>,
        counters: Arc<LinkCounters>,
        drain: Drain,
    }

    impl Bench {
        fn new() -> Self {
            Self {
                log: Arc::default(),
                gate: Arc::new(Semaphore::new(0)),
                counters: Arc::new(LinkCounters::new("c", "default")),
                drain: Drain::default(),
            }
        }

        fn dispatcher(&self, max_in_flight: usize, sources: usize) -> Dispatcher {
            Dispatcher::new(
                max_in_flight,
                sources,
                Arc::clone(&self.counters),
                self.drain.clone(),
            )
        }

        fn send(&self, feed: &Feed, name: &str, gives_back: bool) {
            feed.send(Box::new(Probe {
                msg: async_nats::Message {
                    subject: name.into(),
                    reply: None,
                    payload: bytes::Bytes::from_static(b"x"),
                    headers: None,
                    status: None,
                    description: None,
                    length: 1,
                },
                name: name.to_string(),
                log: Arc::clone(&self.log),
                gate: Arc::clone(&self.gate),
                gives_back,
            }));
        }

        /// A running dispatcher of one slot with a core-like source that
        /// has `c0` (running) and `c1` (waiting), and a stream-like one that
        /// has `stream` waiting.
        async fn core_and_stream(
            &self,
            stream: &[&str],
        ) -> (Feed, Feed, tokio::task::JoinHandle<()>) {
            let mut dispatcher = self.dispatcher(1, 2);
            let core = dispatcher.feed(AtStop::Deliver, None);
            let stream_feed = dispatcher.feed(AtStop::Withdraw, None);
            self.send(&core, "c0", false);
            self.send(&core, "c1", false);
            for name in stream {
                self.send(&stream_feed, name, true);
            }
            let running = tokio::spawn(dispatcher.run());
            assert_eq!(self.settle().await, ["c0"]);
            (core, stream_feed, running)
        }

        /// Lets the dispatcher run until it waits (one thread: it is
        /// alone once the test sleeps), then returns the log so far.
        async fn settle(&self) -> Vec<String> {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            self.log.lock().unwrap().clone()
        }
    }

    #[tokio::test]
    async fn freed_slots_go_to_the_waiting_sources_in_turn() {
        let bench = Bench::new();
        let mut dispatcher = bench.dispatcher(1, 2);
        let a = dispatcher.feed(AtStop::Deliver, None);
        let b = dispatcher.feed(AtStop::Deliver, None);
        for i in 0..3 {
            bench.send(&a, &format!("a{i}"), false);
        }
        for i in 0..3 {
            bench.send(&b, &format!("b{i}"), false);
        }
        let running = tokio::spawn(dispatcher.run());

        assert_eq!(bench.settle().await, ["a0"], "one slot: one call");
        bench.gate.add_permits(5);
        assert_eq!(bench.settle().await, ["a0", "b0", "a1", "b1", "a2", "b2"]);
        assert_eq!(a.room().held + b.room().held, 1, "b2 still runs");
        bench.gate.add_permits(1);
        drop((a, b));
        running.await.unwrap();
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_what_it_cannot_hold() {
        let bench = Bench::new();
        let mut dispatcher = bench.dispatcher(1, 1);
        let bound = QueueBound {
            messages: 2,
            bytes: usize::MAX,
        };
        let feed = dispatcher.feed(AtStop::Deliver, Some(bound));
        for i in 0..5 {
            bench.send(&feed, &format!("m{i}"), false);
        }
        let running = tokio::spawn(dispatcher.run());

        // m0 runs, m1 and m2 wait, m3 and m4 are dropped.
        assert_eq!(bench.settle().await, ["m0"]);
        assert_eq!(feed.room().held, 3);
        assert!(
            bench.counters.summary().contains("dropped 2,"),
            "{}",
            bench.counters.summary()
        );
        bench.gate.add_permits(3);
        drop(feed);
        running.await.unwrap();
        assert_eq!(bench.log.lock().unwrap().as_slice(), ["m0", "m1", "m2"]);
    }

    #[tokio::test]
    async fn at_stop_a_withdrawing_source_gives_back_what_waits_and_the_other_delivers_on() {
        let bench = Bench::new();
        let (core, stream, running) = bench.core_and_stream(&["s0", "s1"]).await;

        bench.drain.stop();
        let mut log = bench.settle().await;
        log.sort();
        assert_eq!(log, ["back s0", "back s1", "c0"]);
        assert_eq!(
            stream.room().held,
            0,
            "what was given back is no longer held"
        );
        bench.gate.add_permits(2);
        drop((core, stream));
        running.await.unwrap();
        assert_eq!(bench.log.lock().unwrap().last().unwrap(), "c1");
    }

    #[tokio::test]
    async fn at_the_drain_timeout_what_still_waits_is_dropped_or_given_back() {
        let bench = Bench::new();
        let (core, stream, running) = bench.core_and_stream(&["s0"]).await;

        bench.drain.abort();
        let log = bench.settle().await;
        assert_eq!(log, ["c0", "back s0"]);
        assert!(
            bench.counters.summary().contains("dropped 1,"),
            "{}",
            bench.counters.summary()
        );
        bench.gate.add_permits(1);
        drop((core, stream));
        running.await.unwrap();
    }
}
