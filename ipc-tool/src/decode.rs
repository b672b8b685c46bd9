//! `wsmq-ipc decode`: frames and messages in raw bytes captured from one direction of the
//! socket (with `socat -x`, `strace -e read,write -xx`, a core dump, a test failure...).
//!
//! A body that does not decode is reported and stepped over, since its length prefix still says
//! where the next frame starts; a length over the limit ends the run, since after it nothing can
//! be trusted to be a frame boundary. The input is read in chunks, so memory stays at one frame
//! (at most 16 MiB) whatever the size of the capture.
//!
//! Without `--dir` each frame is tried as gateway->bridge, then as bridge->gateway. A capture
//! holds one direction, so the first frame that decodes only one way fixes the direction for
//! the rest; a few short frames decode both ways (`[2, 0]` is `Taken { reply: 0 }` and
//! `Broker(Up)`), and until the direction is fixed such a frame is shown as gateway->bridge
//! with `"ambiguous":true`. Real captures start with `Hello` or `Welcome`, which fix it.

use std::io::{self, Read, Write};

use anyhow::Context;

use crate::frame::{Frame, FrameSplitter, SplitError};
use crate::render::{Direction, FrameLine, decode_as};
use wsmq_service::error_chain;

/// Bytes read from the input at a time.
const READ_CHUNK: usize = 64 * 1024;

/// What was found in the input.
#[derive(Debug, Default)]
pub(crate) struct Summary {
    /// Whole frames seen, decoded or not.
    pub(crate) frames: u64,
    /// Whole frames whose body did not decode.
    pub(crate) undecodable: u64,
    /// Why the input stopped being frames, if it did: a cut last frame or an impossible length.
    pub(crate) unframed: Option<SplitError>,
}

impl Summary {
    /// Every byte of the input was a frame holding a message.
    pub(crate) fn clean(&self) -> bool {
        self.undecodable == 0 && self.unframed.is_none()
    }

    /// One sentence for stderr.
    pub(crate) fn describe(&self) -> String {
        let mut text = format!(
            "{} frame{}, {} did not decode",
            self.frames,
            if self.frames == 1 { "" } else { "s" },
            self.undecodable
        );
        if let Some(e) = &self.unframed {
            text.push_str("; ");
            text.push_str(&e.to_string());
        }
        text
    }
}

/// Decodes every frame of `input` and writes one JSON line per frame to `out`.
///
/// `dir` fixes the direction; `None` detects it (see the module docs). Errors are only for
/// reading the input and writing the output; bad frames are in the [`Summary`] and the lines.
pub(crate) fn decode_stream(
    mut input: impl Read,
    dir: Option<Direction>,
    out: &mut impl Write,
) -> anyhow::Result<Summary> {
    let mut splitter = FrameSplitter::new();
    let mut classifier = Classifier {
        fixed: dir,
        detected: None,
    };
    let mut summary = Summary::default();
    let mut chunk = vec![0; READ_CHUNK];
    loop {
        let n = match input.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("cannot read the input at offset {}", splitter.end_offset())
                });
            }
        };
        if n == 0 {
            break;
        }
        splitter.push(&chunk[..n]);
        loop {
            match splitter.next_frame() {
                Ok(Some(frame)) => {
                    summary.frames += 1;
                    let line = classifier.line(&frame);
                    if line.error.is_some() {
                        summary.undecodable += 1;
                    }
                    write_line(out, &line)?;
                }
                Ok(None) => break,
                Err(e) => return unframed(out, summary, e),
            }
        }
    }
    match splitter.finish() {
        Ok(()) => Ok(summary),
        Err(e) => unframed(out, summary, e),
    }
}

fn unframed(out: &mut impl Write, mut summary: Summary, e: SplitError) -> anyhow::Result<Summary> {
    let line = FrameLine {
        offset: Some(e.offset()),
        len: e.claimed_len(),
        ..FrameLine::default()
    }
    .with_error(e.to_string(), e.wire_bytes());
    write_line(out, &line)?;
    summary.unframed = Some(e);
    Ok(summary)
}

fn write_line(out: &mut impl Write, line: &FrameLine) -> anyhow::Result<()> {
    writeln!(out, "{}", line.to_json()).context("cannot write to stdout")
}

