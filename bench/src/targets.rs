//! The servers under test, each started in its own process with the same load settings, and
//! what `/proc` says about them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use futures::{StreamExt, TryStreamExt};

use crate::drive::Workload;

/// One column of the table.
pub struct Target {
    pub label: String,
    pub kind: Kind,
}

pub enum Kind {
    /// [`crate::floor`], run from this binary.
    Floor,
    /// `chatrun serve` on the embedded backend, from this binary path.
    Chatrun(PathBuf),
    /// The Node AI SDK peer in this directory (`server.mjs`).
    Node(PathBuf),
}

/// A running server; killed (and its data directory removed) when dropped.
pub struct Server {
    child: Child,
    pub pid: u32,
    pub port: u16,
    /// The tokens `/ws?token=` takes (WebSocket targets), one per chat: each chat is its own
    /// user, as on a real server, so per-user work (limits, the chat list) is what one user
    /// costs, not one user with a thousand chats.
    pub tokens: Vec<String>,
    data_dir: Option<PathBuf>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = &self.data_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Target {
    /// Speaks WebSocket (chatrun and the floor) rather than HTTP + SSE (the Node peer).
    pub fn is_websocket(&self) -> bool {
        !matches!(self.kind, Kind::Node(_))
    }

    /// Checks what the target needs before any measuring starts: the chatrun binary, or Node and
    /// the peer's dependencies (installed with `npm ci` from its lockfile when missing).
    /// # Errors
    /// A missing binary, no `node`, or a failed install.
    pub async fn prepare(&self) -> anyhow::Result<()> {
        match &self.kind {
            Kind::Floor => Ok(()),
            Kind::Chatrun(path) if !path.exists() => bail!(
                "{} not found: cargo build --release -p chatrun-local -p chatrun-bench",
                path.display()
            ),
            Kind::Chatrun(_) => Ok(()),
            Kind::Node(dir) => install_node_peer(dir),
        }
    }

    /// Starts the server on a free port and waits until it answers.
    /// # Errors
    /// It does not start within 30 s.
    pub async fn start(&self, work: &Workload) -> anyhow::Result<Server> {
        let port = free_port()?;
        let tokens = work.tokens.to_string();
        let rate = work.rate.to_string();
        let mut data_dir = None;
        let mut command = match &self.kind {
            Kind::Floor => {
                let mut c = Command::new(std::env::current_exe()?);
                c.args(["floor", "--port", &port.to_string()])
                    .args(["--tokens", &tokens, "--rate", &rate]);
                c
            }
            Kind::Chatrun(path) => {
                let dir = std::env::temp_dir().join(format!("chatrun-bench-{port}"));
                let _ = std::fs::remove_dir_all(&dir);
                let mut c = Command::new(path);
                c.args(["serve", "--port", &port.to_string(), "--data-dir"])
                    .arg(&dir)
                    .arg("--web-dir")
                    .arg(dir.join("no-web"))
                    .env("CHAT_OFFLINE_TOKENS_PER_SEC", &rate)
                    .env("CHAT_OFFLINE_REPLY_TOKENS", &tokens)
                    // CHATRUN_BENCH_SERVER_LOG sets the server's RUST_LOG, e.g. to see the
                    // store's commit statistics (`chatrun_embedded::db=debug`).
                    .env(
                        "RUST_LOG",
                        std::env::var("CHATRUN_BENCH_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
                    )
                    // Every chat is a guest of its own, all from this address; the per-user
                    // limits keep their defaults (one chat's turns are well within them).
                    .env("CHAT_GUEST_SESSIONS_PER_IP_PER_HOUR", "1000000")
                    .env_remove("CHAT_USER_MAX_CONCURRENT_TURNS")
                    .env_remove("CHAT_USER_MESSAGES_PER_MINUTE")
                    .env_remove("CHAT_TOKEN_SECRET")
                    .env_remove("OPENAI_API_KEY")
                    .env_remove("OPENAI_BASE_URL")
                    .env_remove("ANTHROPIC_API_KEY");
                data_dir = Some(dir);
                c
            }
            Kind::Node(dir) => {
                let mut c = Command::new("node");
                c.arg(dir.join("server.mjs"))
                    .env("PORT", port.to_string())
                    .env("REPLY_TOKENS", &tokens)
                    .env("TOKENS_PER_SEC", &rate);
                c
            }
        };
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", self.label))?;
        let mut server = Server {
            pid: child.id(),
            child,
            port,
            tokens: Vec::new(),
            data_dir,
        };
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let mut up = false;
        for _ in 0..300 {
            if let Ok(Some(status)) = server.child.try_wait() {
                bail!("{} exited at start: {status}", self.label);
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
            bail!("{} did not answer on {base} within 30 s", self.label);
        }
        if self.is_websocket() {
            let mint = |_| async {
                let session: serde_json::Value = http
                    .post(format!("{base}/api/session"))
                    .send()
                    .await?
                    .error_for_status()?
                    .json()
                    .await?;
                anyhow::Ok(
                    session["token"]
                        .as_str()
                        .context("/api/session gave no token")?
                        .to_owned(),
                )
            };
            server.tokens = futures::stream::iter(0..work.chats)
                .map(mint)
                .buffered(16)
                .try_collect()
                .await?;
        }
        Ok(server)
    }
}

fn install_node_peer(dir: &Path) -> anyhow::Result<()> {
    let node = Command::new("node").arg("--version").output();
    if !node.is_ok_and(|o| o.status.success()) {
        bail!("the Node peer needs `node` (20+) on PATH");
    }
    if dir.join("node_modules/ai/package.json").exists() {
        return Ok(());
    }
    eprintln!(
        "installing the Node peer's dependencies (npm ci in {})",
        dir.display()
    );
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(dir)
        .status()
        .context("running npm")?;
    if !status.success() {
        bail!("npm ci in {} failed: {status}", dir.display());
    }
    Ok(())
}

/// CPU seconds (user + system, all threads) and resident memory in KB of a process.
/// # Errors
/// The process is gone or `/proc` is not as expected.
pub fn usage(pid: u32) -> anyhow::Result<(f64, u64)> {
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
