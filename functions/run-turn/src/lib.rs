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

/// What run-turn keeps of a record while its turn runs. The `SqsMessage` itself (its attribute
/// maps, its body, its source's ARN) is read once and dropped: with a turn lasting seconds and
/// thousands of turns in flight locally, it was about 1 KB per turn held for nothing.
struct Record {
    message_id: String,
    receipt_handle: Option<String>,
    queue: QueueName,
    /// The FIFO message group (the chat).
    group: Option<String>,
    /// How many times it has been received, this time included.
    receive_count: u32,
    /// The turn job, or why the body is not one.
    job: Result<TurnJob, String>,
}

impl Record {
    fn read(deps: &RunTurnDeps, message: SqsMessage) -> Record {
        let queue = if deps.dead_letter_source_arn.is_some()
            && message.event_source_arn.as_deref() == deps.dead_letter_source_arn.as_deref()
        {
            QueueName::DeadLetters
        } else {
            QueueName::Turns
        };
        let job = match message.body.as_deref() {
            Some(body) => serde_json::from_str(body).map_err(|e| e.to_string()),
            None => Err("no body".into()),
        };
        Record {
            receive_count: message
                .attributes
                .get("ApproximateReceiveCount")
                .and_then(|n| n.parse().ok())
                .unwrap_or(1),
            group: message.attributes.get("MessageGroupId").cloned(),
            message_id: message.message_id.unwrap_or_default(),
            receipt_handle: message.receipt_handle,
            queue,
            job,
        }
    }
}

/// Handles a batch, reporting the records to retry.
pub async fn handle(deps: &RunTurnDeps, event: SqsEvent) -> SqsBatchResponse {
    let records: Vec<Record> = event
        .records
        .into_iter()
        .map(|message| Record::read(deps, message))
        .collect();
    let lease = BatchLease::hold(deps, &records);
    let groups = group_records(records);
    let turns =
        futures::future::join_all(groups.iter().map(|group| handle_group(deps, &lease, group)));
    // The lease is renewed beside the turns, in this task rather than a task of its own (one
    // more task per batch, and locally a batch is often one turn): the renewals end with them.
    let failed: Vec<Vec<String>> = tokio::select! {
        failed = turns => failed,
        never = lease.renew() => match never {},
    };
    let mut response = SqsBatchResponse::default();
    for message_id in failed.into_iter().flatten() {
        response.add_failure(message_id);
    }
    response
}

/// The batch's records by FIFO message group, in their order.
fn group_records(records: Vec<Record>) -> Vec<Vec<Record>> {
    let mut groups: Vec<Vec<Record>> = Vec::new();
    for record in records {
        let same_group =
            |g: &&mut Vec<Record>| record.group.is_some() && g[0].group == record.group;
        match groups.iter_mut().find(same_group) {
            Some(records) => records.push(record),
            None => groups.push(vec![record]),
        }
    }
    groups
}

/// Runs one group's records in order; returns the ids to report as failures.
async fn handle_group(deps: &RunTurnDeps, lease: &BatchLease, records: &[Record]) -> Vec<String> {
    let mut failed = Vec::new();
    for record in records {
        if !failed.is_empty() {
            // An earlier turn of this chat will run again first: this one must wait for it.
            lease.back_off(record, Duration::ZERO).await;
            failed.push(record.message_id.clone());
            continue;
        }
        match handle_record(deps, lease, record).await {
            RecordResult::Retry => failed.push(record.message_id.clone()),
            // Gone from the queue now, so this chat's next turn can start at once.
            RecordResult::Done => lease.acknowledge(record).await,
        }
    }
    failed
}

/// How long a job that failed for a passing reason waits before its next attempt.
fn backoff(base: Duration, receive_count: u32) -> Duration {
    let doubled = base.saturating_mul(1 << receive_count.saturating_sub(1).min(8));
    doubled.min(Duration::from_secs(30))
}

