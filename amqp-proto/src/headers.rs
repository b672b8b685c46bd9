//! Header names and values, and reading them from a message's headers.

use std::time::{Duration, SystemTime};

use lapin::types::{AMQPType, AMQPValue, FieldTable};

/// Header of a job: the method it calls (an AMQP long string), so that a worker serving
/// several queues can tell them apart.
pub const METHOD_HEADER: &str = "wsmq-method";
/// Header of a job: its deadline, in milliseconds since the Unix epoch (an AMQP integer).
pub const DEADLINE_HEADER: &str = "wsmq-deadline";
/// Header of a job: the authenticated identity of the caller (an AMQP long string), present
/// when the gateway authenticates its clients.
pub const CALLER_HEADER: &str = "wsmq-caller";
/// Header that tells a reply's reader whether its body is a result, an error object or a
/// progress report ([`ReplyStatus`](crate::ReplyStatus)).
pub const STATUS_HEADER: &str = "wsmq-status";
/// [`STATUS_HEADER`] value of a reply whose body is the JSON result.
pub const STATUS_OK: &str = "ok";
/// Another spelling of [`STATUS_OK`] that readers accept (the bridge always has); workers
/// should send `ok`, or no status header at all.
pub const STATUS_RESULT: &str = "result";
/// [`STATUS_HEADER`] value of a reply whose body is a JSON-RPC error object.
pub const STATUS_ERROR: &str = "error";
/// [`STATUS_HEADER`] value of a progress message: the body is any JSON value, and the job's
/// final reply is still to come.
pub const STATUS_PROGRESS: &str = "progress";
/// Header of a cancellation: why the job was cancelled, [`REASON_CANCELLED`] or
/// [`REASON_TIMEOUT`] (an AMQP long string).
pub const REASON_HEADER: &str = "wsmq-reason";
/// [`REASON_HEADER`] value when the caller (or the gateway on its behalf) cancelled the call.
pub const REASON_CANCELLED: &str = "cancelled";
/// [`REASON_HEADER`] value when the call's deadline passed.
pub const REASON_TIMEOUT: &str = "timeout";

/// The bytes of a string header: an AMQP long string, short string or byte array.
///
/// Clients pick the type from the value they are given: pika sends a Python `str` as a long
/// string and `bytes` as a byte array, amqplib a JS string as a long string and a `Buffer` as a
/// byte array. All three carry the same bytes, so all three are read; any other type (a
/// number, a table) is `None`, never guessed at.
pub fn header_text(value: &AMQPValue) -> Option<&[u8]> {
    match value {
        AMQPValue::LongString(s) => Some(s.as_bytes()),
        AMQPValue::ShortString(s) => Some(s.as_str().as_bytes()),
        AMQPValue::ByteArray(b) => Some(b.as_slice()),
        _ => None,
    }
}

/// The text of the string header `name`, `None` when it is absent or not a string.
fn string_header(headers: Option<&FieldTable>, name: &str) -> Option<String> {
    let text = header_text(headers?.inner().get(name)?)?;
    Some(String::from_utf8_lossy(text).into_owned())
}

/// Reads a job's caller from its [`CALLER_HEADER`]: `None` when absent or not a string.
pub fn caller_from_headers(headers: Option<&FieldTable>) -> Option<String> {
    string_header(headers, CALLER_HEADER)
}

/// Reads a job's method from its [`METHOD_HEADER`]: `None` when absent or not a string.
pub fn method_from_headers(headers: Option<&FieldTable>) -> Option<String> {
    string_header(headers, METHOD_HEADER)
}

/// Why a job's [`DEADLINE_HEADER`] could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum DeadlineError {
    /// The header is an integer, but a negative one.
    #[error("{DEADLINE_HEADER} is negative ({0})")]
    Negative(i64),
    /// The header is a string that is not a decimal number of milliseconds.
    #[error("{DEADLINE_HEADER} {0:?} is not a number of milliseconds")]
    NotANumber(String),
    /// The header is a floating-point number that is not finite and non-negative.
    #[error("{DEADLINE_HEADER} {0} is not a non-negative finite number")]
    BadFloat(f64),
    /// The header is of a type that holds no number of milliseconds (a boolean, a table, or a
    /// timestamp, whose unit is by convention seconds).
    #[error("{DEADLINE_HEADER} has AMQP type {0:?}, not an integer")]
    WrongType(AMQPType),
    /// The header names a time the system clock cannot represent.
    #[error("{DEADLINE_HEADER} {0} ms is out of the clock's range")]
    OutOfRange(u64),
}

