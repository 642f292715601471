//! W3C trace context (`traceparent`, `tracestate`) carried across the
//! provider: from a component's invocation onto the NATS messages it sends,
//! and from a received NATS message onto the `handle-message` call.

use async_nats::HeaderMap;
use wasmcloud_provider_sdk::Context;

/// The W3C trace context headers; nothing else is copied across.
const TRACE_HEADERS: [&str; 2] = ["traceparent", "tracestate"];

/// Trace headers of an invocation, for the NATS message it publishes.
pub fn from_invocation(cx: Option<&Context>) -> Option<HeaderMap> {
    let tracing = &cx?.tracing;
    collect(|name| tracing.get(name).map(String::as_str))
}

/// Trace headers of a received NATS message, for the handler invocation.
pub fn from_message(headers: Option<&HeaderMap>) -> Option<HeaderMap> {
    let headers = headers?;
    collect(|name| headers.get(name).map(|value| value.as_str()))
}

fn collect<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Option<HeaderMap> {
    let mut out = HeaderMap::new();
    for name in TRACE_HEADERS {
        if let Some(value) = get(name) {
            out.insert(name, value);
        }
    }
    (!out.is_empty()).then_some(out)
}
