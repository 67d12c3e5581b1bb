//! `chatrun serve`: the whole app locally. See the crate docs of `chatrun_local`.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context;
use chatrun_core::config::{ModelSettings, Settings, listed_models_from_env};
use chatrun_local::options::{AwsBackendOptions, BackendKind, ServeOptions};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "chatrun",
    version,
    about = "A durable multi-turn AI chat, locally"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the WebSocket API, @connections, the HTTP API and the web app on one port.
    Serve {
        #[arg(long, default_value = "127.0.0.1")]
        host: IpAddr,
        #[arg(long, default_value_t = 3000)]
        port: u16,
        #[arg(long, default_value = ".chatrun")]
        data_dir: PathBuf,
        #[arg(long, value_enum, default_value = "embedded")]
        backend: BackendKind,
        #[arg(long, default_value = "web/dist")]
        web_dir: PathBuf,
        /// Close WebSockets idle this long (API Gateway: 600).
        #[arg(long, default_value_t = 600)]
        idle_timeout_secs: u64,
        /// The turn queue's visibility timeout: how long a received job stays hidden before
        /// run-turn's heartbeat takes over (SQS requires at least the function's timeout).
        #[arg(long, env = "CHAT_QUEUE_VISIBILITY_SECS", default_value_t = 120)]
        queue_visibility_secs: u64,
        /// `--backend aws`: DynamoDB endpoint (DynamoDB Local, moto, LocalStack).
        #[arg(long, env = "CHAT_DYNAMODB_ENDPOINT")]
        dynamodb_endpoint: Option<String>,
        /// `--backend aws`: SQS endpoint (moto, LocalStack).
        #[arg(long, env = "CHAT_SQS_ENDPOINT")]
        sqs_endpoint: Option<String>,
        /// `--backend aws`: the DynamoDB table.
        #[arg(long, env = "CHAT_TABLE_NAME", default_value = "chatrun")]
        table_name: String,
        /// `--backend aws`: the FIFO queue's name without `.fifo`.
        #[arg(long, default_value = "chatrun-turns")]
        queue_name: String,
        /// `--backend aws`: create the table and queues when missing.
        #[arg(long)]
        create_resources: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let Command::Serve {
        host,
        port,
        data_dir,
        backend,
        web_dir,
        idle_timeout_secs,
        queue_visibility_secs,
        dynamodb_endpoint,
        sqs_endpoint,
        table_name,
        queue_name,
        create_resources,
    } = Cli::parse().command;
    let settings = Settings::from_env(false)?;
    let model = ModelSettings::from_env()?;
    let mut options = ServeOptions::new(data_dir, settings, model);
    options.extra_models = listed_models_from_env();
    options.host = host;
    options.port = port;
    options.backend = backend;
    options.web_dir = web_dir;
    options.idle_timeout = std::time::Duration::from_secs(idle_timeout_secs);
    options.visibility_timeout = std::time::Duration::from_secs(queue_visibility_secs.max(1));
    let endpoint = std::env::var("AWS_ENDPOINT_URL").ok();
    options.aws = AwsBackendOptions {
        dynamodb_endpoint: dynamodb_endpoint.or_else(|| endpoint.clone()),
        sqs_endpoint: sqs_endpoint.or(endpoint),
        table_name,
        queue_name,
        create_resources,
    };
    let listener = tokio::net::TcpListener::bind((host, port))
        .await
        .with_context(|| format!("binding {host}:{port}"))?;
    chatrun_local::serve(listener, options, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
}
