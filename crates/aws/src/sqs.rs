//! `SqsTurnQueue`: the FIFO turn queue on SQS (group = chat id, deduplication id = the turn),
//! and the consumer side the local gateway uses to play Lambda's event source mapping.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use chatrun_core::domain::TurnJob;
use chatrun_core::error::QueueError;
use chatrun_core::ports::{JobVisibility, QueueName, ReceivedTurn, TurnQueue, TurnQueueConsumer};

/// The turn queue and its dead-letter queue.
#[derive(Clone, Debug)]
pub struct SqsTurnQueue {
    client: Client,
    queue_url: String,
    dead_letter_url: Option<String>,
    queue_arn: String,
    dead_letter_arn: String,
}

fn queue_error<E: ProvideErrorMetadata + std::fmt::Debug, R: std::fmt::Debug>(
    error: SdkError<E, R>,
) -> QueueError {
    let transient = match &error {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(e) => matches!(
            e.err().code(),
            Some(
                "ThrottlingException"
                    | "RequestThrottled"
                    | "ServiceUnavailable"
                    | "InternalError"
                    | "KmsThrottled"
            )
        ),
        _ => false,
    };
    if transient {
        QueueError::Transient(format!("{error:?}"))
    } else {
        QueueError::Backend(format!("{error:?}"))
    }
}

impl SqsTurnQueue {
    /// A producer-only queue (the Lambda functions): nothing is asked of SQS.
    pub fn producer(client: Client, queue_url: impl Into<String>) -> Self {
        SqsTurnQueue {
            client,
            queue_url: queue_url.into(),
            dead_letter_url: None,
            queue_arn: String::new(),
            dead_letter_arn: String::new(),
        }
    }

    /// The dead-letter queue's URL, so that run-turn can set the visibility of dead letters too.
    pub fn with_dead_letter_url(mut self, dead_letter_url: impl Into<String>) -> Self {
        self.dead_letter_url = Some(dead_letter_url.into());
        self
    }

    /// A queue that also consumes (the local gateway), with the ARNs its events carry.
    pub async fn consumer(
        client: Client,
        queue_url: &str,
        dead_letter_url: &str,
    ) -> Result<Self, QueueError> {
        let arn = |url: String| {
            let client = client.clone();
            async move {
                client
                    .get_queue_attributes()
                    .queue_url(url)
                    .attribute_names(QueueAttributeName::QueueArn)
                    .send()
                    .await
                    .map_err(queue_error)?
                    .attributes
                    .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
                    .ok_or_else(|| QueueError::Backend("queue without an ARN".into()))
            }
        };
        Ok(SqsTurnQueue {
            queue_arn: arn(queue_url.to_owned()).await?,
            dead_letter_arn: arn(dead_letter_url.to_owned()).await?,
            client,
            queue_url: queue_url.into(),
            dead_letter_url: Some(dead_letter_url.into()),
        })
    }