/// Reads a job's deadline from its [`DEADLINE_HEADER`]: `Ok(None)` when it has none.
///
/// The contract says an integer of milliseconds since the Unix epoch; any AMQP integer type is
/// accepted, and so are a decimal string (as any [`header_text`] type) and a non-negative float
/// (truncated), since clients in other languages pick these types on their own.
pub fn deadline_from_headers(
    headers: Option<&FieldTable>,
) -> Result<Option<SystemTime>, DeadlineError> {
    let Some(value) = headers.and_then(|h| h.inner().get(DEADLINE_HEADER)) else {
        return Ok(None);
    };
    let signed = |n: i64| u64::try_from(n).map_err(|_| DeadlineError::Negative(n));
    let ms = match value {
        AMQPValue::ShortShortInt(n) => signed(i64::from(*n))?,
        AMQPValue::ShortInt(n) => signed(i64::from(*n))?,
        AMQPValue::LongInt(n) => signed(i64::from(*n))?,
        AMQPValue::LongLongInt(n) => signed(*n)?,
        AMQPValue::ShortShortUInt(n) => u64::from(*n),
        AMQPValue::ShortUInt(n) => u64::from(*n),
        AMQPValue::LongUInt(n) => u64::from(*n),
        AMQPValue::Float(f) => float_ms(f64::from(*f))?,
        AMQPValue::Double(f) => float_ms(*f)?,
        other => match header_text(other) {
            Some(text) => parse_ms(&String::from_utf8_lossy(text))?,
            None => return Err(DeadlineError::WrongType(other.get_type())),
        },
    };
    SystemTime::UNIX_EPOCH
        .checked_add(Duration::from_millis(ms))
        .map(Some)
        .ok_or(DeadlineError::OutOfRange(ms))
}

fn parse_ms(text: &str) -> Result<u64, DeadlineError> {
    text.trim()
        .parse()
        .map_err(|_| DeadlineError::NotANumber(text.to_owned()))
}

fn float_ms(value: f64) -> Result<u64, DeadlineError> {
    if value.is_finite() && value >= 0.0 {
        // Truncation is the intent, and `as` saturates at u64::MAX.
        Ok(value as u64)
    } else {
        Err(DeadlineError::BadFloat(value))
    }
}

/// The [`DEADLINE_HEADER`] value for a deadline `ms` milliseconds after the Unix epoch, as the
/// bridge sends it: an AMQP long-long integer (saturating at `i64::MAX`).
pub fn deadline_ms_header_value(ms: u64) -> AMQPValue {
    AMQPValue::LongLongInt(i64::try_from(ms).unwrap_or(i64::MAX))
}

/// The [`DEADLINE_HEADER`] value for `deadline`: [`deadline_ms_header_value`] of its
/// milliseconds since the Unix epoch (0 for a time before the epoch).
pub fn deadline_header_value(deadline: SystemTime) -> AMQPValue {
    let ms = deadline
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis());
    deadline_ms_header_value(u64::try_from(ms).unwrap_or(u64::MAX))
}

