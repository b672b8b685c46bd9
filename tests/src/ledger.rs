//! Per-call bookkeeping for the fault tests: "nothing lost, nobody dropped", counted.
//!
//! A [`Ledger`] belongs to one websocket connection. It hands out requests, each with an id no
//! other ledger in the process uses (`<name>.<n>`, the name unique per ledger) and the result
//! only that call may get back, then reads every frame the connection receives. At the end its
//! [`Tally`] says how many calls were answered with their own result, with `-32000`, with
//! another error, not at all (lost), more than once (duplicated), and how many frames belonged
//! to no call of this connection or carried another call's result (misrouted), and whether the
//! socket was closed. Tallies of several connections add up with [`Tally::merge`].

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Result, bail};
use serde_json::{Value, json};

use crate::client::{Incoming, SESSION_METHOD};

/// The notification fair share sends about a call it holds, then lets go.
pub const QUEUED_METHOD: &str = "$/queued";
use crate::rpc::{self, BROKER_UNAVAILABLE};

/// Numbers the ledgers of a process, so their ids never collide.
static NEXT_LEDGER: AtomicU64 = AtomicU64::new(1);

/// Misrouted or unexpected frames kept verbatim for the failure message; the rest are counted.
const KEPT_STRAYS: usize = 20;

/// What one call expects back.
#[derive(Debug, Clone)]
struct Expected {
    method: String,
    result: Value,
    /// How many responses carried this id.
    answers: u32,
    /// Given up on: its connection ended before it was answered.
    abandoned: bool,
}

/// Bookkeeping for one connection's calls. See the module docs.
#[derive(Debug)]
pub struct Ledger {
    name: String,
    next: u64,
    calls: HashMap<String, Expected>,
    /// Ids in the order they were issued, for a stable "which ones are missing" message.
    order: Vec<String>,
    /// Calls neither answered nor abandoned (kept as a count: load loops ask for it per frame).
    outstanding: usize,
    tally: Tally,
}

impl Ledger {
    /// A ledger whose ids start with `label` and a process-wide number (`label3.17`).
    pub fn new(label: &str) -> Self {
        let number = NEXT_LEDGER.fetch_add(1, Ordering::Relaxed);
        Self {
            name: format!("{label}{number}"),
            next: 1,
            calls: HashMap::new(),
            order: Vec::new(),
            outstanding: 0,
            tally: Tally::default(),
        }
    }

    /// The ledger's name, the prefix of its ids.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A request for `method(params)` that must be answered with `result`; recorded as sent.
    pub fn call(&mut self, method: &str, params: Value, result: Value) -> Value {
        let id = format!("{}.{}", self.name, self.next);
        self.next += 1;
        self.calls.insert(
            id.clone(),
            Expected {
                method: method.to_owned(),
                result,
                answers: 0,
                abandoned: false,
            },
        );
        self.order.push(id.clone());
        self.outstanding += 1;
        self.tally.sent += 1;
        rpc::request(id, method, params)
    }

    /// An `echo` whose payload names this call alone, so any other call's answer differs.
    pub fn echo(&mut self) -> Value {
        let payload = json!({"ledger": self.name, "n": self.next});
        self.call("echo", payload.clone(), payload)
    }

    /// A demo `sleep` of `ms`; its result is the same for every such call, so only the id
    /// tells calls apart (ids are unique in the process, so that is enough).
    pub fn sleep(&mut self, ms: u64) -> Value {
        self.call("sleep", json!({"ms": ms}), json!({"slept_ms": ms}))
    }

    /// Calls sent and neither answered nor abandoned yet.
    pub fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// Stops waiting for every call outstanding now: their connection is gone, so they count
    /// as lost unless an answer still turns up (a resumed session could bring one).
    pub fn abandon_outstanding(&mut self) {
        for call in self.calls.values_mut() {
            if call.answers == 0 && !call.abandoned {
                call.abandoned = true;
            }
        }
        self.outstanding = 0;
    }

    /// Whether `id` was issued by this ledger and has been answered.
    pub fn is_answered(&self, id: &str) -> bool {
        self.calls.get(id).is_some_and(|c| c.answers > 0)
    }

    /// Records one frame the connection received.
    pub fn record(&mut self, incoming: &Incoming) {
        match incoming {
            Incoming::Text(text) => match serde_json::from_str::<Value>(text) {
                Ok(frame) => self.record_json(&frame),
                Err(_) => self.stray(format!("not JSON: {text}")),
            },
            Incoming::Binary(bytes) => {
                self.stray(format!("a binary frame of {} bytes", bytes.len()))
            }
            Incoming::Close(frame) => {
                self.tally.closes += 1;
                self.tally
                    .notes
                    .push(format!("{}: closed {frame:?}", self.name));
            }
            Incoming::Ended(error) => {
                self.tally.closes += 1;
                self.tally
                    .notes
                    .push(format!("{}: connection ended ({error:?})", self.name));
            }
        }
    }

