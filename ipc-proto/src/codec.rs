//! Length-prefixed postcard framing for the IPC socket.
//!
//! Framing (tokio-util's `LengthDelimitedCodec`: a 4-byte big-endian length, then the body) is
//! kept apart from deserialising (postcard), and each has its own error: a frame that is too
//! large is refused from its header alone, before anything is allocated for it, and a body that
//! does not decode into exactly one message is an error, never a panic.

use std::io;
use std::marker::PhantomData;

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Serialize, de::DeserializeOwned};
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec, length_delimited};

/// The largest frame body either side sends or accepts: 16 MiB.
///
/// It must hold the largest params or result the gateway lets through, plus a little framing.
pub const MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("ipc socket i/o failed")]
    Io(#[source] io::Error),
    #[error("ipc frame is larger than the {max}-byte limit")]
    TooLarge { max: usize },
    #[error("ipc frame does not decode as a message")]
    Decode(#[source] postcard::Error),
    #[error("ipc frame has {0} bytes after its message")]
    TrailingBytes(usize),
    #[error("message does not encode")]
    Encode(#[source] postcard::Error),
}

impl From<io::Error> for FrameError {
    fn from(e: io::Error) -> Self {
        let too_large = e
            .get_ref()
            .is_some_and(|inner| inner.is::<length_delimited::LengthDelimitedCodecError>());
        if too_large {
            FrameError::TooLarge { max: MAX_FRAME_LEN }
        } else {
            FrameError::Io(e)
        }
    }
}

/// Encodes `Out` messages and decodes `In` messages: the gateway uses
/// `IpcCodec<ToGateway, ToBridge>`, the bridge `IpcCodec<ToBridge, ToGateway>`.
#[derive(Debug)]
pub struct IpcCodec<In, Out> {
    frames: LengthDelimitedCodec,
    _types: PhantomData<fn(Out) -> In>,
}

impl<In, Out> IpcCodec<In, Out> {
    /// A codec with the protocol's [`MAX_FRAME_LEN`].
    pub fn new() -> Self {
        Self::with_max_frame_len(MAX_FRAME_LEN)
    }

    /// A codec with another frame limit (tests use small ones).
    pub fn with_max_frame_len(max: usize) -> Self {
        let frames = LengthDelimitedCodec::builder()
            .length_field_length(4)
            .big_endian()
            .max_frame_length(max)
            .new_codec();
        Self {
            frames,
            _types: PhantomData,
        }
    }
}

impl<In, Out> Default for IpcCodec<In, Out> {
    fn default() -> Self {
        Self::new()
    }
}

/// Decodes one message from a whole frame body; its JSON payloads are copied out of `body`.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    let (msg, rest) = postcard::take_from_bytes(body).map_err(FrameError::Decode)?;
    if !rest.is_empty() {
        return Err(FrameError::TrailingBytes(rest.len()));
    }
    Ok(msg)
}

/// Decodes one message from a whole frame body; its large JSON payloads (see
/// [`Json::SHARE_MIN`](crate::Json::SHARE_MIN)) are slices of `body`, not copies.
pub fn decode_frame<T: DeserializeOwned>(body: &Bytes) -> Result<T, FrameError> {
    crate::message::decode_shared(body, || decode_body(body))
}

impl<In: DeserializeOwned, Out> Decoder for IpcCodec<In, Out> {
    type Item = In;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<In>, FrameError> {
        match self.frames.decode(src)? {
            Some(body) => decode_frame(&body.freeze()).map(Some),
            None => Ok(None),
        }
    }
}

impl<In, Out: Serialize> Encoder<Out> for IpcCodec<In, Out> {
    type Error = FrameError;

    fn encode(&mut self, item: Out, dst: &mut BytesMut) -> Result<(), FrameError> {
        // Serialise straight into the output buffer behind a placeholder length, then fill it in.
        let start = dst.len();
        dst.put_u32(0);
        let body = postcard::to_extend(&item, std::mem::take(dst)).map_err(FrameError::Encode)?;
        *dst = body;
        let len = dst.len() - start - 4;
        if len > self.frames.max_frame_length() {
            dst.truncate(start);
            return Err(FrameError::TooLarge {
                max: self.frames.max_frame_length(),
            });
        }
        let len = u32::try_from(len).map_err(|_| FrameError::TooLarge {
            max: self.frames.max_frame_length(),
        })?;
        dst[start..start + 4].copy_from_slice(&len.to_be_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::*;
    use proptest::prelude::*;

    type GatewaySide = IpcCodec<ToGateway, ToBridge>;
    type BridgeSide = IpcCodec<ToBridge, ToGateway>;

    fn encode_to_bridge(msg: ToBridge) -> BytesMut {
        let mut buf = BytesMut::new();
        GatewaySide::new().encode(msg, &mut buf).expect("encodes");
        buf
    }

    fn sample_submit() -> ToBridge {
        ToBridge::Submit(Job {
            id: JobId(42),
            method: "echo".into(),
            params: r#"{"a":[1,2,3]}"#.into(),
            client: 7,
            deadline_unix_ms: 1_800_000_000_000,
            priority: Some(9),
            caller: Some("alice".into()),
        })
    }

    #[test]
    fn submit_round_trips() {
        let mut buf = encode_to_bridge(sample_submit());
        let got = BridgeSide::new().decode(&mut buf).expect("decodes");
        assert_eq!(got, Some(sample_submit()));
        assert!(buf.is_empty());
    }

    #[test]
    fn frames_are_a_big_endian_length_then_the_postcard_body() {
        let msg = ToBridge::Taken {
            reply: ReplySeq(300),
        };
        let buf = encode_to_bridge(msg.clone());
        let body = postcard::to_allocvec(&msg).expect("encodes");
        assert_eq!(&buf[..4], &(body.len() as u32).to_be_bytes());
        assert_eq!(&buf[4..], &body[..]);
    }

    #[test]
    fn partial_frame_waits_for_more_bytes() {
        let whole = encode_to_bridge(sample_submit());
        for cut in 0..whole.len() {
            let mut part = BytesMut::from(&whole[..cut]);
            let got = BridgeSide::new().decode(&mut part).expect("no error");
            assert_eq!(got, None, "cut {cut}");
        }
    }

    #[test]
    fn truncated_frame_at_end_of_stream_is_an_error() {
        let whole = encode_to_bridge(sample_submit());
        let mut part = BytesMut::from(&whole[..whole.len() - 1]);
        let err = BridgeSide::new().decode_eof(&mut part);
        assert!(err.is_err(), "got {err:?}");
    }

    #[test]
    fn oversized_length_is_refused_before_the_body_arrives() {
        let mut codec = BridgeSide::with_max_frame_len(1024);
        // Only the header: a claimed 4 GiB body. It must be refused without waiting or allocating.
        let mut buf = BytesMut::from(&u32::MAX.to_be_bytes()[..]);
        let before = buf.capacity();
        match codec.decode(&mut buf) {
            Err(FrameError::TooLarge { max: _ }) => {}
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert!(
            buf.capacity() <= before.max(64),
            "buffer grew to {}",
            buf.capacity()
        );
    }

    #[test]
    fn oversized_message_is_refused_on_encode() {
        let mut codec = GatewaySide::with_max_frame_len(16);
        let mut buf = BytesMut::new();
        let err = codec.encode(sample_submit(), &mut buf);
        assert!(matches!(err, Err(FrameError::TooLarge { .. })), "{err:?}");
        assert!(buf.is_empty(), "nothing half-written stays in the buffer");
    }

    #[test]
    fn unknown_variant_is_a_decode_error() {
        let mut buf = BytesMut::new();
        buf.put_u32(1);
        buf.put_u8(200);
        assert!(matches!(
            BridgeSide::new().decode(&mut buf),
            Err(FrameError::Decode(_))
        ));
    }

    #[test]
    fn trailing_bytes_after_a_message_are_an_error() {
        let body = postcard::to_allocvec(&ToBridge::Taken { reply: ReplySeq(1) }).expect("encodes");
        let mut buf = BytesMut::new();
        buf.put_u32(body.len() as u32 + 2);
        buf.extend_from_slice(&body);
        buf.extend_from_slice(&[0, 0]);
        assert!(matches!(
            BridgeSide::new().decode(&mut buf),
            Err(FrameError::TrailingBytes(2))
        ));
    }

    #[test]
    fn a_peer_of_another_version_can_still_read_the_handshake() {
        // The handshake's encoding is frozen: variant 0, version first. Pin the bytes.
        let hello = postcard::to_allocvec(&ToBridge::Hello(Hello {
            version: 0x1234,
            peer: String::new(),
        }))
        .expect("encodes");
        assert_eq!(&hello[..4], &[0, 0xb4, 0x24, 0]);
        let refusal = postcard::to_allocvec(&ToGateway::Refused(Refusal {
            version: 3,
            reason: "x".into(),
        }))
        .expect("encodes");
        assert_eq!(&refusal[..2], &[1, 3]);
    }

    /// Whether `part` lies inside `whole`'s buffer.
    fn inside(whole: &[u8], part: &[u8]) -> bool {
        let (start, at) = (whole.as_ptr() as usize, part.as_ptr() as usize);
        at >= start && at + part.len() <= start + whole.len()
    }

    fn reply_frame_body(result: &str) -> Bytes {
        let msg = ToGateway::Reply(Reply {
            seq: ReplySeq(1),
            job: JobId(7),
            body: ReplyBody::Result(result.into()),
        });
        Bytes::from(postcard::to_allocvec(&msg).expect("encodes"))
    }

    fn result_of(msg: ToGateway) -> Json {
        match msg {
            ToGateway::Reply(Reply {
                body: ReplyBody::Result(json),
                ..
            }) => json,
            other => panic!("not a result: {other:?}"),
        }
    }

    #[test]
    fn a_large_payload_is_a_slice_of_the_frame_not_a_copy() {
        let text = format!(r#""{}""#, "x".repeat(Json::SHARE_MIN));
        let body = reply_frame_body(&text);
        let json = result_of(decode_frame(&body).expect("decodes"));
        assert_eq!(json.as_bytes(), text.as_bytes());
        assert!(inside(&body, json.as_bytes()), "the payload was copied");
    }

    #[test]
    fn a_small_payload_is_copied_so_it_keeps_no_buffer_alive() {
        let text = format!(r#""{}""#, "x".repeat(Json::SHARE_MIN - 3));
        let body = reply_frame_body(&text);
        let json = result_of(decode_frame(&body).expect("decodes"));
        assert_eq!(json.as_bytes(), text.as_bytes());
        assert!(
            !inside(&body, json.as_bytes()),
            "a small payload shares the frame"
        );
    }

    #[test]
    fn the_codec_hands_out_large_payloads_unchanged_whatever_the_chunking() {
        let params = format!(r#"{{"data":"{}"}}"#, "é".repeat(40_000));
        let job = ToBridge::Submit(Job {
            params: params.as_str().into(),
            ..match sample_submit() {
                ToBridge::Submit(job) => job,
                _ => unreachable!(),
            }
        });
        let wire = encode_to_bridge(job.clone());
        let mut dec = BridgeSide::new();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for piece in wire.chunks(7_000) {
            buf.extend_from_slice(piece);
            while let Some(m) = dec.decode(&mut buf).expect("decodes") {
                got.push(m);
            }
        }
        assert_eq!(got, [job]);
    }

    #[test]
    fn a_truncated_or_overlong_payload_is_refused_and_shares_nothing_afterwards() {
        let text = format!(r#""{}""#, "x".repeat(Json::SHARE_MIN * 2));
        let body = reply_frame_body(&text);
        // Cut inside the payload: its length runs past the end of the frame.
        let cut = body.slice(..body.len() - 10);
        assert!(matches!(
            decode_frame::<ToGateway>(&cut),
            Err(FrameError::Decode(_))
        ));
        // Bytes after the message.
        let mut longer = BytesMut::from(&body[..]);
        longer.put_u8(0);
        assert!(matches!(
            decode_frame::<ToGateway>(&longer.freeze()),
            Err(FrameError::TrailingBytes(1))
        ));
        // The frame is lent only for the length of one decode: after it, even a decode of the
        // same bytes copies.
        let json = result_of(decode_body(&body).expect("decodes"));
        assert!(!inside(&body, json.as_bytes()));
    }

    fn arb_json_text() -> impl Strategy<Value = String> {
        ".{0,64}"
    }

    fn arb_to_gateway() -> impl Strategy<Value = ToGateway> {
        let job = any::<u128>().prop_map(JobId);
        prop_oneof![
            (any::<u16>(), ".{0,16}").prop_map(|(version, instance)| ToGateway::Welcome(Welcome {
                version,
                instance,
                broker: BrokerState::Up
            })),
            job.clone().prop_map(|job| ToGateway::Published { job }),
            job.clone().prop_map(|job| ToGateway::Rejected {
                job,
                reason: Rejection::NoRoute
            }),
            (any::<u64>(), job.clone(), arb_json_text(), any::<bool>()).prop_map(
                |(seq, job, r, progress)| {
                    ToGateway::Reply(Reply {
                        seq: ReplySeq(seq),
                        job,
                        body: if progress {
                            ReplyBody::Progress(r.into())
                        } else {
                            ReplyBody::Result(r.into())
                        },
                    })
                }
            ),
            (
                any::<u64>(),
                job,
                any::<i64>(),
                ".{0,16}",
                proptest::option::of(arb_json_text())
            )
                .prop_map(|(seq, job, code, message, data)| {
                    ToGateway::Reply(Reply {
                        seq: ReplySeq(seq),
                        job,
                        body: ReplyBody::Error(WorkerError {
                            code,
                            message,
                            data: data.map(Json::from),
                        }),
                    })
                }),
        ]
    }

    proptest! {
        #[test]
        fn any_stream_of_messages_round_trips_whatever_the_chunking(
            msgs in proptest::collection::vec(arb_to_gateway(), 1..8),
            chunk in 1usize..64,
        ) {
            let mut wire = BytesMut::new();
            let mut enc = BridgeSide::new();
            for m in &msgs {
                enc.encode(m.clone(), &mut wire).expect("encodes");
            }
            let mut dec = GatewaySide::new();
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for piece in wire.chunks(chunk) {
                buf.extend_from_slice(piece);
                while let Some(m) = dec.decode(&mut buf).expect("decodes") {
                    got.push(m);
                }
            }
            prop_assert_eq!(got, msgs);
        }

        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut dec = BridgeSide::with_max_frame_len(128);
            let mut buf = BytesMut::from(&bytes[..]);
            // Any outcome but a panic is fine; stop at the first error like a connection would.
            while let Ok(Some(_)) = dec.decode(&mut buf) {}
        }

        #[test]
        fn corrupting_a_byte_gives_an_error_or_a_message_never_a_panic(
            pos in any::<prop::sample::Index>(),
            val in any::<u8>(),
        ) {
            let mut wire = encode_to_bridge(sample_submit());
            let i = pos.index(wire.len() - 4) + 4;
            wire[i] = val;
            // The length prefix is intact and the whole frame is there: the decoder must take
            // it, as a message or as an error, never wait for more.
            let decoded = BridgeSide::new().decode(&mut wire);
            prop_assert!(
                matches!(decoded, Ok(Some(_)) | Err(_)),
                "a whole frame decoded to {decoded:?}"
            );
            if decoded.is_ok() {
                prop_assert!(wire.is_empty(), "{} bytes left after the frame", wire.len());
            }
        }
    }
}
