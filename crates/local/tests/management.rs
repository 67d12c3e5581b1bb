//! The local `@connections` management API behaves like API Gateway's.

mod support;

use serde_json::Value;
use support::TestApp;

#[tokio::test]
async fn post_reaches_the_socket_get_describes_it_delete_closes_it_and_unknown_ids_are_gone() {
    let app = TestApp::start(3000.0).await;
    let (token, _) = app.guest().await;
    let mut client = app.connect(&token).await;
    // Clients never see their connection id; the functions learn it from their events.
    client.ping().await;
    let ids = app.server.connection_ids();
    assert_eq!(ids.len(), 1);
    let id = &ids[0];

    let r = app
        .http
        .post(app.url(&format!("/@connections/{id}")))
        .body(r#"{"type":"pong","requestId":"from-outside"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let frame = client.recv_type("pong").await;
    assert_eq!(frame["requestId"], "from-outside");

    let r = app
        .http
        .get(app.url(&format!("/@connections/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let info: Value = r.json().await.unwrap();
    for field in ["ConnectedAt", "LastActiveAt"] {
        let at = info[field].as_str().unwrap();
        assert!(
            chrono::DateTime::parse_from_rfc3339(at).is_ok(),
            "{field} is ISO-8601: {at}"
        );
    }
    assert_eq!(info["Identity"]["SourceIp"], "127.0.0.1");

    for method in ["POST", "GET", "DELETE"] {
        let r = app
            .http
            .request(
                method.parse().unwrap(),
                app.url("/@connections/unknown-connection"),
            )
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 410, "{method}");
        assert_eq!(r.headers()["x-amzn-errortype"], "GoneException");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["__type"], "GoneException");
    }

    let r = app
        .http
        .delete(app.url(&format!("/@connections/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    client.closed().await;
    // After $disconnect the id is gone.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let r = app
        .http
        .post(app.url(&format!("/@connections/{id}")))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 410);
    app.server.stop().await.unwrap();
}
