//! Parsing websocket text frames into calls.
//!
//! Parsing is strict about what the spec requires (`"jsonrpc": "2.0"`, a string `method`,
//! structured `params`, a scalar `id`) and keeps `id` and `params` as raw JSON text: ids come
//! back byte for byte as the client sent them, and params go to the worker without a round
//! trip through a JSON tree.
//!
//! Three limits ([`ParseLimits`]) bound what one frame can make the gateway do, each refused
//! with its own code so a client can tell which it hit: nesting depth is checked by one byte
//! scan before any parsing (serde_json would otherwise recurse up to its own limit of 128),
//! batch length while the batch's members are collected (a 100,000-member batch is counted,
//! never stored), and params size per call.
//!
//! A large call costs the gateway what it reads per byte, so each byte is looked at as few times
//! as the checks allow: the depth scan jumps over string contents with `memchr`; a single
//! request is parsed once, straight into its members (the whole frame is parsed again only to
//! word the -32700 of a frame that fails); and large params are a slice of the websocket frame
//! itself, not a copy ([`Json::slice_or_copy`]).
//!
//! (About 300 lines of parser and as many of tests pinning each refusal: kept as one file, since
//! the tests read best beside the one function they all drive.)

use bytes::Bytes;
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use wsmq_ipc_proto::Json;

use super::MAX_PRIORITY;
use crate::call_error::CallError;

/// What one frame may hold; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ParseLimits {
    /// Deepest nesting of arrays and objects in a frame; a batch's array counts as one level.
    pub(crate) max_depth: usize,
    /// Most members a batch may have; a longer one is refused whole.
    pub(crate) max_batch_len: usize,
    /// Largest `params` of one call, in bytes of JSON text.
    pub(crate) max_params_bytes: usize,
}

impl Default for ParseLimits {
    fn default() -> Self {
        Self {
            max_depth: 32,
            max_batch_len: 1000,
            max_params_bytes: 1024 * 1024,
        }
    }
}

/// One call, as parsed from a request object.
#[derive(Debug)]
pub(crate) struct Call {
    /// `None` for a notification. `Some("null")` for an explicit null id.
    pub(crate) id: Option<Box<RawValue>>,
    pub(crate) method: String,
    /// Raw JSON of `params`, as the client wrote it; `None` when the member is absent.
    pub(crate) params: Option<Json>,
    /// What the `wsmq` member asked for.
    pub(crate) options: CallOptions,
}

/// Per-call options from the request's `wsmq` member; `None` means "the gateway's default".
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CallOptions {
    pub(crate) timeout_ms: Option<u64>,
    pub(crate) priority: Option<u8>,
}

impl CallOptions {
    fn parse(raw: &RawValue) -> Result<Self, String> {
        if !raw.get().starts_with('{') {
            return Err("wsmq must be an object".into());
        }
        let options: CallOptions = serde_json::from_str(raw.get()).map_err(|e| {
            let text = e.to_string();
            // serde names the key: "unknown field `x`, expected ...".
            match text.split('`').nth(1) {
                Some(key) if text.starts_with("unknown field") => {
                    format!("unknown wsmq option {key:?}")
                }
                _ => format!("bad wsmq options: {text}"),
            }
        })?;
        if options.timeout_ms == Some(0) {
            return Err("wsmq.timeout_ms must be at least 1".into());
        }
        if options.priority.is_some_and(|p| p > MAX_PRIORITY) {
            return Err(format!("wsmq.priority must be 0-{MAX_PRIORITY}"));
        }
        Ok(options)
    }
}

/// One member of what the client sent: a call, or an error to answer with at once.
#[derive(Debug)]
pub(crate) enum Entry {
    Call(Call),
    Invalid(String),
}

/// A text frame, parsed.
#[derive(Debug)]
pub(crate) enum Incoming {
    Single(Entry),
    Batch(Vec<Entry>),
}

/// The frame cannot be handled at all; answer with this one response.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct FrameRejected(pub(crate) String);

/// The -32700 answer to a frame that is not JSON.
fn parse_error(e: serde_json::Error) -> FrameRejected {
    FrameRejected(CallError::Parse(e.to_string()).response(None))
}

