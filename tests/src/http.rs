//! A minimal HTTP/1.1 GET over a raw TCP stream, enough for `/healthz`.
//!
//! The tests need one request shape, so they speak it directly rather than pull in an HTTP
//! client: `Connection: close`, then read to EOF and split status line, headers and body
//! (de-chunking when the server chose chunked encoding).

use std::net::SocketAddr;

use anyhow::{Context, Result, bail};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::HTTP_TIMEOUT;

/// The largest response the harness accepts; `/healthz` answers a few dozen bytes.
const MAX_RESPONSE_BYTES: u64 = 64 * 1024;

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The body parsed as JSON.
    pub fn json(&self) -> Result<Value> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "HTTP {} body is not JSON: {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// `GET path` on `addr`, bounded by [`HTTP_TIMEOUT`].
pub async fn get(addr: SocketAddr, path: &str) -> Result<Response> {
    get_with(addr, path, &[]).await
}

/// `GET path` on `addr` with extra request headers (e.g. a websocket upgrade's, to see the
/// whole answer to a refused one), bounded by [`HTTP_TIMEOUT`].
pub async fn get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Result<Response> {
    tokio::time::timeout(HTTP_TIMEOUT, get_unbounded(addr, path, headers))
        .await
        .with_context(|| format!("GET {path} on {addr} took over {HTTP_TIMEOUT:?}"))?
}

/// The request headers of a websocket upgrade, for [`get_with`] to see the whole answer to
/// one that is refused (`Connection: close` too, so that the answer ends the connection and
/// can be read to its end; an upgrade that succeeds is never answered to the end).
pub const UPGRADE_HEADERS: [(&str, &str); 4] = [
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade, close"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("Sec-WebSocket-Version", "13"),
];

async fn get_unbounded(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Result<Response> {
    let mut stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    let connection_given = headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("connection"));
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n");
    if !connection_given {
        request.push_str("Connection: close\r\n");
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .context("cannot send the HTTP request")?;
    let mut raw = Vec::new();
    stream
        .take(MAX_RESPONSE_BYTES)
        .read_to_end(&mut raw)
        .await
        .context("cannot read the HTTP response")?;
    parse(&raw)
}

fn parse(raw: &[u8]) -> Result<Response> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .with_context(|| format!("no end of headers in {:?}", String::from_utf8_lossy(raw)))?;
    let head = std::str::from_utf8(&raw[..split]).context("HTTP head is not UTF-8")?;
    let rest = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(rest)?
    } else {
        rest.to_vec()
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let eol = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("chunk size line has no end")?;
        let size_text = std::str::from_utf8(&rest[..eol]).context("chunk size is not UTF-8")?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .with_context(|| format!("bad chunk size {size_text:?}"))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(body);
        }
        if rest.len() < size + 2 {
            bail!("chunk of {size} bytes is truncated");
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_content_length_response() {
        let r = parse(b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}")
            .expect("parses");
        assert_eq!(r.status, 503);
        assert_eq!(r.body, b"{}");
    }

    #[test]
    fn parses_a_chunked_response() {
        let r = parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n")
            .expect("parses");
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"{\"a\":1}");
    }
}
