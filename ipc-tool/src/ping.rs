//! `wsmq-ipc ping`: the gateway's handshake, and nothing else, against a bridge's socket.
//!
//! It answers "is the bridge there, which one is it, is its broker up" with exactly the frames
//! a gateway would exchange, so it fails where the gateway would fail and for the same reason.
//! A bridge serves one gateway at a time and refuses any other connection while its gateway
//! is connected, so on a healthy production host ping is *refused*; that is reported as such
//! (exit 2, with a note) rather than as a failure. While ping is connected it holds that single
//! slot itself, for the one round trip it takes.

use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures::StreamExt;
use interprocess::local_socket::tokio::{Stream, prelude::*};
use interprocess::local_socket::{GenericFilePath, ToFsName};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio_util::codec::{Encoder, FramedRead};
use wsmq_ipc_proto::{
    BrokerState, FrameError, Hello, IpcCodec, PROTOCOL_VERSION, Refusal, ToBridge, ToGateway,
    Welcome,
};

use crate::render;
use wsmq_service::error_chain;

/// The `peer` ping names itself with in the bridge's log.
pub(crate) const PEER_NAME: &str = "wsmq-ipc ping";

/// Exit status: welcomed, broker up.
pub(crate) const EXIT_UP: u8 = 0;
/// Exit status: welcomed, but the bridge's broker is down or blocking publishers.
pub(crate) const EXIT_BROKER_NOT_UP: u8 = 1;
/// Exit status: refused (another gateway is connected, or another protocol version).
pub(crate) const EXIT_REFUSED: u8 = 2;
/// Exit status: no answer (cannot connect, timeout, closed, or not the protocol).
pub(crate) const EXIT_UNREACHABLE: u8 = 3;

/// Why ping got no handshake answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PingError {
    #[error("cannot connect to the socket")]
    Connect(#[source] io::Error),
    #[error("no answer within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error("the bridge closed the connection without answering the hello")]
    Closed(#[source] Option<io::Error>),
    #[error("the answer is not a valid frame")]
    Frame(#[source] FrameError),
    #[error("the bridge answered the hello with {0} instead of Welcome or Refused")]
    Unexpected(Value),
}

/// What the bridge said.
#[derive(Debug)]
pub(crate) enum Outcome {
    Welcome { welcome: Welcome, rtt: Duration },
    Refused { refusal: Refusal, rtt: Duration },
    Failed(PingError),
}

/// Connects to `path`, says hello, and waits for the answer, all within `timeout`.
pub(crate) async fn ping(path: &Path, timeout: Duration) -> Outcome {
    match tokio::time::timeout(timeout, handshake(path)).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(e)) => Outcome::Failed(e),
        Err(_) => Outcome::Failed(PingError::Timeout(timeout)),
    }
}

async fn handshake(path: &Path) -> Result<Outcome, PingError> {
    let name = path
        .to_fs_name::<GenericFilePath>()
        .map_err(PingError::Connect)?;
    let stream = Stream::connect(name).await.map_err(PingError::Connect)?;
    let mut codec = IpcCodec::<ToGateway, ToBridge>::new();
    let mut hello = BytesMut::new();
    codec
        .encode(
            ToBridge::Hello(Hello {
                version: PROTOCOL_VERSION,
                peer: PEER_NAME.to_owned(),
            }),
            &mut hello,
        )
        .map_err(PingError::Frame)?;
    // `&Stream` reads and writes: no split needed for one write and one read.
    let mut answers = FramedRead::new(&stream, codec);

    let sent = Instant::now();
    // A bridge that already has its gateway sends its refusal without reading anything and
    // closes, possibly before our hello is written: a failed write only matters when there is
    // no answer to read either.
    let write_error = (&stream).write_all(&hello).await.err();
    let answer = answers.next().await;
    let rtt = sent.elapsed();
    match answer {
        Some(Ok(ToGateway::Welcome(welcome))) => Ok(Outcome::Welcome { welcome, rtt }),
        Some(Ok(ToGateway::Refused(refusal))) => Ok(Outcome::Refused { refusal, rtt }),
        Some(Ok(other)) => Err(PingError::Unexpected(render::to_gateway(&other))),
        Some(Err(e)) => Err(PingError::Frame(e)),
        None => Err(PingError::Closed(write_error)),
    }
}

