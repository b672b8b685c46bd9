//! The contract between `wsmq-gateway` and `wsmq-bridge`.
//!
//! The two processes are separate so that a broker outage or a bridge restart never touches a
//! websocket connection; this crate is the only thing they share. Every message that crosses the
//! Unix socket is a type in [`message`], and [`codec`] frames them: a 4-byte big-endian length,
//! then a postcard body. Nothing here knows about AMQP or websockets.
//!
//! # Session
//! 1. The gateway connects and sends [`ToBridge::Hello`] with [`PROTOCOL_VERSION`].
//! 2. The bridge answers [`ToGateway::Welcome`] (same version) or [`ToGateway::Refused`] and closes.
//! 3. Then, in any order: the gateway sends [`ToBridge::Submit`] per job and
//!    [`ToBridge::Taken`] per reply it has taken, and [`ToBridge::Cancel`] when a call it
//!    submitted is cancelled or times out; the bridge sends [`ToGateway::Published`] or
//!    [`ToGateway::Rejected`] per job, [`ToGateway::Reply`] per worker reply and
//!    [`ToGateway::Broker`] whenever the broker connection goes down or comes back. While the
//!    gateway holds calls of a method for fair share it sends [`ToBridge::Backlog`] now and
//!    then, and the bridge answers each with [`ToGateway::Backlog`] (protocol 4).
//!
//! The first variant of each direction's enum (`Hello`, `Welcome`) and the leading `version`
//! field of its payload must keep their encoding in every future version, so that a peer of
//! another version can always read the handshake and refuse cleanly.

#![forbid(unsafe_code)]

pub mod codec;
pub mod message;

pub use codec::{FrameError, IpcCodec, MAX_FRAME_LEN};
pub use message::*;

/// Version of this protocol, the one a gateway says in its hello.
///
/// The gateway accepts only a bridge of its own version. The bridge also serves a gateway of any
/// version from [`OLDEST_GATEWAY_VERSION`] on and welcomes it with the gateway's version, so
/// that the upgrade runbook's order (the bridge first, then the gateway) never leaves a gateway
/// refused: each version only adds messages, which an older gateway never sends.
///
/// - 3: jobs carry the caller's identity.
/// - 4: [`ToBridge::Backlog`] and [`ToGateway::Backlog`] (fair share).
pub const PROTOCOL_VERSION: u16 = 4;

/// The oldest gateway protocol version a bridge of this version serves.
pub const OLDEST_GATEWAY_VERSION: u16 = 3;

/// The most worker replies the bridge sends before the gateway has confirmed it took them.
///
/// The bridge holds a permit per reply in flight to the gateway, so the gateway can size the
/// queue that carries its [`ToBridge::Taken`] confirmations to this and never find it full.
pub const MAX_UNTAKEN_REPLIES: usize = 1024;
