//! Progress reports: a handler's side ([`ProgressHandle`]) and the error it may get.
//!
//! A handler does not publish progress itself. It hands each report to its job's task through a
//! bounded channel, and that task publishes it on the reply channel between polls of the
//! handler. So a job's progress messages and its final reply leave from one task, in order,
//! without a lock; a report that arrives after the handler returned is refused, never sent
//! after the reply.

use lapin::PublisherConfirm;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

/// Reports one handler may have waiting for its job task. One is enough: `progress` awaits its
/// own publication, so only a handler reporting from several futures at once has more than one
/// in hand, and those wait for room (nothing is dropped).
const PROGRESS_QUEUE: usize = 1;

/// Why [`Request::progress`](crate::Request::progress) did not deliver a report.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProgressError {
    /// The report could not be encoded as JSON.
    #[error("progress could not be encoded as JSON")]
    Encode(#[source] serde_json::Error),
    /// The report is larger than the worker's reply limit.
    #[error("progress of {len} bytes exceeds the worker's limit of {max} bytes")]
    TooLarge {
        /// The encoded report's length.
        len: usize,
        /// [`WorkerBuilder::max_reply_bytes`](crate::WorkerBuilder::max_reply_bytes).
        max: usize,
    },
    /// The handler has already returned (the report came from a task that outlived it), so the
    /// final reply is on its way and nothing may follow it.
    #[error("the job has finished; progress after its reply is not sent")]
    Finished,
    /// The broker refused the report.
    #[error("the broker nacked the progress message")]
    Nacked,
    /// The reply channel failed; the job's reply will fail too, and the job be redelivered.
    #[error("publishing the progress message failed")]
    Channel(#[source] lapin::Error),
}

/// A report on its way to the job task, and where the task answers.
pub(crate) struct ProgressCommand {
    pub(crate) body: Vec<u8>,
    /// The publisher confirm to await, or `None` when the report was skipped because the job
    /// was cancelled meanwhile.
    pub(crate) sent: oneshot::Sender<Result<Option<PublisherConfirm>, lapin::Error>>,
}

/// A handler's way to its job task's progress queue.
#[derive(Debug, Clone)]
pub(crate) struct ProgressHandle {
    commands: mpsc::Sender<ProgressCommand>,
    max_bytes: usize,
}

/// A progress queue for one job: the handle goes in its request, the receiver to its task.
pub(crate) fn queue(max_bytes: usize) -> (ProgressHandle, mpsc::Receiver<ProgressCommand>) {
    let (commands, receiver) = mpsc::channel(PROGRESS_QUEUE);
    (
        ProgressHandle {
            commands,
            max_bytes,
        },
        receiver,
    )
}

impl ProgressHandle {
    /// Hands `value` to the job task and waits until the broker confirmed it.
    pub(crate) async fn report(&self, value: &Value) -> Result<(), ProgressError> {
        let body = serde_json::to_vec(value).map_err(ProgressError::Encode)?;
        if body.len() > self.max_bytes {
            return Err(ProgressError::TooLarge {
                len: body.len(),
                max: self.max_bytes,
            });
        }
        let (sent, on_sent) = oneshot::channel();
        self.commands
            .send(ProgressCommand { body, sent })
            .await
            .map_err(|_| ProgressError::Finished)?;
        let confirm = on_sent
            .await
            .map_err(|_| ProgressError::Finished)?
            .map_err(ProgressError::Channel)?;
        let Some(confirm) = confirm else {
            return Ok(());
        };
        let confirmation = confirm.await.map_err(ProgressError::Channel)?;
        if confirmation.is_nack() {
            return Err(ProgressError::Nacked);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn oversized_progress_is_refused_before_it_is_queued() {
        let (handle, mut receiver) = queue(8);
        let error = handle
            .report(&json!("far more than eight bytes"))
            .await
            .expect_err("too large");
        assert!(
            matches!(error, ProgressError::TooLarge { max: 8, .. }),
            "{error:?}"
        );
        assert!(receiver.try_recv().is_err(), "nothing was queued");
    }

    #[tokio::test]
    async fn progress_after_the_job_task_stopped_listening_is_refused() {
        let (handle, receiver) = queue(1024);
        drop(receiver);
        let error = handle.report(&json!(1)).await.expect_err("job finished");
        assert!(matches!(error, ProgressError::Finished), "{error:?}");
    }

    #[tokio::test]
    async fn progress_skipped_by_the_job_task_counts_as_delivered() {
        let (handle, mut receiver) = queue(1024);
        let task = tokio::spawn(async move {
            let command = receiver.recv().await.expect("a report");
            assert_eq!(command.body, br#"{"step":1}"#);
            let _ = command.sent.send(Ok(None));
        });
        handle
            .report(&json!({"step": 1}))
            .await
            .expect("skipped is fine");
        task.await.expect("job task");
    }
}
