//! Example component for the `messaging-nats` provider.
//!
//! For every message it receives it answers the sender when the message
//! carries a reply subject, and always publishes an event describing what it
//! handled, so both directions of `wasmcloud:messaging` are exercised.
//!
//! A message whose body is `sleep <ms>` (at most 10 s) is held that long
//! before the answer, which then says when the call started and ended: a
//! way to watch the provider's `max_in_flight` at work.

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

/// Longest pause a `sleep <ms>` message may ask for.
const MAX_SLEEP_MS: u64 = 10_000;

struct Echo;

impl Guest for Echo {
    fn handle_message(msg: BrokerMessage) -> Result<(), String> {
        let body = match sleep_ms(&msg.body) {
            Some(ms) => {
                let started = micros_now();
                std::thread::sleep(std::time::Duration::from_millis(ms));
                slept_body(ms, started, micros_now())
            }
            None => reply_body(&msg.body),
        };
        if let Some(reply_to) = &msg.reply_to {
            consumer::publish(&BrokerMessage {
                subject: reply_to.clone(),
                body,
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

/// The pause a `sleep <ms>` body asks for.
fn sleep_ms(body: &[u8]) -> Option<u64> {
    let ms = std::str::from_utf8(body.strip_prefix(b"sleep ")?).ok()?;
    ms.trim().parse().ok().filter(|ms| *ms <= MAX_SLEEP_MS)
}

/// Wall-clock time in microseconds since the Unix epoch.
fn micros_now() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_micros())
}

/// The answer to a `sleep` message: how long, and when the call ran.
fn slept_body(ms: u64, started_us: u128, ended_us: u128) -> Vec<u8> {
    format!("slept {ms} ms from {started_us} to {ended_us}").into_bytes()
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
    fn sleep_messages_name_their_pause() {
        assert_eq!(sleep_ms(b"sleep 300"), Some(300));
        assert_eq!(sleep_ms(b"sleep 10001"), None);
        assert_eq!(sleep_ms(b"sleep x"), None);
        assert_eq!(sleep_ms(b"hello"), None);
    }

    #[test]
    fn slept_answer_says_when_the_call_ran() {
        assert_eq!(slept_body(300, 5, 9), b"slept 300 ms from 5 to 9");
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