    /// Records one parsed frame (a response or a notification).
    pub fn record_json(&mut self, frame: &Value) {
        if frame.get("id").is_none() {
            // A notification. The session greeting (which `WsClient` normally keeps to itself)
            // is no answer and no stray; anything else is unexpected.
            if frame.get("method") == Some(&json!(SESSION_METHOD)) {
                self.tally.session_notices += 1;
            } else if frame.get("method") == Some(&json!(QUEUED_METHOD))
                && frame["params"]["id"]
                    .as_str()
                    .is_some_and(|id| self.calls.contains_key(id))
            {
                // Fair share held (or let go) one of this connection's calls.
                self.tally.queued_notices += 1;
            } else {
                self.stray(format!("unexpected notification {frame}"));
            }
            return;
        }
        if let Err(e) = rpc::check_envelope(frame) {
            self.stray(format!("malformed response: {e}"));
            return;
        }
        let Some(id) = frame["id"].as_str() else {
            self.stray(format!(
                "response to a call this connection never made: {frame}"
            ));
            return;
        };
        let Some(call) = self.calls.get_mut(id) else {
            self.stray(format!(
                "response to a call this connection never made: {frame}"
            ));
            return;
        };
        call.answers += 1;
        if call.answers == 1 && !call.abandoned {
            self.outstanding -= 1;
        }
        if call.answers > 1 {
            self.tally.duplicated += 1;
            self.keep(format!("duplicate answer to {id}: {frame}"));
            return;
        }
        if let Some(result) = rpc::result(frame) {
            if *result == call.result {
                self.tally.ok += 1;
            } else {
                let expected = call.result.clone();
                self.stray(format!(
                    "{id} got another call's result {result}, expected {expected}"
                ));
            }
            return;
        }
        match rpc::error_code(frame) {
            Some(BROKER_UNAVAILABLE) => self.tally.unavailable += 1,
            Some(code) => {
                *self.tally.other_errors.entry(code).or_default() += 1;
                let method = call.method.clone();
                self.keep(format!("{method} {id} answered {frame}"));
            }
            None => self.stray(format!("response with neither result nor error: {frame}")),
        }
    }

    /// The tally so far, with every call not answered yet counted as lost.
    pub fn finish(mut self) -> Tally {
        let missing: Vec<&String> = self
            .order
            .iter()
            .filter(|id| self.calls.get(*id).is_some_and(|c| c.answers == 0))
            .collect();
        self.tally.lost = missing.len() as u64;
        if !missing.is_empty() {
            let shown: Vec<&str> = missing
                .iter()
                .take(KEPT_STRAYS)
                .map(|s| s.as_str())
                .collect();
            self.tally.notes.push(format!(
                "{}: {} calls never answered: {}{}",
                self.name,
                missing.len(),
                shown.join(", "),
                if missing.len() > shown.len() {
                    ", ..."
                } else {
                    ""
                }
            ));
        }
        self.tally
    }

    fn stray(&mut self, what: String) {
        self.tally.misrouted += 1;
        self.keep(what);
    }

    fn keep(&mut self, what: String) {
        if self.tally.notes.len() < KEPT_STRAYS {
            self.tally.notes.push(format!("{}: {what}", self.name));
        }
    }
}

/// The counts of one or more ledgers. See the module docs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// Calls sent.
    pub sent: u64,
    /// Answered with their own expected result.
    pub ok: u64,
    /// Answered `-32000` (broker unavailable, retryable).
    pub unavailable: u64,
    /// Answered with another error, by code.
    pub other_errors: BTreeMap<i64, u64>,
    /// Never answered.
    pub lost: u64,
    /// Answers beyond the first for the same call.
    pub duplicated: u64,
    /// Frames for calls this connection never made, answers carrying another call's result,
    /// and anything else that was not an answer to one of its calls.
    pub misrouted: u64,
    /// Websocket closes and connection ends.
    pub closes: u64,
    /// `$/session` announcements (not counted as anything else).
    pub session_notices: u64,
    /// `$/queued` notifications about this connection's own calls (fair share).
    pub queued_notices: u64,
    /// What went wrong, in words (capped), for the failure message.
    pub notes: Vec<String>,
}

impl Tally {
    /// Adds `other`'s counts to these.
    pub fn merge(&mut self, other: Tally) {
        self.sent += other.sent;
        self.ok += other.ok;
        self.unavailable += other.unavailable;
        for (code, n) in other.other_errors {
            *self.other_errors.entry(code).or_default() += n;
        }
        self.lost += other.lost;
        self.duplicated += other.duplicated;
        self.misrouted += other.misrouted;
        self.closes += other.closes;
        self.session_notices += other.session_notices;
        self.queued_notices += other.queued_notices;
        let room = (KEPT_STRAYS * 4).saturating_sub(self.notes.len());
        self.notes.extend(other.notes.into_iter().take(room));
    }

    /// Calls answered with an error other than `-32000`.
    pub fn other_error_count(&self) -> u64 {
        self.other_errors.values().sum()
    }

