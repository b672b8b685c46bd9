//! Lingering close: a TCP connection the gateway is done with is half-closed and drained for a
//! moment before it is closed for good.
//!
//! Why: when the gateway ends a connection while the client is still sending (a message over
//! `--max-message-bytes` closed with 1009, a client that never reads let go with 1008), closing
//! the socket with unread bytes in its receive buffer makes the kernel answer with a TCP reset,
//! and a reset can overtake the close frame just written: the client then sees "connection
//! reset" instead of the documented close code. Sending FIN first (shutdown of the write side)
//! and reading what the client still sends until it closes too, for at most [`LINGER_FOR`] and
//! [`LINGER_BYTES`], lets the close frame arrive. This is what web servers call a lingering
//! close (nginx's `lingering_close`); RFC 6455 §7.1.1 likewise wants the server to close the
//! TCP connection only after the close handshake.
//!
//! hyper and tungstenite own the stream until they drop it, so this happens in `Drop`: the
//! stream is handed to a short task of its own. Bounded three ways: time, bytes, and at most
//! [`MAX_LINGERING`] sockets at once (past it a socket is closed at once, as before).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// How long a closed connection is drained at most.
pub(crate) const LINGER_FOR: Duration = Duration::from_secs(2);

/// How many bytes a closed connection may still send before it is cut (its reset then is
/// deserved).
pub(crate) const LINGER_BYTES: usize = 4 * 1024 * 1024;

/// Sockets lingering at once, at most: a burst of closes cannot hold more descriptors than this
/// beyond `--max-connections`.
const MAX_LINGERING: usize = 1024;

static LINGERING: AtomicUsize = AtomicUsize::new(0);

/// A TCP stream that lingers when dropped; otherwise exactly the stream.
#[derive(Debug)]
pub(crate) struct Lingering {
    /// Always `Some` until dropped.
    stream: Option<TcpStream>,
}

impl Lingering {
    pub(crate) fn new(stream: TcpStream) -> Self {
        Self {
            stream: Some(stream),
        }
    }

    fn stream(&mut self) -> io::Result<&mut TcpStream> {
        self.stream
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }
}

impl AsyncRead for Lingering {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut().stream() {
            Ok(stream) => Pin::new(stream).poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for Lingering {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().stream() {
            Ok(stream) => Pin::new(stream).poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().stream() {
            Ok(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.stream
            .as_ref()
            .is_some_and(AsyncWrite::is_write_vectored)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().stream() {
            Ok(stream) => Pin::new(stream).poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().stream() {
            Ok(stream) => Pin::new(stream).poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        let Some(stream) = self.stream.take() else {
            return;
        };
        // Outside a runtime (never in the gateway) there is nothing to linger on.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if LINGERING.fetch_add(1, Ordering::Relaxed) >= MAX_LINGERING {
            LINGERING.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        runtime.spawn(async move {
            linger(stream).await;
            LINGERING.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Sends FIN, then reads and discards until the peer closes, [`LINGER_FOR`] passes or it has
/// sent [`LINGER_BYTES`]; the stream is closed when this returns.
async fn linger(mut stream: TcpStream) {
    if stream.shutdown().await.is_err() {
        return;
    }
    let mut buf = vec![0u8; 16 * 1024];
    let mut left = LINGER_BYTES;
    let _ = tokio::time::timeout(LINGER_FOR, async {
        while left > 0 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, Lingering) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        (client, Lingering::new(server))
    }

    #[tokio::test]
    async fn a_peer_still_sending_reads_everything_written_before_the_drop_then_eof() {
        let (mut client, mut server) = pair().await;
        // The client sends more than the server will read: without lingering, the drop
        // below closes a socket with unread bytes and the client gets a reset.
        client.write_all(&[7u8; 256 * 1024]).await.expect("send");
        server.write_all(b"goodbye").await.expect("reply");
        drop(server);
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut got))
            .await
            .expect("the server half-closes within the bound");
        assert_eq!(read.expect("a clean end of stream, not a reset"), 7);
        assert_eq!(got, b"goodbye");
    }

    #[tokio::test]
    async fn a_peer_that_never_closes_is_cut_after_the_linger_time() {
        let (mut client, server) = pair().await;
        drop(server);
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.expect("FIN at once");
        assert!(got.is_empty());
        // The client keeps its side open and writes nothing; the server side goes away by
        // itself after LINGER_FOR: writes then fail (the closed socket answers with a reset).
        let cut = tokio::time::timeout(LINGER_FOR * 5, async {
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if client.write_all(b"x").await.is_err() {
                    return;
                }
            }
        })
        .await;
        assert!(cut.is_ok(), "the lingering socket was never closed");
    }
}
