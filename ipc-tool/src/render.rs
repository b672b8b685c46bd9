//! Decodes frame bodies and renders the messages as JSON for `tap` and `decode`.
//!
//! The shape is serde's (externally tagged: `{"Submit":{...}}`, `{"Broker":"Up"}`, field names
//! as in `wsmq_ipc_proto::message`) with one deliberate difference: a [`JobId`] is rendered as
//! its hyphenated UUID string, the form the gateway and bridge log and RabbitMQ carries as
//! `correlation_id`, so a job can be followed with grep. (`serde_json::to_value` would also
//! fail outright on a real job id: without serde_json's `arbitrary_precision` a u128 above
//! `u64::MAX` is "number out of range".) JSON payloads (`params`, results, error `data`) stay
//! strings, exactly as they travel, so an invalid one shows as it was.
//!
//! The rendering is written out by hand with exhaustive matches and destructuring, so a
//! message or field added to the protocol is a compile error here rather than a silent gap.

use serde_json::{Value, json};
use wsmq_ipc_proto::codec::decode_body;
use wsmq_ipc_proto::{
    Backlog, BrokerState, CancelReason, FrameError, Hello, Job, JobId, Json, Refusal, Rejection,
    Reply, ReplyBody, ToBridge, ToGateway, Welcome, WorkerError,
};

/// Bytes of a frame shown in a `"hex"` field at most; the rest is cut (and said so), so one
/// broken 16 MiB frame does not become a 32 MB line.
pub(crate) const HEX_LIMIT: usize = 1024;

/// Which way a frame travels, which says which enum it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Direction {
    /// `ToBridge`: what the gateway sends.
    ToBridge,
    /// `ToGateway`: what the bridge sends.
    ToGateway,
}

impl Direction {
    /// The `"dir"` field of a JSON line.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Direction::ToBridge => "gateway->bridge",
            Direction::ToGateway => "bridge->gateway",
        }
    }

    /// The other direction.
    pub(crate) fn other(self) -> Self {
        match self {
            Direction::ToBridge => Direction::ToGateway,
            Direction::ToGateway => Direction::ToBridge,
        }
    }
}

/// Decodes a whole frame body as a message of `dir` and renders it.
pub(crate) fn decode_as(dir: Direction, body: &[u8]) -> Result<Value, FrameError> {
    Ok(match dir {
        Direction::ToBridge => to_bridge(&decode_body::<ToBridge>(body)?),
        Direction::ToGateway => to_gateway(&decode_body::<ToGateway>(body)?),
    })
}

/// A gateway -> bridge message as JSON.
pub(crate) fn to_bridge(msg: &ToBridge) -> Value {
    match msg {
        ToBridge::Hello(Hello { version, peer }) => {
            json!({"Hello": {"version": version, "peer": peer}})
        }
        ToBridge::Submit(Job {
            id,
            method,
            params,
            client,
            deadline_unix_ms,
            priority,
            caller,
        }) => json!({"Submit": {
            "id": job_id(*id),
            "method": method,
            "params": json_text(params),
            "client": client,
            "deadline_unix_ms": deadline_unix_ms,
            "priority": priority,
            "caller": caller,
        }}),
        ToBridge::Taken { reply } => json!({"Taken": {"reply": reply.0}}),
        ToBridge::Cancel { job, reason } => {
            json!({"Cancel": {"job": job_id(*job), "reason": cancel_reason(*reason)}})
        }
        ToBridge::Backlog { method } => json!({"Backlog": {"method": method}}),
    }
}

/// A bridge -> gateway message as JSON.
pub(crate) fn to_gateway(msg: &ToGateway) -> Value {
    match msg {
        ToGateway::Welcome(Welcome {
            version,
            instance,
            broker,
        }) => json!({"Welcome": {
            "version": version,
            "instance": instance,
            "broker": broker_state(*broker),
        }}),
        ToGateway::Refused(Refusal { version, reason }) => {
            json!({"Refused": {"version": version, "reason": reason}})
        }
        ToGateway::Broker(state) => json!({"Broker": broker_state(*state)}),
        ToGateway::Published { job } => json!({"Published": {"job": job_id(*job)}}),
        ToGateway::Rejected { job, reason } => {
            json!({"Rejected": {"job": job_id(*job), "reason": rejection(reason)}})
        }
        ToGateway::Reply(Reply { seq, job, body }) => json!({"Reply": {
            "seq": seq.0,
            "job": job_id(*job),
            "body": reply_body(body),
        }}),
        ToGateway::Backlog { method, backlog } => json!({"Backlog": {
            "method": method,
            "backlog": match backlog {
                Backlog::Depth { ready, consumers } => json!({"ready": ready, "consumers": consumers}),
                Backlog::NoQueue => json!("NoQueue"),
                Backlog::Unknown => json!("Unknown"),
            },
        }}),
    }
}

