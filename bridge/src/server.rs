//! The Unix socket the gateway connects to, and the loop that accepts it.
//!
//! The bridge serves one gateway at a time: a bridge's replies all come from one durable reply
//! queue, and there is one party to hand them to. A second connection while a session is live
//! is refused with a reason (the gateway logs it and retries), never silently left hanging.

use std::io;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use interprocess::local_socket::tokio::{Listener, prelude::*};
use interprocess::local_socket::{GenericFilePath, ListenerOptions};
use tracing::{error, info, warn};

use crate::session::{self, SessionContext};

/// Pause after a failed accept (EMFILE and the like) before trying again.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Binds the socket, clearing a stale file a crashed bridge left behind, but refusing to
/// displace a bridge that is still listening there.
pub(crate) fn bind(path: &Path) -> anyhow::Result<Listener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the socket directory {}", dir.display()))?;
    }
    if path.exists() {
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => anyhow::bail!(
                "another process is already listening on {}; stop it or choose another --ipc",
                path.display()
            ),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                info!(path = %path.display(), "removing stale socket file");
                std::fs::remove_file(path)
                    .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("{} exists and is not a usable socket", path.display())
                });
            }
        }
    }
    let name = path
        .to_fs_name::<GenericFilePath>()
        .with_context(|| format!("bad socket path {}", path.display()))?;
    ListenerOptions::new()
        .name(name)
        .reclaim_name(true)
        .create_tokio()
        .with_context(|| format!("cannot listen on {}", path.display()))
}

/// Accepts gateways until shutdown, serving one at a time.
pub(crate) async fn serve(listener: Listener, mut ctx: SessionContext<'_>) {
    let shutdown = ctx.shutdown.clone();
    loop {
        let conn = tokio::select! {
            () = shutdown.cancelled() => return,
            conn = listener.accept() => conn,
        };
        let conn = match conn {
            Ok(conn) => conn,
            Err(e) => {
                error!(error = %e, "accept on the ipc socket failed; retrying");
                tokio::time::sleep(ACCEPT_RETRY).await;
                continue;
            }
        };
        let (read, write) = tokio::io::split(conn);
        let session = session::run(read, write, reborrow(&mut ctx));
        tokio::pin!(session);
        loop {
            tokio::select! {
                result = &mut session => {
                    if let Err(e) = result {
                        warn!(error = %e, "gateway session failed");
                    }
                    break;
                }
                extra = listener.accept() => match extra {
                    Ok(extra) => {
                        warn!("refused a second gateway: one is already connected");
                        crate::metrics::gateway_refused();
                        let (_, write) = tokio::io::split(extra);
                        tokio::spawn(session::refuse(
                            write,
                            "another gateway is already connected to this bridge".into(),
                        ));
                    }
                    Err(e) => {
                        error!(error = %e, "accept on the ipc socket failed; retrying");
                        tokio::time::sleep(ACCEPT_RETRY).await;
                    }
                },
            }
        }
    }
}

fn reborrow<'a>(ctx: &'a mut SessionContext<'_>) -> SessionContext<'a> {
    SessionContext {
        broker: ctx.broker,
        instance: ctx.instance,
        max_unconfirmed: ctx.max_unconfirmed,
        drain_timeout: ctx.drain_timeout,
        shutdown: ctx.shutdown,
    }
}
