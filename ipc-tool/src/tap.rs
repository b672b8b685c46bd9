//! `wsmq-ipc tap`: a transparent proxy on the gateway <-> bridge socket that prints every
//! frame it relays as one JSON line.
//!
//! The link it sits in carries production traffic, so relaying comes first and never waits on
//! decoding or printing:
//! - Each direction is one task that reads a chunk, hands a copy of each *whole* frame in it to
//!   the printer with a non-blocking `try_send`, then writes the chunk on unchanged. Splitting
//!   frames is cheap (a 4-byte length and a copy); decoding, rendering and writing stdout
//!   happen on the printer thread.
//! - When the printer falls behind (a slow terminal, a paused pager) its queue fills and frames
//!   are **not printed**, never delayed. They are counted: stderr says how many once a second
//!   while it lasts (from a task of its own, since the printer is the one that is stuck), the
//!   next printed line carries `"skipped_before":N`, and the connection's summary gives the
//!   total. Skipping whole frames keeps the printed ones decodable; stalling the link instead
//!   would turn a slow terminal into gateway timeouts.
//! - The printer is an OS thread of its own because writing stdout blocks: a blocked stdout
//!   must not block the runtime that relays, nor keep the tap from exiting (which a
//!   `spawn_blocking` task would, since the runtime waits for those when it shuts down).
//!
//! Frames are handed to the printer before they are written on, so a message always prints
//! before any answer to it (`Hello` before `Welcome`). If stdout goes away (`| head`), the
//! tap stops, like any filter whose reader is gone; its gateway then sees the bridge go away
//! and keeps retrying the tap's socket, so point the gateway back at the bridge.
//!
//! Sockets are `tokio::net` rather than `interprocess` (which ping uses, like the gateway)
//! because a proxy must pass on a half-close, and `interprocess`'s `poll_shutdown` is a no-op.

use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::frame::{Frame, FrameSplitter, SplitError};
use crate::render::{Direction, FrameLine, decode_as};
use wsmq_service::error_chain;

/// Connections relayed at once. A bridge serves one gateway and refuses the others with a
/// reason, so the tap relays a few at once to let those refusals through (and print them);
/// past this, connections wait in the listen backlog until one ends.
const MAX_CONNECTIONS: usize = 8;

/// Bytes read from a socket at a time.
const RELAY_CHUNK: usize = 64 * 1024;

/// Frames waiting for the printer. When full, frames are relayed but not printed (counted).
const PRINT_QUEUE_FRAMES: usize = 4096;

/// Bytes of frame bodies waiting for the printer, over all connections. When it would be
/// exceeded, frames are relayed but not printed (counted). Above four maximum-size frames.
const PRINT_QUEUE_BYTES: usize = 64 * 1024 * 1024;

/// What a queued frame costs in [`PRINT_QUEUE_BYTES`] besides its body.
const RECORD_OVERHEAD: usize = 64;

/// How long the bridge has to accept the tap's connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Pause after a failed accept (EMFILE and the like) before trying again.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// On shutdown, how long the printer has to write what is queued. A stdout that does not move
/// (a pipe nobody reads) must not keep the tap from exiting.
const PRINTER_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// How often stderr reports frames that were relayed but not printed, while there are any.
const SKIP_REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// Where to listen and where to relay to.
#[derive(Debug, Clone)]
pub(crate) struct TapConfig {
    pub(crate) listen: PathBuf,
    pub(crate) connect: PathBuf,
}

