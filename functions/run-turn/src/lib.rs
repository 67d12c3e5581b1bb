//! The `run-turn` function: consumes the SQS FIFO turn queue (and its dead-letter queue).
//!
//! Records of one batch are handled in order; after the first failure the rest are reported as
//! failures too, because a FIFO group must not run a later turn before an earlier one. Dead
//! letters (records whose source is the dead-letter queue) end their turn with an error chunk.

use std::sync::Arc;

use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent};
use chatrun_core::domain::TurnJob;
use chatrun_core::engine::Services;
use chatrun_core::engine::turn::{self, TurnOutcome};
use chatrun_core::error::ChatError;
use chatrun_core::ports::LanguageModel;

/// What run-turn works with.
#[derive(Clone)]
pub struct RunTurnDeps {
    pub services: Services,
    pub model: Arc<dyn LanguageModel>,
    /// The ARN of the dead-letter queue; records from it are dead letters.
    pub dead_letter_source_arn: Option<String>,
}

/// Handles a batch, reporting the records to retry.
pub async fn handle(deps: &RunTurnDeps, event: SqsEvent) -> SqsBatchResponse {
    let mut response = SqsBatchResponse::default();
    let mut failed = false;
    for record in event.records {
        let message_id = record.message_id.clone().unwrap_or_default();
        if failed {
            response.add_failure(message_id);
            continue;
        }
        let dead_letter = deps.dead_letter_source_arn.is_some()
            && record.event_source_arn.as_deref() == deps.dead_letter_source_arn.as_deref();
        let job: TurnJob = match record.body.as_deref().map(serde_json::from_str) {
            Some(Ok(job)) => job,
            other => {
                // A record that is not a turn job can never succeed: drop it, don't retry it.
                tracing::error!(message_id, error = ?other.map(|r| r.err()), "not a turn job; dropped");
                continue;
            }
        };
        let result = if dead_letter {
            turn::fail_turn(&deps.services, &job).await
        } else {
            turn::run_turn(&deps.services, deps.model.as_ref(), &job).await
        };
        match result {
            Ok(TurnOutcome::Completed) => {
                tracing::info!(message_id, chat_id = %job.chat_id, dead_letter, "turn completed")
            }
            Ok(TurnOutcome::Dropped(why)) => {
                tracing::info!(message_id, chat_id = %job.chat_id, why, "turn dropped")
            }
            Err(error) => {
                let retry = error.is_retryable() || matches!(error, ChatError::Internal { .. });
                tracing::warn!(message_id, chat_id = %job.chat_id, %error, retry, "turn failed");
                response.add_failure(message_id);
                failed = true;
            }
        }
    }
    response
}
