//! Splits one direction of the IPC byte stream into frames, remembering where each one starts.
//!
//! This is the framing half of `wsmq_ipc_proto::codec` (4-byte big-endian length, then the body)
//! without the decoding half, for two reasons: a frame whose body does not decode can still be
//! reported and stepped over (the length says where the next one starts whatever the body
//! holds), and every frame keeps its offset in the stream, which `decode` reports so an operator
//! can find it in a capture with `xxd -s OFFSET`. `LengthDelimitedCodec` forgets both.

use bytes::{Buf, Bytes, BytesMut};
use wsmq_ipc_proto::MAX_FRAME_LEN;

/// Bytes of the length prefix in front of every frame body.
pub(crate) const HEADER_LEN: usize = 4;

/// One whole frame: where it starts in the stream, and its body (the prefix stripped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Frame {
    /// Offset of the frame's first length byte from the start of the stream.
    pub(crate) offset: u64,
    pub(crate) body: Bytes,
}

impl Frame {
    /// The frame as it was on the wire: its length prefix, then its body.
    pub(crate) fn wire_bytes(&self) -> Vec<u8> {
        let mut wire = Vec::with_capacity(HEADER_LEN + self.body.len());
        // The splitter only yields bodies within MAX_FRAME_LEN, which fits a u32.
        let len = u32::try_from(self.body.len()).unwrap_or(u32::MAX);
        wire.extend_from_slice(&len.to_be_bytes());
        wire.extend_from_slice(&self.body);
        wire
    }
}

/// Why the rest of a stream cannot be split into frames.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SplitError {
    /// The length prefix is over the protocol's limit: the stream is corrupt, or not this
    /// protocol, or was captured from the middle of a frame. Nothing after it can be framed.
    #[error(
        "frame at offset {offset} claims a {len}-byte body, over the {max}-byte limit \
         (not a frame boundary, or not wsmq IPC traffic); the rest cannot be framed"
    )]
    TooLarge {
        offset: u64,
        len: u64,
        max: usize,
        /// The length prefix itself, for the hex dump.
        header: [u8; HEADER_LEN],
    },
    /// The stream ended inside a frame.
    #[error(
        "the stream ends inside the frame at offset {offset}: {}",
        cut_text(*have, *need)
    )]
    Truncated {
        offset: u64,
        /// Bytes of the frame (prefix included) that are there.
        have: usize,
        /// Bytes the whole frame needs (prefix included; just the prefix when that is cut).
        need: usize,
        /// Those bytes, for the hex dump.
        partial: Bytes,
    },
}

/// How much of a cut frame is there, in words.
fn cut_text(have: usize, need: usize) -> String {
    if need == HEADER_LEN {
        format!("{have} of the {HEADER_LEN} bytes of its length prefix are there")
    } else {
        format!(
            "{have} of its {need} bytes ({HEADER_LEN}-byte length prefix, {}-byte body) are there",
            need - HEADER_LEN
        )
    }
}

impl SplitError {
    /// Offset of the frame the error is about.
    pub(crate) fn offset(&self) -> u64 {
        match self {
            SplitError::TooLarge { offset, .. } | SplitError::Truncated { offset, .. } => *offset,
        }
    }

    /// The bytes of the frame that are known, prefix included.
    pub(crate) fn wire_bytes(&self) -> &[u8] {
        match self {
            SplitError::TooLarge { header, .. } => header,
            SplitError::Truncated { partial, .. } => partial,
        }
    }

    /// The body length the prefix claims, when the prefix is whole.
    pub(crate) fn claimed_len(&self) -> Option<u64> {
        match self {
            SplitError::TooLarge { len, .. } => Some(*len),
            SplitError::Truncated { need, .. } if *need > HEADER_LEN => {
                Some((*need - HEADER_LEN) as u64)
            }
            SplitError::Truncated { partial, .. } => partial
                .get(..HEADER_LEN)
                .and_then(|h| <[u8; HEADER_LEN]>::try_from(h).ok())
                .map(|h| u64::from(u32::from_be_bytes(h))),
        }
    }
}

/// Incremental frame splitter: [`push`](Self::push) bytes as they come, take whole frames with
/// [`next_frame`](Self::next_frame), and call [`finish`](Self::finish) at the end of the stream.
///
/// It holds at most one frame (prefix included) plus the bytes of one `push`: a length over the
/// limit is refused from the prefix alone, before any room is made for its body.
#[derive(Debug)]
pub(crate) struct FrameSplitter {
    buf: BytesMut,
    /// Stream offset of `buf[0]`.
    offset: u64,
    max: usize,
}

impl FrameSplitter {
    /// A splitter with the protocol's [`MAX_FRAME_LEN`].
    pub(crate) fn new() -> Self {
        Self::with_max_frame_len(MAX_FRAME_LEN)
    }

