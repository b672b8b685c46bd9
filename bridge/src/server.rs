//! The Unix socket the gateway connects to, and the loop that accepts it.
//!
//! Who may connect is decided twice, independently: by file permissions (the socket is mode
//! 0600, or 0660 for `--ipc-group`, inside a directory the bridge creates 0700 / 0750), and by
//! the peer's credentials as the kernel reports them (SO_PEERCRED, read when the connection is
//! accepted): its uid must be the bridge's own or root's, or its gid the `--ipc-group`. A peer
//! that fails the second check is told why, logged with its uid, gid and pid, and dropped; it
//! never takes the single gateway slot. Permissions alone would do on a correctly set-up host;
//! the credential check keeps a wrong `chmod`, a shared runtime directory or a too-wide umask
//! from letting another local user submit jobs or read results.
//!
//! The bridge serves one gateway at a time: a bridge's replies all come from one durable reply
//! queue, and there is one party to hand them to. A second connection while a link is live
//! is refused with a reason (the gateway logs it and retries), never silently left hanging.

use std::io;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use interprocess::local_socket::tokio::{Listener, prelude::*};
use interprocess::local_socket::{GenericFilePath, ListenerOptions};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use tracing::{error, info, warn};

use crate::gateway_link::{self, LinkContext};

/// Pause after a failed accept (EMFILE and the like) before trying again.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Which peers may use the socket, by the credentials the kernel reports for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PeerPolicy {
    /// The bridge's own effective uid.
    pub(crate) uid: u32,
    /// `--ipc-group`: peers whose effective gid is this one are let in too.
    pub(crate) group: Option<u32>,
}

impl PeerPolicy {
    /// The policy for this process, with `group` from `--ipc-group`.
    pub(crate) fn for_this_process(group: Option<u32>) -> Self {
        Self {
            uid: nix::unistd::geteuid().as_raw(),
            group,
        }
    }

    /// Whether a peer with these credentials may talk to the bridge. Root may: it could read
    /// the bridge's memory anyway, and `sudo wsmq-ipc ping` is how an operator checks a bridge.
    pub(crate) fn allows(&self, uid: u32, gid: u32) -> bool {
        uid == self.uid || uid == 0 || self.group == Some(gid)
    }

    /// Checks an accepted connection; `Err` says why it is refused, naming the peer.
    pub(crate) fn check(&self, conn: &LocalSocketStream) -> Result<(), String> {
        let creds = conn
            .peer_creds()
            .map_err(|e| format!("cannot read the peer's credentials: {e}"))?;
        let (Some(uid), Some(gid)) = (creds.euid(), creds.egid()) else {
            return Err("the kernel reported no uid/gid for the peer".into());
        };
        if self.allows(uid, gid) {
            return Ok(());
        }
        let pid = creds
            .pid()
            .map_or_else(|| "?".to_owned(), |p| p.to_string());
        Err(format!(
            "peer uid {uid} gid {gid} pid {pid} may not use this socket (allowed: uid {} or 0{})",
            self.uid,
            self.group
                .map(|g| format!(", or gid {g}"))
                .unwrap_or_default()
        ))
    }
}

type LocalSocketStream = interprocess::local_socket::tokio::Stream;

/// Creates the socket's directory if missing, accessible to the bridge's user only (and to
/// `group`, read and enter, when given); warns when an existing one is open to other users.
fn prepare_dir(dir: &Path, group: Option<u32>) -> anyhow::Result<()> {
    if !dir.exists() {
        let mode = if group.is_some() { 0o750 } else { 0o700 };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(dir)
            .with_context(|| format!("cannot create the socket directory {}", dir.display()))?;
        // The umask may have taken bits away; set exactly what is meant.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot set the mode of {}", dir.display()))?;
        if let Some(gid) = group {
            std::os::unix::fs::chown(dir, None, Some(gid)).with_context(|| {
                format!("cannot give {} to group {gid} (--ipc-group)", dir.display())
            })?;
        }
        return Ok(());
    }
    let mode = std::fs::metadata(dir)
        .with_context(|| format!("cannot read the socket directory {}", dir.display()))?
        .permissions()
        .mode();
    if mode & 0o007 != 0 || mode & 0o020 != 0 {
        warn!(
            dir = %dir.display(),
            mode = format!("{:o}", mode & 0o7777),
            "the socket directory is open to other users; only peer credentials keep them out \
             (make it 0700, or 0750 with --ipc-group)"
        );
    }
    Ok(())
}

