//! The clients: every chat its own task and connection, all started at once (the burst: turn 1,
//! every chat connecting at the same moment), then steady turns each after a think time, so
//! later turns start spread out as real users' do.
//!
//! Frames are classified without parsing JSON (a frame's `type` comes first), so one process
//! drives thousands of chats without becoming what is measured.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::progress::Progress;
use crate::stats::TargetResult;
use crate::targets::{Server, Target, usage};

/// What every target is asked to do.
#[derive(Clone, Debug)]
pub struct Workload {
    pub chats: usize,
    pub turns: usize,
    pub tokens: usize,
    pub rate: f64,
    /// The longest think time before a steady turn.
    pub think_max: Duration,
    /// Parse every frame and keep each reply's text, to check it (the smoke run).
    pub verify: bool,
    /// Longest wait for any frame before a turn counts as failed.
    pub frame_timeout: Duration,
}

/// What one chat saw.
#[derive(Default)]
pub struct ChatOutcome {
    /// Send to first text delta, in µs: turn 1, then steady turns.
    pub burst_first_token: Vec<u32>,
    pub steady_first_token: Vec<u32>,
    /// Steady turns over WebSocket: send to `ack` (the message is stored and its turn queued)
    /// and send to `turn-started` (a worker has begun the turn), in µs, to show which stage of
    /// the first token's path the time goes to.
    pub steady_ack: Vec<u32>,
    pub steady_started: Vec<u32>,
    /// Gaps between consecutive frames of one streaming reply, in µs.
    pub gaps: Vec<u32>,
    /// Words in each reply (verify only).
    pub words: Vec<usize>,
    pub turns_done: usize,
    pub error: Option<String>,
}

fn micros(d: Duration) -> u32 {
    d.as_micros().min(u128::from(u32::MAX)) as u32
}

