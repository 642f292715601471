//! The message as the WIT interface carries it, made from a NATS message
//! in one place for every path (core delivery, JetStream delivery, the
//! reply to a request).

use async_nats::HeaderMap;

use crate::trace_context;

/// A message as the WIT interface carries it.
pub(crate) use crate::bindings::wasmcloud::messaging::types::BrokerMessage;

/// Whether the component sees the NATS message's reply subject.
#[derive(Clone, Copy)]
pub(crate) enum ReplyTo {
    Keep,
    /// A JetStream delivery's reply subject is its ack subject, which is
    /// not the component's to answer.
    Hide,
}

/// `msg` as the component gets it.
pub(crate) fn from_nats(msg: &async_nats::Message, reply_to: ReplyTo) -> BrokerMessage {
    BrokerMessage {
        subject: msg.subject.to_string(),
        body: msg.payload.clone(),
        reply_to: match reply_to {
            ReplyTo::Keep => msg.reply.as_ref().map(ToString::to_string),
            ReplyTo::Hide => None,
        },
    }
}

/// `msg` for a `handle-message` call, with the trace context it carries.
pub(crate) fn for_handler(
    msg: &async_nats::Message,
    reply_to: ReplyTo,
) -> (Option<HeaderMap>, BrokerMessage) {
    (
        trace_context::from_message(msg.headers.as_ref()),
        from_nats(msg, reply_to),
    )
}
