//! Several broker URLs, the nodes of one RabbitMQ cluster, and the order they are tried in.
//!
//! The bridge and the workers take a list of URLs (`--amqp` repeated, or `WSMQ_AMQP` with
//! commas). They connect to the first that answers, in the order given; on losing it they go
//! to the next. A round is one attempt at every URL; only after a whole round has failed does
//! the caller back off (the [`Backoff`](crate::Backoff) schedule). With one URL every attempt
//! is a round, so one URL behaves as it always did: one attempt, then the backoff delay.

/// Splits each entry on commas, trims the pieces and drops empty ones: `--amqp a,b --amqp c`
/// and `WSMQ_AMQP="a, b,c"` both give `[a, b, c]`. (An AMQP URL has no comma of its own.)
pub fn split_urls<'a>(entries: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    entries
        .into_iter()
        .flat_map(|entry| entry.split(','))
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The node a URL points at, for logs and health endpoints: `host:port` as written (no
/// credentials, no vhost, no query). A URL without `scheme://` is shown as `?` plus its length,
/// never as is, since it may hold a password.
pub fn node_name(url: &str) -> String {
    let Some((_, rest)) = url.split_once("://") else {
        return format!("?({} bytes, not a URL)", url.len());
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    if host.is_empty() {
        "?(no host)".to_owned()
    } else {
        host.to_owned()
    }
}

/// Which URL to try next. Pure bookkeeping: the caller connects and reports what happened.
#[derive(Debug, Clone)]
pub struct Failover {
    len: usize,
    /// The URL to try next (or the one connected to).
    current: usize,
    /// URLs that have failed since the round began.
    failed_in_round: usize,
    /// The URL of the last connection that worked.
    last_connected: Option<usize>,
}

/// What a failed attempt means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Another URL of this round is left: try it at once.
    TryNext,
    /// Every URL has failed in this round: back off, then start a new round.
    BackOff,
}

impl Failover {
    /// Tries `len` URLs (at least one is assumed: a `len` of 0 behaves as 1).
    pub fn new(len: usize) -> Self {
        Self {
            len: len.max(1),
            current: 0,
            failed_in_round: 0,
            last_connected: None,
        }
    }

    /// The index of the URL to try now.
    pub fn current(&self) -> usize {
        self.current
    }

    /// The attempt at [`current`](Self::current) failed: moves on to the next URL.
    pub fn failed(&mut self) -> AfterFailure {
        self.current = (self.current + 1) % self.len;
        self.failed_in_round += 1;
        if self.failed_in_round >= self.len {
            self.failed_in_round = 0;
            AfterFailure::BackOff
        } else {
            AfterFailure::TryNext
        }
    }

    /// The attempt at [`current`](Self::current) worked. Returns whether this is a failover:
    /// a connection to another node than the previous connection's.
    pub fn connected(&mut self) -> bool {
        self.failed_in_round = 0;
        let failover = self.last_connected.is_some_and(|last| last != self.current);
        self.last_connected = Some(self.current);
        failover
    }

    /// The connection to [`current`](Self::current) was lost: the next attempt goes to the
    /// next URL (the lost node comes last in the new round).
    pub fn lost(&mut self) {
        self.current = (self.current + 1) % self.len;
        self.failed_in_round = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_split_on_commas_and_blanks_are_dropped() {
        assert_eq!(
            split_urls(["amqp://a:5681/%2f, amqp://b:5682/%2f", "", " amqp://c/ ,"]),
            ["amqp://a:5681/%2f", "amqp://b:5682/%2f", "amqp://c/"]
        );
        assert_eq!(
            split_urls(["amqp://guest:guest@127.0.0.1:5672/%2f"]),
            ["amqp://guest:guest@127.0.0.1:5672/%2f"]
        );
        assert!(split_urls([" , ,"]).is_empty());
    }

    #[test]
    fn node_names_show_host_and_port_without_credentials() {
        assert_eq!(
            node_name("amqp://guest:s3cret@127.0.0.1:5681/%2f"),
            "127.0.0.1:5681"
        );
        assert_eq!(
            node_name("amqps://mq.example.com?heartbeat=5"),
            "mq.example.com"
        );
        assert_eq!(node_name("amqp://u:p@[::1]:5672"), "[::1]:5672");
        assert_eq!(node_name("amqp://"), "?(no host)");
        assert_eq!(node_name("guest:s3cret"), "?(12 bytes, not a URL)");
    }

    #[test]
    fn one_url_backs_off_after_every_failed_attempt() {
        let mut f = Failover::new(1);
        for _ in 0..3 {
            assert_eq!(f.current(), 0);
            assert_eq!(f.failed(), AfterFailure::BackOff);
        }
        assert!(!f.connected(), "the first connection is no failover");
        f.lost();
        assert_eq!(f.current(), 0);
        assert!(!f.connected(), "back on the same node: no failover");
    }

    #[test]
    fn urls_are_tried_in_order_and_a_round_ends_in_backoff() {
        let mut f = Failover::new(3);
        assert_eq!(f.current(), 0);
        assert_eq!(f.failed(), AfterFailure::TryNext);
        assert_eq!(f.current(), 1);
        assert_eq!(f.failed(), AfterFailure::TryNext);
        assert_eq!(f.current(), 2);
        assert_eq!(f.failed(), AfterFailure::BackOff);
        assert_eq!(f.current(), 0, "the new round starts from the first again");
    }

    #[test]
    fn losing_a_node_goes_to_the_next_and_counts_a_failover() {
        let mut f = Failover::new(3);
        assert_eq!(f.failed(), AfterFailure::TryNext);
        assert!(!f.connected(), "first connection, on the second URL");
        assert_eq!(f.current(), 1);
        f.lost();
        assert_eq!(f.current(), 2);
        assert!(f.connected(), "from node 1 to node 2");
        f.lost();
        assert_eq!(f.current(), 0, "wraps around");
        assert_eq!(f.failed(), AfterFailure::TryNext);
        assert_eq!(f.failed(), AfterFailure::TryNext);
        assert_eq!(f.current(), 2, "the lost node comes last in the round");
        assert_eq!(f.failed(), AfterFailure::BackOff);
        assert_eq!(f.current(), 0);
        assert!(f.connected(), "from node 2 to node 0");
    }
}
