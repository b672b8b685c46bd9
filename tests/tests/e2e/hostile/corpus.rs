//! The corpus itself: every hostile input with the exact answer it must get.

use super::*;

pub(super) fn corpus() -> Vec<Case> {
    use Expect::*;
    let good = req("1", "echo", r#"{"ok":true}"#);
    let mut c = vec![
        // Frames that are not JSON text.
        case(
            "binary frame holding a request",
            Input::Messages(vec![Message::binary(good.clone().into_bytes())]),
            Error(rpc::PARSE_ERROR, "null"),
        ),
        case(
            "binary frame of random bytes",
            Input::Messages(vec![Message::binary(vec![0u8, 0xff, 0x13, 0x37])]),
            Error(rpc::PARSE_ERROR, "null"),
        ),
        case(
            "empty binary frame",
            Input::Messages(vec![Message::binary(Vec::new())]),
            Error(rpc::PARSE_ERROR, "null"),
        ),
        case(
            "text frame of invalid UTF-8",
            Input::Messages(vec![frame(vec![b'{', 0xff, 0xfe, b'}'], TEXT, true)]),
            Close {
                code: CLOSE_INVALID_DATA,
            },
        ),
        case(
            "text frame with a UTF-16 surrogate encoded in UTF-8",
            Input::Messages(vec![frame(vec![b'"', 0xed, 0xa0, 0x80, b'"'], TEXT, true)]),
            Close {
                code: CLOSE_INVALID_DATA,
            },
        ),
        case(
            "request in three fragments",
            Input::Messages(vec![
                frame(&good.as_bytes()[..5], TEXT, false),
                frame(&good.as_bytes()[5..20], CONT, false),
                frame(&good.as_bytes()[20..], CONT, true),
            ]),
            Result("1".into()),
        ),
        case(
            "continuation frame with no message started",
            Input::Messages(vec![frame(good.clone().into_bytes(), CONT, true)]),
            Close {
                code: CLOSE_PROTOCOL,
            },
        ),
        case(
            "new text frame inside a fragmented message",
            Input::Messages(vec![
                frame(&good.as_bytes()[..5], TEXT, false),
                frame(good.clone().into_bytes(), TEXT, true),
            ]),
            Close {
                code: CLOSE_PROTOCOL,
            },
        ),
        case(
            "frame with a reserved opcode",
            Input::Messages(vec![frame(
                good.clone().into_bytes(),
                OpCode::Data(Data::Reserved(3)),
                true,
            )]),
            Close {
                code: CLOSE_PROTOCOL,
            },
        ),
        case(
            "ping with a 126-byte payload",
            Input::Messages(vec![frame(vec![0u8; 126], PING, true)]),
            Close {
                code: CLOSE_PROTOCOL,
            },
        ),
        case(
            "fragmented ping",
            Input::Messages(vec![frame(vec![1u8; 4], PING, false)]),
            Close {
                code: CLOSE_PROTOCOL,
            },
        ),
        case(
            "2 MiB message",
            text(req(
                "1",
                "echo",
                &format!(r#"{{"b":"{}"}}"#, "x".repeat(2 * MAX_MESSAGE_BYTES)),
            )),
            Close {
                code: CLOSE_TOO_BIG,
            },
        ),
        case(
            "24 fragments of 64 KiB, 1.5 MiB in all",
            Input::Messages({
                let mut f = vec![frame(b"[".to_vec(), TEXT, false)];
                f.extend((0..24).map(|_| frame(vec![b' '; 64 * 1024], CONT, false)));
                f.push(frame(b"]".to_vec(), CONT, true));
                f
            }),
            Close {
                code: CLOSE_TOO_BIG,
            },
        ),
        case(
            "batch of 100,000 requests (3 MB)",
            text(format!(
                "[{}]",
                vec![r#"{"jsonrpc":"2.0","method":"echo"}"#; 100_000].join(",")
            )),
            Close {
                code: CLOSE_TOO_BIG,
            },
        ),
        // Text that is not JSON.
        case("empty text", text(""), Error(rpc::PARSE_ERROR, "null")),
        case(
            "whitespace only",
            text(" \n\t "),
            Error(rpc::PARSE_ERROR, "null"),
        ),
        case(
            "truncated object",
            text(r#"{"jsonrpc":"2.0","method":"#),
            Error(rpc::PARSE_ERROR, "null"),
        ),
        case(
            "trailing garbage after a request",
            text(format!("{good} x")),
            Error(rpc::PARSE_ERROR, "null"),
        ),
        case(
            "two requests back to back",
            text(format!("{good}{good}")),
            Error(rpc::PARSE_ERROR, "null"),
        ),
        case(
            "NaN literal",
            text(r#"{"jsonrpc":"2.0","method":"echo","params":[NaN],"id":1}"#),
            Error(rpc::PARSE_ERROR, "null"),
        ),
        case(
            "single-quoted strings",
            text("{'jsonrpc':'2.0','method':'echo','id':1}"),
            Error(rpc::PARSE_ERROR, "null"),
        ),
        // Sizes and depths.
        case(
            "nesting 33 deep",
            text(nested(33)),
            Error(rpc::NESTING_TOO_DEEP, "null"),
        ),
        case(
            "100,000 opening brackets",
            text("[".repeat(100_000)),
            Error(rpc::NESTING_TOO_DEEP, "null"),
        ),
        case(
            "objects nested 40 deep",
            text(format!(
                r#"{{"jsonrpc":"2.0","method":"echo","id":1,"params":{}1{}}}"#,
                r#"{"a":"#.repeat(40),
                "}".repeat(40)
            )),
            Error(rpc::NESTING_TOO_DEEP, "null"),
        ),
        case(
            "batch of 100,000 numbers",
            text(format!("[{}1]", "1,".repeat(99_999))),
            Error(rpc::BATCH_TOO_LONG, "null"),
        ),
        case(
            "batch of 1001 requests",
            text(format!("[{}]", vec![good.as_str(); 1001].join(","))),
            Error(rpc::BATCH_TOO_LONG, "null"),
        ),
        case(
            "params of 100 KB",
            text(req(
                "\"big\"",
                "echo",
                &format!(r#"{{"b":"{}"}}"#, "y".repeat(100_000)),
            )),
            Error(rpc::PARAMS_TOO_LARGE, r#""big""#),
        ),
        case(
            "batch with one oversized params",
            text(format!(
                "[{},{}]",
                req(
                    "1",
                    "echo",
                    &format!(r#"["{}"]"#, "z".repeat(MAX_PARAMS_BYTES))
                ),
                req("2", "echo", "[2]")
            )),
            Batch(vec![
                ("1".into(), Some(rpc::PARAMS_TOO_LARGE)),
                ("2".into(), None),
            ]),
        ),
        // Every wrong JSON-RPC shape.
        case("empty batch", text("[]"), Error(INVALID, "null")),
        case("a number", text("1"), Error(INVALID, "null")),
        case("a string", text(r#""echo""#), Error(INVALID, "null")),
        case("null", text("null"), Error(INVALID, "null")),
        case("true", text("true"), Error(INVALID, "null")),
        case("empty object", text("{}"), Error(INVALID, "null")),
        case(
            "jsonrpc missing",
            text(r#"{"method":"echo","id":5}"#),
            Error(INVALID, "5"),
        ),
        case(
            "jsonrpc 1.0",
            text(r#"{"jsonrpc":"1.0","method":"echo","id":5}"#),
            Error(INVALID, "5"),
        ),
        case(
            "jsonrpc as a number",
            text(r#"{"jsonrpc":2.0,"method":"echo","id":5}"#),
            Error(INVALID, "5"),
        ),
        case(
            "method missing",
            text(r#"{"jsonrpc":"2.0","id":5}"#),
            Error(INVALID, "5"),
        ),
        case(
            "method a number",
            text(r#"{"jsonrpc":"2.0","method":5,"id":5}"#),
            Error(INVALID, "5"),
        ),
        case(
            "method empty",
            text(r#"{"jsonrpc":"2.0","method":"","id":5}"#),
            Error(INVALID, "5"),
        ),
        case(
            "method null",
            text(r#"{"jsonrpc":"2.0","method":null,"id":5}"#),
            Error(INVALID, "5"),
        ),
        case(
            "params a string",
            text(req("5", "echo", r#""p""#)),
            Error(INVALID, "5"),
        ),
        case(
            "params a number",
            text(req("5", "echo", "3")),
            Error(INVALID, "5"),
        ),
        case(
            "params null",
            text(req("5", "echo", "null")),
            Error(INVALID, "5"),
        ),
        case(
            "params true",
            text(req("5", "echo", "true")),
            Error(INVALID, "5"),
        ),
        case(
            "duplicate member",
            text(r#"{"jsonrpc":"2.0","method":"echo","method":"fib","id":5}"#),
            Error(INVALID, "null"),
        ),
        case(
            "unknown wsmq option",
            text(r#"{"jsonrpc":"2.0","method":"echo","id":5,"wsmq":{"retries":3}}"#),
            Error(INVALID, "5"),
        ),
        case(
            "wsmq priority 10",
            text(r#"{"jsonrpc":"2.0","method":"echo","id":5,"wsmq":{"priority":10}}"#),
            Error(INVALID, "5"),
        ),
        case(
            "wsmq timeout_ms 0",
            text(r#"{"jsonrpc":"2.0","method":"echo","id":5,"wsmq":{"timeout_ms":0}}"#),
            Error(INVALID, "5"),
        ),
        case(
            "wsmq not an object",
            text(r#"{"jsonrpc":"2.0","method":"echo","id":5,"wsmq":[1]}"#),
            Error(INVALID, "5"),
        ),
        case(
            "$/cancel with an id",
            text(r#"{"jsonrpc":"2.0","method":"$/cancel","params":{"id":1},"id":5}"#),
            Error(INVALID, "5"),
        ),
        case(
            "reserved rpc. method",
            text(req("5", "rpc.discover", "{}")),
            Error(rpc::METHOD_NOT_FOUND, "5"),
        ),
        case(
            "reserved $/ method",
            text(req("5", "$/shutdown", "{}")),
            Error(rpc::METHOD_NOT_FOUND, "5"),
        ),
        case(
            "method nobody serves",
            text(req("5", "no.such.method", "{}")),
            Error(rpc::METHOD_NOT_FOUND, "5"),
        ),
        case(
            "batch of three non-requests",
            text("[1,\"a\",null]"),
            Batch(vec![("null".into(), Some(INVALID)); 3]),
        ),
        case(
            "batch: request, garbage member, notification",
            text(format!(
                r#"[{good},{{"x":1}},{{"jsonrpc":"2.0","method":"echo"}}]"#
            )),
            Batch(vec![("1".into(), None), ("null".into(), Some(INVALID))]),
        ),
        case(
            "malformed notification",
            text(r#"{"jsonrpc":"2.0","method":7}"#),
            Error(INVALID, "null"),
        ),
        case(
            "valid notification",
            text(r#"{"jsonrpc":"2.0","method":"echo","params":[1]}"#),
            Nothing,
        ),
        case(
            "batch of notifications only",
            text(r#"[{"jsonrpc":"2.0","method":"echo"},{"jsonrpc":"2.0","method":"echo"}]"#),
            Nothing,
        ),
        case(
            "$/cancel of an unknown id",
            text(r#"{"jsonrpc":"2.0","method":"$/cancel","params":{"id":"nobody"}}"#),
            Nothing,
        ),
        case(
            "malformed $/cancel",
            text(r#"{"jsonrpc":"2.0","method":"$/cancel","params":[]}"#),
            Nothing,
        ),
    ];
    // Ids of every JSON type: scalars come back byte for byte, the rest are refused.
    for id in [
        r#""abc""#,
        r#""""#,
        r#""é☃\u0041\"""#,
        "0",
        "-7",
        "1.5",
        "1e3",
        "-0.0",
        "123456789012345678901234567890",
        "null",
    ] {
        c.push(case(
            format!("id {id}"),
            text(with_id(id)),
            Result(id.into()),
        ));
    }
    for id in ["true", "false", "{}", r#"{"a":1}"#, "[]", "[1]"] {
        c.push(case(
            format!("id {id}"),
            text(with_id(id)),
            Error(INVALID, "null"),
        ));
    }
    // Floods.
    c.push(case(
        "300 requests sent before reading",
        Input::Flood(
            (0..300)
                .map(|i| req(&format!("\"f{i}\""), "echo", &format!("[{i}]")))
                .collect(),
        ),
        FloodUnderCap(MAX_INFLIGHT_PER_CLIENT),
    ));
    let sleeps: Vec<String> = (0..200)
        .map(|i| req(&i.to_string(), "sleep", r#"{"ms":1000}"#))
        .collect();
    let mut outcome: Vec<(String, Option<i64>)> = Vec::new();
    for i in 0..200 {
        let refused = i >= MAX_INFLIGHT_PER_CLIENT;
        outcome.push((i.to_string(), refused.then_some(rpc::TOO_MANY_IN_FLIGHT)));
    }
    c.push(case(
        "batch of 200 one-second calls over an in-flight cap of 64",
        text(format!("[{}]", sleeps.join(","))),
        Batch(outcome),
    ));
    c.push(case(
        "500 notifications",
        Input::Messages(
            (0..500)
                .map(|i| {
                    Message::text(format!(
                        r#"{{"jsonrpc":"2.0","method":"echo","params":[{i}]}}"#
                    ))
                })
                .collect(),
        ),
        NothingWhileBusy,
    ));
    c.push(case(
        "1000 pings",
        Input::Messages(
            (0..1000)
                .map(|_| Message::Ping(vec![7u8; 8].into()))
                .collect(),
        ),
        Nothing,
    ));
    c
}