/// Chat `chat`'s think time before turn `turn`: a fixed pseudo-random part of the maximum, the
/// same in every run and for every target.
fn think(work: &Workload, chat: usize, turn: usize) -> Duration {
    let mut x = (chat as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (turn as u64 + 1);
    x ^= x >> 29;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 32;
    work.think_max.mul_f64((x % 10_000) as f64 / 10_000.0)
}

/// Runs the workload against a started server and measures it.
/// # Errors
/// `/proc` cannot be read for the server.
pub async fn drive(
    target: &Target,
    server: &Server,
    work: &Workload,
) -> anyhow::Result<TargetResult> {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (cpu_before, rss_idle) = usage(server.pid)?;
    let (client_cpu_before, _) = usage(std::process::id())?;
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(rss_idle));
    let sampler = {
        let peak = peak.clone();
        let pid = server.pid;
        tokio::spawn(async move {
            loop {
                if let Ok((_, rss)) = usage(pid) {
                    peak.fetch_max(rss, std::sync::atomic::Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let progress = Progress::start(&target.label, (work.chats * work.turns) as u64);
    let started = Instant::now();
    let tasks: Vec<_> = (0..work.chats)
        .map(|i| {
            let work = work.clone();
            let progress = progress.clone();
            if target.is_websocket() {
                let url = format!(
                    "ws://127.0.0.1:{}/ws?token={}",
                    server.port,
                    server.tokens.get(i).map_or("", String::as_str)
                );
                tokio::spawn(async move { websocket_chat(i, url, work, progress).await })
            } else {
                let url = format!("http://127.0.0.1:{}/api/chat", server.port);
                tokio::spawn(async move { sse_chat(i, url, work, progress).await })
            }
        })
        .collect();
    let mut outcomes = Vec::with_capacity(tasks.len());
    for task in tasks {
        outcomes.push(task.await.context("a chat task panicked")?);
    }
    let wall = started.elapsed();
    let (cpu_after, _) = usage(server.pid)?;
    let (client_cpu_after, _) = usage(std::process::id())?;
    sampler.abort();
    progress.finish();
    Ok(TargetResult::from_outcomes(
        &target.label,
        work,
        outcomes,
        cpu_after - cpu_before,
        client_cpu_after - client_cpu_before,
        wall,
        rss_idle,
        peak.load(std::sync::atomic::Ordering::Relaxed),
    ))
}

/// The `type` of a server frame, read from its start (`{"type":"events",...`) without parsing.
fn frame_type(text: &str) -> &str {
    let Some(rest) = text.strip_prefix("{\"type\":\"") else {
        return "";
    };
    rest.split('"').next().unwrap_or("")
}

fn delta_text(frame: &str) -> String {
    let value: Value = serde_json::from_str(frame).unwrap_or_default();
    let chunks = value["chunks"].as_array().cloned().unwrap_or_default();
    let mut text = String::new();
    for chunk in &chunks {
        if chunk["type"] == "text-delta" {
            text.push_str(chunk["delta"].as_str().unwrap_or_default());
        }
    }
    text
}

fn prompt(chat: usize, turn: usize) -> String {
    format!("Tell me about tide pools, rocky coasts and topic {chat} number {turn}")
}

async fn websocket_chat(
    chat: usize,
    url: String,
    work: Workload,
    progress: Progress,
) -> ChatOutcome {
    let mut outcome = ChatOutcome::default();
    if let Err(e) = websocket_turns(chat, &url, &work, &progress, &mut outcome).await {
        outcome.error = Some(format!("chat {chat}: {e:#}"));
    }
    outcome
}

async fn websocket_turns(
    chat: usize,
    url: &str,
    work: &Workload,
    progress: &Progress,
    outcome: &mut ChatOutcome,
) -> anyhow::Result<()> {
    // A small read buffer keeps 5,000 client connections in a modest amount of memory.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let mut attempt = 0;
    let mut ws = loop {
        match tokio_tungstenite::connect_async_with_config(url, Some(config), true).await {
            Ok((ws, _)) => break ws,
            Err(e) if attempt < 5 => {
                attempt += 1;
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
            Err(e) => return Err(e).context("connecting"),
        }
    };
    let chat_id = format!("bench-{chat}");
    for turn in 0..work.turns {
        if turn > 0 {
            tokio::time::sleep(think(work, chat, turn)).await;
        }
        let request = json!({
            "action": "send-message", "requestId": format!("r{turn}"), "chatId": chat_id,
            "trigger": "submit-message",
            "message": {"id": format!("m{chat}-{turn}"), "role": "user",
                        "parts": [{"type": "text", "text": prompt(chat, turn)}]}
        });
        let sent = Instant::now();
        ws.send(Message::Text(request.to_string().into())).await?;
        let mut first_token = None;
        let mut acked = None;
        let mut started = None;
        let mut last_frame: Option<Instant> = None;
        let mut text = String::new();
        loop {
            let message = tokio::time::timeout(work.frame_timeout, ws.next())
                .await
                .context("no frame in time")?
                .context("socket closed")??;
            let Message::Text(frame) = message else {
                continue;
            };
            let now = Instant::now();
            match frame_type(&frame) {
                "events" => {
                    if first_token.is_none() && frame.contains("\"text-delta\"") {
                        first_token = Some(now - sent);
                    }
                    if let Some(previous) = last_frame {
                        outcome.gaps.push(micros(now - previous));
                    }
                    last_frame = Some(now);
                    if work.verify {
                        text.push_str(&delta_text(&frame));
                    }
                }
                "ack" => acked = acked.or(Some(now - sent)),
                "turn-started" => started = started.or(Some(now - sent)),
                "turn-complete" => break,
                "error" | "session-ended" => bail!("turn {turn}: {frame}"),
                _ => {}
            }
        }
        let first_token = micros(first_token.context("a reply with no text delta")?);
        if turn == 0 {
            outcome.burst_first_token.push(first_token);
        } else {
            outcome.steady_first_token.push(first_token);
            outcome.steady_ack.extend(acked.map(micros));
            outcome.steady_started.extend(started.map(micros));
        }
        if work.verify {
            outcome.words.push(text.split_whitespace().count());
        }
        outcome.turns_done += 1;
        progress.inc();
    }
    let _ = ws.close(None).await;
    Ok(())
}

async fn sse_chat(chat: usize, url: String, work: Workload, progress: Progress) -> ChatOutcome {
    let mut outcome = ChatOutcome::default();
    if let Err(e) = sse_turns(chat, &url, &work, &progress, &mut outcome).await {
        outcome.error = Some(format!("chat {chat}: {e:#}"));
    }
    outcome
}

/// One chat as the AI SDK's `useChat` with its default HTTP transport runs it: a POST of the
/// whole history per turn, answered with the UI message stream over SSE.
async fn sse_turns(
    chat: usize,
    url: &str,
    work: &Workload,
    progress: &Progress,
    outcome: &mut ChatOutcome,
) -> anyhow::Result<()> {
    // One client (one keep-alive connection) per chat, as one browser tab has.
    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(1)
        .build()?;
    let chat_id = format!("bench-{chat}");
    let mut history: Vec<Value> = Vec::new();
    for turn in 0..work.turns {
        if turn > 0 {
            tokio::time::sleep(think(work, chat, turn)).await;
        }
        history.push(json!({"id": format!("m{chat}-{turn}"), "role": "user",
                            "parts": [{"type": "text", "text": prompt(chat, turn)}]}));
        let body = json!({"id": chat_id, "messages": history, "trigger": "submit-message"});
        let sent = Instant::now();
        let response = http
            .post(url)
            .json(&body)
            .send()
            .await?
            .error_for_status()?;
        let mut stream = response.bytes_stream();
        let mut first_token = None;
        let mut last_frame: Option<Instant> = None;
        let mut text = String::new();
        let mut buffer = Vec::new();
        while let Some(bytes) = tokio::time::timeout(work.frame_timeout, stream.next())
            .await
            .context("no data in time")?
        {
            let bytes = bytes?;
            let now = Instant::now();
            let has_delta = bytes.windows(12).any(|w| w == b"\"text-delta\"");
            if has_delta {
                if first_token.is_none() {
                    first_token = Some(now - sent);
                }
                if let Some(previous) = last_frame {
                    outcome.gaps.push(micros(now - previous));
                }
                last_frame = Some(now);
            }
            buffer.extend_from_slice(&bytes);
        }
        let body = String::from_utf8_lossy(&buffer);
        for line in body.lines() {
            let Some(data) = line.strip_prefix("data: ") else {
                continue;
            };
            if data.contains("\"text-delta\"") {
                let chunk: Value = serde_json::from_str(data).unwrap_or_default();
                text.push_str(chunk["delta"].as_str().unwrap_or_default());
            } else if data.contains("\"error\"") {
                bail!("turn {turn}: {data}");
            }
        }
        let first_token = micros(first_token.context("a reply with no text delta")?);
        if turn == 0 {
            outcome.burst_first_token.push(first_token);
        } else {
            outcome.steady_first_token.push(first_token);
        }
        if work.verify {
            outcome.words.push(text.split_whitespace().count());
        }
        history.push(json!({"id": format!("a{chat}-{turn}"), "role": "assistant",
                            "parts": [{"type": "text", "text": text}]}));
        outcome.turns_done += 1;
        progress.inc();
    }
    Ok(())
}