impl Outcome {
    /// The exit status scripts test (see `wsmq-ipc ping --help`).
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            Outcome::Welcome { welcome, .. } if welcome.version != PROTOCOL_VERSION => EXIT_REFUSED,
            Outcome::Welcome { welcome, .. } => match welcome.broker {
                BrokerState::Up => EXIT_UP,
                BrokerState::Down | BrokerState::Blocked => EXIT_BROKER_NOT_UP,
            },
            Outcome::Refused { .. } => EXIT_REFUSED,
            Outcome::Failed(_) => EXIT_UNREACHABLE,
        }
    }

    /// One line for a person.
    pub(crate) fn human(&self, path: &Path) -> String {
        let at = path.display();
        match self {
            Outcome::Welcome { welcome, rtt } if welcome.version != PROTOCOL_VERSION => format!(
                "bridge at {at} welcomed us but speaks protocol version {}, not ours ({PROTOCOL_VERSION}): \
                 a bridge of another version (round trip {})",
                welcome.version,
                millis(*rtt)
            ),
            Outcome::Welcome { welcome, rtt } => format!(
                "bridge at {at}: welcome from instance {:?}, protocol {}, broker {}, round trip {} ms",
                welcome.instance,
                welcome.version,
                broker_sentence(welcome.broker),
                millis(*rtt)
            ),
            Outcome::Refused { refusal, rtt } => format!(
                "bridge at {at} refused the connection: {:?} (round trip {} ms). {}",
                refusal.reason,
                millis(*rtt),
                refusal_note(refusal)
            ),
            Outcome::Failed(e) => format!("cannot ping the bridge at {at}: {}", error_chain(e)),
        }
    }

    /// One JSON object for a script.
    pub(crate) fn json(&self, path: &Path) -> Value {
        let path = path_text(path);
        let exit_code = self.exit_code();
        match self {
            Outcome::Welcome { welcome, rtt } => json!({
                "path": path,
                "result": "welcome",
                "version": welcome.version,
                "instance": welcome.instance,
                "broker": broker_word(welcome.broker),
                "rtt_ms": millis_f64(*rtt),
                "exit_code": exit_code,
            }),
            Outcome::Refused { refusal, rtt } => json!({
                "path": path,
                "result": "refused",
                "version": refusal.version,
                "reason": refusal.reason,
                "note": refusal_note(refusal),
                "rtt_ms": millis_f64(*rtt),
                "exit_code": exit_code,
            }),
            Outcome::Failed(e) => json!({
                "path": path,
                "result": "error",
                "error": error_chain(e),
                "exit_code": exit_code,
            }),
        }
    }
}

/// What a refusal means for the operator. A bridge refuses for two reasons: another protocol
/// version (its refusal then carries its own version), or another gateway already connected.
fn refusal_note(refusal: &Refusal) -> String {
    if refusal.version == PROTOCOL_VERSION {
        "Expected in production: a bridge serves one gateway at a time and refuses every other \
         connection while its gateway is connected. Check the gateway's GET /healthz instead, \
         or watch the live link with `wsmq-ipc tap`."
            .to_owned()
    } else {
        format!(
            "Protocol version mismatch: the bridge speaks version {}, this wsmq-ipc speaks \
             {PROTOCOL_VERSION}. Use the wsmq-ipc built with that bridge.",
            refusal.version
        )
    }
}

fn broker_word(state: BrokerState) -> &'static str {
    match state {
        BrokerState::Up => "up",
        BrokerState::Down => "down",
        BrokerState::Blocked => "blocked",
    }
}

