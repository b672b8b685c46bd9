//! The router's handle: how connections reach the router task.

use std::net::IpAddr;
use std::sync::Arc;

use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};

use crate::jsonrpc::Call;
use crate::outbound::{ClientId, Outbound};
use crate::sessions::{Grant, ResumeRefused};

/// Commands from connections. Connections wait for room here, which slows only themselves.
pub(super) const COMMAND_CAPACITY: usize = 1024;

#[derive(Debug)]
pub(super) enum Command {
    Connect {
        client: ClientId,
        tx: mpsc::Sender<Outbound>,
        resume: Option<String>,
        identity: Option<Arc<str>>,
        address: IpAddr,
        reply: oneshot::Sender<Result<Grant, ResumeRefused>>,
    },
    Disconnect {
        client: ClientId,
        unsent: Vec<Outbound>,
    },
    Call {
        client: ClientId,
        call: Call,
        batch: Option<u64>,
    },
    Cancel {
        client: ClientId,
        id: Box<RawValue>,
    },
}

/// Cloneable handle the connections use to reach the router.
#[derive(Debug, Clone)]
pub(crate) struct RouterHandle {
    pub(super) tx: mpsc::Sender<Command>,
}

/// The router stopped; only happens during shutdown.
#[derive(Debug, thiserror::Error)]
#[error("the router has stopped")]
pub(crate) struct RouterGone;

impl RouterHandle {
    /// Registers a connection, for a new session or to resume the one `resume` names; its
    /// messages arrive on `tx` (first `$/session`, then whatever the session kept). Dropping
    /// the router's side of `tx` (the receiver sees `None`) means the client was too slow and
    /// must be closed. `identity` is the authenticated caller: its calls carry it to the
    /// workers, and only it may resume the session. `address` is the client's: the sessions
    /// one address leaves behind are bounded.
    pub(crate) async fn connect(
        &self,
        client: ClientId,
        tx: mpsc::Sender<Outbound>,
        resume: Option<String>,
        identity: Option<Arc<str>>,
        address: IpAddr,
    ) -> Result<Result<Grant, ResumeRefused>, RouterGone> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Connect {
            client,
            tx,
            resume,
            identity,
            address,
            reply,
        })
        .await?;
        answer.await.map_err(|_| RouterGone)
    }

    /// The connection is gone; `unsent` is what it received and could not write (kept for a
    /// resume).
    pub(crate) async fn disconnect(
        &self,
        client: ClientId,
        unsent: Vec<Outbound>,
    ) -> Result<(), RouterGone> {
        self.send(Command::Disconnect { client, unsent }).await
    }

    /// Starts a call. Every call with an id gets exactly one
    /// [`OutboundKind::Response`](crate::outbound::OutboundKind::Response).
    pub(crate) async fn call(
        &self,
        client: ClientId,
        call: Call,
        batch: Option<u64>,
    ) -> Result<(), RouterGone> {
        self.send(Command::Call {
            client,
            call,
            batch,
        })
        .await
    }

    /// Cancels the client's own call with JSON-RPC id `id` (raw JSON), if it is still running.
    pub(crate) async fn cancel(
        &self,
        client: ClientId,
        id: Box<RawValue>,
    ) -> Result<(), RouterGone> {
        self.send(Command::Cancel { client, id }).await
    }

    async fn send(&self, cmd: Command) -> Result<(), RouterGone> {
        self.tx.send(cmd).await.map_err(|_| RouterGone)
    }
}
