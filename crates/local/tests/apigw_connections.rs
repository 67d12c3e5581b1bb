//! `ApiGwConnections` (the real `aws-sdk-apigatewaymanagement` client) against the local
//! gateway's `@connections` API: posts reach the socket, unknown ids come back as `Gone`.

mod support;

use chatrun_aws::ApiGwConnections;
use chatrun_core::error::PostError;
use chatrun_core::ports::Connections;
use support::TestApp;

#[tokio::test]
async fn the_sdk_client_posts_to_sockets_and_reports_gone_connections() {
    let app = TestApp::start(3000.0).await;
    let (token, _) = app.guest().await;
    let mut client = app.connect(&token).await;
    client.ping().await;
    let id = app
        .server
        .connection_ids()
        .pop()
        .expect("one open connection");

    let config = chatrun_aws::emulators::sdk_config(&app.server.http_url()).await;
    let connections = ApiGwConnections::for_endpoint(&config, &app.server.http_url());
    connections
        .post(&id, r#"{"type":"pong","requestId":"via-sdk"}"#)
        .await
        .unwrap();
    assert_eq!(client.recv_type("pong").await["requestId"], "via-sdk");

    let gone = connections.post("no-such-connection", "{}").await;
    assert!(matches!(gone, Err(PostError::Gone)), "{gone:?}");

    connections.close(&id).await.unwrap();
    client.closed().await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(matches!(
        connections.post(&id, "{}").await,
        Err(PostError::Gone)
    ));
    assert!(matches!(connections.close(&id).await, Err(PostError::Gone)));
    app.server.stop().await.unwrap();
}