async fn handle_record(deps: &RunTurnDeps, lease: &BatchLease, record: &Record) -> RecordResult {
    let message_id = record.message_id.as_str();
    let queue = record.queue;
    let job = match &record.job {
        Ok(job) => job,
        Err(error) => {
            // Not a turn job: no retry can make it one, and it names no turn to end.
            tracing::error!(message_id, error, "not a turn job; dropped");
            return RecordResult::Done;
        }
    };
    let s = &deps.services;
    // Ending a turn (a dead letter's, or a failed one's below) is rare, and its future is
    // larger than a running turn's (2.6 KB against 2.0 KB): boxed, it takes no room in the
    // future of every turn in flight.
    let result = match queue {
        QueueName::DeadLetters => Box::pin(turn::fail_turn(s, job)).await,
        QueueName::Turns => turn::run_turn(s, deps.model.as_ref(), job).await,
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
        let wait = backoff(s.settings.retry_backoff, record.receive_count);
        tracing::warn!(message_id, chat_id = %job.chat_id, %error, ?wait, "turn failed; retrying after a backoff");
        lease.back_off(record, wait).await;
        return RecordResult::Retry;
    }
    tracing::error!(message_id, chat_id = %job.chat_id, %error, "turn failed for good; ending it");
    let text = "Something went wrong with this reply. Please regenerate it.";
    match Box::pin(turn::end_turn_with_error(s, job, text, None)).await {
        Ok(_) => RecordResult::Done,
        Err(end_error) => {
            // Could not even end it: leave it to redelivery and, at last, the dead-letter queue.
            tracing::error!(message_id, chat_id = %job.chat_id, error = %end_error, "could not end a failed turn");
            lease
                .back_off(
                    record,
                    backoff(s.settings.retry_backoff, record.receive_count),
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
    /// How long each renewal holds the records.
    lease: Duration,
    /// The records still held: (queue, receipt handle).
    held: tokio::sync::Mutex<HashSet<(QueueName, String)>>,
}

impl BatchLease {
    /// The lease on every record of the batch; [`BatchLease::renew`] keeps it.
    fn hold(deps: &RunTurnDeps, records: &[Record]) -> BatchLease {
        let held: HashSet<(QueueName, String)> = records
            .iter()
            .filter_map(|r| Some((r.queue, r.receipt_handle.clone()?)))
            .collect();
        BatchLease {
            visibility: deps.visibility.clone(),
            lease: deps.services.settings.turn_lease,
            held: tokio::sync::Mutex::new(held),
        }
    }

    /// Sets every held record's visibility to the lease at once, then again every third of
    /// the lease, until dropped (when the batch's turns are done).
    async fn renew(&self) -> std::convert::Infallible {
        let period = (self.lease / 3).max(Duration::from_millis(100));
        loop {
            // Under the lock for the length of the requests: see the type's comment.
            let held = self.held.lock().await;
            let calls = held.iter().map(|(queue, receipt)| async move {
                if let Err(error) = self
                    .visibility
                    .set_visibility(*queue, receipt, self.lease)
                    .await
                {
                    tracing::warn!(%error, "could not renew a turn job's visibility");
                }
            });
            futures::future::join_all(calls).await;
            drop(held);
            tokio::time::sleep(period).await;
        }
    }

    /// Stops holding a record: no renewal touches it after this.
    async fn let_go(&self, record: &Record) -> Option<(QueueName, String)> {
        let key = (record.queue, record.receipt_handle.clone()?);
        self.held.lock().await.take(&key)
    }

    /// Deletes a finished record now (the invocation's response reports it as a success too).
    async fn acknowledge(&self, record: &Record) {
        if let Some((queue, receipt)) = self.let_go(record).await
            && let Err(error) = self.visibility.acknowledge(queue, &receipt).await
        {
            tracing::warn!(%error, "could not delete a finished job; it is deleted with its batch");
        }
    }

    /// Stops holding a record and makes it visible again after `wait`.
    async fn back_off(&self, record: &Record, wait: Duration) {
        if let Some((queue, receipt)) = self.let_go(record).await
            && let Err(error) = self.visibility.set_visibility(queue, &receipt, wait).await
        {
            tracing::warn!(%error, "could not set a failed job's backoff; it comes back after its lease");
        }
    }
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

    fn record(id: &str, group: &str) -> Record {
        Record {
            message_id: id.into(),
            receipt_handle: None,
            queue: QueueName::Turns,
            group: Some(group.into()),
            receive_count: 1,
            job: Err("not read".into()),
        }
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
            .map(|g| g.iter().map(|r| r.message_id.as_str()).collect())
            .collect();
        assert_eq!(ids, [vec!["1", "3"], vec!["2"], vec!["4"]]);
    }
}