/// Parses one websocket text frame; params are copies of the client's text.
pub(crate) fn parse(text: &str, limits: &ParseLimits) -> Result<Incoming, FrameRejected> {
    parse_shared(text, &Bytes::new(), limits)
}

/// Parses one websocket text frame whose bytes `frame` holds: large params are slices of
/// `frame` (see [`Json::slice_or_copy`]), not copies.
pub(crate) fn parse_shared(
    text: &str,
    frame: &Bytes,
    limits: &ParseLimits,
) -> Result<Incoming, FrameRejected> {
    if let Some(depth) = exceeds_depth(text, limits.max_depth) {
        let max = limits.max_depth;
        let error = CallError::NestingTooDeep { depth, max };
        return Err(FrameRejected(error.response(None)));
    }
    let json = text.trim_start_matches(JSON_WHITESPACE);
    match json.as_bytes().first() {
        Some(b'[') => {
            // Collecting the members checks the whole frame: each member, the array, and that
            // nothing follows it.
            let batch = collect_batch(json, limits.max_batch_len).map_err(|e| not_json(text, e))?;
            let members = match batch {
                Batch::Members(members) => members,
                Batch::TooLong(len) => {
                    let max = limits.max_batch_len;
                    let error = CallError::BatchTooLong { len, max };
                    return Err(FrameRejected(error.response(None)));
                }
            };
            if members.is_empty() {
                let error = CallError::InvalidRequest("empty batch".into());
                return Err(FrameRejected(error.response(None)));
            }
            Ok(Incoming::Batch(
                members
                    .into_iter()
                    .map(|m| parse_entry(m, frame, limits))
                    .collect(),
            ))
        }
        // One pass reads the request and checks the whole frame (serde_json refuses anything
        // after the object).
        Some(b'{') => match serde_json::from_str::<RawRequest<'_>>(json) {
            Ok(req) => Ok(Incoming::Single(entry_of(req, frame, limits))),
            // JSON, but not a request (a member twice): -32600, as for a batch member.
            Err(e) if e.classify() == serde_json::error::Category::Data => {
                check_json(text)?;
                Ok(Incoming::Single(invalid(None, &e.to_string())))
            }
            Err(e) => Err(not_json(text, e)),
        },
        _ => {
            check_json(text)?;
            Ok(Incoming::Single(invalid(
                None,
                "a request must be a JSON object",
            )))
        }
    }
}

/// What JSON allows around values.
const JSON_WHITESPACE: [char; 4] = [' ', '\t', '\n', '\r'];

/// Whether the whole frame is JSON; the -32700 answer if it is not.
fn check_json(text: &str) -> Result<(), FrameRejected> {
    serde_json::from_str::<&RawValue>(text)
        .map(drop)
        .map_err(parse_error)
}

/// The -32700 answer to a frame whose parse failed with `first`. The frame is parsed again as
/// plain JSON so that the message names the place exactly as it always has; this costs only on
/// frames that are refused.
fn not_json(text: &str, first: serde_json::Error) -> FrameRejected {
    match check_json(text) {
        Err(rejected) => rejected,
        Ok(()) => parse_error(first),
    }
}

/// The nesting depth `text` reaches once it passes `max`, or `None` if it stays within.
///
/// One pass over the bytes, counting `[`/`{` and `]`/`}` outside strings; a string's contents
/// are skipped with `memchr` (SIMD), so a large string costs about as much as reading it once.
/// It does not validate: on malformed JSON it may count wrong, and the parse that follows
/// refuses the frame anyway. Multi-byte UTF-8 sequences never contain the ASCII bytes it looks
/// at.
fn exceeds_depth(text: &str, max: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        i += 1;
        match b {
            b'"' => {
                // To the closing quote: the next `"` not escaped by a `\`.
                loop {
                    match memchr::memchr2(b'"', b'\\', &bytes[i..]) {
                        None => return None,
                        Some(at) if bytes[i + at] == b'\\' => i += at + 2,
                        Some(at) => {
                            i += at + 1;
                            break;
                        }
                    }
                    if i >= bytes.len() {
                        return None;
                    }
                }
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return Some(depth);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

/// A batch's members, or how many there were when over the limit.
enum Batch<'a> {
    Members(Vec<&'a RawValue>),
    TooLong(usize),
}

/// Collects at most `max` members of the JSON array `json`; past that it only counts, so a
/// huge batch costs no memory beyond its text.
fn collect_batch(json: &str, max: usize) -> Result<Batch<'_>, serde_json::Error> {
    use serde::de::{DeserializeSeed, IgnoredAny, SeqAccess, Visitor};

    struct Members {
        max: usize,
    }
    impl<'de> Visitor<'de> for Members {
        type Value = Batch<'de>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON array")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Batch<'de>, A::Error> {
            let mut members = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(self.max));
            while let Some(member) = seq.next_element::<&'de RawValue>()? {
                if members.len() == self.max {
                    let mut len = members.len() + 1;
                    while seq.next_element::<IgnoredAny>()?.is_some() {
                        len += 1;
                    }
                    return Ok(Batch::TooLong(len));
                }
                members.push(member);
            }
            Ok(Batch::Members(members))
        }
    }
    impl<'de> DeserializeSeed<'de> for Members {
        type Value = Batch<'de>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Batch<'de>, D::Error> {
            d.deserialize_seq(self)
        }
    }
    let mut de = serde_json::Deserializer::from_str(json);
    let batch = Members { max }.deserialize(&mut de)?;
    de.end()?;
    Ok(batch)
}