/// Binds the socket, clearing a stale file a crashed bridge left behind, but refusing to
/// displace a bridge that is still listening there. The socket is left mode 0600, or 0660 and
/// owned by `group`.
pub(crate) fn bind(path: &Path, group: Option<u32>) -> anyhow::Result<Listener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        prepare_dir(dir, group)?;
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
    let listener = ListenerOptions::new()
        .name(name)
        .reclaim_name(true)
        .create_tokio()
        .with_context(|| format!("cannot listen on {}", path.display()))?;
    let mode = if group.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of the socket {}", path.display()))?;
    if let Some(gid) = group {
        std::os::unix::fs::chown(path, None, Some(gid)).with_context(|| {
            format!(
                "cannot give the socket {} to group {gid} (--ipc-group)",
                path.display()
            )
        })?;
    }
    Ok(listener)
}

/// Refuses a peer whose credentials the policy does not allow: tells it why and drops it.
/// Returns the connection when it is allowed.
fn admit(conn: LocalSocketStream, policy: &PeerPolicy) -> Option<LocalSocketStream> {
    match policy.check(&conn) {
        Ok(()) => Some(conn),
        Err(why) => {
            warn!(reason = %why, "refused an ipc peer");
            crate::metrics::peer_refused("credentials");
            let (_, write) = tokio::io::split(conn);
            tokio::spawn(gateway_link::refuse(write, why));
            None
        }
    }
}

/// Accepts gateways until shutdown, serving one at a time.
pub(crate) async fn serve(listener: Listener, policy: PeerPolicy, mut ctx: LinkContext<'_>) {
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
        let Some(conn) = admit(conn, &policy) else {
            continue;
        };
        let (read, write) = tokio::io::split(conn);
        let link = gateway_link::run(read, write, reborrow(&mut ctx));
        tokio::pin!(link);
        loop {
            tokio::select! {
                result = &mut link => {
                    if let Err(e) = result {
                        warn!(error = %wsmq_service::error_chain(&e), "gateway session failed; waiting for the next");
                    }
                    break;
                }
                extra = listener.accept() => match extra {
                    Ok(extra) => {
                        let Some(extra) = admit(extra, &policy) else {
                            continue;
                        };
                        warn!("refused a second gateway: one is already connected");
                        crate::metrics::gateway_refused();
                        let (_, write) = tokio::io::split(extra);
                        tokio::spawn(gateway_link::refuse(
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

fn reborrow<'a>(ctx: &'a mut LinkContext<'_>) -> LinkContext<'a> {
    LinkContext {
        broker: ctx.broker,
        instance: ctx.instance,
        max_unconfirmed: ctx.max_unconfirmed,
        drain_timeout: ctx.drain_timeout,
        shutdown: ctx.shutdown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_uid_and_root_are_allowed_others_only_by_group() {
        let policy = PeerPolicy {
            uid: 1000,
            group: None,
        };
        assert!(policy.allows(1000, 1000));
        assert!(policy.allows(0, 0));
        assert!(
            !policy.allows(1001, 1000),
            "same gid is not enough without --ipc-group"
        );
        let policy = PeerPolicy {
            uid: 1000,
            group: Some(2000),
        };
        assert!(policy.allows(1001, 2000));
        assert!(!policy.allows(1001, 2001));
    }

    #[tokio::test]
    async fn socket_is_0600_in_a_0700_directory_it_creates() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("run/wsmq/bridge.sock");
        let _listener = bind(&path, None).expect("binds");
        let mode = |p: &Path| std::fs::metadata(p).expect("exists").permissions().mode() & 0o7777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().expect("has a directory")), 0o700);
    }

    #[tokio::test]
    async fn with_a_group_the_socket_is_0660_and_the_group_owns_it() {
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("sock/bridge.sock");
        // Our own gid: any process may give a file to its own group.
        let gid = nix::unistd::getegid().as_raw();
        let _listener = bind(&path, Some(gid)).expect("binds");
        let meta = std::fs::metadata(&path).expect("exists");
        assert_eq!(meta.permissions().mode() & 0o7777, 0o660);
        assert_eq!(meta.gid(), gid);
        let dir = std::fs::metadata(path.parent().expect("dir")).expect("exists");
        assert_eq!(dir.permissions().mode() & 0o7777, 0o750);
    }
}
