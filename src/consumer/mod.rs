//! The consumer path: `publish` and `request` calls from a component, sent
//! on the NATS connection of that component's consumer link; publishes to
//! the link's `jetstream_publish` subjects are confirmed by a stream
//! ([`confirmed`]).

mod confirmed;

use std::fmt;
use std::time::Duration;

use async_nats::client::RequestErrorKind;
use async_nats::HeaderMap;
use bytes::Bytes;
use tokio::time::Instant;
use tracing::trace;
use wasmcloud_provider_sdk::Context;

use crate::config::ConsumerSettings;
use crate::connection::Lease;
use crate::message::{self, BrokerMessage, ReplyTo};
use crate::metrics::{LinkMetrics, Operation};
use crate::{subject, trace_context};

/// Why a publish or request failed. The text is what the component sees.
#[derive(Debug)]
pub(crate) enum ConsumerError {
    InvalidSubject {
        role: &'static str,
        subject: String,
        reason: String,
    },
    /// The link's `publish_allow` / `publish_deny` refuse the subject.
    Denied {
        role: &'static str,
        subject: String,
        reason: String,
    },
    /// A header (trace context of the invocation) NATS cannot carry.
    InvalidHeader(String),
    TooLarge {
        size: usize,
        max_payload: usize,
    },
    TimeoutAboveMaximum {
        requested_ms: u32,
        max: Duration,
    },
    /// The server did not take the message within `publish_timeout_ms`.
    NotConfirmed {
        subject: String,
        waited: Duration,
        servers: String,
        state: &'static str,
    },
    ConnectionDown {
        subject: String,
        servers: String,
        state: &'static str,
    },
    NoReply {
        subject: String,
        waited: Duration,
    },
    NoResponders {
        subject: String,
    },
    Nats {
        subject: String,
        source: async_nats::Error,
    },
    /// A `jetstream_publish` subject that no stream stores.
    NoStream {
        subject: String,
    },
    /// A stream answered and did not store the message.
    Refused {
        subject: String,
        reason: String,
    },
    /// Sent through JetStream, and no acknowledgement came in time.
    NotAcknowledged {
        subject: String,
        waited: Duration,
    },
    /// No stream answered while JetStream was unavailable.
    JetStreamUnavailable {
        subject: String,
        waited: Duration,
        /// The link's `jetstream_domain`, if it names one.
        domain: Option<String>,
    },
    /// A reply subject on a JetStream publish, which no stream keeps.
    ReplyToThroughJetStream {
        subject: String,
    },
}

impl fmt::Display for ConsumerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidSubject {
                role,
                subject,
                reason,
            } => write!(f, "invalid {role} {subject:?}: {reason}"),
            Self::Denied {
                role,
                subject,
                reason,
            } => write!(f, "{role} {subject:?} refused by this link: {reason}"),
            Self::InvalidHeader(reason) => write!(f, "message refused: {reason}"),
            Self::TooLarge { size, max_payload } => write!(
                f,
                "message of {size} bytes (body and headers) exceeds the server's \
                 max_payload of {max_payload} bytes"
            ),
            Self::TimeoutAboveMaximum { requested_ms, max } => write!(
                f,
                "timeout-ms {requested_ms} exceeds this link's max_request_timeout_ms ({} ms)",
                max.as_millis()
            ),
            Self::NotConfirmed {
                subject,
                waited,
                servers,
                state,
            } => write!(
                f,
                "publish to {subject:?} not confirmed by the server within {} ms \
                 (NATS connection to {servers} is {state}); it was not sent or may be \
                 sent after reconnecting",
                waited.as_millis()
            ),
            Self::ConnectionDown {
                subject,
                servers,
                state,
            } => write!(
                f,
                "request to {subject:?} failed: NATS connection to {servers} is {state}"
            ),
            Self::NoReply { subject, waited } => write!(
                f,
                "no reply to request on {subject:?} within {} ms",
                waited.as_millis()
            ),
            Self::NoResponders { subject } => {
                write!(f, "no responders for request on {subject:?}")
            }
            Self::Nats { subject, source } => write!(f, "NATS error on {subject:?}: {source}"),
            Self::NoStream { subject } => write!(
                f,
                "publish to {subject:?} not stored: no JetStream stream stores this subject \
                 (it is one of the link's jetstream_publish subjects)"
            ),
            Self::Refused { subject, reason } => write!(
                f,
                "publish to {subject:?} not stored: the stream refused it: {reason}"
            ),
            Self::NotAcknowledged { subject, waited } => write!(
                f,
                "publish to {subject:?} not acknowledged by JetStream within {} ms; it may \
                 still have been stored (a publish of your own is a new message, stored again)",
                waited.as_millis()
            ),
            Self::JetStreamUnavailable {
                subject,
                waited,
                domain: None,
            } => write!(
                f,
                "publish to {subject:?} not stored: JetStream did not answer within {} ms",
                waited.as_millis()
            ),
            Self::JetStreamUnavailable {
                subject,
                waited,
                domain: Some(domain),
            } => write!(
                f,
                "publish to {subject:?} not stored: JetStream domain {domain:?} did not answer \
                 within {} ms",
                waited.as_millis()
            ),
            Self::ReplyToThroughJetStream { subject } => write!(
                f,
                "publish to {subject:?} refused: it goes through JetStream (jetstream_publish), \
                 where a reply-to subject is not kept"
            ),
        }
    }
}

