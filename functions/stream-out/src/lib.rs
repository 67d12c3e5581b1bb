//! The `stream-out` function: the `resume`, `unsubscribe` and `ping` routes, and `$default`
//! (malformed frames and unknown actions land there and get an `error` frame).

#[cfg(feature = "lambda")]
pub mod wiring;

use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use chatrun_core::engine::websocket::{accept_frame, reply_error};
use chatrun_core::engine::{Services, stream};
use chatrun_core::error::ChatError;
use chatrun_core::protocol::{ClientFrame, ServerFrame};

/// Handles one frame of the `resume`, `unsubscribe`, `ping` or `$default` route.
pub async fn handle(
    s: &Services,
    event: ApiGatewayWebsocketProxyRequest,
) -> ApiGatewayProxyResponse {
    let mut ok = ApiGatewayProxyResponse::default();
    ok.status_code = 200;
    let Some(connection_id) = event.request_context.connection_id.as_deref() else {
        tracing::error!("stream-out event without a connection id");
        return ok;
    };
    let Some((frame, connection)) = accept_frame(s, connection_id, event.body.as_deref()).await
    else {
        return ok;
    };
    let result = match &frame {
        ClientFrame::Resume(request) => stream::resume(s, &connection, request).await,
        ClientFrame::Unsubscribe(request) => stream::unsubscribe(s, &connection, request).await,
        ClientFrame::Ping(ping) => {
            s.post(
                connection_id,
                &ServerFrame::Pong {
                    request_id: ping.request_id.clone(),
                },
            )
            .await;
            Ok(())
        }
        _ => Err(ChatError::BadRequest(
            "this route handles resume, unsubscribe and ping".into(),
        )),
    };
    if let Err(error) = result {
        reply_error(s, connection_id, &frame, &error).await;
    }
    ok
}
