//! The gateway: one axum server for the WebSocket API, the management API, the HTTP API and
//! the web app, plus the queue workers; started by `chatrun serve` and by tests.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use axum::Router;
use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{any, get};
use axum::serve::ListenerExt;
use chatrun_api::ApiDeps;
use chatrun_core::config::check_token_secret;
use chatrun_core::engine::Services;
use chatrun_core::ports::{LanguageModel, QueueName};
use chatrun_embedded::InProcessConnections;
use chatrun_run_turn::RunTurnDeps;
use tokio::sync::watch;

use crate::options::ServeOptions;
use crate::{backend, management, web, websocket, worker};

/// Shared by every request.
pub struct Gateway {
    pub services: Services,
    pub model: Arc<dyn LanguageModel>,
    /// The open WebSockets of this process.
    pub sockets: Arc<InProcessConnections>,
    pub api: ApiDeps,
    pub options: ServeOptions,
    /// The stage name events carry, as API Gateway's `requestContext.stage`.
    pub stage: String,
    pub domain: String,
    /// Set on shutdown: every open WebSocket closes (as API Gateway's do on a deployment).
    pub closing: watch::Sender<bool>,
}

/// Makes the token secret persistent across restarts when none is configured, so tokens issued
/// before a restart stay valid. The file is the key to every token: it is made owner-only (0600),
/// and one that is too short (an older, weaker secret) is replaced.
fn ensure_token_secret(options: &mut ServeOptions) -> anyhow::Result<()> {
    if !options.settings.token_secret.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(&options.data_dir)?;
    let path = options.data_dir.join("token-secret");
    let secret = match std::fs::read_to_string(&path) {
        Ok(secret) if check_token_secret(secret.trim()).is_ok() => secret.trim().to_owned(),
        _ => {
            let bytes: [u8; 32] = rand::random();
            let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            write_owner_only(&path, &secret)
                .with_context(|| format!("writing {}", path.display()))?;
            secret
        }
    };
    restrict_to_owner(&path).with_context(|| format!("restricting {}", path.display()))?;
    options.settings.token_secret = secret;
    Ok(())
}

/// Writes a file that only its owner can read, with no moment where others could.
fn write_owner_only(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut open = std::fs::OpenOptions::new();
    open.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut open, 0o600);
    let mut file = open.open(path)?;
    restrict_to_owner(path)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}

