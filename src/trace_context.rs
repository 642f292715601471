//! W3C trace context (`traceparent`, `tracestate`) carried across the
//! provider: from a component's invocation onto the NATS messages it sends,
//! and from a received NATS message onto the `handle-message` call.
//!
//! Values are checked before they are written: a header value is raw text
//! on the wire, so a CR or LF in it would start a header line of the
//! sender's choosing.

use async_nats::{HeaderMap, HeaderValue};
use tracing::debug;
use wasmcloud_provider_sdk::Context;

/// The W3C trace context headers; nothing else is copied across.
const TRACE_HEADERS: [&str; 2] = ["traceparent", "tracestate"];

/// Longest trace header value passed on, in bytes. `traceparent` is 55
/// bytes; W3C asks that at least 512 bytes of `tracestate` be propagated.
pub const MAX_TRACE_HEADER_LEN: usize = 1024;

/// Trace headers of an invocation, for the NATS message it publishes. An
/// invalid value fails the call: it came from the caller, who is told.
pub fn from_invocation(cx: Option<&Context>) -> Result<Option<HeaderMap>, String> {
    let Some(cx) = cx else { return Ok(None) };
    let mut out = HeaderMap::new();
    for name in TRACE_HEADERS {
        if let Some(value) = cx.tracing.get(name) {
            out.insert(name, checked(name, value)?);
        }
    }
    Ok((!out.is_empty()).then_some(out))
}

/// Trace headers of a received NATS message, for the handler invocation.
/// An invalid value is left out (the message is still delivered), as W3C
/// asks of a receiver that cannot parse trace context.
pub fn from_message(headers: Option<&HeaderMap>) -> Option<HeaderMap> {
    let headers = headers?;
    let mut out = HeaderMap::new();
    for name in TRACE_HEADERS {
        if let Some(value) = headers.get(name) {
            match checked(name, value.as_str()) {
                Ok(value) => out.insert(name, value),
                Err(reason) => debug!(reason, "trace context of a message left out"),
            }
        }
    }
    (!out.is_empty()).then_some(out)
}

/// A header value fit for the wire: no control characters (CR and LF
/// above all), at most [`MAX_TRACE_HEADER_LEN`] bytes.
fn checked(name: &str, value: &str) -> Result<HeaderValue, String> {
    if value.len() > MAX_TRACE_HEADER_LEN {
        return Err(format!(
            "header {name} is {} bytes, longer than the limit of {MAX_TRACE_HEADER_LEN}",
            value.len()
        ));
    }
    if value.chars().any(|c| c.is_control() && c != '\t') {
        return Err(format!(
            "header {name} contains a control character (CR, LF or another byte NATS \
             headers cannot carry)"
        ));
    }
    value
        .parse()
        .map_err(|err| format!("header {name} is not a valid NATS header value: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invocation(name: &str, value: &str) -> Context {
        Context {
            tracing: [(name.to_string(), value.to_string())].into(),
            ..Default::default()
        }
    }

    #[test]
    fn valid_trace_context_is_copied() {
        let cx = invocation(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        );
        let headers = from_invocation(Some(&cx)).unwrap().expect("copied");
        assert!(headers.get("traceparent").is_some());
    }

    #[test]
    fn line_breaks_in_a_trace_value_fail_the_call() {
        for forged in ["a\r\nX-Injected: 1", "a\nb", "a\rb", "a\0b"] {
            let err =
                from_invocation(Some(&invocation("tracestate", forged))).expect_err("refused");
            assert!(err.contains("tracestate"), "{err}");
        }
    }

    #[test]
    fn over_long_trace_value_fails_the_call_naming_the_limit() {
        let long = "a".repeat(MAX_TRACE_HEADER_LEN + 1);
        let err = from_invocation(Some(&invocation("tracestate", &long))).expect_err("refused");
        assert!(err.contains("1024"), "{err}");
    }

    #[test]
    fn invalid_trace_value_of_a_message_is_left_out() {
        let mut headers = HeaderMap::new();
        headers.insert("tracestate", HeaderValue::from("a\rb"));
        headers.insert("traceparent", "ok");
        let out = from_message(Some(&headers)).expect("traceparent kept");
        assert!(out.get("tracestate").is_none());
        assert!(out.get("traceparent").is_some());
    }
}
