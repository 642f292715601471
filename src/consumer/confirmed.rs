//! Confirmed publishes: a publish to a subject that the link's
//! `jetstream_publish` names goes through JetStream, and is answered `Ok`
//! only once a stream has stored it.
//!
//! Each message carries a `Nats-Msg-Id` made here. When its
//! acknowledgement does not come (lost with a connection, a server that
//! died, a stream leader being elected), the same message with the same id
//! is sent again until `publish_timeout_ms` is up: within the stream's
//! duplicate window (two minutes by default) the stream stores it once.

use std::time::Duration;

use async_nats::jetstream::context::{GetStreamByNameErrorKind, PublishErrorKind};
use async_nats::HeaderMap;
use bytes::Bytes;
use tokio::time::Instant;
use tracing::debug;

use super::ConsumerError;
use crate::connection::Lease;

/// How long one attempt waits for its acknowledgement before the message
/// is sent again: a stream answers in milliseconds, so a second without
/// an answer means the request or its answer got lost, and the rest of
/// `publish_timeout_ms` is better spent on another attempt.
const ACK_WAIT: Duration = Duration::from_secs(1);

/// Pauses between attempts, doubling: a server that is coming back is not
/// hammered, yet found soon.
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_millis(800);

/// What became of the attempts so far.
enum Attempts {
    /// No attempt reached the server (client disconnected or busy).
    NotSent,
    /// Sent, and no acknowledgement came: it may have been stored.
    Unanswered,
    /// No stream answered for the subject while JetStream was unreachable.
    NoStreamAnswered,
}

/// `headers` with the `Nats-Msg-Id` JetStream de-duplicates on: added
/// before the message's size is checked, since it travels with it.
pub(super) fn with_message_id(headers: Option<HeaderMap>) -> HeaderMap {
    let mut headers = headers.unwrap_or_default();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, nuid::next().as_str());
    headers
}

/// Publishes `body` to `subject` through JetStream and waits, at most
/// `timeout`, until a stream has stored it (see the module doc); `headers`
/// come from [`with_message_id`].
pub(super) async fn publish(
    connection: &Lease,
    subject: String,
    body: Bytes,
    headers: HeaderMap,
    timeout: Duration,
    domain: Option<&str>,
) -> Result<(), ConsumerError> {
    let deadline = Instant::now() + timeout;
    let mut attempts = Attempts::NotSent;
    let mut pause = RETRY_MIN;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            break;
        }
        let mut context = connection.jetstream(domain);
        context.set_timeout(ACK_WAIT.min(remaining));
        let sent = tokio::time::timeout(
            remaining,
            context.publish_with_headers(subject.clone(), headers.clone(), body.clone()),
        )
        .await;
        let ack = match sent {
            Ok(Ok(ack)) => ack.await,
            // The client did not take the message (its queue is full while
            // it reconnects) or has closed: not sent.
            Ok(Err(err)) => {
                debug!(subject, error = %err, "confirmed publish not sent; trying again");
                sleep_before_retry(&mut pause, deadline).await;
                continue;
            }
            Err(_) => break,
        };
        match ack {
            Ok(stored) => {
                debug!(
                    subject,
                    stream = stored.stream,
                    sequence = stored.sequence,
                    duplicate = stored.duplicate,
                    "stored"
                );
                return Ok(());
            }
            Err(err) => match err.kind() {
                PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe => {
                    attempts = Attempts::Unanswered;
                }
                PublishErrorKind::StreamNotFound => {
                    // Nobody answered: either no stream stores the subject,
                    // or JetStream is not there right now. Asking tells.
                    if no_stream_stores(&context, &subject, deadline).await {
                        return Err(ConsumerError::NoStream { subject });
                    }
                    if !matches!(attempts, Attempts::Unanswered) {
                        attempts = Attempts::NoStreamAnswered;
                    }
                }
                PublishErrorKind::WrongLastMessageId
                | PublishErrorKind::WrongLastSequence
                | PublishErrorKind::Other => {
                    return Err(ConsumerError::Refused {
                        subject,
                        reason: err.to_string(),
                    })
                }
            },
        }
        sleep_before_retry(&mut pause, deadline).await;
    }
    Err(match attempts {
        Attempts::NotSent => ConsumerError::NotConfirmed {
            subject,
            waited: timeout,
            servers: connection.servers.clone(),
            state: connection.state(),
        },
        Attempts::Unanswered => ConsumerError::NotAcknowledged {
            subject,
            waited: timeout,
        },
        Attempts::NoStreamAnswered => ConsumerError::JetStreamUnavailable {
            subject,
            waited: timeout,
            domain: domain.map(str::to_string),
        },
    })
}

/// True if JetStream answers that no stream stores `subject`; false if it
/// does not answer by `deadline` or names a stream.
async fn no_stream_stores(
    context: &async_nats::jetstream::Context,
    subject: &str,
    deadline: Instant,
) -> bool {
    match tokio::time::timeout_at(deadline, context.stream_by_subject(subject)).await {
        Ok(Err(err)) => matches!(err.kind(), GetStreamByNameErrorKind::NotFound),
        Ok(Ok(_)) | Err(_) => false,
    }
}

async fn sleep_before_retry(pause: &mut Duration, deadline: Instant) {
    tokio::time::sleep_until((Instant::now() + *pause).min(deadline)).await;
    *pause = (*pause * 2).min(RETRY_MAX);
}