impl std::error::Error for ConsumerError {}

/// A component's consumer link: the connection it sends on and its limits.
pub(crate) struct ConsumerLink {
    /// Released when the link (and any call still using it) is gone.
    pub(crate) connection: Lease,
    pub(crate) settings: ConsumerSettings,
    pub(crate) metrics: LinkMetrics,
}

impl ConsumerLink {
    /// A component's `publish` on this link, with the invocation's trace
    /// context on the message; recorded in the link's metrics.
    pub(crate) async fn publish(
        &self,
        msg: BrokerMessage,
        cx: Option<&Context>,
    ) -> Result<(), ConsumerError> {
        self.measured(Operation::Publish, async {
            let headers = trace_headers(cx)?;
            self.send(msg, headers).await
        })
        .await
    }

    /// A component's `request` on this link, as [`publish`](Self::publish).
    pub(crate) async fn request(
        &self,
        subject: String,
        body: Bytes,
        timeout_ms: u32,
        cx: Option<&Context>,
    ) -> Result<BrokerMessage, ConsumerError> {
        self.measured(Operation::Request, async {
            let headers = trace_headers(cx)?;
            self.ask(subject, body, timeout_ms, headers).await
        })
        .await
    }

    /// Runs `call`, recording its duration and outcome in the link's
    /// metrics.
    async fn measured<T>(
        &self,
        operation: Operation,
        call: impl std::future::Future<Output = Result<T, ConsumerError>>,
    ) -> Result<T, ConsumerError> {
        let started = Instant::now();
        let result = call.await;
        self.metrics
            .sent(operation, started.elapsed(), result.is_ok());
        result
    }

    /// Publishes `msg` and waits until the client has written it to the
    /// server. Flushes of concurrent publishes share one socket write:
    /// async-nats answers every flush queued before it writes.
    async fn send(
        &self,
        msg: BrokerMessage,
        headers: Option<HeaderMap>,
    ) -> Result<(), ConsumerError> {
        let BrokerMessage {
            subject,
            body,
            reply_to,
        } = msg;
        self.check_subject("subject", &subject)?;
        if let Some(reply_to) = &reply_to {
            self.check_subject("reply-to subject", reply_to)?;
        }
        if self.settings.jetstream.iter().any(|p| p.matches(&subject)) {
            if reply_to.is_some() {
                return Err(ConsumerError::ReplyToThroughJetStream { subject });
            }
            let headers = confirmed::with_message_id(headers);
            self.check_size(&body, Some(&headers))?;
            trace!(subject, bytes = body.len(), "publishing through JetStream");
            let timeout = self.settings.publish_timeout;
            let domain = self.settings.jetstream_domain.as_deref();
            return confirmed::publish(&self.connection, subject, body, headers, timeout, domain)
                .await;
        }
        self.check_size(&body, headers.as_ref())?;
        trace!(subject, bytes = body.len(), "publishing");

        let client = self.connection.client();
        let send = async {
            match (reply_to, headers) {
                (None, None) => client.publish(subject.clone(), body).await,
                (None, Some(headers)) => {
                    client
                        .publish_with_headers(subject.clone(), headers, body)
                        .await
                }
                (Some(reply), None) => {
                    client
                        .publish_with_reply(subject.clone(), reply, body)
                        .await
                }
                (Some(reply), Some(headers)) => {
                    client
                        .publish_with_reply_and_headers(subject.clone(), reply, headers, body)
                        .await
                }
            }
            .map_err(async_nats::Error::from)?;
            client.flush().await.map_err(async_nats::Error::from)
        };
        match tokio::time::timeout(self.settings.publish_timeout, send).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(ConsumerError::Nats { subject, source }),
            Err(_) => Err(ConsumerError::NotConfirmed {
                subject,
                waited: self.settings.publish_timeout,
                servers: self.connection.servers.clone(),
                state: self.connection.state(),
            }),
        }
    }

    /// Sends a request and waits for the first reply. `timeout_ms` 0 means
    /// the link's `request_timeout_ms`.
    async fn ask(
        &self,
        subject: String,
        body: Bytes,
        timeout_ms: u32,
        headers: Option<HeaderMap>,
    ) -> Result<BrokerMessage, ConsumerError> {
        self.check_subject("subject", &subject)?;
        let timeout = match timeout_ms {
            0 => self.settings.default_request_timeout,
            ms => Duration::from_millis(ms.into()),
        };
        if timeout > self.settings.max_request_timeout {
            return Err(ConsumerError::TimeoutAboveMaximum {
                requested_ms: timeout_ms,
                max: self.settings.max_request_timeout,
            });
        }
        self.check_size(&body, headers.as_ref())?;
        trace!(subject, bytes = body.len(), "sending request");

        // One timer for the whole exchange (the client's own is switched
        // off), so that a send blocked on a full buffer is bounded too.
        let reply = tokio::time::timeout(
            timeout,
            self.connection.request(subject.clone(), body, headers),
        );
        match reply.await {
            Ok(Ok(reply)) => Ok(message::from_nats(&reply, ReplyTo::Keep)),
            Ok(Err(err)) if err.kind() == RequestErrorKind::NoResponders => {
                Err(ConsumerError::NoResponders { subject })
            }
            _ if !self.connection.is_connected() => Err(ConsumerError::ConnectionDown {
                subject,
                servers: self.connection.servers.clone(),
                state: self.connection.state(),
            }),
            Ok(Err(err)) if err.kind() == RequestErrorKind::TimedOut => {
                Err(ConsumerError::NoReply {
                    subject,
                    waited: timeout,
                })
            }
            Ok(Err(err)) => Err(ConsumerError::Nats {
                subject,
                source: err.into(),
            }),
            Err(_) => Err(ConsumerError::NoReply {
                subject,
                waited: timeout,
            }),
        }
    }

    /// Refuses a subject that is malformed (which the server would answer by
    /// closing the connection every link shares) or that this link may not
    /// send to.
    fn check_subject(&self, role: &'static str, subject: &str) -> Result<(), ConsumerError> {
        subject::check_publish_subject(subject).map_err(|reason| {
            ConsumerError::InvalidSubject {
                role,
                subject: subject.to_string(),
                reason,
            }
        })?;
        self.settings
            .access
            .check(subject)
            .map_err(|reason| ConsumerError::Denied {
                role,
                subject: subject.to_string(),
                reason,
            })
    }

    /// Refuses a message the server would refuse: NATS counts headers and
    /// body against `max_payload`. Unknown until first connected (0).
    fn check_size(&self, body: &Bytes, headers: Option<&HeaderMap>) -> Result<(), ConsumerError> {
        let max_payload = self.connection.server_max_payload();
        let size = body.len() + headers.map_or(0, encoded_header_len);
        if max_payload > 0 && size > max_payload {
            return Err(ConsumerError::TooLarge { size, max_payload });
        }
        Ok(())
    }
}

