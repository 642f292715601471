//! What becomes of a JetStream message once a handler link has it: the
//! `handle-message` call with in-progress acks, then its ack, its nak with
//! the link's backoff, or its dead letter (see the module doc of `durable`).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use async_nats::HeaderMap;
use tokio::time::Instant;
use tracing::{debug, error, warn};

use super::{ACK_TIMEOUT, API_TIMEOUT};
use crate::config::DurableSettings;
use crate::link::dispatch::{DeliveryFuture, Pending};
use crate::link::drain::Drain;
use crate::link::invoke::{invoke, Target};
use crate::message::{self, ReplyTo};

/// Pauses between attempts to store a dead letter: doubling, so that a
/// missing dead-letter stream is not hammered, yet found soon once created.
const DEAD_LETTER_RETRY_MIN: Duration = Duration::from_millis(500);
const DEAD_LETTER_RETRY_MAX: Duration = Duration::from_secs(30);
/// Longest handler error copied into a dead letter's header.
const MAX_ERROR_HEADER_LEN: usize = 1024;

/// Headers a dead letter carries besides the original message's own.
const HEADER_SUBJECT: &str = "Wasmcloud-Original-Subject";
const HEADER_STREAM: &str = "Wasmcloud-Original-Stream";
const HEADER_SEQUENCE: &str = "Wasmcloud-Original-Sequence";
const HEADER_DELIVERIES: &str = "Wasmcloud-Delivery-Count";
const HEADER_ERROR: &str = "Wasmcloud-Last-Error";

/// What settling the messages of one bound JetStream consumer takes;
/// shared by all of them.
pub(super) struct SettleContext {
    pub(super) target: Target,
    pub(super) policy: Arc<DurableSettings>,
    /// The consumer's own settings, which decide its messages' fate.
    pub(super) ack_wait: Duration,
    /// Attempts per message; `None` for unlimited.
    pub(super) max_deliver: Option<u64>,
    pub(super) drain: Drain,
    pub(super) jetstream: jetstream::Context,
}

/// A fetched message waiting in the link's dispatcher.
pub(super) struct FetchedMessage {
    pub(super) msg: jetstream::Message,
    pub(super) settle: Arc<SettleContext>,
}

impl Pending for FetchedMessage {
    fn nats_message(&self) -> &async_nats::Message {
        &self.msg.message
    }

    fn deliver(self: Box<Self>) -> DeliveryFuture {
        let Self { msg, settle } = *self;
        Box::pin(deliver(msg, settle))
    }

    /// Nak'd, so that the server hands it to another instance now.
    fn withdraw(self: Box<Self>) -> Option<DeliveryFuture> {
        Some(Box::pin(async move { nak(&self.msg, None).await }))
    }
}

/// Why a dead letter was not stored (yet).
#[derive(Debug)]
enum DeadLetterError {
    Publish(String),
    NotStored(String),
    NoAck,
}

impl fmt::Display for DeadLetterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Publish(detail) => write!(f, "publish failed: {detail}"),
            Self::NotStored(detail) => {
                write!(
                    f,
                    "not stored by a stream (is one bound to the subject?): {detail}"
                )
            }
            Self::NoAck => write!(f, "no ack from JetStream within {API_TIMEOUT:?}"),
        }
    }
}

/// One message's path, from the handler call to its ack (see the module
/// doc of `durable`).
async fn deliver(msg: jetstream::Message, settle: Arc<SettleContext>) {
    let (delivered, stream_sequence) = match msg.info() {
        Ok(info) => (
            u64::try_from(info.delivered).unwrap_or(1),
            info.stream_sequence,
        ),
        Err(err) => {
            // Not a JetStream delivery: nothing to ack, nothing to retry.
            warn!(error = %err, "message without JetStream metadata skipped");
            return;
        }
    };
    let (headers, message) = message::for_handler(&msg, ReplyTo::Hide);
    let call = invoke(&settle.target, headers, &message);
    let outcome = tokio::select! {
        biased;
        () = settle.drain.aborted() => {
            nak(&msg, None).await;
            return;
        }
        outcome = with_progress(call, &msg, settle.ack_wait) => outcome,
    };
    let Some(error) = outcome.failure() else {
        if let Err(err) = bounded_ack(&msg, AckKind::Ack).await {
            warn!(
                error = err,
                stream_sequence, "ack not sent; the message will be redelivered"
            );
        }
        return;
    };
    let last_attempt = settle.max_deliver.is_some_and(|max| delivered >= max);
    if !last_attempt {
        nak(&msg, settle.policy.backoff_after(delivered)).await;
        return;
    }
    let counters = &settle.target.counters;
    match &settle.policy.dead_letter_subject {
        Some(subject) => {
            if !store_dead_letter(&settle, subject, &msg, delivered, &error).await {
                return; // the drain time is up; the server redelivers it
            }
            counters.dead_lettered();
            warn!(
                dead_letter_subject = subject,
                stream_sequence, delivered, "message dead-lettered after its last attempt"
            );
            let _ = bounded_ack(&msg, AckKind::Term).await;
        }
        None => {
            counters.terminated();
            warn!(
                stream_sequence,
                delivered,
                error,
                "message failed its last attempt (max_deliver) and is dropped; set \
                 dead_letter_subject to keep such messages"
            );
            let _ = bounded_ack(&msg, AckKind::Term).await;
        }
    }
}

