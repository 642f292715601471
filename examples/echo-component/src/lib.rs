//! Example component for the `messaging-nats` provider.
//!
//! For every message it receives it answers the sender when the message
//! carries a reply subject, and always publishes an event describing what it
//! handled, so both directions of `wasmcloud:messaging` are exercised.

wit_bindgen::generate!({
    world: "echo",
    path: "wit",
    generate_all,
});

use exports::wasmcloud::messaging::handler::Guest;
use wasmcloud::messaging::consumer;
use wasmcloud::messaging::types::BrokerMessage;

/// Prefix of every reply body.
const REPLY_PREFIX: &[u8] = b"echo: ";

/// Prefix of the subject that events are published on.
const EVENT_PREFIX: &str = "events.";

struct Echo;

impl Guest for Echo {
    fn handle_message(msg: BrokerMessage) -> Result<(), String> {
        if let Some(reply_to) = &msg.reply_to {
            consumer::publish(&BrokerMessage {
                subject: reply_to.clone(),
                body: reply_body(&msg.body),
                reply_to: None,
            })
            .map_err(|e| format!("failed to publish reply to {reply_to}: {e}"))?;
        }
        let subject = event_subject(&msg.subject);
        consumer::publish(&BrokerMessage {
            body: event_body(msg.body.len()),
            subject: subject.clone(),
            reply_to: None,
        })
        .map_err(|e| format!("failed to publish event to {subject}: {e}"))
    }
}

/// The reply to a request: `echo: ` followed by the body in ASCII upper case.
fn reply_body(body: &[u8]) -> Vec<u8> {
    let mut reply = Vec::with_capacity(REPLY_PREFIX.len() + body.len());
    reply.extend_from_slice(REPLY_PREFIX);
    reply.extend(body.iter().map(u8::to_ascii_uppercase));
    reply
}

/// The subject an event about a message received on `subject` goes to.
fn event_subject(subject: &str) -> String {
    format!("{EVENT_PREFIX}{subject}")
}

/// The body of the event about a message of `len` bytes.
fn event_body(len: usize) -> Vec<u8> {
    format!("handled {len} bytes").into_bytes()
}

export!(Echo);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_is_prefixed_and_upper_cased() {
        assert_eq!(reply_body(b"hello, World 1"), b"echo: HELLO, WORLD 1");
    }

    #[test]
    fn reply_keeps_non_ascii_bytes() {
        assert_eq!(
            reply_body(&[0xff, b'a']),
            [b"echo: ".as_slice(), &[0xff, b'A']].concat()
        );
    }

    #[test]
    fn event_goes_to_prefixed_subject() {
        assert_eq!(event_subject("demo.in"), "events.demo.in");
    }

    #[test]
    fn event_tells_length() {
        assert_eq!(event_body(5), b"handled 5 bytes");
    }
}
