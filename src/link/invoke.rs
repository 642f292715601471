//! One `handle-message` call: the component a handler link delivers to,
//! the call with its own timeout, and what became of it.

use std::sync::Arc;
use std::time::Duration;

use tracing::{trace, warn};
use wasmcloud_provider_sdk::provider::WrpcClient;

use super::counters::LinkCounters;
use crate::bindings::wasmcloud::messaging::handler;
use crate::message::BrokerMessage;
use crate::metrics::Failure;

/// The component a handler link delivers to, and the link's counters.
#[derive(Clone)]
pub(crate) struct Target {
    pub(crate) component_id: Arc<str>,
    pub(crate) link_name: Arc<str>,
    /// Reused for every delivery of the link; shared with the component's
    /// other links (the provider keeps one client per component).
    pub(crate) wrpc: Arc<dyn AsRef<WrpcClient> + Send + Sync>,
    pub(crate) counters: Arc<LinkCounters>,
    /// How long one call may take.
    pub(crate) timeout: Duration,
}

/// What became of one `handle-message` call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    Handled,
    /// The handler returned `Err` with this text.
    HandlerError(String),
    /// The call did not reach the component, or its answer got lost.
    InvokeFailed(String),
    TimedOut,
}

impl Outcome {
    /// Why the call failed, in words, or `None` if it succeeded.
    pub(crate) fn failure(&self) -> Option<String> {
        match self {
            Outcome::Handled => None,
            Outcome::HandlerError(error) => Some(error.clone()),
            Outcome::InvokeFailed(error) => Some(format!("invocation failed: {error}")),
            Outcome::TimedOut => Some("handle-message did not answer in time".to_string()),
        }
    }

    fn kind(&self) -> Option<Failure> {
        match self {
            Outcome::Handled => None,
            Outcome::HandlerError(_) => Some(Failure::HandlerError),
            Outcome::InvokeFailed(_) => Some(Failure::InvokeFailed),
            Outcome::TimedOut => Some(Failure::Timeout),
        }
    }
}

/// Calls `handle-message` with the link's timeout, so that a lost wRPC
/// reply frees its slot; logs a failure and counts the outcome. Dropped
/// before it ends, the call counts as aborted.
pub(crate) async fn invoke(
    target: &Target,
    headers: Option<async_nats::HeaderMap>,
    message: &BrokerMessage,
) -> Outcome {
    let subject = message.subject.as_str();
    trace!(subject, bytes = message.body.len(), "delivering");
    let running = target.counters.running();
    let call = handler::handle_message(target.wrpc.as_ref().as_ref(), headers, message);
    let outcome = match tokio::time::timeout(target.timeout, call).await {
        Ok(Ok(Ok(()))) => Outcome::Handled,
        Ok(Ok(Err(error))) => {
            warn!(subject, error, "handle-message returned an error");
            Outcome::HandlerError(error)
        }
        Ok(Err(err)) => {
            let error = format!("{err:#}");
            warn!(subject, error, "handle-message invocation failed");
            Outcome::InvokeFailed(error)
        }
        Err(_) => {
            warn!(
                subject,
                timeout_ms = target.timeout.as_millis() as u64,
                "handle-message did not answer in time"
            );
            Outcome::TimedOut
        }
    };
    running.ended(outcome.kind());
    outcome
}
