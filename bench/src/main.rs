//! `chatrun-bench`: a load generator that measures chatrun the way its targets are stated:
//! time to first token, CPU seconds per 1,000 turns and memory per open connection, with the
//! server in its own process so that only the server's CPU and memory are counted. The same run
//! against `baseline` (a bare axum WebSocket server streaming frames of the same shape at the
//! same pace, with nothing persisted) shows the floor chatrun is measured against.
//!
//! ```text
//! cargo build --release -p chatrun-local -p chatrun-bench
//! target/release/chatrun-bench run --chats 1000             # chatrun, embedded backend
//! target/release/chatrun-bench run --chats 1000 --baseline  # the floor
//! ```

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a server, open `--chats` connections, run `--turns` turns on each, print figures.
    Run {
        #[arg(long, default_value_t = 200)]
        chats: usize,
        #[arg(long, default_value_t = 1)]
        turns: usize,
        /// Speed of the streamed replies.
        #[arg(long, default_value_t = 50.0)]
        tokens_per_sec: f64,
        /// Measure the bare axum baseline instead of chatrun.
        #[arg(long)]
        baseline: bool,
        /// The chatrun binary.
        #[arg(long, default_value = "target/release/chatrun")]
        chatrun: PathBuf,
    },
    /// The baseline server (started by `run --baseline`).
    Baseline {
        #[arg(long)]
        port: u16,
        #[arg(long)]
        tokens_per_sec: f64,
    },
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match Cli::parse().command {
        Cmd::Run {
            chats,
            turns,
            tokens_per_sec,
            baseline,
            chatrun,
        } => runtime.block_on(run(chats, turns, tokens_per_sec, baseline, chatrun)),
        Cmd::Baseline {
            port,
            tokens_per_sec,
        } => runtime.block_on(baseline::serve(port, tokens_per_sec)),
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// CPU seconds (user + system) and resident memory of a process, from /proc.
fn usage(pid: u32) -> anyhow::Result<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after_name = &stat[stat.rfind(')').context("stat format")? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kb = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .context("VmRSS")?
        .parse()?;
    // Linux reports CPU time in clock ticks of 1/100 s (USER_HZ).
    Ok((ticks / 100.0, rss_kb))
}

struct Server {
    child: Child,
    _dir: Option<PathBuf>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = &self._dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

async fn start(
    port: u16,
    tokens_per_sec: f64,
    baseline: bool,
    chatrun: &PathBuf,
) -> anyhow::Result<Server> {
    let server = if baseline {
        let me = std::env::current_exe()?;
        let child = Command::new(me)
            .args([
                "baseline",
                "--port",
                &port.to_string(),
                "--tokens-per-sec",
                &tokens_per_sec.to_string(),
            ])
            .stdout(Stdio::null())
            .spawn()?;
        Server { child, _dir: None }
    } else {
        if !chatrun.exists() {
            bail!(
                "{} not found: cargo build --release -p chatrun-local",
                chatrun.display()
            );
        }
        let dir = std::env::temp_dir().join(format!("chatrun-bench-{port}"));
        let child = Command::new(chatrun)
            .args(["serve", "--port", &port.to_string(), "--data-dir"])
            .arg(&dir)
            .env("CHAT_OFFLINE_TOKENS_PER_SEC", tokens_per_sec.to_string())
            .env("RUST_LOG", "warn")
            .env_remove("OPENAI_API_KEY")
            .env_remove("OPENAI_BASE_URL")
            .env_remove("ANTHROPIC_API_KEY")
            .stdout(Stdio::null())
            .spawn()?;
        Server {
            child,
            _dir: Some(dir),
        }
    };
    let http = reqwest::Client::new();
    for _ in 0..200 {
        if http
            .get(format!("http://127.0.0.1:{port}/api/health"))
            .send()
            .await
            .is_ok()
        {
            return Ok(server);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the server did not start")
}

struct TurnTiming {
    first_token: Duration,
    total: Duration,
    frames: usize,
}

async fn run(
    chats: usize,
    turns: usize,
    tokens_per_sec: f64,
    baseline: bool,
    chatrun: PathBuf,
) -> anyhow::Result<()> {
    let port = free_port()?;
    let server = start(port, tokens_per_sec, baseline, &chatrun).await?;
    let pid = server.child.id();
    let http = reqwest::Client::new();
    let session: Value = http
        .post(format!("http://127.0.0.1:{port}/api/session"))
        .send()
        .await?
        .json()
        .await?;
    let token = session["token"].as_str().unwrap_or("baseline").to_owned();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, rss_before) = usage(pid)?;

    let mut sockets = Vec::with_capacity(chats);
    for _ in 0..chats {
        let (ws, _) =
            tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/ws?token={token}"))
                .await?;
        sockets.push(ws);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (cpu_before, rss_open) = usage(pid)?;

    let started = Instant::now();
    let tasks: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(i, mut ws)| {
            tokio::spawn(async move {
                let mut timings = Vec::new();
                for t in 0..turns {
                    let frame = json!({
                        "action": "send-message", "chatId": format!("bench-{i}"), "trigger": "submit-message",
                        "message": {"id": format!("m{i}-{t}"), "role": "user",
                                    "parts": [{"type": "text", "text": format!("Tell me about topic {i} and {t}")}]}
                    });
                    let sent = Instant::now();
                    ws.send(Message::Text(frame.to_string().into())).await?;
                    let mut first_token = None;
                    let mut frames = 0;
                    loop {
                        let Some(message) = ws.next().await else { bail!("socket closed") };
                        let Message::Text(text) = message? else { continue };
                        let v: Value = serde_json::from_str(&text)?;
                        match v["type"].as_str() {
                            Some("events") => {
                                frames += 1;
                                if first_token.is_none() && text.contains("text-delta") {
                                    first_token = Some(sent.elapsed());
                                }
                            }
                            Some("turn-complete") => break,
                            Some("error") => bail!("error frame: {text}"),
                            _ => {}
                        }
                    }
                    timings.push(TurnTiming {
                        first_token: first_token.context("no text-delta")?,
                        total: sent.elapsed(),
                        frames,
                    });
                }
                anyhow::Ok((ws, timings))
            })
        })
        .collect();
    let mut timings = Vec::new();
    let mut open = Vec::new();
    for task in tasks {
        let (ws, t) = task.await??;
        open.push(ws);
        timings.extend(t);
    }
    let wall = started.elapsed();
    let (cpu_after, rss_after) = usage(pid)?;
    drop(open);

    let mut ttft: Vec<Duration> = timings.iter().map(|t| t.first_token).collect();
    ttft.sort();
    let pct = |p: f64| ttft[((ttft.len() as f64 - 1.0) * p).round() as usize];
    let frames: usize = timings.iter().map(|t| t.frames).sum();
    let mean_total =
        timings.iter().map(|t| t.total.as_secs_f64()).sum::<f64>() / timings.len() as f64;
    let cpu = cpu_after - cpu_before;
    println!(
        "server: {}",
        if baseline {
            "bare axum baseline (no persistence)"
        } else {
            "chatrun serve (embedded SQLite, every frame persisted)"
        }
    );
    println!(
        "chats: {chats}, turns: {}, wall: {:.2} s, mean turn: {:.2} s",
        timings.len(),
        wall.as_secs_f64(),
        mean_total
    );
    println!(
        "time to first token: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        ttft.last().unwrap().as_secs_f64() * 1e3
    );
    println!(
        "server CPU: {:.2} s for {} turns = {:.2} s per 1,000 turns ({} frames, {:.1} per turn)",
        cpu,
        timings.len(),
        cpu / timings.len() as f64 * 1000.0,
        frames,
        frames as f64 / timings.len() as f64
    );
    println!(
        "server memory: {} KB idle, {} KB with {chats} open = {:.1} KB per connection; {} KB after the turns",
        rss_before,
        rss_open,
        (rss_open.saturating_sub(rss_before)) as f64 / chats as f64,
        rss_after
    );
    Ok(())
}

mod baseline {
    //! The floor: a bare axum WebSocket server with the two settings TOOLCHAIN.md names
    //! (TCP_NODELAY, a 4 KiB read buffer) that answers each message with frames of chatrun's
    //! shape, at the same pace and coalescing, persisting nothing.

    use std::time::Duration;

    use axum::Router;
    use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
    use axum::routing::{get, post};
    use axum::serve::ListenerExt;
    use futures::{SinkExt, StreamExt};
    use serde_json::json;

    const WORDS: usize = 90;

    pub async fn serve(port: u16, tokens_per_sec: f64) -> anyhow::Result<()> {
        let app = Router::new()
            .route("/api/health", get(|| async { "ok" }))
            .route(
                "/api/session",
                post(|| async { axum::Json(json!({"token": "baseline"})) }),
            )
            .route(
                "/ws",
                get(move |ws: WebSocketUpgrade| async move {
                    ws.read_buffer_size(4096)
                        .on_upgrade(move |socket| session(socket, tokens_per_sec))
                }),
            );
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, app).await?;
        Ok(())
    }

    async fn session(socket: WebSocket, tokens_per_sec: f64) {
        let (mut tx, mut rx) = socket.split();
        let mut next_id = 1u64;
        while let Some(Ok(message)) = rx.next().await {
            let Message::Text(_) = message else { continue };
            let frame = |first: u64, chunks: serde_json::Value| {
                json!({"type": "events", "chatId": "c", "runId": "r", "firstEventId": first, "chunks": chunks, "replay": false}).to_string()
            };
            let _ = tx
                .send(Message::Text(json!({"type": "ack"}).to_string().into()))
                .await;
            let start = json!([{"type": "start", "messageId": "m"}, {"type": "start-step"}, {"type": "text-start", "id": "t1"}, {"type": "text-delta", "id": "t1", "delta": "Word "}]);
            let _ = tx.send(Message::Text(frame(next_id, start).into())).await;
            next_id += 4;
            let per_word = Duration::from_secs_f64(1.0 / tokens_per_sec);
            let mut pending = String::new();
            let mut last_flush = tokio::time::Instant::now();
            for _ in 1..WORDS {
                tokio::time::sleep(per_word).await;
                pending.push_str("word ");
                if last_flush.elapsed() >= Duration::from_millis(50) {
                    let chunks = json!([{"type": "text-delta", "id": "t1", "delta": pending}]);
                    let _ = tx.send(Message::Text(frame(next_id, chunks).into())).await;
                    next_id += 1;
                    pending.clear();
                    last_flush = tokio::time::Instant::now();
                }
            }
            let end = json!([{"type": "text-delta", "id": "t1", "delta": pending}, {"type": "text-end", "id": "t1"}, {"type": "finish-step"}, {"type": "finish", "finishReason": "stop"}]);
            let _ = tx.send(Message::Text(frame(next_id, end).into())).await;
            next_id += 4;
            let _ = tx
                .send(Message::Text(
                    json!({"type": "turn-complete", "lastEventId": next_id - 1})
                        .to_string()
                        .into(),
                ))
                .await;
        }
    }
}