/// Relays connections until `shutdown`, printing every frame to stdout.
///
/// Errors when the socket cannot be bound, or when stdout fails (which stops the tap).
pub(crate) async fn run(config: TapConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    if config.listen == config.connect {
        bail!(
            "--listen and --connect are both {}: the tap would relay to itself",
            config.listen.display()
        );
    }
    let (listener, inode) = bind(&config.listen)?;
    eprintln!(
        "wsmq-ipc tap: listening on {}, relaying to {}; one JSON line per frame on stdout",
        config.listen.display(),
        config.connect.display()
    );

    let (queue, records) = PrintQueue::new(PRINT_QUEUE_FRAMES, PRINT_QUEUE_BYTES);
    let (printed, printer_done) = oneshot::channel();
    std::thread::Builder::new()
        .name("wsmq-ipc-printer".into())
        .spawn({
            let shutdown = shutdown.clone();
            move || {
                let result = print_records(records, io::stdout().lock());
                if result.is_err() {
                    shutdown.cancel();
                }
                let _ = printed.send(result);
            }
        })
        .context("cannot start the printer thread")?;

    let reporter = tokio::spawn(report_skips(queue.skipped.clone(), shutdown.clone()));

    let sessions = TaskTracker::new();
    accept_loop(&listener, &config.connect, &queue, &sessions, &shutdown).await;
    drop(listener);
    remove_socket_file(&config.listen, inode);
    sessions.close();
    sessions.wait().await;
    reporter.abort();
    // The last sender: the printer ends once it has printed what is queued, unless stdout is
    // stuck, in which case the tap exits without it (the thread dies with the process).
    drop(queue);
    match tokio::time::timeout(PRINTER_DRAIN_TIMEOUT, printer_done).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(e))) => Err(e).context("cannot write to stdout; stopped relaying"),
        Ok(Err(_)) => bail!("the printer thread panicked"),
        Err(_) => {
            eprintln!(
                "wsmq-ipc tap: stdout did not take the last lines within {PRINTER_DRAIN_TIMEOUT:?}; \
                 exiting without them"
            );
            Ok(())
        }
    }
}

/// Binds `path`, removing a stale socket file but refusing to displace a live listener or to
/// delete anything that is not a socket.
fn bind(path: &Path) -> anyhow::Result<(UnixListener, u64)> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => bail!(
            "{} exists and is not a socket; refusing to replace it",
            path.display()
        ),
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => bail!(
                "something is already listening on {} (a bridge, or another tap); \
                 stop it or choose another --listen",
                path.display()
            ),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                std::fs::remove_file(path)
                    .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
                eprintln!("wsmq-ipc tap: removed stale socket file {}", path.display());
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot tell whether {} is live", path.display()));
            }
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", path.display())),
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))?;
    let inode = std::fs::metadata(path)
        .with_context(|| format!("cannot inspect {} after binding it", path.display()))?
        .ino();
    Ok((listener, inode))
}

/// Removes the socket file on the way out, unless it is no longer ours (another tap replaced it).
fn remove_socket_file(path: &Path, inode: u64) {
    if std::fs::metadata(path).is_ok_and(|m| m.ino() == inode)
        && let Err(e) = std::fs::remove_file(path)
    {
        eprintln!("wsmq-ipc tap: cannot remove {}: {e}", path.display());
    }
}

/// Says on stderr, at most once per [`SKIP_REPORT_INTERVAL`], how many frames the relays could
/// not queue for printing. One short line a second: writing it from a runtime task is fine.
async fn report_skips(skipped: Arc<AtomicU64>, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(SKIP_REPORT_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reported = 0;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let now = skipped.load(Ordering::Relaxed);
        if now > reported {
            eprintln!(
                "wsmq-ipc tap: {} frames relayed but not printed in the last {}s: stdout does not \
                 keep up ({now} in all)",
                now - reported,
                SKIP_REPORT_INTERVAL.as_secs()
            );
            reported = now;
        }
    }
}

/// Accepts connections until shutdown, relaying up to [`MAX_CONNECTIONS`] at once. A failed
/// accept is retried, never the end of the loop.
async fn accept_loop(
    listener: &UnixListener,
    bridge: &Path,
    queue: &PrintQueue,
    sessions: &TaskTracker,
    shutdown: &CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut conn = 0u64;
    loop {
        // The permit is taken before accepting, so past the limit connections wait in the
        // backlog rather than being accepted and left hanging.
        let permit = tokio::select! {
            () = shutdown.cancelled() => return,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return, // never closed
            },
        };
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _addr)) => stream,
            Err(e) => {
                eprintln!("wsmq-ipc tap: accept failed: {e}; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(ACCEPT_RETRY) => continue,
                }
            }
        };
        conn += 1;
        let session = Session {
            conn,
            bridge: bridge.to_owned(),
            queue: queue.clone(),
            shutdown: shutdown.clone(),
        };
        sessions.spawn(async move {
            session.run(stream).await;
            drop(permit);
        });
    }
}