/// Size of a header block on the wire: `NATS/1.0\r\n`, `key: value\r\n`
/// per value, and a closing `\r\n`.
fn encoded_header_len(headers: &HeaderMap) -> usize {
    let fields: usize = headers
        .iter()
        .map(|(name, values)| {
            values
                .iter()
                .map(|value| AsRef::<[u8]>::as_ref(name).len() + 2 + value.as_str().len() + 2)
                .sum::<usize>()
        })
        .sum();
    "NATS/1.0\r\n".len() + fields + 2
}

/// The trace headers of an invocation, refused when NATS cannot carry them.
fn trace_headers(cx: Option<&Context>) -> Result<Option<HeaderMap>, ConsumerError> {
    trace_context::from_invocation(cx).map_err(ConsumerError::InvalidHeader)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every error a component can get, with the README's placeholders.
    fn every_error() -> Vec<ConsumerError> {
        let subject = || "<subject>".to_string();
        let servers = || "<servers>".to_string();
        let waited = Duration::from_millis(5000);
        vec![
            ConsumerError::InvalidSubject {
                role: "subject",
                subject: subject(),
                reason: "<why>".into(),
            },
            ConsumerError::Denied {
                role: "subject",
                subject: subject(),
                reason: "<why>".into(),
            },
            ConsumerError::InvalidHeader("<why>".into()),
            ConsumerError::TooLarge {
                size: 2_000_000,
                max_payload: 1_048_576,
            },
            ConsumerError::TimeoutAboveMaximum {
                requested_ms: 90_000,
                max: Duration::from_secs(60),
            },
            ConsumerError::NotConfirmed {
                subject: subject(),
                waited,
                servers: servers(),
                state: "disconnected",
            },
            ConsumerError::ConnectionDown {
                subject: subject(),
                servers: servers(),
                state: "disconnected",
            },
            ConsumerError::NoReply {
                subject: subject(),
                waited,
            },
            ConsumerError::NoResponders { subject: subject() },
            ConsumerError::Nats {
                subject: subject(),
                source: "<error>".into(),
            },
            ConsumerError::NoStream { subject: subject() },
            ConsumerError::Refused {
                subject: subject(),
                reason: "<why>".into(),
            },
            ConsumerError::NotAcknowledged {
                subject: subject(),
                waited,
            },
            ConsumerError::JetStreamUnavailable {
                subject: subject(),
                waited,
                domain: None,
            },
            ConsumerError::JetStreamUnavailable {
                subject: subject(),
                waited,
                domain: Some("hub".into()),
            },
            ConsumerError::ReplyToThroughJetStream { subject: subject() },
        ]
    }

    #[test]
    fn the_readme_quotes_every_error_a_component_can_get() {
        let texts: Vec<String> = every_error().iter().map(ToString::to_string).collect();
        crate::readme::assert_quotes("consumer", &texts);
    }
}
