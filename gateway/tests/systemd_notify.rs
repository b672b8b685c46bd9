//! The gateway speaks systemd's notify protocol: READY=1 once listening, WATCHDOG=1 pings
//! while WATCHDOG_USEC is set, STOPPING=1 on SIGTERM — checked against a stand-in
//! NOTIFY_SOCKET, the way systemd would see them.

use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Long enough for a debug build to start on a loaded 2-core machine.
const WAIT: Duration = Duration::from_secs(20);

/// The gateway process, killed (and reaped) if the test ends before it exits: a failing
/// assertion must not leave it running.
struct Gateway(Child);

impl Drop for Gateway {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn next_message(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = socket
        .recv(&mut buf)
        .expect("a notification before the timeout");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn gateway_notifies_ready_watchdog_and_stopping() {
    let dir = tempfile::tempdir().expect("tempdir");
    let notify_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&notify_path).expect("bind notify socket");
    socket.set_read_timeout(Some(WAIT)).expect("timeout");

    let mut gateway = Gateway(
        Command::new(env!("CARGO_BIN_EXE_wsmq-gateway"))
            .args(["--listen", "127.0.0.1:0", "--ipc"])
            .arg(dir.path().join("no-bridge.sock"))
            .env("NOTIFY_SOCKET", &notify_path)
            .env("WATCHDOG_USEC", "100000")
            .env_remove("WATCHDOG_PID")
            .stderr(Stdio::null())
            .spawn()
            .expect("gateway starts"),
    );

    let first = next_message(&socket);
    assert!(
        first.lines().any(|l| l == "READY=1"),
        "first message: {first:?}"
    );

    let mut pings = 0;
    let deadline = Instant::now() + WAIT;
    while pings < 2 && Instant::now() < deadline {
        if next_message(&socket).lines().any(|l| l == "WATCHDOG=1") {
            pings += 1;
        }
    }
    assert_eq!(pings, 2, "watchdog pings while WATCHDOG_USEC is set");

    let pid = Pid::from_raw(i32::try_from(gateway.0.id()).expect("pid fits"));
    kill(pid, Signal::SIGTERM).expect("SIGTERM");
    let mut stopping = false;
    while !stopping && Instant::now() < deadline {
        stopping = next_message(&socket).lines().any(|l| l == "STOPPING=1");
    }
    assert!(stopping, "STOPPING=1 after SIGTERM");
    let status = gateway.0.wait().expect("gateway exits");
    assert!(status.success(), "clean exit after SIGTERM: {status}");
}
