//! The `run-turn` function: consumes the SQS FIFO turn queue (and its dead-letter queue).
//!
//! The event source mapping hands one invocation up to ten records of *different* chats (FIFO
//! message groups). Groups run concurrently, each group's records in order, so chat B's first
//! token never waits for chat A's reply. After a group's first failure its later records are
//! reported as failures too: a FIFO group must not run a later turn before an earlier one.
//!
//! Every record of the batch is held with a heartbeat ([`BatchLease`]): its visibility is set
//! short when the invocation starts and renewed while the invocation runs, so a crashed
//! invocation's turns come back within `CHAT_TURN_LEASE_SECS`, whatever the queue's own
//! visibility timeout (which AWS requires to be at least the function's timeout).
//!
//! Failures are classified before they are retried: a passing one puts the job back after a
//! short backoff (growing per receive); one that cannot succeed ends the turn at once with an
//! `error` chunk; a record that is not a turn job is dropped. Dead letters (records whose source
//! is the dead-letter queue) end their turn with an error chunk and end the session.

#[cfg(feature = "lambda")]
pub mod wiring;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use chatrun_core::domain::TurnJob;
use chatrun_core::engine::Services;
use chatrun_core::engine::turn::{self, TurnOutcome};
use chatrun_core::ports::{JobVisibility, LanguageModel, QueueName};

/// What run-turn works with.
#[derive(Clone)]
pub struct RunTurnDeps {
    pub services: Services,
    pub model: Arc<dyn LanguageModel>,
    /// Sets the visibility of received jobs (SQS `ChangeMessageVisibility`).
    pub visibility: Arc<dyn JobVisibility>,
    /// The ARN of the dead-letter queue; records from it are dead letters.
    pub dead_letter_source_arn: Option<String>,
}

/// What became of one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RecordResult {
    /// Done with (completed, dropped, or ended with an error): delete it.
    Done,
    /// Put back for a retry.
    Retry,
}

/// Handles a batch, reporting the records to retry.
pub async fn handle(deps: &RunTurnDeps, event: SqsEvent) -> SqsBatchResponse {
    let lease = BatchLease::hold(deps, &event.records);
    let groups = group_records(event.records);
    let failed: Vec<Vec<String>> =
        futures::future::join_all(groups.iter().map(|group| handle_group(deps, &lease, group)))
            .await;
    lease.release();
    let mut response = SqsBatchResponse::default();
    for message_id in failed.into_iter().flatten() {
        response.add_failure(message_id);
    }
    response
}

/// The batch's records by FIFO message group, in their order.
fn group_records(records: Vec<SqsMessage>) -> Vec<Vec<SqsMessage>> {
    let mut groups: Vec<(Option<String>, Vec<SqsMessage>)> = Vec::new();
    for record in records {
        let group = record.attributes.get("MessageGroupId").cloned();
        match groups.iter_mut().find(|(g, _)| g.is_some() && *g == group) {
            Some((_, records)) => records.push(record),
            None => groups.push((group, vec![record])),
        }
    }
    groups.into_iter().map(|(_, records)| records).collect()
}

/// Runs one group's records in order; returns the ids to report as failures.
async fn handle_group(
    deps: &RunTurnDeps,
    lease: &BatchLease,
    records: &[SqsMessage],
) -> Vec<String> {
    let mut failed = Vec::new();
    for record in records {
        let message_id = record.message_id.clone().unwrap_or_default();
        if !failed.is_empty() {
            // An earlier turn of this chat will run again first: this one must wait for it.
            lease.back_off(record, Duration::ZERO).await;
            failed.push(message_id);
            continue;
        }
        match handle_record(deps, lease, record).await {
            RecordResult::Retry => failed.push(message_id),
            // Gone from the queue now, so this chat's next turn can start at once.
            RecordResult::Done => lease.acknowledge(record).await,
        }
    }
    failed
}

