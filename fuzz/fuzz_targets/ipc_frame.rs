//! The IPC frame decoder, both directions, on arbitrary bytes arriving in arbitrary pieces.
//!
//! It must never panic, never allocate past the frame limit, and what it decodes must
//! re-encode to a frame that decodes to the same bytes again (the encoding is stable).

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::{Decoder, Encoder};
use wsmq_ipc_proto::{IpcCodec, ToBridge, ToGateway};

/// Feeds `data` to a decoder in pieces of `chunk` bytes, as a socket would, and checks every
/// message it yields; stops at the first error, as a session does.
fn run<In, Out>(data: &[u8], chunk: usize)
where
    IpcCodec<In, Out>: Decoder<Item = In>,
    IpcCodec<Out, In>: Encoder<In>,
    <IpcCodec<Out, In> as Encoder<In>>::Error: std::fmt::Debug,
    In: std::fmt::Debug,
{
    let mut decoder = IpcCodec::<In, Out>::new();
    let mut buf = BytesMut::new();
    for piece in data.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(msg)) => check_stable::<In, Out>(msg),
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

/// encode(msg) decodes, and encoding that again gives the same bytes.
fn check_stable<In, Out>(msg: In)
where
    IpcCodec<Out, In>: Encoder<In>,
    <IpcCodec<Out, In> as Encoder<In>>::Error: std::fmt::Debug,
    IpcCodec<In, Out>: Decoder<Item = In>,
    In: std::fmt::Debug,
{
    let mut first = BytesMut::new();
    IpcCodec::<Out, In>::new()
        .encode(msg, &mut first)
        .expect("a decoded message encodes");
    let again = IpcCodec::<In, Out>::new()
        .decode(&mut first.clone())
        .ok()
        .flatten()
        .expect("an encoded message decodes");
    let mut second = BytesMut::new();
    IpcCodec::<Out, In>::new()
        .encode(again, &mut second)
        .expect("encodes again");
    assert_eq!(first, second, "encoding is not stable");
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(first % 64) + 1;
    // What the bridge reads (from a gateway), and what the gateway reads (from a bridge).
    run::<ToBridge, ToGateway>(rest, chunk);
    run::<ToGateway, ToBridge>(rest, chunk);
});