    /// A splitter with another body limit (tests use small ones).
    pub(crate) fn with_max_frame_len(max: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            offset: 0,
            max,
        }
    }

    /// Appends the next bytes of the stream.
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame, `None` when more bytes are needed, or an error when the stream
    /// cannot be framed from here on (the caller must stop: every later call fails the same).
    pub(crate) fn next_frame(&mut self) -> Result<Option<Frame>, SplitError> {
        let Some(header) = self
            .buf
            .get(..HEADER_LEN)
            .and_then(|h| <[u8; HEADER_LEN]>::try_from(h).ok())
        else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(header);
        let body_len = usize::try_from(len).unwrap_or(usize::MAX);
        if body_len > self.max {
            return Err(SplitError::TooLarge {
                offset: self.offset,
                len: u64::from(len),
                max: self.max,
                header,
            });
        }
        let whole = HEADER_LEN + body_len;
        if self.buf.len() < whole {
            // Checked against the limit above, so this reservation is bounded.
            self.buf.reserve(whole - self.buf.len());
            return Ok(None);
        }
        let mut frame = self.buf.split_to(whole);
        frame.advance(HEADER_LEN);
        let offset = self.offset;
        self.offset += whole as u64;
        Ok(Some(Frame {
            offset,
            body: frame.freeze(),
        }))
    }

    /// At the end of the stream: `Ok` when it ended on a frame boundary, else the cut frame.
    /// Call it once [`next_frame`](Self::next_frame) has returned `None`.
    pub(crate) fn finish(&self) -> Result<(), SplitError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let need = match self.buf.get(..HEADER_LEN) {
            Some(h) => {
                let mut len = [0; HEADER_LEN];
                len.copy_from_slice(h);
                HEADER_LEN + usize::try_from(u32::from_be_bytes(len)).unwrap_or(usize::MAX)
            }
            None => HEADER_LEN,
        };
        Err(SplitError::Truncated {
            offset: self.offset,
            have: self.buf.len(),
            need,
            partial: Bytes::copy_from_slice(&self.buf),
        })
    }

    /// Stream offset just past the last byte pushed.
    pub(crate) fn end_offset(&self) -> u64 {
        self.offset + self.buf.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(bodies: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for body in bodies {
            out.extend_from_slice(&(body.len() as u32).to_be_bytes());
            out.extend_from_slice(body);
        }
        out
    }

    fn split_all(s: &mut FrameSplitter) -> Vec<Frame> {
        let mut frames = Vec::new();
        while let Some(f) = s.next_frame().expect("frames") {
            frames.push(f);
        }
        frames
    }

    #[test]
    fn frames_come_out_with_their_offsets_whatever_the_chunking() {
        let bytes = wire(&[b"abc", b"", b"0123456789"]);
        for chunk in 1..=bytes.len() {
            let mut s = FrameSplitter::new();
            let mut frames = Vec::new();
            for piece in bytes.chunks(chunk) {
                s.push(piece);
                frames.extend(split_all(&mut s));
            }
            let got: Vec<(u64, &[u8])> = frames.iter().map(|f| (f.offset, &f.body[..])).collect();
            assert_eq!(
                got,
                vec![(0, &b"abc"[..]), (7, &b""[..]), (11, &b"0123456789"[..])],
                "chunk {chunk}"
            );
            assert_eq!(s.finish(), Ok(()));
            assert_eq!(s.end_offset(), bytes.len() as u64);
        }
    }

    #[test]
    fn wire_bytes_give_back_the_frame_as_sent() {
        let bytes = wire(&[b"xyz"]);
        let mut s = FrameSplitter::new();
        s.push(&bytes);
        let frame = s.next_frame().expect("frames").expect("one frame");
        assert_eq!(frame.wire_bytes(), bytes);
    }

    #[test]
    fn stream_cut_inside_a_body_is_truncated_at_that_frame() {
        let mut bytes = wire(&[b"abc", b"defgh"]);
        bytes.truncate(bytes.len() - 2);
        let mut s = FrameSplitter::new();
        s.push(&bytes);
        assert_eq!(split_all(&mut s).len(), 1);
        let err = s.finish().expect_err("cut frame");
        assert_eq!(err.offset(), 7);
        assert_eq!(err.claimed_len(), Some(5));
        assert_eq!(err.wire_bytes(), &bytes[7..]);
        assert!(
            matches!(
                err,
                SplitError::Truncated {
                    have: 7,
                    need: 9,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn stream_cut_inside_a_length_prefix_is_truncated() {
        let mut bytes = wire(&[b"abc"]);
        bytes.extend_from_slice(&[0, 0]);
        let mut s = FrameSplitter::new();
        s.push(&bytes);
        assert_eq!(split_all(&mut s).len(), 1);
        let err = s.finish().expect_err("cut prefix");
        assert!(
            matches!(
                err,
                SplitError::Truncated {
                    offset: 7,
                    have: 2,
                    need: 4,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(err.claimed_len(), None);
    }

    #[test]
    fn oversized_length_is_refused_from_the_prefix_alone() {
        let mut s = FrameSplitter::with_max_frame_len(16);
        s.push(&wire(&[b"ok"]));
        s.push(&17u32.to_be_bytes());
        assert_eq!(s.next_frame().expect("first").map(|f| f.offset), Some(0));
        let err = s.next_frame().expect_err("too large");
        assert_eq!(err.offset(), 6);
        assert_eq!(err.claimed_len(), Some(17));
        assert_eq!(err.wire_bytes(), &17u32.to_be_bytes());
        // It stays refused: the stream cannot be resynchronised.
        assert!(s.next_frame().is_err());
    }

    #[test]
    fn a_huge_claimed_length_does_not_allocate_for_it() {
        let mut s = FrameSplitter::new();
        s.push(&u32::MAX.to_be_bytes());
        assert!(matches!(
            s.next_frame(),
            Err(SplitError::TooLarge { len, .. }) if len == u64::from(u32::MAX)
        ));
        assert!(s.buf.capacity() < 1024, "capacity {}", s.buf.capacity());
    }
}
