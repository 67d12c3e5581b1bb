//! The SDK's HTTPS client as every chatrun `SdkConfig` gets it (`chatrun_aws::sdk_config_loader`:
//! rustls on `ring`, Mozilla's roots unless `SSL_CERT_FILE`/`SSL_CERT_DIR` name others) over real
//! TLS: a local server whose certificate is signed by a throwaway CA. Without `SSL_CERT_FILE` the
//! call must fail on the certificate; with it naming the CA, it works only if the handshake, the
//! certificate check against the loaded roots and the host name check all pass. The emulator tests speak plain HTTP; AWS endpoints do not. Needs `openssl` and
//! `python3` (both already needed by the emulators).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A TLS server on localhost that answers every POST with a DynamoDB `ListTables` reply.
const SERVER: &str = r#"
import http.server, ssl, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        body = b'{"TableNames":["over-tls"]}'
        self.send_response(200)
        self.send_header("content-type", "application/x-amz-json-1.0")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", 0), H)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(sys.argv[1], sys.argv[2])
server.socket = context.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl runs");
    assert!(status.success(), "openssl {args:?}");
}

/// A CA and a `localhost` server certificate it signed, in `dir`.
fn certificates(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=chatrun test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ],
    );
}

#[tokio::test]
async fn the_sdk_client_trusts_mozilla_roots_or_those_ssl_cert_file_names() {
    let dir = std::env::temp_dir().join(format!("chatrun-tls-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    certificates(&dir);
    let mut child = Command::new("python3")
        .args(["-c", SERVER])
        .arg(dir.join("server.pem"))
        .arg(dir.join("server.key"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut port = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut port)
        .unwrap();
    let _server = Server(child);
    let port: u16 = port.trim().parse().expect("the server prints its port");

    // No SSL_CERT_FILE/SSL_CERT_DIR (as on Lambda): the client trusts Mozilla's roots, compiled
    // in, which do not include the throwaway CA, so the handshake must fail on the certificate.
    // This also builds the connector, which panics if a compiled-in root does not parse.
    // SAFETY: no other thread of this test binary reads or writes the environment yet.
    unsafe {
        std::env::remove_var("SSL_CERT_FILE");
        std::env::remove_var("SSL_CERT_DIR");
    }
    let refused = list_tables(port)
        .await
        .expect_err("the throwaway CA is not a Mozilla root");
    let refused = format!(
        "{:?}",
        aws_sdk_dynamodb::error::DisplayErrorContext(&refused)
    );
    assert!(refused.contains("UnknownIssuer"), "{refused}");

    // SSL_CERT_FILE set: the only root this process trusts is the file's (rustls-native-certs
    // reads it instead of the system's store). Set before the first client that uses the system's
    // roots loads them; this file's only test.
    // SAFETY: as above; the finished call's threads do not touch the environment.
    unsafe { std::env::set_var("SSL_CERT_FILE", dir.join("ca.pem")) };
    let tables = list_tables(port).await.expect("ListTables over TLS");
    assert_eq!(tables.table_names(), ["over-tls"]);
    let _ = std::fs::remove_dir_all(&dir);
}

async fn list_tables(
    port: u16,
) -> Result<
    aws_sdk_dynamodb::operation::list_tables::ListTablesOutput,
    aws_sdk_dynamodb::error::SdkError<aws_sdk_dynamodb::operation::list_tables::ListTablesError>,
> {
    let config = chatrun_aws::sdk_config_loader()
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .endpoint_url(format!("https://localhost:{port}"))
        .load()
        .await;
    aws_sdk_dynamodb::Client::new(&config)
        .list_tables()
        .send()
        .await
}