/// Decides which enum each frame is.
struct Classifier {
    /// `--dir`.
    fixed: Option<Direction>,
    /// Without `--dir`: the direction the first unambiguous frame showed.
    detected: Option<Direction>,
}

impl Classifier {
    fn line(&mut self, frame: &Frame) -> FrameLine {
        let line = FrameLine {
            offset: Some(frame.offset),
            len: Some(frame.body.len() as u64),
            ..FrameLine::default()
        };
        if let Some(dir) = self.fixed.or(self.detected) {
            return match decode_as(dir, &frame.body) {
                Ok(msg) => FrameLine {
                    dir: Some(dir.label()),
                    msg: Some(msg),
                    ..line
                },
                Err(e) => {
                    let mut error =
                        format!("does not decode as {}: {}", dir.label(), error_chain(&e));
                    if decode_as(dir.other(), &frame.body).is_ok() {
                        error.push_str(&format!(
                            " (it does decode as {}: is the input the other direction, or both mixed?)",
                            dir.other().label()
                        ));
                    }
                    FrameLine {
                        dir: Some(dir.label()),
                        ..line
                    }
                    .with_error(error, &frame.wire_bytes())
                }
            };
        }
        match (
            decode_as(Direction::ToBridge, &frame.body),
            decode_as(Direction::ToGateway, &frame.body),
        ) {
            (Ok(msg), Ok(_)) => FrameLine {
                dir: Some(Direction::ToBridge.label()),
                ambiguous: Some(true),
                msg: Some(msg),
                ..line
            },
            (Ok(msg), Err(_)) => self.detected(Direction::ToBridge, msg, line),
            (Err(_), Ok(msg)) => self.detected(Direction::ToGateway, msg, line),
            (Err(to_bridge), Err(to_gateway)) => line.with_error(
                format!(
                    "decodes neither as gateway->bridge ({}) nor as bridge->gateway ({})",
                    error_chain(&to_bridge),
                    error_chain(&to_gateway)
                ),
                &frame.wire_bytes(),
            ),
        }
    }