fn queue_of(deps: &RunTurnDeps, record: &SqsMessage) -> QueueName {
    if deps.dead_letter_source_arn.is_some()
        && record.event_source_arn.as_deref() == deps.dead_letter_source_arn.as_deref()
    {
        QueueName::DeadLetters
    } else {
        QueueName::Turns
    }
}

fn receive_count(record: &SqsMessage) -> u32 {
    record
        .attributes
        .get("ApproximateReceiveCount")
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
}

/// How long a job that failed for a passing reason waits before its next attempt.
fn backoff(base: Duration, receive_count: u32) -> Duration {
    let doubled = base.saturating_mul(1 << receive_count.saturating_sub(1).min(8));
    doubled.min(Duration::from_secs(30))
}

async fn handle_record(
    deps: &RunTurnDeps,
    lease: &BatchLease,
    record: &SqsMessage,
) -> RecordResult {
    let message_id = record.message_id.as_deref().unwrap_or_default();
    let queue = queue_of(deps, record);
    let job: TurnJob = match record.body.as_deref().map(serde_json::from_str) {
        Some(Ok(job)) => job,
        other => {
            // Not a turn job: no retry can make it one, and it names no turn to end.
            tracing::error!(message_id, error = ?other.map(|r| r.err()), "not a turn job; dropped");
            return RecordResult::Done;
        }
    };
    let s = &deps.services;
    let result = match queue {
        QueueName::DeadLetters => turn::fail_turn(s, &job).await,
        QueueName::Turns => turn::run_turn(s, deps.model.as_ref(), &job).await,
    };
    let error = match result {
        Ok(TurnOutcome::Completed) => {
            tracing::debug!(message_id, chat_id = %job.chat_id, ?queue, "turn completed");
            return RecordResult::Done;
        }
        Ok(TurnOutcome::Dropped(why)) => {
            tracing::info!(message_id, chat_id = %job.chat_id, why, "turn dropped");
            return RecordResult::Done;
        }
        Err(error) => error,
    };
    if error.is_retryable() {
        let wait = backoff(s.settings.retry_backoff, receive_count(record));
        tracing::warn!(message_id, chat_id = %job.chat_id, %error, ?wait, "turn failed; retrying after a backoff");
        lease.back_off(record, wait).await;
        return RecordResult::Retry;
    }
    tracing::error!(message_id, chat_id = %job.chat_id, %error, "turn failed for good; ending it");
    let text = "Something went wrong with this reply. Please regenerate it.";
    match turn::end_turn_with_error(s, &job, text, None).await {
        Ok(_) => RecordResult::Done,
        Err(end_error) => {
            // Could not even end it: leave it to redelivery and, at last, the dead-letter queue.
            tracing::error!(message_id, chat_id = %job.chat_id, error = %end_error, "could not end a failed turn");
            lease
                .back_off(
                    record,
                    backoff(s.settings.retry_backoff, receive_count(record)),
                )
                .await;
            RecordResult::Retry
        }
    }
}

/// Holds a batch's records invisible for the length of the invocation, renewing their
/// visibility every third of the lease.
///
/// The turns do not wait for the first setting: the records were received invisible for the
/// queue's own timeout, longer than the lease, so they are held already, and setting the lease
/// (on AWS, an SQS request per record) would sit on the way to every first token. A record's
/// visibility is changed by one caller at a time: a renewal holds the lock on `held` for its
/// requests, and a backoff or a deletion first takes the record out of `held` under that lock,
/// so a renewal can never land after a backoff and undo it.
struct BatchLease {
    visibility: Arc<dyn JobVisibility>,
    /// The records still held: (queue, receipt handle).
    held: Arc<tokio::sync::Mutex<HashSet<(QueueName, String)>>>,
    renewer: Option<tokio::task::JoinHandle<()>>,
}

