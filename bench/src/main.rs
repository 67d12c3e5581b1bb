//! `chatrun-bench`: a load generator that measures chatrun against its floor and its peer, in one
//! run, and prints one table with ratios.
//!
//! # Layout
//! - [`targets`]: the servers under test, each in its own process so that only the server's CPU
//!   and memory are counted (from `/proc`): `chatrun serve` (embedded backend, offline model at a
//!   fixed rate and length), the [`floor`] and the Node AI SDK peer (`bench/node/server.mjs`).
//! - [`floor`]: a bare axum WebSocket server (TCP_NODELAY, 4 KB read buffer) streaming frames of
//!   chatrun's shape at the same pace and coalescing, persisting nothing.
//! - [`drive`]: the clients: N chats over WebSocket (chatrun and the floor speak the same
//!   protocol) or over HTTP + SSE (the AI SDK's `useChat` transport, for the Node peer).
//! - [`stats`]: percentiles and the table.
//! - [`progress`]: a progress line on stderr.
//! - [`aws_cost`]: the AWS cost of a turn, counted through proxies in front of DynamoDB Local and
//!   moto, priced per 1,000 turns.
//!
//! ```text
//! cargo build --release -p chatrun-local -p chatrun-bench
//! target/release/chatrun-bench run --chats 1000     # floor, chatrun, Node peer
//! target/release/chatrun-bench smoke --chatrun target/debug/chatrun
//! ```

mod aws_cost;
mod drive;
mod floor;
mod progress;
mod stats;
mod targets;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

use crate::drive::Workload;
use crate::stats::TargetResult;
use crate::targets::{Kind, Target};

#[derive(Parser)]
#[command(
    about = "Load generator for chatrun: chatrun against a bare floor and a Node AI SDK peer"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Args, Clone)]
struct LoadArgs {
    /// Chats streaming at once, each on its own connection.
    #[arg(long, default_value_t = 200)]
    chats: usize,
    /// Turns per chat: the first is the burst (every chat connecting at once), later ones are
    /// steady turns, spread by a think time.
    #[arg(long, default_value_t = 3)]
    turns: usize,
    /// Tokens per reply (chatrun: `CHAT_OFFLINE_REPLY_TOKENS`).
    #[arg(long, default_value_t = 85)]
    tokens: usize,
    /// Tokens per second of every reply (chatrun: `CHAT_OFFLINE_TOKENS_PER_SEC`).
    #[arg(long, default_value_t = 30.0)]
    rate: f64,
    /// Longest think time before a steady turn, in ms (each chat waits a fixed pseudo-random
    /// part of it); default: one reply's duration, so steady turns are spread out.
    #[arg(long)]
    think_ms: Option<u64>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Measure the targets one after the other with the same load and print one table.
    Run {
        #[command(flatten)]
        load: LoadArgs,
        /// Targets, in order: floor, chatrun, node (repeatable / comma separated).
        #[arg(long, value_delimiter = ',', default_values_t = vec!["floor".to_string(), "chatrun".to_string(), "node".to_string()])]
        targets: Vec<String>,
        /// A chatrun binary, as `PATH` or `LABEL=PATH`; repeat it to compare builds (before and
        /// after) in one run.
        #[arg(long, default_value = "target/release/chatrun")]
        chatrun: Vec<String>,
        /// The Node peer's directory (its dependencies are installed with `npm ci` when missing).
        #[arg(long, default_value = "bench/node")]
        node_dir: PathBuf,
        /// Measure every target this many times, in turn (all of them, then all again), and
        /// print each figure's median with its range, and each ratio's median over the rounds
        /// (each round's ratio is taken against the same round's floor): this machine drifts
        /// by 10% or more from one minute to the next.
        #[arg(long, default_value_t = 1)]
        rounds: usize,
    },
    /// A short run (under 15 s) of chatrun and the floor that checks the benchmark works and that
    /// its figures are sane; exits non-zero otherwise.
    Smoke {
        #[arg(long, default_value = "target/debug/chatrun")]
        chatrun: PathBuf,
    },
    /// Count the AWS requests of long turns through the AWS adapters against DynamoDB Local and
    /// moto (installed by `scripts/emulators/install.sh`) and price them per 1,000 turns, at
    /// each frame cadence: `50` (fixed; 0: every token posted on its own), `50-500` (50 ms,
    /// widening to 500 ms after the engine's ramp), `50-500/2000` (after a 2,000 ms ramp).
    AwsCost {
        #[arg(long, default_value = "target/release/chatrun")]
        chatrun: PathBuf,
        #[arg(long, value_delimiter = ',', default_value = "0,50,50-500,250,1000")]
        intervals: Vec<aws_cost::Cadence>,
        #[arg(long, default_value_t = 500)]
        tokens: usize,
        /// The model's speed: run-turn is billed for the whole reply.
        #[arg(long, default_value_t = 50.0)]
        rate: f64,
        #[arg(long, default_value_t = 3)]
        turns: usize,
        /// run-turn's memory (infra: `runTurnMemoryMb`).
        #[arg(long, default_value_t = 1024.0)]
        run_turn_mb: f64,
        /// send-message's memory (infra).
        #[arg(long, default_value_t = 256.0)]
        send_message_mb: f64,
        /// Assumed duration of one send-message invocation, in ms.
        #[arg(long, default_value_t = 100.0)]
        send_message_ms: f64,
    },
    /// The floor server (started by `run`).
    Floor {
        #[arg(long)]
        port: u16,
        #[arg(long)]
        tokens: usize,
        #[arg(long)]
        rate: f64,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Cmd::Floor { port, tokens, rate } = cli.command {
        // The floor gets the same runtime shape as `chatrun serve`: a multi-threaded tokio.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        return runtime.block_on(floor::serve(port, tokens, rate));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match cli.command {
            Cmd::Run {
                load,
                targets,
                chatrun,
                node_dir,
                rounds,
            } => run(load, targets, chatrun, node_dir, rounds.max(1)).await,
            Cmd::Smoke { chatrun } => smoke(chatrun).await,
            Cmd::AwsCost {
                chatrun,
                intervals,
                tokens,
                rate,
                turns,
                run_turn_mb,
                send_message_mb,
                send_message_ms,
            } => {
                let sizes = aws_cost::LambdaSizes {
                    run_turn_mb,
                    send_message_mb,
                    send_message_seconds: send_message_ms / 1000.0,
                };
                aws_cost::run(&chatrun, &intervals, tokens, rate, turns.max(1), &sizes).await
            }
            Cmd::Floor { .. } => unreachable!("handled above"),
        }
    })
}