fn broker_sentence(state: BrokerState) -> String {
    const UNAVAILABLE: i64 = wsmq_codes::BROKER_UNAVAILABLE;
    match state {
        BrokerState::Up => "up".to_owned(),
        BrokerState::Down => {
            format!("DOWN (the bridge has no RabbitMQ connection; calls get {UNAVAILABLE})")
        }
        BrokerState::Blocked => format!(
            "BLOCKED (RabbitMQ blocks publishers: a memory or disk alarm; calls get {UNAVAILABLE})"
        ),
    }
}

fn millis_f64(d: Duration) -> f64 {
    // Microsecond precision is all a round trip on a local socket needs.
    (d.as_micros() as f64) / 1000.0
}

fn millis(d: Duration) -> String {
    format!("{:.3}", millis_f64(d))
}

fn path_text(path: &Path) -> String {
    path.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_down_or_blocked_names_the_code_calls_get() {
        assert_eq!(broker_sentence(BrokerState::Up), "up");
        for state in [BrokerState::Down, BrokerState::Blocked] {
            let sentence = broker_sentence(state);
            assert!(sentence.ends_with("calls get -32000)"), "{sentence}");
        }
    }

    fn welcome(broker: BrokerState) -> Outcome {
        Outcome::Welcome {
            welcome: Welcome {
                version: PROTOCOL_VERSION,
                instance: "web-1".into(),
                broker,
            },
            rtt: Duration::from_micros(420),
        }
    }

    fn refused(version: u16) -> Outcome {
        Outcome::Refused {
            refusal: Refusal {
                version,
                reason: "another gateway is already connected to this bridge".into(),
            },
            rtt: Duration::from_micros(300),
        }
    }

    #[test]
    fn exit_codes_follow_the_documented_table() {
        assert_eq!(welcome(BrokerState::Up).exit_code(), 0);
        assert_eq!(welcome(BrokerState::Down).exit_code(), 1);
        assert_eq!(welcome(BrokerState::Blocked).exit_code(), 1);
        assert_eq!(refused(PROTOCOL_VERSION).exit_code(), 2);
        assert_eq!(refused(PROTOCOL_VERSION + 1).exit_code(), 2);
        let failed = Outcome::Failed(PingError::Timeout(Duration::from_secs(5)));
        assert_eq!(failed.exit_code(), 3);
    }

    #[test]
    fn welcome_names_the_instance_broker_and_round_trip() {
        let path = Path::new("/run/wsmq/bridge.sock");
        let line = welcome(BrokerState::Blocked).human(path);
        assert!(line.contains("\"web-1\""), "{line}");
        assert!(line.contains("BLOCKED"), "{line}");
        assert!(line.contains("0.420 ms"), "{line}");
        let json = welcome(BrokerState::Up).json(path);
        assert_eq!(
            json,
            json!({"path": "/run/wsmq/bridge.sock", "result": "welcome",
                   "version": PROTOCOL_VERSION, "instance": "web-1", "broker": "up",
                   "rtt_ms": 0.42, "exit_code": 0})
        );
    }

    #[test]
    fn refusal_while_a_gateway_is_connected_says_it_is_expected() {
        let line = refused(PROTOCOL_VERSION).human(Path::new("b.sock"));
        assert!(line.contains("already connected"), "{line}");
        assert!(line.contains("Expected in production"), "{line}");
        let line = refused(PROTOCOL_VERSION + 1).human(Path::new("b.sock"));
        assert!(line.contains("version mismatch"), "{line}");
    }

    #[test]
    fn failure_json_carries_the_whole_error_chain() {
        let e = PingError::Connect(io::Error::from(io::ErrorKind::NotFound));
        let json = Outcome::Failed(e).json(Path::new("x.sock"));
        assert_eq!(json["result"], "error");
        assert_eq!(json["exit_code"], 3);
        let error = json["error"].as_str().expect("error");
        assert!(
            error.starts_with("cannot connect to the socket: "),
            "{error}"
        );
    }
}
