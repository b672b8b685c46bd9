//! The gateway's end of the Unix socket to the bridge, kept alive across bridge restarts.
//!
//! One task owns the socket. Each successful connection is a numbered *epoch*: everything the
//! router sends is tagged with the epoch it was meant for, and the writer drops what belongs to
//! an older one, so a job queued just before a disconnect is never replayed into the next
//! epoch behind the router's back (the router has already answered it). ("Session" in the
//! gateway means a client's resumable session, never this.)
//!
//! Before the hello, the link reads the bridge's credentials (SO_PEERCRED) and refuses a
//! bridge that runs as neither the gateway's user, root, nor `--ipc-bridge-uid`: a process that
//! managed to bind the socket path would otherwise receive every job's params.
//!
//! Reading and writing run concurrently within the task: the bridge may be blocked writing to
//! us while we write to it, and a loop that did one at a time could deadlock with it.

use std::path::PathBuf;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use interprocess::local_socket::tokio::{Stream, prelude::*};
use interprocess::local_socket::{GenericFilePath, ToFsName};
use tokio::io::AsyncWrite;
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};
use wsmq_ipc_proto::{
    BrokerState, FrameError, Hello, IpcCodec, PROTOCOL_VERSION, ToBridge, ToGateway,
};

/// How long the bridge has to answer our hello.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// Reconnection is attempted at least this often, so the gateway is back soon after the bridge.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Frames written before a flush; bounds the latency a burst adds to the first of them.
const MAX_FRAMES_PER_FLUSH: usize = 256;

/// A message for the bridge, for one link epoch.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) epoch: u64,
    pub(crate) msg: ToBridge,
}

/// What the link tells the router.
#[derive(Debug)]
pub(crate) enum LinkEvent {
    Up { epoch: u64, broker: BrokerState },
    Down,
    Message { epoch: u64, msg: ToGateway },
}

/// Why one connection to the bridge ended.
#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("cannot connect to the bridge socket")]
    Connect(#[source] std::io::Error),
    #[error("bridge did not answer the hello within {0:?}")]
    HandshakeTimeout(Duration),
    #[error(
        "bridge refused this gateway: {reason} (bridge protocol version {version}, ours {PROTOCOL_VERSION})"
    )]
    Refused { version: u16, reason: String },
    #[error("bridge speaks protocol version {0}, ours is {PROTOCOL_VERSION}")]
    VersionMismatch(u16),
    #[error("bridge answered the hello with something else")]
    BadHandshake,
    #[error("bridge closed the socket")]
    Closed,
    #[error("ipc framing failed")]
    Frame(#[from] FrameError),
    #[error("the process on the bridge socket is not trusted: {0}")]
    Untrusted(String),
}

/// Which uids the bridge may run as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BridgeTrust {
    /// The gateway's own effective uid.
    pub(crate) own: u32,
    /// `--ipc-bridge-uid`.
    pub(crate) extra: Option<u32>,
}

impl BridgeTrust {
    pub(crate) fn for_this_process(extra: Option<u32>) -> Self {
        Self {
            own: nix::unistd::geteuid().as_raw(),
            extra,
        }
    }

    /// Root is trusted: it could read the gateway's memory anyway.
    pub(crate) fn allows(&self, uid: u32) -> bool {
        uid == self.own || uid == 0 || self.extra == Some(uid)
    }

    fn check(&self, stream: &Stream) -> Result<(), LinkError> {
        let creds = stream
            .peer_creds()
            .map_err(|e| LinkError::Untrusted(format!("its credentials cannot be read: {e}")))?;
        let Some(uid) = creds.euid() else {
            return Err(LinkError::Untrusted("the kernel reported no uid".into()));
        };
        if self.allows(uid) {
            return Ok(());
        }
        let pid = creds
            .pid()
            .map_or_else(|| "?".to_owned(), |p| p.to_string());
        Err(LinkError::Untrusted(format!(
            "it runs as uid {uid} (pid {pid}); expected uid {} or 0{}",
            self.own,
            self.extra
                .map(|u| format!(", or {u} (--ipc-bridge-uid)"))
                .unwrap_or_default()
        )))
    }
}

/// What the link task owns.
pub(crate) struct Link {
    pub(crate) path: PathBuf,
    pub(crate) trust: BridgeTrust,
    pub(crate) events: mpsc::Sender<LinkEvent>,
    pub(crate) jobs: mpsc::Receiver<Outgoing>,
    pub(crate) taken: mpsc::Receiver<Outgoing>,
    pub(crate) shutdown: CancellationToken,
}