/// Publishes the dead letter of `msg` to `subject` until it is stored
/// (true), or the link's drain time runs out (false). The server does not
/// redeliver a message past `max_deliver`, so a dead letter that cannot be
/// stored is tried again here, the message kept in progress meanwhile.
async fn store_dead_letter(
    settle: &SettleContext,
    subject: &str,
    msg: &jetstream::Message,
    delivered: u64,
    error: &str,
) -> bool {
    let mut pause = DEAD_LETTER_RETRY_MIN;
    loop {
        let store = dead_letter(&settle.jetstream, subject, msg, delivered, error);
        let stored = tokio::select! {
            biased;
            () = settle.drain.aborted() => return false,
            stored = with_progress(store, msg, settle.ack_wait) => stored,
        };
        let Err(problem) = stored else {
            return true;
        };
        error!(
            problem = %problem,
            dead_letter_subject = subject,
            stream_sequence = msg.info().map(|info| info.stream_sequence).unwrap_or_default(),
            retry_in_ms = pause.as_millis() as u64,
            "dead letter not stored; trying again"
        );
        tokio::select! {
            biased;
            () = settle.drain.aborted() => return false,
            () = with_progress(tokio::time::sleep(pause), msg, settle.ack_wait) => {}
        }
        pause = (pause * 2).min(DEAD_LETTER_RETRY_MAX);
    }
}

/// Runs `call`, telling the server every half `ack_wait` that the message
/// is still being worked on.
async fn with_progress<T>(
    call: impl std::future::Future<Output = T>,
    msg: &jetstream::Message,
    ack_wait: Duration,
) -> T {
    let period = (ack_wait / 2).max(Duration::from_millis(50));
    let mut ticks = tokio::time::interval_at(Instant::now() + period, period);
    tokio::pin!(call);
    loop {
        tokio::select! {
            outcome = &mut call => return outcome,
            _ = ticks.tick() => {
                if let Err(err) = bounded_ack(msg, AckKind::Progress).await {
                    debug!(error = err, "in-progress ack not sent");
                }
            }
        }
    }
}

pub(super) async fn nak(msg: &jetstream::Message, delay: Option<Duration>) {
    if let Err(err) = bounded_ack(msg, AckKind::Nak(delay)).await {
        debug!(
            error = err,
            "nak not sent; the server redelivers after ack_wait"
        );
    }
}

pub(super) async fn bounded_ack(msg: &jetstream::Message, kind: AckKind) -> Result<(), String> {
    match tokio::time::timeout(ACK_TIMEOUT, msg.ack_with(kind)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err("the NATS client did not take the ack in time".to_string()),
    }
}

/// Publishes a copy of `msg` to the dead-letter subject through JetStream
/// and waits for the stream's ack, so that it is terminated in its source
/// only once it is stored.
async fn dead_letter(
    jetstream: &jetstream::Context,
    subject: &str,
    msg: &jetstream::Message,
    delivered: u64,
    error: &str,
) -> Result<(), DeadLetterError> {
    // The original headers go along, except the server's own `Nats-*`
    // ones: a message id or an expected-sequence check would make the
    // dead-letter stream drop or refuse the copy.
    let mut headers = HeaderMap::new();
    for (name, values) in msg.headers.iter().flat_map(HeaderMap::iter) {
        if !AsRef::<str>::as_ref(name)
            .to_ascii_lowercase()
            .starts_with("nats-")
        {
            for value in values {
                headers.append(name.clone(), value.clone());
            }
        }
    }
    let info = msg
        .info()
        .map_err(|err| DeadLetterError::Publish(err.to_string()))?;
    headers.insert(HEADER_SUBJECT, msg.subject.as_str());
    headers.insert(HEADER_STREAM, info.stream);
    headers.insert(HEADER_SEQUENCE, info.stream_sequence.to_string().as_str());
    headers.insert(HEADER_DELIVERIES, delivered.to_string().as_str());
    headers.insert(HEADER_ERROR, header_text(error).as_str());
    let publish = async {
        jetstream
            .publish_with_headers(subject.to_string(), headers, msg.payload.clone())
            .await
            .map_err(|err| DeadLetterError::Publish(err.to_string()))?
            .await
            .map_err(|err| DeadLetterError::NotStored(err.to_string()))
    };
    match tokio::time::timeout(API_TIMEOUT, publish).await {
        Ok(Ok(_ack)) => Ok(()),
        Ok(Err(problem)) => Err(problem),
        Err(_) => Err(DeadLetterError::NoAck),
    }
}

/// `text` fit for a header value: control characters (CR, LF) replaced,
/// cut to [`MAX_ERROR_HEADER_LEN`] bytes on a character boundary.
fn header_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_ERROR_HEADER_LEN));
    for c in text.chars().map(|c| if c.is_control() { ' ' } else { c }) {
        if out.len() + c.len_utf8() > MAX_ERROR_HEADER_LEN {
            break;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_text_has_no_line_breaks_and_is_bounded() {
        let text = header_text(&format!("bad\r\nInjected: yes{}", "é".repeat(2000)));
        assert!(!text.contains('\r') && !text.contains('\n'));
        assert!(text.len() <= MAX_ERROR_HEADER_LEN);
        assert!(text.starts_with("bad  Injected: yes"));
    }
}
