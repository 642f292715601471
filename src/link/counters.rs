//! What one handler link counts, whatever source a message came from: the
//! figures health and the stop summary read, the link's metrics, and the
//! problems its sources report. One value per link, shared by its sources.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::metrics::{ConsumerMetrics, Dropped, Failure, LinkMetrics};
use crate::sync::lock;

/// The counters of one handler link.
pub(crate) struct LinkCounters {
    delivered: AtomicU64,
    handler_errors: AtomicU64,
    invoke_failures: AtomicU64,
    timeouts: AtomicU64,
    /// Messages dropped because the link's queue was full, or left in it
    /// when a drain timed out.
    dropped: AtomicU64,
    /// Calls still running when a drain timed out.
    aborted: AtomicU64,
    /// Durable messages published to the dead-letter subject.
    dead_lettered: AtomicU64,
    /// Durable messages that failed their last attempt with no dead-letter
    /// subject to go to.
    terminated: AtomicU64,
    /// `handle-message` calls running now (for the drain's abort count).
    in_flight: AtomicU64,
    /// Why a source cannot deliver now, by source label.
    problems: Mutex<BTreeMap<String, String>>,
    /// How far each durable consumer is behind, by source label.
    lags: Mutex<BTreeMap<String, Lag>>,
    metrics: LinkMetrics,
}

/// How far a durable consumer is behind, as last seen; `None` until known.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Lag {
    /// Messages not yet delivered.
    pub(crate) pending: Option<u64>,
    /// Messages delivered and not yet acked (by every instance sharing the
    /// consumer).
    pub(crate) unacked: Option<u64>,
}

impl std::fmt::Display for Lag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = |n: Option<u64>| n.map_or_else(|| "?".to_string(), |n| n.to_string());
        write!(
            f,
            "{} pending, {} unacked",
            shown(self.pending),
            shown(self.unacked)
        )
    }
}

/// Where one durable consumer records its lag: in its link's counters
/// (health, the stop line, which outlive the consumer's reader) and its
/// gauges.
pub(crate) struct LagRecorder {
    counters: Arc<LinkCounters>,
    label: String,
    metrics: ConsumerMetrics,
}

impl LagRecorder {
    /// What a fetched message says is still pending after it. Kept for
    /// health and the stop line only: the gauges take the consumer's own
    /// counts (see [`LagRecorder::counts`]), so that nothing is exported
    /// per message.
    pub(crate) fn pending_after(&self, pending: u64) {
        self.update(|lag| lag.pending = Some(pending));
    }

    /// The consumer's own counts, from its info: for health, the stop line
    /// and the gauges.
    pub(crate) fn counts(&self, pending: u64, unacked: u64) {
        self.update(|lag| {
            lag.pending = Some(pending);
            lag.unacked = Some(unacked);
        });
        self.metrics.lag(pending, unacked);
    }

    fn update(&self, change: impl FnOnce(&mut Lag)) {
        let mut lags = lock(&self.counters.lags);
        // Looked up by reference: this runs for every message fetched.
        match lags.get_mut(&self.label) {
            Some(lag) => change(lag),
            None => change(lags.entry(self.label.clone()).or_default()),
        }
    }
}

/// Why a message was dropped before it was delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Undelivered {
    /// The link's queue was full (its component is behind).
    QueueFull,
    /// Left undelivered when a drain timed out.
    DrainTimeout,
}

/// One `handle-message` call in flight. Dropped before it ended (its
/// link's drain time was up), it counts as aborted.
pub(crate) struct Running {
    counters: Arc<LinkCounters>,
    started: Instant,
    ended: bool,
}