fn workload(load: &LoadArgs) -> Workload {
    let reply = Duration::from_secs_f64(load.tokens as f64 / load.rate);
    Workload {
        chats: load.chats,
        turns: load.turns.max(1),
        tokens: load.tokens,
        rate: load.rate,
        think_max: load.think_ms.map_or(reply, Duration::from_millis),
        verify: false,
        frame_timeout: Duration::from_secs(60),
    }
}

fn chatrun_targets(specs: &[String]) -> Vec<Target> {
    specs
        .iter()
        .map(|spec| {
            let (label, path) = match spec.split_once('=') {
                Some((label, path)) => (label.to_owned(), path),
                None => ("chatrun".to_owned(), spec.as_str()),
            };
            Target {
                label,
                kind: Kind::Chatrun(PathBuf::from(path)),
            }
        })
        .collect()
}

async fn run(
    load: LoadArgs,
    names: Vec<String>,
    chatrun: Vec<String>,
    node_dir: PathBuf,
    rounds: usize,
) -> anyhow::Result<()> {
    let mut targets = Vec::new();
    for name in &names {
        match name.as_str() {
            "floor" => targets.push(Target {
                label: "floor".into(),
                kind: Kind::Floor,
            }),
            "chatrun" => targets.extend(chatrun_targets(&chatrun)),
            "node" => targets.push(Target {
                label: "node".into(),
                kind: Kind::Node(node_dir.clone()),
            }),
            other => bail!("unknown target {other:?}: floor, chatrun or node"),
        }
    }
    for target in &targets {
        target.prepare().await?;
    }
    let work = workload(&load);
    eprintln!("{}", stats::machine());
    eprintln!(
        "load: {} chats x {} turns, {} tokens per reply at {} tokens/s, think time up to {} ms",
        work.chats,
        work.turns,
        work.tokens,
        work.rate,
        work.think_max.as_millis()
    );
    let mut measured = Vec::new();
    for round in 1..=rounds {
        if rounds > 1 {
            eprintln!("round {round} of {rounds}");
        }
        let mut results = Vec::new();
        for target in &targets {
            results.push(measure(target, &work).await?);
            // Let the machine settle between targets.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        measured.push(results);
    }
    // One round prints its figures as they are; several, their medians and ranges.
    println!("{}", stats::rounds_table(&work, &measured));
    Ok(())
}

async fn measure(target: &Target, work: &Workload) -> anyhow::Result<TargetResult> {
    let server = target.start(work).await?;
    let result = drive::drive(target, &server, work).await;
    drop(server);
    let result = result.with_context(|| format!("measuring {}", target.label))?;
    Ok(result)
}

async fn smoke(chatrun: PathBuf) -> anyhow::Result<()> {
    let work = Workload {
        chats: 20,
        turns: 2,
        tokens: 12,
        rate: 200.0,
        think_max: Duration::from_millis(50),
        verify: true,
        frame_timeout: Duration::from_secs(5),
    };
    let targets = [
        Target {
            label: "floor".into(),
            kind: Kind::Floor,
        },
        Target {
            label: "chatrun".into(),
            kind: Kind::Chatrun(chatrun),
        },
    ];
    let mut results = Vec::new();
    for target in &targets {
        target.prepare().await?;
        results.push(measure(target, &work).await?);
    }
    println!("{}", stats::table(&work, &results));
    let mut problems = Vec::new();
    for r in &results {
        problems.extend(
            r.sanity(&work)
                .into_iter()
                .map(|p| format!("{}: {p}", r.label)),
        );
    }
    if !problems.is_empty() {
        bail!(
            "the benchmark's figures are not sane:\n{}",
            problems.join("\n")
        );
    }
    eprintln!("bench smoke: ok");
    Ok(())
}
