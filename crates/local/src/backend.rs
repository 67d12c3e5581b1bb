//! Builds the ports for the selected backend.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use chatrun_aws::{ApiGwConnections, DynamoChatStore, SqsTurnQueue};
use chatrun_core::auth::TokenIssuer;
use chatrun_core::config::{ModelCatalog, Settings};
use chatrun_core::engine::Services;
use chatrun_core::hooks::NoHooks;
use chatrun_core::ports::{
    ChatStore, Connections, JobVisibility, SystemClock, TurnOutbox, TurnQueue, TurnQueueConsumer,
    UsageCounters, UuidIds,
};
use chatrun_embedded::{InProcessConnections, SqliteChatStore, SqliteOutbox, SqliteTurnQueue};

use crate::options::{AwsBackendOptions, BackendKind, ServeOptions};

/// The ports, plus the consumer side of the queue that the local worker drives.
pub struct Backend {
    pub services: Services,
    pub consumer: Arc<dyn TurnQueueConsumer>,
    /// What run-turn holds its jobs with (the same queue).
    pub visibility: Arc<dyn JobVisibility>,
    /// Releases what the backend holds open (the embedded files) once the server has stopped,
    /// even if a straggling task still has a handle.
    pub close: Arc<dyn Fn() + Send + Sync>,
}

fn services<S: ChatStore + UsageCounters + 'static>(
    settings: Arc<Settings>,
    models: Arc<ModelCatalog>,
    store: Arc<S>,
    queue: Arc<dyn TurnQueue>,
    outbox: Option<Arc<dyn TurnOutbox>>,
    connections: Arc<dyn Connections>,
) -> Services {
    Services {
        store: store.clone(),
        limits: store,
        queue,
        outbox,
        connections,
        hooks: Arc::new(NoHooks),
        clock: Arc::new(SystemClock),
        ids: Arc::new(UuidIds),
        tokens: TokenIssuer::new(&settings.token_secret),
        settings,
        models,
    }
}

/// Opens the backend. `sockets` is the gateway's registry of open WebSockets; `addr` is where
/// the gateway listens (the AWS backend posts frames to its `@connections`, as a Lambda would).
pub async fn open(
    options: &ServeOptions,
    sockets: Arc<InProcessConnections>,
    addr: SocketAddr,
) -> anyhow::Result<Backend> {
    std::fs::create_dir_all(&options.data_dir)
        .with_context(|| format!("creating the data directory {}", options.data_dir.display()))?;
    let settings = Arc::new(options.settings.clone());
    let models = Arc::new(
        ModelCatalog::new(&options.model, &options.extra_models)
            .context("reading the model list")?,
    );
    match options.backend {
        BackendKind::Embedded => {
            let store = Arc::new(
                SqliteChatStore::open(options.data_dir.join("chatrun.sqlite3"))
                    .context("opening the SQLite store")?,
            );
            // The queue shares the store's file, writer and commits.
            let queue = Arc::new(SqliteTurnQueue::in_store(
                &store,
                options.visibility_timeout,
                settings.max_receives,
            ));
            // Versions before 2026-12 kept the queue in a file of its own.
            let moved = queue
                .adopt_file(&options.data_dir.join("queue.sqlite3"))
                .await
                .context("moving the turns of the old queue file into the store's file")?;
            if moved > 0 {
                tracing::info!(
                    moved,
                    "moved the queued turns of queue.sqlite3 into chatrun.sqlite3"
                );
            }
            Ok(Backend {
                services: services(
                    settings,
                    models,
                    store.clone(),
                    queue.clone(),
                    // The queue is in the store's file: a send's job is queued in its claim's
                    // write.
                    Some(Arc::new(SqliteOutbox::new(store.clone(), queue.clone())?)),
                    sockets,
                ),
                consumer: queue.clone(),
                visibility: queue.clone(),
                close: Arc::new(move || {
                    store.close();
                    queue.close();
                }),
            })
        }
        BackendKind::Aws => open_aws(options, settings, models, addr).await,
    }
}

async fn sdk_config(endpoint: Option<&str>) -> aws_config::SdkConfig {
    let mut loader = chatrun_aws::sdk_config_loader();
    if let Some(endpoint) = endpoint {
        loader = loader.endpoint_url(endpoint);
        // Emulators accept any credentials; don't make people invent some.
        if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
            loader = loader.credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
                "test",
                "test",
                None,
                None,
                "chatrun-local",
            ));
        }
        if std::env::var_os("AWS_REGION").is_none()
            && std::env::var_os("AWS_DEFAULT_REGION").is_none()
        {
            loader = loader.region(aws_config::Region::new("us-east-1"));
        }
    }
    loader.load().await
}

async fn open_aws(
    options: &ServeOptions,
    settings: Arc<Settings>,
    models: Arc<ModelCatalog>,
    addr: SocketAddr,
) -> anyhow::Result<Backend> {
    let AwsBackendOptions {
        dynamodb_endpoint,
        sqs_endpoint,
        table_name,
        queue_name,
        create_resources,
    } = &options.aws;
    let dynamo = aws_sdk_dynamodb::Client::new(&sdk_config(dynamodb_endpoint.as_deref()).await);
    let sqs_config = sdk_config(sqs_endpoint.as_deref()).await;
    let sqs = aws_sdk_sqs::Client::new(&sqs_config);
    let (queue_url, dead_letter_url) = if *create_resources {
        DynamoChatStore::create_table(&dynamo, table_name)
            .await
            .context("creating the table")?;
        SqsTurnQueue::create_queues(
            &sqs,
            queue_name,
            options.visibility_timeout,
            settings.max_receives,
        )
        .await
        .context("creating the queues")?
    } else {
        let url = |name: String| {
            let sqs = sqs.clone();
            async move {
                sqs.get_queue_url()
                    .queue_name(&name)
                    .send()
                    .await
                    .with_context(|| format!("finding queue {name} (or pass --create-resources)"))
                    .map(|o| o.queue_url.unwrap_or_default())
            }
        };
        (
            url(format!("{queue_name}.fifo")).await?,
            url(format!("{queue_name}-dlq.fifo")).await?,
        )
    };
    let queue = Arc::new(SqsTurnQueue::consumer(sqs, &queue_url, &dead_letter_url).await?);
    let connections = ApiGwConnections::for_endpoint(&sqs_config, &format!("http://{addr}"));
    Ok(Backend {
        services: services(
            settings,
            models,
            Arc::new(DynamoChatStore::new(dynamo, table_name.clone())),
            queue.clone(),
            None,
            Arc::new(connections),
        ),
        consumer: queue.clone(),
        visibility: queue,
        close: Arc::new(|| {}),
    })
}