/// One relayed connection.
struct Session {
    conn: u64,
    bridge: PathBuf,
    queue: PrintQueue,
    shutdown: CancellationToken,
}

impl Session {
    async fn run(self, client: UnixStream) {
        let conn = self.conn;
        let pid = client
            .peer_cred()
            .ok()
            .and_then(|c| c.pid())
            .map_or_else(|| "unknown pid".to_owned(), |pid| format!("pid {pid}"));
        let bridge = match tokio::time::timeout(CONNECT_TIMEOUT, UnixStream::connect(&self.bridge))
            .await
        {
            Ok(Ok(bridge)) => bridge,
            Ok(Err(e)) => {
                eprintln!(
                    "wsmq-ipc tap: connection {conn} ({pid}): cannot connect to {}: {e}; closing it",
                    self.bridge.display()
                );
                return;
            }
            Err(_) => {
                eprintln!(
                    "wsmq-ipc tap: connection {conn} ({pid}): {} did not accept within {CONNECT_TIMEOUT:?}; closing it",
                    self.bridge.display()
                );
                return;
            }
        };
        eprintln!(
            "wsmq-ipc tap: connection {conn} ({pid}) relayed to {}",
            self.bridge.display()
        );

        let (client_read, client_write) = client.into_split();
        let (bridge_read, bridge_write) = bridge.into_split();
        let mut up = Observer::new(conn, Direction::ToBridge, self.queue.clone());
        let mut down = Observer::new(conn, Direction::ToGateway, self.queue);
        // Each direction runs until its reader ends and the end is passed on; an error in one
        // drops both, closing both sockets.
        let relayed = async {
            tokio::try_join!(
                relay(client_read, bridge_write, &mut up),
                relay(bridge_read, client_write, &mut down),
            )
        };
        let ended = tokio::select! {
            () = self.shutdown.cancelled() => "ended: the tap is stopping".to_owned(),
            result = relayed => match result {
                Ok((sent, received)) => format!(
                    "closed ({sent} bytes gateway->bridge, {received} bytes bridge->gateway)"
                ),
                Err(e) => format!("ended: {e}"),
            },
        };
        eprintln!("wsmq-ipc tap: connection {conn} {ended}");
        for observer in [&up, &down] {
            if observer.skipped_total > 0 {
                eprintln!(
                    "wsmq-ipc tap: connection {conn} {}: {} frames relayed but not printed \
                     (stdout did not keep up)",
                    observer.dir.label(),
                    observer.skipped_total
                );
            }
        }
    }
}

/// Copies `src` to `dst` until `src` ends, then half-closes `dst`; `observer` sees every byte
/// first. Returns the bytes relayed.
async fn relay(
    mut src: impl AsyncRead + Unpin,
    mut dst: impl AsyncWrite + Unpin,
    observer: &mut Observer,
) -> io::Result<u64> {
    let mut buf = vec![0; RELAY_CHUNK];
    let mut total = 0u64;
    loop {
        let n = src.read(&mut buf).await?;
        if n == 0 {
            observer.end();
            dst.shutdown().await?;
            return Ok(total);
        }
        // Never waits: see the module docs.
        observer.observe(&buf[..n]);
        dst.write_all(&buf[..n]).await?;
        total += n as u64;
    }
}

/// One direction's view of the stream: splits it into frames and offers them to the printer.
struct Observer {
    conn: u64,
    dir: Direction,
    queue: PrintQueue,
    /// `None` once the stream could not be framed: from there on it is only relayed.
    splitter: Option<FrameSplitter>,
    /// Frames not printed since the last one that was.
    skipped: u64,
    skipped_total: u64,
}

impl Observer {
    fn new(conn: u64, dir: Direction, queue: PrintQueue) -> Self {
        Self {
            conn,
            dir,
            queue,
            splitter: Some(FrameSplitter::new()),
            skipped: 0,
            skipped_total: 0,
        }
    }

    /// Takes the next bytes of the stream.
    fn observe(&mut self, bytes: &[u8]) {
        let Some(mut splitter) = self.splitter.take() else {
            return;
        };
        let time = SystemTime::now();
        splitter.push(bytes);
        loop {
            match splitter.next_frame() {
                Ok(Some(frame)) => {
                    let cost = frame.body.len();
                    self.offer(time, Event::Frame(frame), cost);
                }
                Ok(None) => break,
                Err(e) => {
                    self.offer(time, Event::Unframeable(e), 0);
                    return;
                }
            }
        }
        self.splitter = Some(splitter);
    }