#[cfg(unix)]
fn restrict_to_owner(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

#[cfg(not(unix))]
fn restrict_to_owner(_path: &std::path::Path) -> std::io::Result<()> {
    Ok(())
}

/// A server started by [`spawn`].
pub struct RunningServer {
    pub addr: SocketAddr,
    sockets: Arc<InProcessConnections>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningServer {
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// The ids of the WebSocket connections open now.
    pub fn connection_ids(&self) -> Vec<String> {
        self.sockets.connection_ids()
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(true);
        self.task.await.context("server task")?
    }
}

/// Starts the gateway in the background on `options.port` (0 for a free one). The backend is
/// open (or the error returned) before this returns.
pub async fn spawn(options: ServeOptions) -> anyhow::Result<RunningServer> {
    let listener = tokio::net::TcpListener::bind((options.host, options.port))
        .await
        .with_context(|| format!("binding {}:{}", options.host, options.port))?;
    let addr = listener.local_addr()?;
    let (shutdown, mut stopped) = watch::channel(false);
    let sockets = Arc::new(InProcessConnections::new());
    let prepared = prepare(&listener, options, sockets.clone()).await?;
    let task = tokio::spawn(run(listener, prepared, async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    }));
    Ok(RunningServer {
        addr,
        sockets,
        shutdown,
        task,
    })
}

/// Serves until `shutdown` completes, then closes every socket and stops the workers.
pub async fn serve(
    listener: tokio::net::TcpListener,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let prepared = prepare(&listener, options, Arc::new(InProcessConnections::new())).await?;
    run(listener, prepared, shutdown).await
}

/// An opened backend, ready to serve.
struct Prepared {
    gateway: Arc<Gateway>,
    consumer: Arc<dyn chatrun_core::ports::TurnQueueConsumer>,
    visibility: Arc<dyn chatrun_core::ports::JobVisibility>,
    close: Arc<dyn Fn() + Send + Sync>,
}

async fn prepare(
    listener: &tokio::net::TcpListener,
    mut options: ServeOptions,
    sockets: Arc<InProcessConnections>,
) -> anyhow::Result<Prepared> {
    ensure_token_secret(&mut options)?;
    let addr = listener.local_addr()?;
    let backend = backend::open(&options, sockets.clone(), addr).await?;
    let model = chatrun_models::model_from_settings(&options.model, &backend.services.models);
    let gateway = Arc::new(Gateway {
        api: ApiDeps {
            services: backend.services.clone(),
        },
        services: backend.services,
        model,
        sockets,
        options,
        stage: "local".into(),
        domain: addr.to_string(),
        closing: watch::channel(false).0,
    });
    Ok(Prepared {
        gateway,
        consumer: backend.consumer,
        visibility: backend.visibility,
        close: backend.close,
    })
}

async fn run(
    listener: tokio::net::TcpListener,
    prepared: Prepared,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let Prepared {
        gateway,
        consumer,
        visibility,
        close,
    } = prepared;
    let addr = listener.local_addr()?;
    let (stop_workers, workers_stopped) = watch::channel(false);
    let run_turn = RunTurnDeps {
        services: gateway.services.clone(),
        model: gateway.model.clone(),
        visibility,
        dead_letter_source_arn: Some(consumer.source_arn(QueueName::DeadLetters)),
    };
    let mut workers = Vec::new();
    for queue in [QueueName::Turns, QueueName::DeadLetters] {
        workers.push(tokio::spawn(worker::run(
            consumer.clone(),
            queue,
            run_turn.clone(),
            gateway.options.max_concurrent_turns,
            workers_stopped.clone(),
        )));
    }

    let app = router(gateway.clone());
    let models = gateway.model.models();
    tracing::info!(
        url = %format!("http://{addr}"),
        model = %gateway.model.default_model(),
        offline = models.iter().any(|m| m.offline),
        data_dir = %gateway.options.data_dir.display(),
        "chatrun is serving"
    );
    println!("chatrun is serving on http://{addr}");

    let listener = listener.tap_io(|tcp| {
        // Without it the first frame of a reply waits for a delayed ACK (TOOLCHAIN.md).
        let _ = tcp.set_nodelay(true);
    });
    let closing = gateway.closing.clone();
    axum::serve(
        listener,
        app.with_state(gateway.clone())
            .into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        shutdown.await;
        tracing::info!("shutting down");
        let _ = closing.send(true);
    })
    .await
    .context("serving")?;
    let _ = stop_workers.send(true);
    for worker in workers {
        let _ = worker.await;
    }
    close();
    Ok(())
}

/// The routes, as API Gateway and CloudFront would lay them out on one origin.
pub fn router(gateway: Arc<Gateway>) -> Router<Arc<Gateway>> {
    let web_dir = gateway.options.web_dir.clone();
    let management_api = Router::new()
        .route(
            "/@connections/{connection_id}",
            axum::routing::post(management::post)
                .get(management::get)
                .delete(management::delete),
        )
        .route_layer(middleware::from_fn_with_state(
            gateway.clone(),
            management::guard,
        ));
    let routes = Router::new()
        .route("/ws", get(websocket::upgrade))
        .merge(management_api)
        .route("/api", any(crate::web::api_proxy))
        .route("/api/{*rest}", any(crate::web::api_proxy));
    web::attach(routes, &web_dir).layer(middleware::from_fn(log_request))
}

/// One log line per request.
async fn log_request(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    tracing::info!(
        %method,
        path,
        status = response.status().as_u16(),
        ms = started.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatrun_core::config::{ModelSettings, Settings};

    #[test]
    fn a_made_secret_is_owner_only_long_enough_and_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token-secret");
        // An older, weaker secret with loose permissions is replaced.
        std::fs::write(&path, "short-secret-0123").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let options = || {
            ServeOptions::new(
                dir.path().to_path_buf(),
                Settings::with_secret(""),
                ModelSettings::Offline {
                    tokens_per_sec: 1.0,
                },
            )
        };
        let mut first = options();
        ensure_token_secret(&mut first).unwrap();
        let secret = first.settings.token_secret.clone();
        assert!(secret.len() >= 32 && secret != "short-secret-0123");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // A strong file secret survives a restart, and its permissions are tightened again.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let mut second = options();
        ensure_token_secret(&mut second).unwrap();
        assert_eq!(second.settings.token_secret, secret);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
