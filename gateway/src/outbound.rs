//! What the router and the sessions know of a connection: its id, and what is sent to it.
//!
//! Kept apart from both so that neither imports the other: the router owns the [`Sessions`]
//! (`crate::sessions`), and both hand [`Outbound`]s to a connection's queue.
//!
//! [`Sessions`]: crate::sessions::Sessions

/// Identifies one websocket connection for as long as the gateway runs.
pub(crate) type ClientId = u64;

/// Something for one client: a response, or a progress notification.
#[derive(Debug)]
pub(crate) struct Outbound {
    /// The batch the call belonged to, as the connection numbered it (responses only).
    pub(crate) batch: Option<u64>,
    pub(crate) kind: OutboundKind,
    pub(crate) text: String,
}

/// Whether an [`Outbound`] ends its call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OutboundKind {
    Response,
    /// `$/progress` or `$/session`: answers no call.
    Notification,
}