impl Link {
    /// Connects, serves, reconnects, until shutdown.
    pub(crate) async fn run(mut self) {
        let mut backoff = wsmq_service::Backoff::new(MIN_BACKOFF, MAX_BACKOFF);
        let mut epoch = 0;
        let mut failures = 0u32;
        loop {
            epoch += 1;
            let result = tokio::select! {
                () = self.shutdown.cancelled() => return,
                r = self.connect() => r,
            };
            match result {
                Ok(stream) => {
                    failures = 0;
                    backoff.reset();
                    let outcome = self.serve(stream, epoch).await;
                    if self.events.send(LinkEvent::Down).await.is_err()
                        || self.shutdown.is_cancelled()
                    {
                        return;
                    }
                    match outcome {
                        Ok(()) => return,
                        Err(e) => warn!(
                            error = %wsmq_service::error_chain(&e),
                            "bridge link lost; reconnecting"
                        ),
                    }
                }
                Err(e) => {
                    failures += 1;
                    // Loud once per outage, then quiet: the gateway keeps trying.
                    let chain = wsmq_service::error_chain(&e);
                    if failures == 1 {
                        warn!(error = %chain, path = %self.path.display(), "bridge unreachable; retrying");
                    } else {
                        debug!(error = %chain, failures, "bridge still unreachable");
                    }
                    match e {
                        LinkError::Refused { .. } | LinkError::VersionMismatch(_) => {
                            error!(error = %chain, "bridge refused the connection");
                        }
                        LinkError::Untrusted(_) => {
                            error!(error = %chain, path = %self.path.display(), "refused the process on the bridge socket");
                        }
                        _ => {}
                    }
                }
            }
            let delay = backoff.next_delay();
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn connect(&self) -> Result<Stream, LinkError> {
        let name = self
            .path
            .as_path()
            .to_fs_name::<GenericFilePath>()
            .map_err(LinkError::Connect)?;
        let stream = Stream::connect(name).await.map_err(LinkError::Connect)?;
        self.trust.check(&stream)?;
        Ok(stream)
    }

    /// One epoch: handshake, then pump frames both ways until either side ends.
    async fn serve(&mut self, stream: Stream, epoch: u64) -> Result<(), LinkError> {
        let (read, write) = tokio::io::split(stream);
        let mut reader = FramedRead::new(read, IpcCodec::<ToGateway, ToBridge>::new());
        let mut writer = FramedWrite::new(write, IpcCodec::<ToGateway, ToBridge>::new());

        let hello = ToBridge::Hello(Hello {
            version: PROTOCOL_VERSION,
            peer: format!(
                "wsmq-gateway {} pid {}",
                env!("CARGO_PKG_VERSION"),
                std::process::id()
            ),
        });
        writer.send(hello).await?;
        let welcome = match tokio::time::timeout(HANDSHAKE_TIMEOUT, reader.next()).await {
            Err(_) => return Err(LinkError::HandshakeTimeout(HANDSHAKE_TIMEOUT)),
            Ok(None) => return Err(LinkError::Closed),
            Ok(Some(frame)) => frame?,
        };
        let broker = match welcome {
            ToGateway::Welcome(w) if w.version == PROTOCOL_VERSION => {
                info!(instance = %w.instance, broker = ?w.broker, "bridge link up");
                w.broker
            }
            ToGateway::Welcome(w) => return Err(LinkError::VersionMismatch(w.version)),
            ToGateway::Refused(r) => {
                return Err(LinkError::Refused {
                    version: r.version,
                    reason: r.reason,
                });
            }
            _ => return Err(LinkError::BadHandshake),
        };
        if self
            .events
            .send(LinkEvent::Up { epoch, broker })
            .await
            .is_err()
        {
            return Ok(());
        }

        let events = &self.events;
        let read_loop = async {
            while let Some(frame) = reader.next().await {
                let msg = frame?;
                if events
                    .send(LinkEvent::Message { epoch, msg })
                    .await
                    .is_err()
                {
                    return Ok(());
                }
            }
            Err(LinkError::Closed)
        };
        let write_loop = write_frames(&mut writer, &mut self.jobs, &mut self.taken, epoch);
        tokio::select! {
            () = self.shutdown.cancelled() => Ok(()),
            r = read_loop => r,
            r = write_loop => r,
        }
    }
}

async fn write_frames<W: AsyncWrite + Unpin>(
    writer: &mut FramedWrite<W, IpcCodec<ToGateway, ToBridge>>,
    jobs: &mut mpsc::Receiver<Outgoing>,
    taken: &mut mpsc::Receiver<Outgoing>,
    epoch: u64,
) -> Result<(), LinkError> {
    loop {
        let first = tokio::select! {
            biased;
            Some(t) = taken.recv() => t,
            Some(j) = jobs.recv() => j,
            else => return Ok(()),
        };
        // Feed what is already queued, then flush once; messages of an older epoch are
        // dropped (the router answered their calls when that epoch ended).
        let mut queued = 0usize;
        let mut next = Some(first);
        while let Some(out) = next.take() {
            if out.epoch == epoch {
                writer.feed(out.msg).await?;
                queued += 1;
            }
            if queued < MAX_FRAMES_PER_FLUSH {
                next = taken.try_recv().or_else(|_| jobs.try_recv()).ok();
            }
        }
        if queued > 0 {
            writer.flush().await?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_is_trusted_as_our_uid_root_or_the_configured_one() {
        let trust = BridgeTrust {
            own: 1000,
            extra: None,
        };
        assert!(trust.allows(1000));
        assert!(trust.allows(0));
        assert!(!trust.allows(1001));
        let trust = BridgeTrust {
            own: 1000,
            extra: Some(1001),
        };
        assert!(trust.allows(1001));
        assert!(!trust.allows(1002));
    }

    #[test]
    fn link_errors_log_their_whole_cause() {
        let e = LinkError::Frame(FrameError::Io(std::io::Error::other("connection reset")));
        assert_eq!(
            wsmq_service::error_chain(&e),
            "ipc framing failed: ipc socket i/o failed: connection reset"
        );
    }
}