impl Running {
    /// The call ended: handled, or failed as `failure` says.
    pub(crate) fn ended(mut self, failure: Option<Failure>) {
        self.ended = true;
        let counters = &self.counters;
        let counter = match failure {
            None => &counters.delivered,
            Some(Failure::HandlerError) => &counters.handler_errors,
            Some(Failure::InvokeFailed) => &counters.invoke_failures,
            Some(Failure::Timeout) => &counters.timeouts,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        counters
            .metrics
            .delivery_ended(self.started.elapsed(), failure);
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.counters.in_flight.fetch_sub(1, Ordering::Relaxed);
        if !self.ended {
            self.counters.aborted.fetch_add(1, Ordering::Relaxed);
            self.counters.metrics.delivery_abandoned();
        }
    }
}

impl LinkCounters {
    pub(crate) fn new(component_id: &str, link_name: &str) -> Self {
        Self {
            delivered: AtomicU64::new(0),
            handler_errors: AtomicU64::new(0),
            invoke_failures: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            aborted: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            terminated: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            problems: Mutex::default(),
            lags: Mutex::default(),
            metrics: LinkMetrics::new(component_id, link_name),
        }
    }

    /// A `handle-message` call starts; it counts as aborted unless it is
    /// [ended](Running::ended).
    pub(crate) fn running(self: &Arc<Self>) -> Running {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.metrics.delivery_started();
        Running {
            counters: Arc::clone(self),
            started: Instant::now(),
            ended: false,
        }
    }

    /// `handle-message` calls running now.
    pub(crate) fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Messages dropped before delivery. Returns the link's total of
    /// dropped messages so far.
    pub(crate) fn dropped(&self, reason: Undelivered, count: u64) -> u64 {
        self.metrics.dropped(
            match reason {
                Undelivered::QueueFull => Dropped::QueueFull,
                Undelivered::DrainTimeout => Dropped::DrainTimeout,
            },
            count,
        );
        self.dropped.fetch_add(count, Ordering::Relaxed) + count
    }

    /// A durable message failed its last attempt with no dead-letter
    /// subject to go to, and was terminated.
    pub(crate) fn terminated(&self) {
        self.metrics.dropped(Dropped::MaxDeliver, 1);
        self.terminated.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn dead_lettered(&self) {
        self.dead_lettered.fetch_add(1, Ordering::Relaxed);
        self.metrics.dead_lettered();
    }

    /// The figures of the link, for its stop log: its counts, then each
    /// durable consumer's lag.
    pub(crate) fn summary(&self) -> String {
        let n = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let mut summary = format!(
            "delivered {}, handler errors {}, failed invocations {}, timeouts {}, dropped {}, \
             aborted {}, dead-lettered {}, terminated {}",
            n(&self.delivered),
            n(&self.handler_errors),
            n(&self.invoke_failures),
            n(&self.timeouts),
            n(&self.dropped),
            n(&self.aborted),
            n(&self.dead_lettered),
            n(&self.terminated),
        );
        for line in self.lags() {
            summary.push_str("; ");
            summary.push_str(&line);
        }
        summary
    }

    /// A recorder of the lag of durable consumer `consumer` of `stream`,
    /// known as `label` in health and the stop line.
    pub(crate) fn lag_recorder(
        self: &Arc<Self>,
        label: &str,
        stream: &str,
        consumer: &str,
    ) -> LagRecorder {
        LagRecorder {
            counters: Arc::clone(self),
            label: label.to_string(),
            metrics: self.metrics.consumer(stream, consumer),
        }
    }

    /// Each durable consumer's lag, as `durable consumer <label>: <lag>`,
    /// for health and the stop line.
    pub(crate) fn lags(&self) -> Vec<String> {
        lock(&self.lags)
            .iter()
            .map(|(label, lag)| format!("durable consumer {label}: {lag}"))
            .collect()
    }

    /// What keeps sources from delivering now, for health.
    pub(crate) fn problems(&self) -> Vec<String> {
        lock(&self.problems).values().cloned().collect()
    }

    /// Records `problem` for `source`; true if it is new or changed.
    pub(crate) fn set_problem(&self, source: &str, problem: String) -> bool {
        lock(&self.problems).insert(source.to_string(), problem.clone()) != Some(problem)
    }

    /// Clears the problem of `source`; true if there was one.
    pub(crate) fn clear_problem(&self, source: &str) -> bool {
        lock(&self.problems).remove(source).is_some()
    }
}
