//! End-to-end conversations against the real gateway on a random port.

mod support;

use std::time::Duration;

use serde_json::json;
use support::{Applied, TestApp, read_turn, read_until_whole, user_and_text};

#[tokio::test]
async fn a_three_turn_conversation_streams_in_order_and_is_stored() {
    let app = TestApp::start(2000.0).await;
    let (token, _) = app.guest().await;
    let mut client = app.connect(&token).await;
    let chat_id = "chat-three-turns";
    let mut applied = Applied::default();
    let mut expected = Vec::new();
    let mut run_id = None;
    for turn in 1..=3 {
        let prompt = format!("Tell me about tide pools, part {turn}");
        let ack = client
            .send_message(chat_id, &format!("u{turn}"), &prompt)
            .await;
        assert_eq!(ack["requestId"], format!("req-u{turn}"));
        let run = ack["runId"].as_str().unwrap().to_owned();
        assert_eq!(
            *run_id.get_or_insert(run.clone()),
            run,
            "one run for the conversation"
        );
        let started = client.recv_type("turn-started").await;
        assert_eq!(started["userMessage"]["id"], format!("u{turn}"));
        assert_eq!(started["assistantMessageId"], ack["assistantMessageId"]);
        assert_eq!(
            started["firstEventId"].as_u64().unwrap(),
            applied.last + 1,
            "ids go on across turns"
        );
        let before = applied.last;
        let complete = read_turn(&mut client, &mut applied).await;
        assert!(!applied.has_gap());
        assert_eq!(applied.duplicates_dropped, 0, "live frames never repeat");
        assert_eq!(complete["lastEventId"].as_u64().unwrap(), applied.last);
        assert!(applied.last > before + 3);
        // Consecutive ids, each applied once.
        for (i, (id, _)) in applied.chunks.iter().enumerate() {
            assert_eq!(*id, i as u64 + 1);
        }
        let message = applied.message();
        assert_eq!(
            message.id,
            ack["assistantMessageId"].as_str().unwrap(),
            "start carries the stable id"
        );
        assert!(
            message.text().len() > 40,
            "a real reply: {:?}",
            message.text()
        );
        expected.push(("user".to_string(), prompt));
        expected.push(("assistant".to_string(), message.text()));
        let stored = app.chat(chat_id, &token).await;
        let last = stored["messages"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()
            .clone();
        assert_eq!(last["id"], ack["assistantMessageId"]);
        assert_eq!(last["metadata"]["model"], "offline");
        assert!(
            last["metadata"]["usage"]["outputTokens"].as_u64().unwrap() > 0,
            "usage stored: {last}"
        );
    }
    let chat = app.chat(chat_id, &token).await;
    let stored: Vec<(String, String)> = chat["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(user_and_text)
        .collect();
    assert_eq!(
        stored, expected,
        "6 messages in order, replies equal to the streamed deltas"
    );
    assert_eq!(chat["title"], "Tell me about tide pools, part 1");
    assert_eq!(chat["session"]["streaming"], false);
    assert_eq!(
        chat["session"]["lastEventId"].as_u64().unwrap(),
        applied.last
    );
    let (_, list) = app.get_json("/api/chats", &token).await;
    assert_eq!(list["chats"][0]["id"], chat_id);
    app.server.stop().await.unwrap();
}

#[tokio::test]
async fn a_reconnect_mid_stream_resumes_without_loss_or_doubling() {
    let app = TestApp::start(60.0).await;
    let (token, _) = app.guest().await;
    let chat_id = "chat-resume";
    let mut first = app.connect(&token).await;
    let ack = first
        .send_message(chat_id, "u1", "Explain how rivers carve canyons over time")
        .await;
    let run_id = ack["runId"].as_str().unwrap().to_owned();
    let mut applied = Applied::default();
    while applied.chunks.len() < 6 {
        let frame = first.recv().await;
        if frame["type"] == "events" {
            applied.apply(&frame);
        }
    }
    drop(first); // the page goes away mid-reply

    let mid = app.chat(chat_id, &token).await;
    assert_eq!(mid["session"]["streaming"], true, "{mid}");
    let messages = mid["messages"].as_array().unwrap();
    assert_eq!(
        messages.len(),
        1,
        "the user's message is stored before streaming starts"
    );
    assert_eq!(messages[0]["id"], "u1");

    let mut second = app.connect(&token).await;
    second
        .send(json!({"action": "resume", "requestId": "r1", "chatId": chat_id, "runId": run_id, "lastEventId": applied.last}))
        .await;
    let subscribed = second.recv_type("subscribed").await;
    assert_eq!(subscribed["requestId"], "r1");
    assert_eq!(subscribed["runId"], run_id.as_str());
    assert_eq!(subscribed["streaming"], true);
    assert!(subscribed["replayThrough"].as_u64().unwrap() >= applied.last);
    let done = read_turn(&mut second, &mut applied).await;
    assert!(!applied.has_gap(), "no gap");
    for (i, (id, _)) in applied.chunks.iter().enumerate() {
        assert_eq!(*id, i as u64 + 1, "each event applied exactly once");
    }
    assert_eq!(done["lastEventId"].as_u64().unwrap(), applied.last);
    let stored = app.chat(chat_id, &token).await;
    let reply = &stored["messages"][1];
    assert_eq!(reply["id"], ack["assistantMessageId"]);
    assert_eq!(user_and_text(reply).1, applied.message().text());
    app.server.stop().await.unwrap();
}

#[tokio::test]
async fn a_fresh_page_resumes_the_running_turn_from_the_session() {
    let app = TestApp::start(80.0).await;
    let (token, _) = app.guest().await;
    let chat_id = "chat-refresh";
    let mut first = app.connect(&token).await;
    first.send_message(chat_id, "u1", "Hello there").await;
    let _ = read_turn(&mut first, &mut Applied::default()).await;
    first
        .send_message(chat_id, "u2", "And what about glaciers?")
        .await;
    first.recv_type("events").await;
    // A refresh: load the chat over HTTP, then resume from the session's lastEventId.
    let chat = app.chat(chat_id, &token).await;
    let session = &chat["session"];
    assert_eq!(session["streaming"], true);
    let mut page = app.connect(&token).await;
    let mut applied = Applied::starting_at(
        session["runId"].as_str().unwrap(),
        session["lastEventId"].as_u64().unwrap(),
    );
    page.send(json!({"action": "resume", "chatId": chat_id, "runId": session["runId"], "lastEventId": session["lastEventId"]}))
        .await;
    read_turn(&mut page, &mut applied).await;
    read_until_whole(&mut page, &mut applied).await;
    assert!(
        matches!(
            applied.chunks.first(),
            Some((_, chatrun_core::chunk::UIMessageChunk::Start { .. }))
        ),
        "the replay starts at the turn's start; resumed {session}, read {:?}",
        applied.frames_seen
    );
    let stored = app.chat(chat_id, &token).await;
    assert_eq!(stored["messages"].as_array().unwrap().len(), 4);
    assert_eq!(
        user_and_text(&stored["messages"][3]).1,
        applied.message().text()
    );
    assert_eq!(
        stored["messages"][3]["id"].as_str().unwrap(),
        applied.message().id
    );
    app.server.stop().await.unwrap();
}

#[tokio::test]
async fn two_connections_on_one_chat_both_receive_the_whole_stream() {
    let app = TestApp::start(100.0).await;
    let (token, _) = app.guest().await;
    let chat_id = "chat-two-tabs";
    let mut tab1 = app.connect(&token).await;
    let mut tab2 = app.connect(&token).await;
    // The second tab opened the chat before anything streamed.
    tab2.send(json!({"action": "resume", "chatId": chat_id, "lastEventId": 0}))
        .await;
    let first_sub = tab2.recv().await;
    assert_eq!(
        first_sub["type"], "error",
        "the chat does not exist yet: {first_sub}"
    );
    tab1.send_message(chat_id, "u1", "Warm up").await;
    read_turn(&mut tab1, &mut Applied::default()).await;
    tab2.send(json!({"action": "resume", "chatId": chat_id, "lastEventId": 0}))
        .await;
    let sub = tab2.recv_type("subscribed").await;
    let run_id = sub["runId"].as_str().unwrap().to_owned();
    let mut applied2 = Applied::starting_at(&run_id, sub["replayThrough"].as_u64().unwrap());

    let ack = tab1
        .send_message(chat_id, "u2", "Now tell me about coral reefs")
        .await;
    let mut applied1 = Applied::starting_at(&run_id, sub["replayThrough"].as_u64().unwrap());
    let started = tab2.recv_type("turn-started").await;
    assert_eq!(
        started["userMessage"]["id"], "u2",
        "the other tab learns of the new turn"
    );
    read_turn(&mut tab1, &mut applied1).await;
    read_turn(&mut tab2, &mut applied2).await;
    assert_eq!(
        applied1.chunks, applied2.chunks,
        "both tabs saw the same stream"
    );
    assert!(applied1.finished());
    let stored = app.chat(chat_id, &token).await;
    assert_eq!(stored["messages"][3]["id"], ack["assistantMessageId"]);
    assert_eq!(
        user_and_text(&stored["messages"][3]).1,
        applied2.message().text()
    );
    app.server.stop().await.unwrap();
}

#[tokio::test]
async fn stop_keeps_exactly_the_streamed_text() {
    let app = TestApp::start(40.0).await;
    let (token, _) = app.guest().await;
    let chat_id = "chat-stop";
    let mut client = app.connect(&token).await;
    let ack = client
        .send_message(
            chat_id,
            "u1",
            "Write a long story about a lighthouse keeper",
        )
        .await;
    let mut applied = Applied::default();
    while applied.chunks.len() < 5 {
        let frame = client.recv().await;
        if frame["type"] == "events" {
            applied.apply(&frame);
        }
    }
    client
        .send(json!({"action": "stop", "requestId": "s1", "chatId": chat_id}))
        .await;
    read_turn(&mut client, &mut applied).await;
    assert!(
        applied
            .chunks
            .iter()
            .any(|(_, c)| matches!(c, chatrun_core::chunk::UIMessageChunk::Abort { .. })),
        "the stream says it was aborted"
    );
    let streamed = applied.message().text();
    let stored = app.chat(chat_id, &token).await;
    assert_eq!(stored["session"]["streaming"], false);
    let reply = &stored["messages"][1];
    assert_eq!(reply["id"], ack["assistantMessageId"]);
    assert_eq!(
        user_and_text(reply).1,
        streamed,
        "stored text is exactly what streamed"
    );
    // The offline model's reply is far longer than what streamed before the stop.
    assert!(
        streamed.split_whitespace().count() < 60,
        "stopped early: {streamed}"
    );
    // The chat takes a new message after a stop.
    client.send_message(chat_id, "u2", "Go on").await;
    read_turn(&mut client, &mut Applied::default()).await;
    app.server.stop().await.unwrap();
}

#[tokio::test]
async fn a_stop_naming_the_last_event_shown_stores_exactly_the_text_on_screen() {
    let app = TestApp::start(40.0).await;
    let (token, _) = app.guest().await;
    let chat_id = "chat-stop-at";
    let mut client = app.connect(&token).await;
    let ack = client
        .send_message(
            chat_id,
            "u1",
            "Write a long story about a lighthouse keeper",
        )
        .await;
    let mut applied = Applied::default();
    while applied.chunks.len() < 6 {
        let frame = client.recv().await;
        if frame["type"] == "events" {
            applied.apply(&frame);
        }
    }
    // What the page shows at the click; frames already on their way are not kept.
    let on_screen = applied.message().text();
    let shown = applied.last;
    client
        .send(
            json!({"action": "stop", "requestId": "s1", "chatId": chat_id,
                     "runId": ack["runId"], "assistantMessageId": ack["assistantMessageId"],
                     "lastEventId": shown}),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    read_turn(&mut client, &mut applied).await;
    let stored = app.chat(chat_id, &token).await;
    assert_eq!(stored["session"]["streaming"], false);
    assert_eq!(
        user_and_text(&stored["messages"][1]).1,
        on_screen,
        "the stored reply ends where the screen froze"
    );
    app.server.stop().await.unwrap();
}

#[tokio::test]
async fn max_turns_and_idle_expiry_start_new_sessions_with_history_intact() {
    let app = TestApp::start_with(3000.0, |o| {
        o.settings.max_turns = 2;
        o.settings.session_idle = Duration::from_secs(1);
    })
    .await;
    let (token, _) = app.guest().await;
    let chat_id = "chat-sessions";
    let mut client = app.connect(&token).await;
    let a1 = client.send_message(chat_id, "u1", "one").await;
    read_turn(&mut client, &mut Applied::default()).await;
    let a2 = client.send_message(chat_id, "u2", "two").await;
    assert_eq!(a1["runId"], a2["runId"]);
    read_turn(&mut client, &mut Applied::default()).await;
    let ended = client.recv_type("session-ended").await;
    assert_eq!(ended["reason"], "max-turns");
    assert_eq!(ended["runId"], a1["runId"]);

    let a3 = client.send_message(chat_id, "u3", "three").await;
    assert_ne!(a3["runId"], a2["runId"], "max turns: a new run");
    assert_ne!(
        a3["accessToken"], a2["accessToken"],
        "max turns: a new access token"
    );
    let started = client.recv_type("turn-started").await;
    assert_eq!(started["firstEventId"], 1, "a new run counts from 1");
    read_turn(&mut client, &mut Applied::default()).await;

    tokio::time::sleep(Duration::from_millis(1300)).await;
    let a4 = client.send_message(chat_id, "u4", "four").await;
    assert_ne!(a4["runId"], a3["runId"], "idle: a new run");
    assert_ne!(
        a4["accessToken"], a3["accessToken"],
        "idle: a new access token"
    );
    read_turn(&mut client, &mut Applied::default()).await;

    let chat = app.chat(chat_id, &token).await;
    let ids: Vec<&str> = chat["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 8, "history intact across sessions: {ids:?}");
    assert_eq!(ids[0], "u1");
    assert_eq!(ids[6], "u4");
    app.server.stop().await.unwrap();
}

#[tokio::test]
async fn chats_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let opts = support::options(dir.path(), 3000.0);
    let server = chatrun_local::spawn(opts.clone()).await.unwrap();
    let http = reqwest::Client::new();
    let session: serde_json::Value = http
        .post(format!("{}/api/session", server.http_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = session["token"].as_str().unwrap().to_owned();
    let (ws, _) = tokio_tungstenite::connect_async(format!("{}?token={token}", server.ws_url()))
        .await
        .unwrap();
    let mut client = support::Client::from_stream(ws);
    client
        .send_message("chat-restart", "u1", "Remember me")
        .await;
    let mut applied = Applied::default();
    read_turn(&mut client, &mut applied).await;
    drop(client);
    server.stop().await.unwrap();

    let server = chatrun_local::spawn(opts).await.unwrap();
    let chat: serde_json::Value = http
        .get(format!("{}/api/chats/chat-restart", server.http_url()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let messages = chat["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2, "{chat}");
    assert_eq!(user_and_text(&messages[1]).1, applied.message().text());
    // The next turn goes on in the same session after the restart.
    let (ws, _) = tokio_tungstenite::connect_async(format!("{}?token={token}", server.ws_url()))
        .await
        .unwrap();
    let mut client = support::Client::from_stream(ws);
    let ack = client
        .send_message("chat-restart", "u2", "Still there?")
        .await;
    assert_eq!(ack["runId"], chat["session"]["runId"]);
    read_turn(&mut client, &mut Applied::default()).await;
    server.stop().await.unwrap();
}