impl BatchLease {
    /// Starts setting every record's visibility to the lease, and renewing it.
    fn hold(deps: &RunTurnDeps, records: &[SqsMessage]) -> BatchLease {
        let lease = deps.services.settings.turn_lease;
        let held: HashSet<(QueueName, String)> = records
            .iter()
            .filter_map(|r| Some((queue_of(deps, r), r.receipt_handle.clone()?)))
            .collect();
        let visibility = deps.visibility.clone();
        let held = Arc::new(tokio::sync::Mutex::new(held));
        let renewer = {
            let visibility = visibility.clone();
            let held = held.clone();
            tokio::spawn(async move {
                let period = (lease / 3).max(Duration::from_millis(100));
                loop {
                    renew(visibility.as_ref(), &*held.lock().await, lease).await;
                    tokio::time::sleep(period).await;
                }
            })
        };
        BatchLease {
            visibility,
            held,
            renewer: Some(renewer),
        }
    }

    /// Stops holding a record: no renewal touches it after this.
    async fn let_go(&self, record: &SqsMessage) -> Option<(QueueName, String)> {
        let receipt = record.receipt_handle.clone()?;
        let mut held = self.held.lock().await;
        let key = held.iter().find(|(_, r)| *r == receipt).cloned();
        if let Some(key) = &key {
            held.remove(key);
        }
        key
    }

    /// Deletes a finished record now (the invocation's response reports it as a success too).
    async fn acknowledge(&self, record: &SqsMessage) {
        if let Some((queue, receipt)) = self.let_go(record).await
            && let Err(error) = self.visibility.acknowledge(queue, &receipt).await
        {
            tracing::warn!(%error, "could not delete a finished job; it is deleted with its batch");
        }
    }

    /// Stops holding a record and makes it visible again after `wait`.
    async fn back_off(&self, record: &SqsMessage, wait: Duration) {
        if let Some((queue, receipt)) = self.let_go(record).await
            && let Err(error) = self.visibility.set_visibility(queue, &receipt, wait).await
        {
            tracing::warn!(%error, "could not set a failed job's backoff; it comes back after its lease");
        }
    }

    /// Stops renewing: the records are deleted (done) or come back after their backoff.
    fn release(mut self) {
        if let Some(renewer) = self.renewer.take() {
            renewer.abort();
        }
    }
}

impl Drop for BatchLease {
    fn drop(&mut self) {
        if let Some(renewer) = self.renewer.take() {
            renewer.abort();
        }
    }
}

async fn renew(
    visibility: &dyn JobVisibility,
    held: &HashSet<(QueueName, String)>,
    lease: Duration,
) {
    let calls = held.iter().map(|(queue, receipt)| async move {
        if let Err(error) = visibility.set_visibility(*queue, receipt, lease).await {
            tracing::warn!(%error, "could not renew a turn job's visibility");
        }
    });
    futures::future::join_all(calls).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_per_receive_and_is_capped() {
        let base = Duration::from_secs(2);
        assert_eq!(backoff(base, 1), Duration::from_secs(2));
        assert_eq!(backoff(base, 2), Duration::from_secs(4));
        assert_eq!(backoff(base, 3), Duration::from_secs(8));
        assert_eq!(backoff(base, 40), Duration::from_secs(30));
    }

    fn record(id: &str, group: &str) -> SqsMessage {
        let mut m = SqsMessage::default();
        m.message_id = Some(id.into());
        m.attributes.insert("MessageGroupId".into(), group.into());
        m
    }

    #[test]
    fn records_are_grouped_by_chat_in_order() {
        let groups = group_records(vec![
            record("1", "a"),
            record("2", "b"),
            record("3", "a"),
            record("4", "c"),
        ]);
        let ids: Vec<Vec<&str>> = groups
            .iter()
            .map(|g| g.iter().map(|r| r.message_id.as_deref().unwrap()).collect())
            .collect();
        assert_eq!(ids, [vec!["1", "3"], vec!["2"], vec!["4"]]);
    }
}
