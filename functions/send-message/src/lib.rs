//! The `send-message` function: the `send-message` and `stop` routes.
//!
//! It returns fast (API Gateway's integration timeout is 29 s): the user's message is stored and
//! the turn queued here; the model runs in `run-turn`. Replies are posted to the connection.

#[cfg(feature = "lambda")]
pub mod wiring;

use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use chatrun_core::engine::websocket::{accept_frame, reply_error};
use chatrun_core::engine::{Services, turn};
use chatrun_core::error::ChatError;
use chatrun_core::protocol::ClientFrame;

/// Handles one frame of the `send-message` or `stop` route.
pub async fn handle(
    s: &Services,
    event: ApiGatewayWebsocketProxyRequest,
) -> ApiGatewayProxyResponse {
    let mut ok = ApiGatewayProxyResponse::default();
    ok.status_code = 200;
    let Some(connection_id) = event.request_context.connection_id.as_deref() else {
        tracing::error!("send-message event without a connection id");
        return ok;
    };
    let Some((frame, connection)) = accept_frame(s, connection_id, event.body.as_deref()).await
    else {
        return ok;
    };
    let result = match &frame {
        ClientFrame::SendMessage(request) => {
            match turn::send_message(s, &connection, request).await {
                Ok(ack) => {
                    s.post(connection_id, &ack).await;
                    Ok(())
                }
                Err(e) => Err(e),
            }
        }
        ClientFrame::Stop(request) => turn::stop(s, &connection, request).await,
        _ => Err(ChatError::BadRequest(
            "this route handles send-message and stop".into(),
        )),
    };
    if let Err(error) = result {
        reply_error(s, connection_id, &frame, &error).await;
    }
    ok
}