    fn detected(&mut self, dir: Direction, msg: serde_json::Value, line: FrameLine) -> FrameLine {
        self.detected = Some(dir);
        FrameLine {
            dir: Some(dir.label()),
            msg: Some(msg),
            ..line
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use serde_json::{Value, json};
    use tokio_util::codec::Encoder;
    use wsmq_ipc_proto::{
        BrokerState, Hello, IpcCodec, JobId, PROTOCOL_VERSION, ReplySeq, ToBridge, ToGateway,
        Welcome,
    };

    fn gateway_stream(msgs: Vec<ToBridge>) -> Vec<u8> {
        let mut codec = IpcCodec::<ToGateway, ToBridge>::new();
        let mut buf = BytesMut::new();
        for m in msgs {
            codec.encode(m, &mut buf).expect("encodes");
        }
        buf.to_vec()
    }

    fn bridge_stream(msgs: Vec<ToGateway>) -> Vec<u8> {
        let mut codec = IpcCodec::<ToBridge, ToGateway>::new();
        let mut buf = BytesMut::new();
        for m in msgs {
            codec.encode(m, &mut buf).expect("encodes");
        }
        buf.to_vec()
    }

    fn run(input: &[u8], dir: Option<Direction>) -> (Summary, Vec<Value>) {
        let mut out = Vec::new();
        let summary = decode_stream(input, dir, &mut out).expect("decodes");
        let lines = String::from_utf8(out)
            .expect("utf-8")
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is JSON"))
            .collect();
        (summary, lines)
    }

    fn hello() -> ToBridge {
        ToBridge::Hello(Hello {
            version: PROTOCOL_VERSION,
            peer: "p".into(),
        })
    }

    #[test]
    fn every_frame_becomes_one_line_with_its_offset_and_direction() {
        let input = gateway_stream(vec![
            hello(),
            ToBridge::Taken {
                reply: ReplySeq(300),
            },
        ]);
        let (summary, lines) = run(&input, None);
        assert!(summary.clean(), "{summary:?}");
        assert_eq!(summary.frames, 2);
        assert_eq!(
            lines,
            vec![
                json!({"offset": 0, "dir": "gateway->bridge", "len": 4,
                       "msg": {"Hello": {"version": PROTOCOL_VERSION, "peer": "p"}}}),
                json!({"offset": 8, "dir": "gateway->bridge", "len": 3,
                       "msg": {"Taken": {"reply": 300}}}),
            ]
        );
    }

    #[test]
    fn the_first_unambiguous_frame_fixes_the_direction() {
        // [2, 0] is Taken { reply: 0 } one way and Broker(Up) the other.
        let input = bridge_stream(vec![
            ToGateway::Broker(BrokerState::Up),
            ToGateway::Welcome(Welcome {
                version: PROTOCOL_VERSION,
                instance: "i".into(),
                broker: BrokerState::Up,
            }),
            ToGateway::Broker(BrokerState::Up),
        ]);
        let (summary, lines) = run(&input, None);
        assert!(summary.clean(), "{summary:?}");
        assert_eq!(lines[0]["ambiguous"], json!(true));
        assert_eq!(lines[0]["dir"], "gateway->bridge");
        assert_eq!(lines[1]["dir"], "bridge->gateway");
        assert_eq!(lines[2]["dir"], "bridge->gateway");
        assert_eq!(lines[2]["msg"], json!({"Broker": "Up"}));
        assert!(lines[2].get("ambiguous").is_none());
    }

    #[test]
    fn dir_flag_decodes_only_that_way_and_hints_at_the_other() {
        let input = bridge_stream(vec![ToGateway::Published {
            job: JobId(u128::MAX),
        }]);
        let (summary, lines) = run(&input, Some(Direction::ToBridge));
        assert_eq!(summary.undecodable, 1);
        let error = lines[0]["error"].as_str().expect("error");
        assert!(
            error.starts_with("does not decode as gateway->bridge"),
            "{error}"
        );
        assert!(
            error.contains("it does decode as bridge->gateway"),
            "{error}"
        );
        let (summary, lines) = run(&input, Some(Direction::ToGateway));
        assert!(summary.clean());
        assert_eq!(
            lines[0]["msg"],
            json!({"Published": {"job": "ffffffff-ffff-ffff-ffff-ffffffffffff"}})
        );
    }

    #[test]
    fn truncated_last_frame_is_reported_at_its_offset() {
        let mut input = gateway_stream(vec![hello(), hello()]);
        input.truncate(input.len() - 2);
        let (summary, lines) = run(&input, None);
        assert!(!summary.clean());
        assert_eq!(summary.frames, 1);
        assert_eq!(lines.len(), 2);
        let last = &lines[1];
        assert_eq!(last["offset"], 8);
        assert_eq!(last["len"], 4);
        assert_eq!(last["hex"], format!("00000004000{PROTOCOL_VERSION}"));
        let error = last["error"].as_str().expect("error");
        assert!(
            error.contains("ends inside the frame at offset 8"),
            "{error}"
        );
        assert!(error.contains("6 of its 8 bytes"), "{error}");
    }

    #[test]
    fn corrupt_frame_is_reported_and_the_next_one_still_decoded() {
        let mut input = gateway_stream(vec![hello()]);
        // A frame whose body is variant 200 of nothing, then a good one.
        input.extend_from_slice(&[0, 0, 0, 1, 200]);
        input.extend(gateway_stream(vec![ToBridge::Taken { reply: ReplySeq(1) }]));
        let (summary, lines) = run(&input, None);
        assert_eq!(summary.frames, 3);
        assert_eq!(summary.undecodable, 1);
        assert!(summary.unframed.is_none());
        assert_eq!(lines[1]["offset"], 8);
        assert_eq!(lines[1]["hex"], "00000001c8");
        let error = lines[1]["error"].as_str().expect("error");
        assert!(
            error.starts_with("does not decode as gateway->bridge"),
            "{error}"
        );
        assert_eq!(lines[2]["msg"], json!({"Taken": {"reply": 1}}));
    }

    #[test]
    fn impossible_length_stops_the_run() {
        let mut input = gateway_stream(vec![hello()]);
        input.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let (summary, lines) = run(&input, None);
        assert_eq!(summary.frames, 1);
        assert!(matches!(
            summary.unframed,
            Some(SplitError::TooLarge { offset: 8, .. })
        ));
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["hex"], "47455420");
    }

    #[test]
    fn empty_input_is_clean() {
        let (summary, lines) = run(&[], None);
        assert!(summary.clean());
        assert_eq!(summary.frames, 0);
        assert!(lines.is_empty());
    }
}
