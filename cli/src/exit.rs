//! Exit statuses: one per class of failure, so a script can tell "try again later" from "the
//! call is wrong" from "the worker said no" without parsing stderr. The table in docs/clients.md
//! is this one.

use std::process::ExitCode;

/// What became of a call, as the exit status says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Exit {
    /// The call answered a result.
    Ok,
    /// The worker answered an error of its own (any code not listed below).
    WorkerError,
    /// The call is wrong: not parseable, not a valid request, no such method, bad params,
    /// over the gateway's size limits (-32700, -32600, -32601, -32602, -32010, -32011, -32012).
    Refused,
    /// Try again later: the broker is unavailable, too many calls are in flight, or the
    /// connection calls too fast (-32000, -32003, -32005).
    Unavailable,
    /// The call's deadline passed (-32001, or no answer by the local deadline).
    Timeout,
    /// The call was cancelled (-32002).
    Cancelled,
    /// The job was dead-lettered after killing its workers (-32004).
    JobFailed,
    /// The gateway or a worker failed inside (-32603).
    Internal,
    /// Cannot connect, the upgrade was refused (e.g. 401), or the connection was lost.
    Connection,
    /// Bad command line (also: params that are not a JSON object or array).
    Usage,
    /// Interrupted (Ctrl-C): the calls in flight were cancelled.
    Interrupted,
}

impl Exit {
    /// The class of a JSON-RPC error code.
    pub(crate) fn for_code(code: i64) -> Self {
        use wsmq_codes::{
            BATCH_TOO_LONG, BROKER_UNAVAILABLE, CANCELLED, INTERNAL_ERROR, INVALID_PARAMS,
            INVALID_REQUEST, JOB_FAILED, JSON_TOO_DEEP, METHOD_NOT_FOUND, PARAMS_TOO_LARGE,
            PARSE_ERROR, RATE_LIMITED, TIMEOUT, TOO_MANY_IN_FLIGHT,
        };
        match code {
            PARSE_ERROR | INVALID_REQUEST | METHOD_NOT_FOUND | INVALID_PARAMS | JSON_TOO_DEEP
            | BATCH_TOO_LONG | PARAMS_TOO_LARGE => Exit::Refused,
            BROKER_UNAVAILABLE | TOO_MANY_IN_FLIGHT | RATE_LIMITED => Exit::Unavailable,
            TIMEOUT => Exit::Timeout,
            CANCELLED => Exit::Cancelled,
            JOB_FAILED => Exit::JobFailed,
            INTERNAL_ERROR => Exit::Internal,
            _ => Exit::WorkerError,
        }
    }

    /// The process exit status.
    pub(crate) fn status(self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::WorkerError => 1,
            Exit::Refused => 2,
            Exit::Unavailable => 3,
            Exit::Timeout => 4,
            Exit::Cancelled => 5,
            Exit::JobFailed => 6,
            Exit::Internal => 7,
            Exit::Connection => 8,
            Exit::Usage => 64,
            Exit::Interrupted => 130,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit.status())
    }
}

/// `wsmq call --help`'s table, kept next to the code it describes.
pub(crate) const TABLE: &str = "\
Exit status:
  0    the call answered a result (with --many: every call did)
  1    the worker answered an error of its own
  2    the call is wrong: -32700, -32600 invalid request, -32601 no such method, -32602 bad
       params, -32010/-32011/-32012 over the gateway's nesting, batch or params size limits
  3    try again later: -32000 broker unavailable, -32003 too many calls in flight, -32005
       rate limited
  4    timeout: -32001 (the gateway's, or no answer by the deadline plus 5 s)
  5    cancelled: -32002
  6    job failed: -32004 (dead-lettered after killing its workers)
  7    internal error: -32603 (e.g. a worker replied something unreadable)
  8    cannot connect, upgrade refused (e.g. HTTP 401), or connection lost
  64   bad command line, or PARAMS is not a JSON object or array
  130  interrupted (Ctrl-C): the calls in flight were sent $/cancel
With --many, the status is that of the first call (in call order) that failed.";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_table_names_every_wsmq_code() {
        for (name, code) in wsmq_codes::ALL {
            assert!(TABLE.contains(&code.to_string()), "{name} ({code})");
        }
    }

    #[test]
    fn every_gateway_code_has_its_own_class_and_worker_codes_share_one() {
        let cases = [
            (-32700, 2),
            (-32600, 2),
            (-32601, 2),
            (-32602, 2),
            (-32010, 2),
            (-32011, 2),
            (-32012, 2),
            (-32000, 3),
            (-32003, 3),
            (-32005, 3),
            (-32001, 4),
            (-32002, 5),
            (-32004, 6),
            (-32603, 7),
            (4000, 1),
            (-1, 1),
            (-32099, 1),
        ];
        for (code, status) in cases {
            assert_eq!(Exit::for_code(code).status(), status, "code {code}");
        }
    }

    #[test]
    fn statuses_are_distinct() {
        let all = [
            Exit::Ok,
            Exit::WorkerError,
            Exit::Refused,
            Exit::Unavailable,
            Exit::Timeout,
            Exit::Cancelled,
            Exit::JobFailed,
            Exit::Internal,
            Exit::Connection,
            Exit::Usage,
            Exit::Interrupted,
        ];
        let mut statuses: Vec<u8> = all.iter().map(|e| e.status()).collect();
        statuses.sort_unstable();
        statuses.dedup();
        assert_eq!(statuses.len(), all.len());
    }
}