/// Whether a job with `deadline` must not start (or reply) any more at `now`: the caller has
/// already been told it timed out.
pub fn deadline_passed(deadline: Option<SystemTime>, now: SystemTime) -> bool {
    deadline.is_some_and(|deadline| deadline <= now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::ByteArray;

    fn deadline_headers(value: AMQPValue) -> FieldTable {
        let mut headers = FieldTable::default();
        headers.insert(DEADLINE_HEADER.into(), value);
        headers
    }

    fn read_deadline(value: AMQPValue) -> Result<Option<SystemTime>, DeadlineError> {
        deadline_from_headers(Some(&deadline_headers(value)))
    }

    const MS: u64 = 1_700_000_000_123;

    fn at_ms(ms: u64) -> Option<SystemTime> {
        Some(SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
    }

    #[test]
    fn header_text_reads_every_string_type_and_nothing_else() {
        assert_eq!(
            header_text(&AMQPValue::LongString("ok".into())),
            Some(&b"ok"[..])
        );
        assert_eq!(
            header_text(&AMQPValue::ShortString("ok".into())),
            Some(&b"ok"[..])
        );
        assert_eq!(
            header_text(&AMQPValue::ByteArray(ByteArray::from(&b"ok"[..]))),
            Some(&b"ok"[..])
        );
        assert_eq!(header_text(&AMQPValue::LongLongInt(1)), None);
        assert_eq!(header_text(&AMQPValue::Boolean(true)), None);
    }

    #[test]
    fn caller_header_is_read_as_a_string_and_absent_otherwise() {
        let mut h = FieldTable::default();
        assert_eq!(caller_from_headers(None), None);
        assert_eq!(caller_from_headers(Some(&h)), None);
        h.insert(CALLER_HEADER.into(), AMQPValue::LongString("alice".into()));
        assert_eq!(caller_from_headers(Some(&h)).as_deref(), Some("alice"));
        h.insert(
            CALLER_HEADER.into(),
            AMQPValue::ByteArray(ByteArray::from(&b"bob"[..])),
        );
        assert_eq!(caller_from_headers(Some(&h)).as_deref(), Some("bob"));
        h.insert(CALLER_HEADER.into(), AMQPValue::LongLongInt(7));
        assert_eq!(caller_from_headers(Some(&h)), None);
    }

    #[test]
    fn method_header_is_read_as_a_string() {
        let mut h = FieldTable::default();
        assert_eq!(method_from_headers(Some(&h)), None);
        h.insert(METHOD_HEADER.into(), AMQPValue::ShortString("crash".into()));
        assert_eq!(method_from_headers(Some(&h)).as_deref(), Some("crash"));
    }

    #[test]
    fn job_without_deadline_header_has_no_deadline() {
        assert_eq!(deadline_from_headers(None), Ok(None));
        let unrelated = {
            let mut h = FieldTable::default();
            h.insert("x-other".into(), AMQPValue::LongLongInt(1));
            h
        };
        assert_eq!(deadline_from_headers(Some(&unrelated)), Ok(None));
    }

    #[test]
    fn deadline_header_is_read_from_any_integer_type() {
        let ms = i64::try_from(MS).expect("fits");
        assert_eq!(read_deadline(AMQPValue::LongLongInt(ms)), Ok(at_ms(MS)));
        assert_eq!(read_deadline(AMQPValue::LongInt(5)), Ok(at_ms(5)));
        assert_eq!(read_deadline(AMQPValue::LongUInt(6)), Ok(at_ms(6)));
        assert_eq!(read_deadline(AMQPValue::ShortInt(7)), Ok(at_ms(7)));
        assert_eq!(read_deadline(AMQPValue::ShortUInt(8)), Ok(at_ms(8)));
        assert_eq!(read_deadline(AMQPValue::ShortShortInt(9)), Ok(at_ms(9)));
        assert_eq!(read_deadline(AMQPValue::ShortShortUInt(10)), Ok(at_ms(10)));
    }

    #[test]
    fn deadline_header_is_read_from_a_decimal_string() {
        let text = MS.to_string();
        assert_eq!(
            read_deadline(AMQPValue::LongString(text.as_str().into())),
            Ok(at_ms(MS))
        );
        assert_eq!(
            read_deadline(AMQPValue::ShortString(format!(" {text} ").into())),
            Ok(at_ms(MS))
        );
        assert_eq!(
            read_deadline(AMQPValue::ByteArray(ByteArray::from(text.as_bytes()))),
            Ok(at_ms(MS))
        );
    }

    #[test]
    fn deadline_header_is_read_from_a_float_truncated() {
        assert_eq!(read_deadline(AMQPValue::Double(1234.9)), Ok(at_ms(1234)));
        assert_eq!(read_deadline(AMQPValue::Float(2.0)), Ok(at_ms(2)));
    }

    #[test]
    fn unreadable_deadline_header_is_an_error() {
        assert_eq!(
            read_deadline(AMQPValue::LongLongInt(-1)),
            Err(DeadlineError::Negative(-1))
        );
        assert_eq!(
            read_deadline(AMQPValue::LongString("soon".into())),
            Err(DeadlineError::NotANumber("soon".into()))
        );
        assert!(matches!(
            read_deadline(AMQPValue::Double(f64::NAN)),
            Err(DeadlineError::BadFloat(_))
        ));
        assert_eq!(
            read_deadline(AMQPValue::Boolean(true)),
            Err(DeadlineError::WrongType(AMQPType::Boolean))
        );
        assert_eq!(
            read_deadline(AMQPValue::Timestamp(5)),
            Err(DeadlineError::WrongType(AMQPType::Timestamp)),
            "a timestamp's unit is seconds by convention: not guessed"
        );
    }

    #[test]
    fn deadline_header_value_round_trips_as_a_long_long_int() {
        let deadline = SystemTime::UNIX_EPOCH + Duration::from_millis(MS);
        let value = deadline_header_value(deadline);
        assert_eq!(value, AMQPValue::LongLongInt(1_700_000_000_123));
        assert_eq!(read_deadline(value), Ok(Some(deadline)));
        let before_epoch = SystemTime::UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!(
            deadline_header_value(before_epoch),
            AMQPValue::LongLongInt(0)
        );
        assert_eq!(
            deadline_ms_header_value(u64::MAX),
            AMQPValue::LongLongInt(i64::MAX)
        );
    }

    #[test]
    fn deadline_has_passed_from_its_very_millisecond() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_millis(MS);
        assert!(!deadline_passed(None, now));
        assert!(deadline_passed(Some(now), now));
        assert!(deadline_passed(Some(now - Duration::from_millis(1)), now));
        assert!(!deadline_passed(Some(now + Duration::from_millis(1)), now));
    }
}
