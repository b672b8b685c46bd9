//! Who gets in and what they may do: authentication (tokens file, JWT), the Origin allowlist,
//! TLS, the caller's identity on jobs, method allowlists, sessions bound to their identity,
//! and the per-connection limits (rate, per-address count, handshake, keepalive, idle).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wsmq_tests::{
    FakeWorker, Incoming, RECV_TIMEOUT, Refusal, STARTUP_TIMEOUT, System, WsClient, http, rpc,
};

const ALICE: &str = "alice-token-3f9a";
const BOB: &str = "bob-token-77c1";

/// A temp dir holding the test's secrets (tokens file, keys), kept for the test's life.
struct Secrets {
    dir: TempDir,
}

impl Secrets {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).expect("write secret");
        path
    }
}

fn arg(path: &Path) -> String {
    path.to_str().expect("utf-8 path").to_owned()
}

async fn system_with(args: &[(&str, String)]) -> System {
    let mut builder = System::builder();
    for (flag, value) in args {
        builder = builder.gateway_arg(flag, value);
    }
    builder.start().await.expect("system starts")
}

async fn connect_with(
    system: &System,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<WsClient, u16> {
    let addr = system.gateway_addr().expect("gateway running");
    match WsClient::try_connect_with(addr, path, headers)
        .await
        .expect("handshake answered")
    {
        Ok(client) => Ok(client),
        Err(Refusal::Status(status)) => Err(status),
        Err(Refusal::Failed(why)) => panic!("handshake failed without an HTTP status: {why}"),
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

async fn echo_works(client: &mut WsClient) {
    let payload = json!({"n": 1});
    let response = client
        .call("echo", payload.clone())
        .await
        .expect("echo answered");
    assert_eq!(rpc::result(&response), Some(&payload), "{response}");
}

fn status_of(result: Result<WsClient, u16>) -> u16 {
    match result {
        Ok(_) => 101,
        Err(status) => status,
    }
}

mod authentication;
mod identity;
mod limits;
mod transport;