/// Distinguishes an absent member (`None` via `default`) from an explicit `null` (`Some`).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
struct RawRequest<'a> {
    #[serde(borrow, default, deserialize_with = "present")]
    jsonrpc: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    method: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    params: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    wsmq: Option<&'a RawValue>,
}

/// The answer to a request that is not valid, with its id when usable.
fn invalid(id: Option<&RawValue>, why: &str) -> Entry {
    Entry::Invalid(CallError::InvalidRequest(why.to_owned().into()).response(id))
}

/// One member of a batch.
fn parse_entry(raw: &RawValue, frame: &Bytes, limits: &ParseLimits) -> Entry {
    if !raw.get().starts_with('{') {
        return invalid(None, "a request must be a JSON object");
    }
    match serde_json::from_str(raw.get()) {
        Ok(req) => entry_of(req, frame, limits),
        Err(e) => invalid(None, &e.to_string()),
    }
}

/// Checks a request object's members and makes the call.
fn entry_of(req: RawRequest<'_>, frame: &Bytes, limits: &ParseLimits) -> Entry {
    // The id is echoed in the error when it is usable, so the client can match it up.
    let id = match req.id {
        None => None,
        Some(id) if is_valid_id(id) => Some(id),
        Some(_) => return invalid(None, "id must be a string, a number or null"),
    };
    if req.jsonrpc.map(RawValue::get) != Some("\"2.0\"") {
        return invalid(id, r#"jsonrpc must be exactly "2.0""#);
    }
    let method = match req.method.map(|m| serde_json::from_str::<String>(m.get())) {
        Some(Ok(method)) => method,
        _ => return invalid(id, "method must be a string"),
    };
    if method.is_empty() {
        return invalid(id, "method must not be empty");
    }
    if let Some(params) = req.params
        && !(params.get().starts_with('{') || params.get().starts_with('['))
    {
        return invalid(id, "params must be an object or an array");
    }
    if let Some(params) = req.params
        && params.get().len() > limits.max_params_bytes
    {
        let error = CallError::ParamsTooLarge {
            len: params.get().len(),
            max: limits.max_params_bytes,
        };
        return Entry::Invalid(error.response(id));
    }
    let options = match req.wsmq.map(CallOptions::parse).transpose() {
        Ok(options) => options.unwrap_or_default(),
        Err(why) => return invalid(id, &why),
    };
    Entry::Call(Call {
        id: id.map(ToOwned::to_owned),
        method,
        params: req
            .params
            .map(|params| Json::slice_or_copy(frame, params.get().as_bytes())),
        options,
    })
}

fn is_valid_id(id: &RawValue) -> bool {
    let first = id.get().as_bytes().first().copied();
    matches!(first, Some(b'"' | b'-' | b'0'..=b'9')) || id.get() == "null"
}

/// The id a `$/cancel` names, as raw JSON text, or why the cancel is malformed.
pub(crate) fn cancel_target(call: &Call) -> Result<Box<RawValue>, &'static str> {
    #[derive(Deserialize)]
    struct CancelParams {
        id: Box<RawValue>,
    }
    let params = call
        .params
        .as_ref()
        .filter(|p| p.as_bytes().starts_with(b"{"))
        .ok_or("$/cancel needs params {\"id\": <call id>}")?;
    let parsed: CancelParams = serde_json::from_slice(params.as_bytes())
        .map_err(|_| "$/cancel needs params {\"id\": <call id>}")?;
    Ok(parsed.id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jsonrpc::error_response;
    use serde_json::Value;
    use wsmq_codes::{
        BATCH_TOO_LONG, INVALID_REQUEST, JSON_TOO_DEEP, PARAMS_TOO_LARGE, PARSE_ERROR,
    };

    fn value(text: &str) -> Value {
        serde_json::from_str(text).expect("valid JSON")
    }

    fn single(text: &str) -> Entry {
        match parse(text, &ParseLimits::default()).expect("frame accepted") {
            Incoming::Single(e) => e,
            Incoming::Batch(_) => panic!("not a batch"),
        }
    }

    fn call(text: &str) -> Call {
        match single(text) {
            Entry::Call(c) => c,
            Entry::Invalid(e) => panic!("invalid: {e}"),
        }
    }

    fn invalid(text: &str) -> Value {
        match single(text) {
            Entry::Invalid(e) => value(&e),
            Entry::Call(c) => panic!("accepted: {c:?}"),
        }
    }

    #[test]
    fn request_keeps_id_and_params_verbatim() {
        let c = call(r#"{"jsonrpc":"2.0","method":"sum","params":[1, 2.50],"id":"a\"b"}"#);
        assert_eq!(c.method, "sum");
        assert_eq!(c.id.as_deref().map(RawValue::get), Some(r#""a\"b""#));
        assert_eq!(c.params, Some("[1, 2.50]".into()));
    }

    #[test]
    fn missing_id_is_a_notification_but_null_id_is_a_request() {
        assert!(call(r#"{"jsonrpc":"2.0","method":"m"}"#).id.is_none());
        let c = call(r#"{"jsonrpc":"2.0","method":"m","id":null}"#);
        assert_eq!(c.id.as_deref().map(RawValue::get), Some("null"));
    }

    #[test]
    fn big_and_fractional_numeric_ids_survive_unchanged() {
        let c = call(r#"{"jsonrpc":"2.0","method":"m","id":123456789012345678901234567890}"#);
        assert_eq!(
            c.id.as_deref().map(RawValue::get),
            Some("123456789012345678901234567890")
        );
    }

    #[test]
    fn out_of_range_numeric_id_is_echoed_verbatim() {
        // Valid JSON that serde_json::Value cannot hold; found while writing the fuzz target.
        let c = call(r#"{"jsonrpc":"2.0","method":"m","id":1e999}"#);
        assert_eq!(c.id.as_deref().map(RawValue::get), Some("1e999"));
        let id = c.id.as_deref().expect("has an id");
        let text = error_response(Some(id), INVALID_REQUEST, "x", None);
        assert!(text.contains(r#""id":1e999"#), "{text}");
    }

    #[test]
    fn garbage_is_a_parse_error_with_null_id() {
        let FrameRejected(text) = parse("{nope", &ParseLimits::default()).expect_err("rejected");
        let v = value(&text);
        assert_eq!(v["error"]["code"], PARSE_ERROR);
        assert_eq!(v["id"], Value::Null);
        assert_eq!(v["jsonrpc"], "2.0");
    }

    #[test]
    fn wrong_shapes_are_invalid_requests() {
        for bad in [
            r#"{"jsonrpc":"1.0","method":"m","id":1}"#,
            r#"{"method":"m","id":1}"#,
            r#"{"jsonrpc":"2.0","method":5,"id":1}"#,
            r#"{"jsonrpc":"2.0","id":1}"#,
            r#"{"jsonrpc":"2.0","method":"","id":1}"#,
            r#"{"jsonrpc":"2.0","method":"m","params":3,"id":1}"#,
            r#"{"jsonrpc":"2.0","method":"m","params":"x","id":1}"#,
            r#"{"jsonrpc":"2.0","method":"m","id":{"a":1}}"#,
            r#"{"jsonrpc":"2.0","method":"m","id":[1]}"#,
            r#"{"jsonrpc":"2.0","method":"m","id":true}"#,
            r#"1"#,
            r#""text""#,
        ] {
            let v = invalid(bad);
            assert_eq!(v["error"]["code"], INVALID_REQUEST, "{bad}");
        }
    }

    #[test]
    fn invalid_request_echoes_a_usable_id() {
        let v = invalid(r#"{"jsonrpc":"1.0","method":"m","id":"x7"}"#);
        assert_eq!(v["id"], "x7");
        let v = invalid(r#"{"jsonrpc":"2.0","method":"m","id":{"no":1}}"#);
        assert_eq!(v["id"], Value::Null);
    }

    #[test]
    fn empty_batch_is_one_invalid_request() {
        let FrameRejected(text) = parse("[]", &ParseLimits::default()).expect_err("rejected");
        let v = value(&text);
        assert_eq!(v["error"]["code"], INVALID_REQUEST);
        assert_eq!(v["id"], Value::Null);
    }

    #[test]
    fn batch_members_are_parsed_independently() {
        let text = r#"[{"jsonrpc":"2.0","method":"a","id":1}, 1, {"jsonrpc":"2.0","method":"b"}]"#;
        let Incoming::Batch(entries) = parse(text, &ParseLimits::default()).expect("accepted")
        else {
            panic!("not a batch");
        };
        assert!(matches!(&entries[0], Entry::Call(c) if c.method == "a"));
        assert!(matches!(&entries[1], Entry::Invalid(_)));
        assert!(matches!(&entries[2], Entry::Call(c) if c.id.is_none()));
    }

    fn rejected(text: &str, limits: &ParseLimits) -> Value {
        match parse(text, limits) {
            Err(FrameRejected(e)) => value(&e),
            Ok(incoming) => panic!("accepted: {incoming:?}"),
        }
    }

    #[test]
    fn oversized_batch_is_refused_whole_with_its_length() {
        let limits = ParseLimits::default();
        let one = r#"{"jsonrpc":"2.0","method":"a"}"#;
        let text = format!("[{}]", vec![one; limits.max_batch_len + 1].join(","));
        let v = rejected(&text, &limits);
        assert_eq!(v["error"]["code"], BATCH_TOO_LONG);
        assert_eq!(v["id"], Value::Null);
        assert_eq!(
            v["error"]["data"], "batch of 1001 calls; at most 1000",
            "{v}"
        );
    }

    #[test]
    fn batch_at_the_limit_is_accepted() {
        let limits = ParseLimits {
            max_batch_len: 3,
            ..ParseLimits::default()
        };
        let Ok(Incoming::Batch(entries)) = parse("[1,2,3]", &limits) else {
            panic!("a batch of 3 is within a limit of 3");
        };
        assert_eq!(entries.len(), 3);
        let v = rejected("[1,2,3,4]", &limits);
        assert_eq!(v["error"]["code"], BATCH_TOO_LONG, "{v}");
    }

    #[test]
    fn a_100k_member_batch_is_counted_not_stored() {
        let text = format!("[{}0]", "0,".repeat(99_999));
        let v = rejected(&text, &ParseLimits::default());
        assert_eq!(v["error"]["code"], BATCH_TOO_LONG);
        assert_eq!(v["error"]["data"], "batch of 100000 calls; at most 1000");
    }

    #[test]
    fn malformed_long_batch_is_a_parse_error() {
        // Validity is checked before the length: a broken frame is -32700 whatever its size.
        let text = format!("[{}", "0,".repeat(2000));
        assert_eq!(
            rejected(&text, &ParseLimits::default())["error"]["code"],
            PARSE_ERROR
        );
    }

    fn nested(depth: usize) -> String {
        format!(
            r#"{{"jsonrpc":"2.0","method":"m","id":1,"params":{}1{}}}"#,
            "[".repeat(depth - 1),
            "]".repeat(depth - 1)
        )
    }

    #[test]
    fn nesting_at_the_limit_is_accepted_one_deeper_is_refused() {
        let limits = ParseLimits::default();
        // The request object is level 1, so params add max_depth - 1 levels.
        call(&nested(limits.max_depth));
        let v = rejected(&nested(limits.max_depth + 1), &limits);
        assert_eq!(v["error"]["code"], JSON_TOO_DEEP);
        assert_eq!(v["id"], Value::Null);
        assert_eq!(
            v["error"]["data"],
            "nesting deeper than 33 levels; at most 32"
        );
    }

    #[test]
    fn brackets_inside_strings_do_not_count_as_nesting() {
        let limits = ParseLimits {
            max_depth: 2,
            ..ParseLimits::default()
        };
        let text = r#"{"jsonrpc":"2.0","method":"m","id":"[[[{{\"\\[[","params":{"a":"]]]{{{"}}"#;
        assert!(matches!(
            parse(text, &limits),
            Ok(Incoming::Single(Entry::Call(_)))
        ));
    }

    #[test]
    fn deep_nesting_beyond_serde_json_limit_is_refused_not_a_parse_error() {
        let text = "[".repeat(100_000);
        let v = rejected(&text, &ParseLimits::default());
        assert_eq!(v["error"]["code"], JSON_TOO_DEEP);
    }

    #[test]
    fn oversized_params_are_refused_per_call_with_the_id() {
        let limits = ParseLimits {
            max_params_bytes: 10,
            ..ParseLimits::default()
        };
        let ok = r#"{"jsonrpc":"2.0","method":"m","id":1,"params":[1234567]}"#;
        assert!(matches!(
            parse(ok, &limits),
            Ok(Incoming::Single(Entry::Call(_)))
        ));
        let big = r#"{"jsonrpc":"2.0","method":"m","id":"b","params":[123456789]}"#;
        let Ok(Incoming::Single(Entry::Invalid(e))) = parse(big, &limits) else {
            panic!("11 bytes of params over a limit of 10 must be refused");
        };
        let v = value(&e);
        assert_eq!(v["error"]["code"], PARAMS_TOO_LARGE);
        assert_eq!(v["id"], "b");
        assert_eq!(v["error"]["data"], "params of 11 bytes; at most 10");
    }

    #[test]
    fn one_oversized_member_does_not_sink_its_batch() {
        let limits = ParseLimits {
            max_params_bytes: 4,
            ..ParseLimits::default()
        };
        let text = r#"[{"jsonrpc":"2.0","method":"m","id":1,"params":[1]},
                       {"jsonrpc":"2.0","method":"m","id":2,"params":[1,2,3]}]"#;
        let Ok(Incoming::Batch(entries)) = parse(text, &limits) else {
            panic!("batch accepted");
        };
        assert!(matches!(&entries[0], Entry::Call(_)));
        assert!(
            matches!(&entries[1], Entry::Invalid(e) if value(e)["error"]["code"] == PARAMS_TOO_LARGE)
        );
    }

    #[test]
    fn wsmq_options_are_parsed() {
        let c =
            call(r#"{"jsonrpc":"2.0","method":"m","id":1,"wsmq":{"timeout_ms":500,"priority":9}}"#);
        assert_eq!(
            c.options,
            CallOptions {
                timeout_ms: Some(500),
                priority: Some(9)
            }
        );
        assert_eq!(
            call(r#"{"jsonrpc":"2.0","method":"m","id":1}"#).options,
            CallOptions::default()
        );
    }

    #[test]
    fn unknown_wsmq_option_is_invalid_and_named() {
        let v = invalid(r#"{"jsonrpc":"2.0","method":"m","id":1,"wsmq":{"timeout":5}}"#);
        assert_eq!(v["error"]["code"], INVALID_REQUEST);
        assert!(
            v["error"]["data"]
                .as_str()
                .is_some_and(|d| d.contains("\"timeout\"")),
            "{v}"
        );
        assert_eq!(v["id"], 1);
    }

    #[test]
    fn out_of_range_wsmq_options_are_invalid() {
        for bad in [
            r#"{"priority":10}"#,
            r#"{"priority":-1}"#,
            r#"{"timeout_ms":0}"#,
            r#"{"timeout_ms":"5"}"#,
            r#"[]"#,
            r#"5"#,
        ] {
            let text = format!(r#"{{"jsonrpc":"2.0","method":"m","id":1,"wsmq":{bad}}}"#);
            assert_eq!(invalid(&text)["error"]["code"], INVALID_REQUEST, "{bad}");
        }
    }

    #[test]
    fn large_params_are_a_slice_of_the_frame_and_small_ones_a_copy() {
        let inside = |frame: &Bytes, part: &[u8]| {
            let (start, at) = (frame.as_ptr() as usize, part.as_ptr() as usize);
            at >= start && at + part.len() <= start + frame.len()
        };
        for (len, shared) in [(Json::SHARE_MIN, true), (Json::SHARE_MIN - 1, false)] {
            let params = format!(r#"["{}"]"#, "x".repeat(len - 4));
            let text = format!(r#"{{"jsonrpc":"2.0","method":"m","id":1,"params":{params}}}"#);
            let frame = Bytes::from(text.clone());
            let text = std::str::from_utf8(&frame).expect("UTF-8");
            let Ok(Incoming::Single(Entry::Call(c))) =
                parse_shared(text, &frame, &ParseLimits::default())
            else {
                panic!("call accepted");
            };
            let got = c.params.expect("params");
            assert_eq!(got.as_bytes(), params.as_bytes());
            assert_eq!(
                inside(&frame, got.as_bytes()),
                shared,
                "params of {len} bytes"
            );
        }
    }

    #[test]
    fn a_member_given_twice_is_an_invalid_request_unless_the_frame_is_not_json() {
        let v = invalid(r#"{"jsonrpc":"2.0","method":"m","id":1,"id":2}"#);
        assert_eq!(v["error"]["code"], INVALID_REQUEST);
        assert_eq!(v["id"], Value::Null);
        assert_eq!(
            v["error"]["data"],
            "duplicate field `id` at line 1 column 41"
        );
        // The same, but broken later on: the frame is not JSON, which decides (below).
    }

    #[test]
    fn a_parse_error_names_its_place_in_the_whole_frame() {
        // Worded as a plain parse of the whole frame words it (line and column in the frame as
        // sent, whitespace included), whichever pass found the fault first.
        let limits = ParseLimits::default();
        for text in [
            "\n  {\"jsonrpc\":\"2.0\",}",
            "{\"jsonrpc\":\"2.0\",\"method\":\"m\"} x",
            "{\"jsonrpc\":\"2.0\",\"method\":\"m\",\"id\":1,\"id\":2,}",
            " [1,2",
            "\r\n[{\"a\":1},]",
            "nul",
        ] {
            let plain = serde_json::from_str::<&RawValue>(text).expect_err("not JSON");
            let v = rejected(text, &limits);
            assert_eq!(v["error"]["code"], PARSE_ERROR, "{text}");
            assert_eq!(v["error"]["data"], plain.to_string(), "{text}");
            assert!(plain.to_string().contains("line"), "{plain}");
        }
        // Whitespace around a request is JSON's, and fine.
        call(" \r\n\t{\"jsonrpc\":\"2.0\",\"method\":\"m\"} \n");
    }

    #[test]
    fn escapes_inside_strings_neither_end_them_nor_count_as_nesting() {
        let limits = ParseLimits {
            max_depth: 3,
            ..ParseLimits::default()
        };
        // An escaped backslash ends before the quote, which closes the string: the brackets
        // after it count (object + 3 = 4 levels).
        let text = r#"{"jsonrpc":"2.0","method":"m","id":"\\","params":[[[1]]]}"#;
        assert_eq!(rejected(text, &limits)["error"]["code"], JSON_TOO_DEEP);
        // An escaped quote does not close the string: the brackets in it do not count.
        let text = r#"{"jsonrpc":"2.0","method":"m","id":"\"[[[{{","params":[[1]]}"#;
        assert!(matches!(
            parse(text, &limits),
            Ok(Incoming::Single(Entry::Call(_)))
        ));
        // A frame that ends inside a string, or on a backslash, is not JSON.
        for text in [r#"{"a":"[[[[["#, r#"{"a":"\"#, r#"{"a":"\\"#] {
            assert_eq!(
                rejected(text, &limits)["error"]["code"],
                PARSE_ERROR,
                "{text}"
            );
        }
    }

    #[test]
    fn cancel_names_the_target_id_verbatim() {
        let c = call(r#"{"jsonrpc":"2.0","method":"$/cancel","params":{"id":"a1"}}"#);
        assert_eq!(
            cancel_target(&c).map(|id| id.get().to_owned()),
            Ok(r#""a1""#.to_owned())
        );
        let c = call(r#"{"jsonrpc":"2.0","method":"$/cancel","params":[1]}"#);
        assert!(cancel_target(&c).is_err());
    }
}
