//! Steady call load from websocket clients, every call counted by a [`Ledger`].
//!
//! [`drive`] keeps up to [`LoadSpec::window`] calls in flight on one connection, alternating
//! `echo` (a payload only that call may get back) and a short `sleep`, one send every
//! [`LoadSpec::interval`], until told to stop; then it waits (bounded) for the last answers,
//! makes one last `echo` so that anything queued behind them (a duplicate, a stray) is read
//! too, closes the socket and returns the connection's [`Tally`].

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::RECV_TIMEOUT;
use crate::client::{Incoming, WsClient};
use crate::ledger::{Ledger, Tally};

/// Pause before reconnecting after the gateway closed a connection (reconnecting clients only).
const RECONNECT_PAUSE: Duration = Duration::from_millis(500);

/// How one load client behaves.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Calls in flight at most; the next is sent only when one is answered.
    pub window: usize,
    /// Time between two sends, at most one send per interval.
    pub interval: Duration,
    /// The `ms` of every `sleep` call (every other call is an `echo`).
    pub sleep_ms: u64,
    /// Once stopped, how long to wait for the answers still owed. Above the gateway's call
    /// timeout, so a call nobody answers shows up as a -32001, not as lost.
    pub settle: Duration,
    /// Whether to reconnect when the gateway closes the connection (the soak runner does, to
    /// keep the load up; a test does not, since a close already fails it).
    pub reconnect: bool,
}

impl Default for LoadSpec {
    fn default() -> Self {
        Self {
            window: 4,
            interval: Duration::from_millis(25),
            sleep_ms: 50,
            settle: Duration::from_secs(40),
            reconnect: false,
        }
    }
}

/// Runs one load client against the gateway at `addr` until `stop` is cancelled, then settles
/// (see the module docs). Its ids start with `label`. Errs only if the first connection fails.
pub async fn drive(
    addr: SocketAddr,
    label: String,
    spec: LoadSpec,
    stop: CancellationToken,
) -> Result<Tally> {
    let mut ledger = Ledger::new(&label);
    let first = WsClient::connect(addr)
        .await
        .with_context(|| format!("load client {} cannot connect", ledger.name()))?;
    let mut client = Some(first.quiet());
    let mut next_send = Instant::now();
    let mut sleep_next = false;

    while !stop.is_cancelled() {
        let Some(ws) = client.as_mut() else {
            if !spec.reconnect {
                break;
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(RECONNECT_PAUSE) => {}
            }
            if let Ok(Ok(ws)) = WsClient::try_connect(addr, "/ws").await {
                client = Some(ws.quiet());
            }
            continue;
        };
        let now = Instant::now();
        let may_send = ledger.outstanding() < spec.window;
        if may_send && now >= next_send {
            let request = if sleep_next {
                ledger.sleep(spec.sleep_ms)
            } else {
                ledger.echo()
            };
            sleep_next = !sleep_next;
            next_send = now + spec.interval;
            if let Err(e) = ws.send_json(&request).await {
                record(
                    &mut ledger,
                    &Incoming::Ended(Some(format!("send failed: {e:#}"))),
                );
                client = None;
            }
            continue;
        }
        // Wait for a frame until the next send is due (or, with the window full, a while).
        let wait = if may_send {
            next_send.saturating_duration_since(now)
        } else {
            spec.interval.max(Duration::from_millis(1))
        };
        let incoming = tokio::select! {
            () = stop.cancelled() => break,
            incoming = ws.try_next_incoming(wait) => incoming,
        };
        if let Some(incoming) = incoming
            && record(&mut ledger, &incoming)
        {
            client = None;
        }
    }

    // Stopped: collect what is still owed, within the settle time, then probe.
    if let Some(mut ws) = client.take()
        && collect(&mut ws, &mut ledger, spec.settle).await
        && probe(&mut ws, &mut ledger).await
    {
        let _ = ws.close().await;
    }
    Ok(ledger.finish())
}

/// Reads `ws`'s frames into `ledger` until no call is outstanding or `limit` has passed.
/// Returns whether the connection is still open (when it ends, its calls are abandoned).
pub async fn collect(ws: &mut WsClient, ledger: &mut Ledger, limit: Duration) -> bool {
    let until = Instant::now() + limit;
    while ledger.outstanding() > 0 {
        let now = Instant::now();
        if now >= until {
            break;
        }
        if let Some(incoming) = ws.try_next_incoming(until - now).await
            && record(ledger, &incoming)
        {
            return false;
        }
    }
    true
}

/// Makes one more `echo` and reads frames until it is answered (within [`RECV_TIMEOUT`]):
/// anything queued before its answer (a late duplicate, a stray) is read and counted on the
/// way. Returns whether the connection is still open.
pub async fn probe(ws: &mut WsClient, ledger: &mut Ledger) -> bool {
    let probe = ledger.echo();
    let id = probe["id"].as_str().unwrap_or_default().to_owned();
    if let Err(e) = ws.send_json(&probe).await {
        record(
            ledger,
            &Incoming::Ended(Some(format!("send failed: {e:#}"))),
        );
        return false;
    }
    let until = Instant::now() + RECV_TIMEOUT;
    while !ledger.is_answered(&id) {
        let now = Instant::now();
        if now >= until {
            break;
        }
        match ws.try_next_incoming(until - now).await {
            Some(incoming) if record(ledger, &incoming) => return false,
            Some(_) => {}
            None => break,
        }
    }
    true
}

/// Records `incoming`; returns whether it ended the connection (and abandons its calls if so).
fn record(ledger: &mut Ledger, incoming: &Incoming) -> bool {
    ledger.record(incoming);
    let ended = matches!(incoming, Incoming::Close(_) | Incoming::Ended(_));
    if ended {
        ledger.abandon_outstanding();
    }
    ended
}

/// Several [`drive`] clients running at once, stopped together.
pub struct Load {
    stop: CancellationToken,
    clients: JoinSet<Result<Tally>>,
}

impl Load {
    /// Starts one client per `(gateway address, label)` in `targets`.
    pub fn start(targets: &[(SocketAddr, String)], spec: &LoadSpec) -> Self {
        let stop = CancellationToken::new();
        let mut clients = JoinSet::new();
        for (addr, label) in targets {
            clients.spawn(drive(*addr, label.clone(), spec.clone(), stop.clone()));
        }
        Self { stop, clients }
    }

    /// Stops sending, waits for every client to settle and adds up their tallies.
    pub async fn finish(mut self) -> Result<Tally> {
        self.stop.cancel();
        let mut total = Tally::default();
        let mut failures = Vec::new();
        while let Some(joined) = self.clients.join_next().await {
            match joined {
                Ok(Ok(tally)) => total.merge(tally),
                Ok(Err(e)) => failures.push(format!("{e:#}")),
                Err(e) => failures.push(format!("a load client panicked: {e}")),
            }
        }
        if !failures.is_empty() {
            bail!("{}", failures.join("; "));
        }
        Ok(total)
    }
}