    /// Calls answered exactly once, whatever the answer.
    pub fn answered(&self) -> u64 {
        self.ok + self.unavailable + self.other_error_count()
    }

    /// Nothing lost, duplicated or misrouted, no socket closed, and every answer its own
    /// result or (when `allow_unavailable`) `-32000`.
    pub fn check(&self, allow_unavailable: bool) -> Result<()> {
        let mut wrong = Vec::new();
        if self.sent == 0 {
            wrong.push("no call was made".to_owned());
        }
        for (what, n) in [
            ("lost", self.lost),
            ("duplicated", self.duplicated),
            ("misrouted", self.misrouted),
            ("websocket closes", self.closes),
            ("other errors", self.other_error_count()),
        ] {
            if n > 0 {
                wrong.push(format!("{what}: {n}"));
            }
        }
        if !allow_unavailable && self.unavailable > 0 {
            wrong.push(format!(
                "{BROKER_UNAVAILABLE} answers: {}",
                self.unavailable
            ));
        }
        if wrong.is_empty() {
            return Ok(());
        }
        bail!(
            "{}\n{self}\n{}",
            wrong.join(", "),
            self.notes
                .iter()
                .map(|n| format!("  {n}"))
                .collect::<Vec<_>>()
                .join("\n")
        )
    }
}

impl fmt::Display for Tally {
    /// A small table, one count a line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let others = if self.other_errors.is_empty() {
            String::new()
        } else {
            let by_code: Vec<String> = self
                .other_errors
                .iter()
                .map(|(code, n)| format!("{code}: {n}"))
                .collect();
            format!("  ({})", by_code.join(", "))
        };
        writeln!(f, "  calls sent              {:>8}", self.sent)?;
        writeln!(f, "  answered                {:>8}", self.answered())?;
        writeln!(f, "    ok (own result)       {:>8}", self.ok)?;
        writeln!(
            f,
            "    {BROKER_UNAVAILABLE} unavailable    {:>8}",
            self.unavailable
        )?;
        writeln!(
            f,
            "    other errors          {:>8}{others}",
            self.other_error_count()
        )?;
        writeln!(f, "  lost                    {:>8}", self.lost)?;
        writeln!(f, "  duplicated              {:>8}", self.duplicated)?;
        writeln!(f, "  misrouted               {:>8}", self.misrouted)?;
        write!(f, "  websocket disconnects   {:>8}", self.closes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(v: Value) -> Incoming {
        Incoming::Text(v.to_string())
    }

    #[test]
    fn counts_each_kind_of_answer() {
        let mut ledger = Ledger::new("t");
        let echo = ledger.echo();
        let sleep = ledger.sleep(5);
        let failed = ledger.sleep(6);
        let lost = ledger.sleep(7);
        let _ = lost;
        ledger.record(&text(
            json!({"jsonrpc": "2.0", "method": SESSION_METHOD, "params": {}}),
        ));
        ledger.record(&text(
            json!({"jsonrpc": "2.0", "id": echo["id"], "result": echo["params"]}),
        ));
        ledger.record(&text(
            json!({"jsonrpc": "2.0", "id": sleep["id"], "result": {"slept_ms": 5}}),
        ));
        ledger.record(&text(
            json!({"jsonrpc": "2.0", "id": sleep["id"], "result": {"slept_ms": 5}}),
        ));
        ledger.record(&text(json!({"jsonrpc": "2.0", "id": failed["id"], "error": {"code": -32000, "message": "x"}})));
        ledger.record(&text(
            json!({"jsonrpc": "2.0", "id": "elsewhere.1", "result": 1}),
        ));
        let tally = ledger.finish();
        assert_eq!(tally.sent, 4);
        assert_eq!(tally.ok, 2);
        assert_eq!(tally.unavailable, 1);
        assert_eq!(tally.duplicated, 1);
        assert_eq!(tally.misrouted, 1);
        assert_eq!(tally.lost, 1);
        assert_eq!(tally.session_notices, 1);
        assert!(tally.check(true).is_err());
    }

    #[test]
    fn another_calls_result_is_misrouted() {
        let mut ledger = Ledger::new("t");
        let a = ledger.echo();
        let b = ledger.echo();
        ledger.record(&text(
            json!({"jsonrpc": "2.0", "id": a["id"], "result": b["params"]}),
        ));
        ledger.record(&text(
            json!({"jsonrpc": "2.0", "id": b["id"], "result": b["params"]}),
        ));
        let tally = ledger.finish();
        assert_eq!((tally.ok, tally.misrouted, tally.lost), (1, 1, 0));
    }

    #[test]
    fn a_clean_run_passes() {
        let mut ledger = Ledger::new("t");
        let a = ledger.echo();
        ledger.record(&text(
            json!({"jsonrpc": "2.0", "id": a["id"], "result": a["params"]}),
        ));
        ledger.finish().check(false).expect("clean");
    }
}