    /// The stream ended: reports a frame it cut short.
    fn end(&mut self) {
        if let Some(Err(e)) = self.splitter.take().map(|s| s.finish()) {
            self.offer(SystemTime::now(), Event::Unframeable(e), 0);
        }
    }

    fn offer(&mut self, time: SystemTime, event: Event, cost: usize) {
        let record = Record {
            time,
            conn: self.conn,
            dir: self.dir,
            event,
            skipped_before: self.skipped,
            _budget: None,
        };
        if self.queue.offer(record, cost) {
            self.skipped = 0;
        } else {
            self.skipped += 1;
            self.skipped_total += 1;
        }
    }
}

/// Something to print.
#[derive(Debug)]
struct Record {
    time: SystemTime,
    conn: u64,
    dir: Direction,
    event: Event,
    /// Frames of this direction not printed just before this one.
    skipped_before: u64,
    /// Its share of [`PRINT_QUEUE_BYTES`], given back once it is printed.
    _budget: Option<OwnedSemaphorePermit>,
}

#[derive(Debug)]
enum Event {
    Frame(Frame),
    /// The stream stopped being frames (and is only relayed from here on).
    Unframeable(SplitError),
}

/// The relays' handle on the printer's queue: bounded in frames and in bytes, and never waits.
#[derive(Debug, Clone)]
struct PrintQueue {
    records: mpsc::Sender<Record>,
    budget: Arc<Semaphore>,
    /// Frames dropped for want of room, over all connections (a counter, only ever added to
    /// and read).
    skipped: Arc<AtomicU64>,
}

impl PrintQueue {
    fn new(frames: usize, bytes: usize) -> (Self, mpsc::Receiver<Record>) {
        let (records, rx) = mpsc::channel(frames);
        let queue = Self {
            records,
            budget: Arc::new(Semaphore::new(bytes)),
            skipped: Arc::new(AtomicU64::new(0)),
        };
        (queue, rx)
    }

    /// Queues `record` if there is room for it (`cost` body bytes); `false` if it was dropped.
    fn offer(&self, mut record: Record, cost: usize) -> bool {
        let cost = u32::try_from(cost.saturating_add(RECORD_OVERHEAD)).unwrap_or(u32::MAX);
        let queued = match self.budget.clone().try_acquire_many_owned(cost) {
            Ok(permit) => {
                record._budget = Some(permit);
                self.records.try_send(record).is_ok()
            }
            Err(_) => false,
        };
        if !queued {
            self.skipped.fetch_add(1, Ordering::Relaxed);
        }
        queued
    }
}

/// The printer thread: one line per record, flushed per line, until every sender is gone or
/// stdout fails.
fn print_records(mut records: mpsc::Receiver<Record>, mut out: impl Write) -> io::Result<()> {
    while let Some(record) = records.blocking_recv() {
        writeln!(out, "{}", record_line(&record).to_json())?;
        out.flush()?;
    }
    Ok(())
}

fn record_line(record: &Record) -> FrameLine {
    let line = FrameLine {
        time: Some(humantime::format_rfc3339_micros(record.time).to_string()),
        conn: Some(record.conn),
        dir: Some(record.dir.label()),
        skipped_before: (record.skipped_before > 0).then_some(record.skipped_before),
        ..FrameLine::default()
    };
    match &record.event {
        Event::Frame(frame) => {
            let line = FrameLine {
                len: Some(frame.body.len() as u64),
                ..line
            };
            match decode_as(record.dir, &frame.body) {
                Ok(msg) => FrameLine {
                    msg: Some(msg),
                    ..line
                },
                Err(e) => line.with_error(
                    format!("{} (relayed anyway)", error_chain(&e)),
                    &frame.wire_bytes(),
                ),
            }
        }
        Event::Unframeable(e) => FrameLine {
            len: e.claimed_len(),
            ..line
        }
        .with_error(
            format!("{e}; still relayed, no longer decoded on this connection"),
            e.wire_bytes(),
        ),
    }
}

#[cfg(test)]
mod tests;
