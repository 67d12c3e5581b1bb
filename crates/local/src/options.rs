//! Options of `chatrun serve`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use chatrun_core::config::{ModelSettings, Settings};

/// Which adapters back the ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    /// SQLite store and queue in the data directory, in-process connections.
    Embedded,
    /// The AWS adapters (DynamoDB, SQS, the `@connections` API) against AWS or an emulator
    /// (DynamoDB Local, moto, LocalStack); this gateway stands in for API Gateway.
    Aws,
}

/// Where `--backend aws` finds its resources.
#[derive(Debug, Clone, Default)]
pub struct AwsBackendOptions {
    /// DynamoDB endpoint (an emulator); AWS's when unset (`AWS_ENDPOINT_URL` also applies).
    pub dynamodb_endpoint: Option<String>,
    /// SQS endpoint (an emulator); AWS's when unset.
    pub sqs_endpoint: Option<String>,
    pub table_name: String,
    /// Queue name without `.fifo`; the dead-letter queue is `{name}-dlq.fifo`.
    pub queue_name: String,
    /// Create the table and the queues when missing.
    pub create_resources: bool,
}

/// Everything `serve` needs. The binary fills it from flags and the environment; tests build it.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub host: IpAddr,
    /// 0 picks a free port.
    pub port: u16,
    pub data_dir: PathBuf,
    pub backend: BackendKind,
    /// The built web app; served at `/` when it exists.
    pub web_dir: PathBuf,
    /// API Gateway closes a WebSocket connection idle this long (10 minutes).
    pub idle_timeout: Duration,
    /// API Gateway closes every WebSocket connection after this long (2 hours).
    pub max_connection_age: Duration,
    /// How long a received turn job stays invisible before it is delivered again.
    pub visibility_timeout: Duration,
    /// Turns run at once at most.
    pub max_concurrent_turns: usize,
    pub settings: Settings,
    pub model: ModelSettings,
    /// More models users may pick besides the default, all served by `model` (`CHAT_MODELS`).
    pub extra_models: Vec<String>,
    pub aws: AwsBackendOptions,
}

impl ServeOptions {
    /// Defaults for a data dir, with the given engine and model settings.
    pub fn new(data_dir: PathBuf, settings: Settings, model: ModelSettings) -> Self {
        ServeOptions {
            host: IpAddr::from([127, 0, 0, 1]),
            port: 0,
            data_dir,
            backend: BackendKind::Embedded,
            web_dir: PathBuf::from("web/dist"),
            idle_timeout: Duration::from_secs(600),
            max_connection_age: Duration::from_secs(2 * 3600),
            visibility_timeout: Duration::from_secs(120),
            max_concurrent_turns: 2048,
            settings,
            model,
            extra_models: Vec::new(),
            aws: AwsBackendOptions {
                table_name: "chatrun".into(),
                queue_name: "chatrun-turns".into(),
                ..Default::default()
            },
        }
    }
}