    /// Creates `{name}.fifo` and `{name}-dlq.fifo` with a redrive policy, returning both URLs.
    /// Existing queues with the same attributes are reused.
    pub async fn create_queues(
        client: &Client,
        name: &str,
        visibility_timeout: Duration,
        max_receives: u32,
    ) -> Result<(String, String), QueueError> {
        let dead_letter_url = client
            .create_queue()
            .queue_name(format!("{name}-dlq.fifo"))
            .attributes(QueueAttributeName::FifoQueue, "true")
            .attributes(QueueAttributeName::MessageRetentionPeriod, "1209600")
            .send()
            .await
            .map_err(queue_error)?
            .queue_url
            .unwrap_or_default();
        let dead_letter_arn = client
            .get_queue_attributes()
            .queue_url(&dead_letter_url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(queue_error)?
            .attributes
            .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
            .unwrap_or_default();
        let redrive = serde_json::json!({"deadLetterTargetArn": dead_letter_arn, "maxReceiveCount": max_receives}).to_string();
        let queue_url = client
            .create_queue()
            .queue_name(format!("{name}.fifo"))
            .attributes(QueueAttributeName::FifoQueue, "true")
            .attributes(
                QueueAttributeName::VisibilityTimeout,
                visibility_timeout.as_secs().max(1).to_string(),
            )
            .attributes(QueueAttributeName::RedrivePolicy, redrive)
            .send()
            .await
            .map_err(queue_error)?
            .queue_url
            .unwrap_or_default();
        Ok((queue_url, dead_letter_url))
    }

    fn url(&self, queue: QueueName) -> Result<&str, QueueError> {
        match queue {
            QueueName::Turns => Ok(&self.queue_url),
            QueueName::DeadLetters => self
                .dead_letter_url
                .as_deref()
                .ok_or_else(|| QueueError::Backend("no dead-letter queue configured".into())),
        }
    }
}

#[async_trait]
impl TurnQueue for SqsTurnQueue {
    async fn enqueue(&self, job: &TurnJob) -> Result<(), QueueError> {
        let body = serde_json::to_string(job).map_err(|e| QueueError::Backend(e.to_string()))?;
        self.client
            .send_message()
            .queue_url(&self.queue_url)
            .message_group_id(job.group_id())
            .message_deduplication_id(job.deduplication_id())
            .message_body(body)
            .send()
            .await
            .map_err(queue_error)?;
        Ok(())
    }
}

#[async_trait]
impl TurnQueueConsumer for SqsTurnQueue {
    async fn receive(
        &self,
        queue: QueueName,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<ReceivedTurn>, QueueError> {
        let out = self
            .client
            .receive_message()
            .queue_url(self.url(queue)?)
            .max_number_of_messages(max.clamp(1, 10) as i32)
            .wait_time_seconds(wait.as_secs().min(20) as i32)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await
            .map_err(queue_error)?;
        Ok(out
            .messages
            .unwrap_or_default()
            .into_iter()
            .map(|m| {
                let attrs = m.attributes.unwrap_or_default();
                let attr = |name: MessageSystemAttributeName| {
                    attrs.get(&name).cloned().unwrap_or_default()
                };
                ReceivedTurn {
                    message_id: m.message_id.unwrap_or_default(),
                    receipt_handle: m.receipt_handle.unwrap_or_default(),
                    body: m.body.unwrap_or_default(),
                    group_id: attr(MessageSystemAttributeName::MessageGroupId),
                    deduplication_id: attr(MessageSystemAttributeName::MessageDeduplicationId),
                    receive_count: attr(MessageSystemAttributeName::ApproximateReceiveCount)
                        .parse()
                        .unwrap_or(1),
                    sent_at: attr(MessageSystemAttributeName::SentTimestamp)
                        .parse()
                        .unwrap_or(0),
                }
            })
            .collect())
    }

    async fn delete(&self, queue: QueueName, receipt_handle: &str) -> Result<(), QueueError> {
        match self
            .client
            .delete_message()
            .queue_url(self.url(queue)?)
            .receipt_handle(receipt_handle)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            // An outdated receipt: the message came back to someone else; nothing to do.
            Err(SdkError::ServiceError(e)) if e.err().code() == Some("ReceiptHandleIsInvalid") => {
                Ok(())
            }
            Err(e) => Err(queue_error(e)),
        }
    }

    fn source_arn(&self, queue: QueueName) -> String {
        match queue {
            QueueName::Turns => self.queue_arn.clone(),
            QueueName::DeadLetters => self.dead_letter_arn.clone(),
        }
    }
}

#[async_trait]
impl JobVisibility for SqsTurnQueue {
    async fn set_visibility(
        &self,
        queue: QueueName,
        receipt_handle: &str,
        timeout: Duration,
    ) -> Result<(), QueueError> {
        self.client
            .change_message_visibility()
            .queue_url(self.url(queue)?)
            .receipt_handle(receipt_handle)
            // SQS's limit is 12 hours.
            .visibility_timeout(timeout.as_secs().min(43_200) as i32)
            .send()
            .await
            .map_err(queue_error)?;
        Ok(())
    }

    async fn acknowledge(&self, queue: QueueName, receipt_handle: &str) -> Result<(), QueueError> {
        TurnQueueConsumer::delete(self, queue, receipt_handle).await
    }
}
