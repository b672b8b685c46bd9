//! Cancellations: broadcast by the bridge on a fanout exchange, heard by every worker.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};

use crate::headers::{REASON_CANCELLED, REASON_HEADER, REASON_TIMEOUT, header_text};

/// Name of the cancellation fanout exchange, after the queue prefix.
pub const CANCEL_EXCHANGE: &str = "wsmq.cancel";

/// The cancellation exchange under `prefix`: `<prefix>wsmq.cancel`.
pub fn cancel_exchange_name(prefix: &str) -> String {
    format!("{prefix}{CANCEL_EXCHANGE}")
}

/// Why a job was cancelled, from a cancellation's [`REASON_HEADER`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CancelReason {
    /// [`REASON_CANCELLED`]: the caller cancelled the call.
    Cancelled,
    /// [`REASON_TIMEOUT`]: the call's deadline passed.
    Timeout,
    /// No reason, or one this crate does not know; the job is cancelled all the same.
    Unspecified,
}

impl CancelReason {
    /// The [`REASON_HEADER`] value for this reason (`None` for [`CancelReason::Unspecified`]).
    pub fn as_str(self) -> Option<&'static str> {
        match self {
            Self::Cancelled => Some(REASON_CANCELLED),
            Self::Timeout => Some(REASON_TIMEOUT),
            Self::Unspecified => None,
        }
    }

    fn from_text(text: &[u8]) -> Self {
        match text {
            t if t == REASON_CANCELLED.as_bytes() => Self::Cancelled,
            t if t == REASON_TIMEOUT.as_bytes() => Self::Timeout,
            _ => Self::Unspecified,
        }
    }
}

/// A message from the cancellation exchange: job `job_id` is not wanted any more. Its body is
/// empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cancellation {
    /// The cancelled job's id (its `correlation_id`).
    pub job_id: String,
    /// Why; informational only: every reason cancels the job the same way.
    pub reason: CancelReason,
}

impl Cancellation {
    /// Reads a cancellation from a message's properties; `None` without a `correlation_id`
    /// (it could not name a job).
    pub fn from_properties(properties: &BasicProperties) -> Option<Self> {
        let job_id = properties
            .correlation_id()
            .as_ref()
            .filter(|s| !s.as_str().is_empty())?;
        let reason = properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get(REASON_HEADER))
            .and_then(header_text)
            .map_or(CancelReason::Unspecified, CancelReason::from_text);
        Some(Self {
            job_id: job_id.to_string(),
            reason,
        })
    }

    /// The properties the bridge publishes this cancellation with: the job id as
    /// `correlation_id`, and the [`REASON_HEADER`] (an AMQP long string) unless the reason is
    /// [`CancelReason::Unspecified`].
    pub fn properties(&self) -> BasicProperties {
        let mut properties =
            BasicProperties::default().with_correlation_id(self.job_id.as_str().into());
        if let Some(reason) = self.reason.as_str() {
            let mut headers = FieldTable::default();
            headers.insert(REASON_HEADER.into(), AMQPValue::LongString(reason.into()));
            properties = properties.with_headers(headers);
        }
        properties
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancellation_names_its_job_and_reason() {
        for reason in [CancelReason::Cancelled, CancelReason::Timeout] {
            let sent = Cancellation {
                job_id: "job-1".into(),
                reason,
            };
            let properties = sent.properties();
            assert_eq!(
                properties
                    .headers()
                    .as_ref()
                    .and_then(|h| h.inner().get(REASON_HEADER)),
                reason
                    .as_str()
                    .map(|text| AMQPValue::LongString(text.into()))
                    .as_ref()
            );
            assert_eq!(Cancellation::from_properties(&properties), Some(sent));
        }
    }

    #[test]
    fn cancellation_with_unknown_or_no_reason_still_cancels() {
        let mut headers = FieldTable::default();
        headers.insert(REASON_HEADER.into(), AMQPValue::LongString("bored".into()));
        let unknown = BasicProperties::default()
            .with_correlation_id("job-1".into())
            .with_headers(headers);
        let none = BasicProperties::default().with_correlation_id("job-2".into());
        for (properties, job_id) in [(unknown, "job-1"), (none, "job-2")] {
            assert_eq!(
                Cancellation::from_properties(&properties),
                Some(Cancellation {
                    job_id: job_id.into(),
                    reason: CancelReason::Unspecified
                })
            );
        }
    }

    #[test]
    fn cancellation_without_correlation_id_names_no_job() {
        let empty = BasicProperties::default().with_correlation_id("".into());
        assert_eq!(
            Cancellation::from_properties(&BasicProperties::default()),
            None
        );
        assert_eq!(Cancellation::from_properties(&empty), None);
    }

    #[test]
    fn cancel_exchange_is_prefix_then_wsmq_cancel() {
        assert_eq!(cancel_exchange_name("t1."), "t1.wsmq.cancel");
        assert_eq!(cancel_exchange_name(""), "wsmq.cancel");
    }
}
