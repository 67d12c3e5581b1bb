//! Crash mid-turn, for real: the `chatrun serve` process is killed with SIGKILL at random points
//! of a streaming reply and started again on the same data directory, as a machine losing power
//! would leave it. What the in-process kill suite (`functions/run-turn/tests/run_turn.rs`) cannot
//! see is checked here too: the SQLite files as a dead process left them, and the local queue's
//! in-flight rows, which come back after the turn's lease.
//!
//! After each kill, once the turn has settled: the user's message is stored once; the turn has
//! exactly one assistant message, or none and a visible `error` (a reply killed before any text);
//! and a client replaying the run sees one `start` and one `finish`, building exactly the stored
//! reply. 8 kills here; `CHATRUN_LONG=1` makes it 60.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chatrun_core::chunk::UIMessageChunk;
use serde_json::{Value, json};
use support::{Applied, Client};

const SECRET: &str = "process-kill-secret-0123456789abcdef";

struct Server {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    http: reqwest::Client,
}

impl Server {
    async fn start(&mut self) {
        let child = Command::new(env!("CARGO_BIN_EXE_chatrun"))
            .args(["serve", "--port", &self.port.to_string(), "--data-dir"])
            .arg(self.dir.path())
            .arg("--web-dir")
            .arg(self.dir.path().join("no-web"))
            .env("CHAT_TOKEN_SECRET", SECRET)
            .env("CHAT_OFFLINE_TOKENS_PER_SEC", "150")
            .env("CHAT_OFFLINE_REPLY_TOKENS", "60")
            .env("CHAT_FRAME_INTERVAL_MS", "20")
            // A killed turn's job comes back after its lease: keep the test short.
            .env("CHAT_TURN_LEASE_SECS", "1")
            .env("CHAT_RETRY_BACKOFF_SECS", "1")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chatrun starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = self.http.get(self.url("/api/health")).send().await
                && r.status().is_success()
            {
                return;
            }
            assert!(Instant::now() < deadline, "chatrun did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL, and reap it.
    fn kill(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    async fn connect(&self, token: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(format!(
            "ws://127.0.0.1:{}/ws?token={token}",
            self.port
        ))
        .await
        .expect("websocket connects");
        Client::from_stream(ws)
    }

    async fn chat(&self, chat_id: &str, token: &str) -> Value {
        let r = self
            .http
            .get(self.url(&format!("/api/chats/{chat_id}")))
            .bearer_auth(token)
            .send()
            .await
            .expect("GET the chat");
        assert_eq!(r.status().as_u16(), 200);
        r.json().await.expect("JSON")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.kill();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

#[tokio::test]
async fn a_server_process_killed_mid_turn_never_loses_or_doubles_a_reply() {
    let kills: u64 = if std::env::var_os("CHATRUN_LONG").is_some() {
        60
    } else {
        8
    };
    let mut server = Server {
        port: free_port(),
        dir: tempfile::tempdir().expect("temp dir"),
        child: None,
        http: reqwest::Client::new(),
    };
    server.start().await;
    let session: Value = server
        .http
        .post(server.url("/api/session"))
        .send()
        .await
        .expect("a guest session")
        .json()
        .await
        .expect("JSON");
    let token = session["token"].as_str().expect("token").to_owned();
    let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
    let (mut replies, mut errors, mut cut_replies) = (0, 0, 0);
    for kill in 0..kills {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        // A reply streams for about 400 ms once its job is picked up: kill before its first
        // token, anywhere in it, or after it was stored.
        let at = Duration::from_millis((seed >> 33) % 900);
        let chat_id = format!("kill-{kill}");
        let user_id = format!("u{kill}");
        let mut client = server.connect(&token).await;
        let ack = client
            .send_message(&chat_id, &user_id, "Tell me about tide pools")
            .await;
        tokio::time::sleep(at).await;
        server.kill();
        drop(client);
        server.start().await;

        // The turn settles: the redelivered job finishes it, or ends it with an error.
        let deadline = Instant::now() + Duration::from_secs(30);
        let chat = loop {
            let chat = server.chat(&chat_id, &token).await;
            // A session that ended (a dead-lettered turn ends it) has settled too.
            if chat["session"].is_null() || chat["session"]["streaming"] == false {
                break chat;
            }
            assert!(
                Instant::now() < deadline,
                "kill {kill} at {at:?}: the turn never settled: {chat}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let messages = chat["messages"].as_array().expect("messages");
        assert_eq!(
            messages[0]["id"],
            user_id.as_str(),
            "kill {kill}: the user's message stays"
        );
        assert!(
            messages.len() <= 2,
            "kill {kill}: one reply at most: {messages:?}"
        );

        // What a client replaying the whole run sees.
        let run_id = ack["runId"].as_str().expect("runId").to_owned();
        let mut client = server.connect(&token).await;
        client
            .send(json!({"action": "resume", "chatId": chat_id, "runId": run_id, "lastEventId": 0}))
            .await;
        let subscribed = client.recv_type("subscribed").await;
        let through = subscribed["replayThrough"].as_u64().expect("replayThrough");
        let mut applied = Applied::starting_at(&run_id, 0);
        while applied.last < through {
            let frame = client.recv_type("events").await;
            applied.apply(&frame);
        }
        let chunks: Vec<&UIMessageChunk> = applied.chunks.iter().map(|(_, c)| c).collect();
        let starts = chunks
            .iter()
            .filter(|c| matches!(c, UIMessageChunk::Start { .. }))
            .count();
        let finishes = chunks.iter().filter(|c| c.is_finish()).count();
        assert_eq!(
            (starts, finishes),
            (1, 1),
            "kill {kill} at {at:?}: one reply streamed"
        );
        let errored = chunks
            .iter()
            .any(|c| matches!(c, UIMessageChunk::Error { .. }));
        match messages.get(1) {
            Some(reply) => {
                assert_eq!(reply["id"], ack["assistantMessageId"], "kill {kill}");
                assert_eq!(
                    support::user_and_text(reply).1,
                    applied.message().text(),
                    "kill {kill} at {at:?}: the stored reply is what streamed"
                );
                if errored {
                    cut_replies += 1;
                } else {
                    replies += 1;
                }
            }
            None => {
                assert!(errored, "kill {kill} at {at:?}: no reply and no error");
                errors += 1;
            }
        }
    }
    server.kill();
    println!(
        "{kills} process kills survived: {replies} whole replies, {cut_replies} replies cut by the \
         kill and ended with an error, {errors} turns ended with an error before any text"
    );
    assert_eq!(replies + cut_replies + errors, kills);
}