/// A JSON payload as the string it travels as (bytes that are not UTF-8 shown replaced, never
/// dropped: a broken payload is what one looks for).
fn json_text(json: &Json) -> Value {
    Value::String(String::from_utf8_lossy(json.as_bytes()).into_owned())
}

fn job_id(id: JobId) -> Value {
    Value::String(id.to_string())
}

fn cancel_reason(reason: CancelReason) -> &'static str {
    match reason {
        CancelReason::Cancelled => "Cancelled",
        CancelReason::Timeout => "Timeout",
    }
}

fn broker_state(state: BrokerState) -> &'static str {
    match state {
        BrokerState::Up => "Up",
        BrokerState::Down => "Down",
        BrokerState::Blocked => "Blocked",
    }
}

fn rejection(reason: &Rejection) -> &'static str {
    match reason {
        Rejection::NoRoute => "NoRoute",
        Rejection::BrokerUnavailable => "BrokerUnavailable",
        Rejection::Nacked => "Nacked",
        Rejection::InvalidMethod => "InvalidMethod",
        Rejection::Expired => "Expired",
    }
}

fn reply_body(body: &ReplyBody) -> Value {
    match body {
        ReplyBody::Result(text) => json!({"Result": json_text(text)}),
        ReplyBody::Progress(text) => json!({"Progress": json_text(text)}),
        ReplyBody::Error(WorkerError {
            code,
            message,
            data,
        }) => {
            json!({"Error": {"code": code, "message": message, "data": data.as_ref().map(json_text)}})
        }
        ReplyBody::Invalid { reason } => json!({"Invalid": {"reason": reason}}),
    }
}

/// One JSON line of `tap` or `decode` output. Fields are written in this order and left out
/// when `None`, so lines stay short and read left to right: where, which way, what.
#[derive(Debug, Default, serde::Serialize)]
pub(crate) struct FrameLine {
    /// When `tap` read the frame (RFC 3339, UTC, microseconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) time: Option<String>,
    /// `tap`'s number for the relayed connection (1, 2, ... in accept order).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) conn: Option<u64>,
    /// `decode`: offset of the frame's length prefix in the input.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) offset: Option<u64>,
    /// [`Direction::label`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) dir: Option<&'static str>,
    /// `tap`: frames of this connection and direction just before this one that were relayed
    /// but not printed (stdout did not keep up). Absent when none were.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) skipped_before: Option<u64>,
    /// `decode` without `--dir`: the body decodes both ways and `dir` is a guess.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ambiguous: Option<bool>,
    /// Body length, from the length prefix.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) len: Option<u64>,
    /// The decoded message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) msg: Option<Value>,
    /// Why the frame could not be decoded (or framed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
    /// With `error`: the frame's bytes as on the wire, length prefix included.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) hex: Option<String>,
    /// `hex` holds only the first [`HEX_LIMIT`] bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) hex_truncated: Option<bool>,
}

impl FrameLine {
    /// Sets `error` and the hex dump of `wire`.
    pub(crate) fn with_error(mut self, error: String, wire: &[u8]) -> Self {
        let (hex, cut) = hex_preview(wire);
        self.error = Some(error);
        self.hex = Some(hex);
        self.hex_truncated = cut.then_some(true);
        self
    }

    /// The line as compact JSON, without its newline.
    pub(crate) fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| {
            // Only maps with non-string keys fail to serialise, and there are none here.
            json!({"error": format!("cannot render this frame as JSON: {e}")}).to_string()
        })
    }
}

/// Lowercase hex of the first [`HEX_LIMIT`] bytes, and whether there were more.
pub(crate) fn hex_preview(bytes: &[u8]) -> (String, bool) {
    let shown = &bytes[..bytes.len().min(HEX_LIMIT)];
    let mut out = String::with_capacity(shown.len() * 2);
    for b in shown {
        out.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('?'));
        out.push(char::from_digit(u32::from(b & 0xf), 16).unwrap_or('?'));
    }
    (out, bytes.len() > HEX_LIMIT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wsmq_ipc_proto::{PROTOCOL_VERSION, ReplySeq};

    /// One of every message, with job ids small enough for `serde_json::to_value`.
    fn every_to_bridge() -> Vec<ToBridge> {
        vec![
            ToBridge::Hello(Hello {
                version: PROTOCOL_VERSION,
                peer: "gw".into(),
            }),
            ToBridge::Submit(Job {
                id: JobId(7),
                method: "echo".into(),
                params: r#"{"x":1}"#.into(),
                client: 3,
                deadline_unix_ms: 1_800_000_000_000,
                priority: Some(5),
                caller: None,
            }),
            ToBridge::Submit(Job {
                id: JobId(8),
                method: "m".into(),
                params: "null".into(),
                client: 0,
                deadline_unix_ms: 0,
                priority: None,
                caller: None,
            }),
            ToBridge::Taken {
                reply: ReplySeq(300),
            },
            ToBridge::Cancel {
                job: JobId(9),
                reason: CancelReason::Timeout,
            },
        ]
    }

    fn every_to_gateway() -> Vec<ToGateway> {
        let mut msgs = vec![
            ToGateway::Welcome(Welcome {
                version: PROTOCOL_VERSION,
                instance: "b1".into(),
                broker: BrokerState::Blocked,
            }),
            ToGateway::Refused(Refusal {
                version: 9,
                reason: "no".into(),
            }),
            ToGateway::Broker(BrokerState::Down),
            ToGateway::Published { job: JobId(1) },
        ];
        for reason in [
            Rejection::NoRoute,
            Rejection::BrokerUnavailable,
            Rejection::Nacked,
            Rejection::InvalidMethod,
            Rejection::Expired,
        ] {
            msgs.push(ToGateway::Rejected {
                job: JobId(2),
                reason,
            });
        }
        for body in [
            ReplyBody::Result("[1]".into()),
            ReplyBody::Progress("0.5".into()),
            ReplyBody::Error(WorkerError {
                code: -4,
                message: "bad".into(),
                data: Some("{}".into()),
            }),
            ReplyBody::Error(WorkerError {
                code: 1,
                message: String::new(),
                data: None,
            }),
            ReplyBody::Invalid {
                reason: "not JSON".into(),
            },
        ] {
            msgs.push(ToGateway::Reply(Reply {
                seq: ReplySeq(11),
                job: JobId(3),
                body,
            }));
        }
        msgs
    }

    /// Turns the job id strings our rendering makes back into the numbers serde makes.
    fn numeric_job_ids(v: Value) -> Value {
        match v {
            Value::Object(map) => Value::Object(
                map.into_iter()
                    .map(|(k, v)| {
                        let v = match (&*k, &v) {
                            ("id" | "job", Value::String(s)) => match s.parse::<JobId>() {
                                Ok(id) => json!(u64::try_from(id.0).expect("small id")),
                                Err(_) => v,
                            },
                            _ => numeric_job_ids(v),
                        };
                        (k, v)
                    })
                    .collect(),
            ),
            other => other,
        }
    }

    #[test]
    fn rendering_is_serdes_shape_except_job_ids_as_uuids() {
        for msg in every_to_bridge() {
            let serde = serde_json::to_value(&msg).expect("serialises");
            assert_eq!(numeric_job_ids(to_bridge(&msg)), serde, "{msg:?}");
        }
        for msg in every_to_gateway() {
            let serde = serde_json::to_value(&msg).expect("serialises");
            assert_eq!(numeric_job_ids(to_gateway(&msg)), serde, "{msg:?}");
        }
    }

    #[test]
    fn a_real_job_id_renders_as_its_hyphenated_uuid() {
        let job = JobId(0x0123_4567_89ab_4def_8011_2233_4455_6677);
        let msg = ToGateway::Published { job };
        assert_eq!(
            to_gateway(&msg),
            json!({"Published": {"job": "01234567-89ab-4def-8011-223344556677"}})
        );
        // What this module works around: serde_json cannot put such an id in a Value.
        assert!(serde_json::to_value(&msg).is_err());
    }

    #[test]
    fn decode_as_reads_a_body_of_either_direction() {
        let body = postcard::to_allocvec(&ToBridge::Taken {
            reply: ReplySeq(300),
        })
        .expect("encodes");
        assert_eq!(body, [2, 0xac, 0x02]);
        assert_eq!(
            decode_as(Direction::ToBridge, &body).expect("decodes"),
            json!({"Taken": {"reply": 300}})
        );
        // Variant 2 of ToGateway is Broker, whose payload is one byte: 0xac is no state.
        assert!(decode_as(Direction::ToGateway, &body).is_err());
    }

    /// A whole frame as the codec writes it, in hex.
    fn wire_hex<In, Out: serde::Serialize>(msg: Out) -> String {
        use tokio_util::codec::Encoder;
        let mut buf = bytes::BytesMut::new();
        wsmq_ipc_proto::IpcCodec::<In, Out>::new()
            .encode(msg, &mut buf)
            .expect("encodes");
        hex_preview(&buf).0
    }

    #[test]
    fn readme_worked_examples_are_the_codecs_bytes() {
        // The hex in docs/ipc.md's "Worked example with socat and xxd"; keep the two in step.
        let job: JobId = "dfe77758-d123-4533-bffb-64a047aab6f3"
            .parse()
            .expect("uuid");
        let hello = ToBridge::Hello(Hello {
            version: 3,
            peer: "wsmq-ipc ping".into(),
        });
        assert_eq!(
            wire_hex::<ToGateway, _>(hello),
            "00000010_00_03_0d_77736d712d6970632070696e67".replace('_', "")
        );
        let taken = |n| ToBridge::Taken { reply: ReplySeq(n) };
        assert_eq!(wire_hex::<ToGateway, _>(taken(1)), "000000020201");
        assert_eq!(wire_hex::<ToGateway, _>(taken(300)), "0000000302ac02");
        let submit = ToBridge::Submit(Job {
            id: job,
            method: "echo".into(),
            params: r#"{"x":1}"#.into(),
            client: 1,
            deadline_unix_ms: 1_795_639_185_542,
            priority: None,
            caller: None,
        });
        assert_eq!(
            wire_hex::<ToGateway, _>(submit),
            "0000002a_01_f3edaabd8494d9fdbfe7949a929ad6bbe7bf03_04_6563686f_07_7b2278223a317d\
             _01_86a1bea3a134_00_00"
                .replace('_', "")
        );
        let welcome = ToGateway::Welcome(Welcome {
            version: 2,
            instance: "web-1".into(),
            broker: BrokerState::Up,
        });
        assert_eq!(
            wire_hex::<ToBridge, _>(welcome),
            "00000009_00_02_05_7765622d31_00".replace('_', "")
        );
        assert_eq!(
            wire_hex::<ToBridge, _>(ToGateway::Published { job }),
            "00000014_03_f3edaabd8494d9fdbfe7949a929ad6bbe7bf03".replace('_', "")
        );
        let error = ToGateway::Reply(Reply {
            seq: ReplySeq(1),
            job: JobId(5),
            body: ReplyBody::Error(WorkerError {
                code: -1,
                message: "no".into(),
                data: None,
            }),
        });
        // i64 -1 is zigzag 1; `data: None` is 00.
        assert_eq!(
            wire_hex::<ToBridge, _>(error),
            "00000009_05_01_05_02_01_02_6e6f_00".replace('_', "")
        );
    }

    #[test]
    fn hex_preview_is_lowercase_and_cut_at_the_limit() {
        assert_eq!(
            hex_preview(&[0x00, 0xab, 0x7f]),
            ("00ab7f".to_owned(), false)
        );
        let (hex, cut) = hex_preview(&[0xff; HEX_LIMIT + 1]);
        assert_eq!(hex.len(), HEX_LIMIT * 2);
        assert!(cut);
    }
}
