//! The tokens file: `identity:token[:pattern,...]` per line, each token compared in constant
//! time, reloaded on SIGHUP (a file that no longer parses keeps the tokens in use).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use subtle::ConstantTimeEq;
use tokio::sync::watch;
use tracing::{info, warn};

use super::{Allowlist, Caller, SecurityError};

/// One line of a tokens file.
#[derive(Debug, Clone)]
struct TokenEntry {
    token: Vec<u8>,
    caller: Caller,
}

/// The contents of a tokens file.
#[derive(Debug, Clone, Default)]
pub(crate) struct TokenSet {
    entries: Vec<TokenEntry>,
}

impl TokenSet {
    /// Parses a tokens file: `identity:token` or `identity:token:pattern,pattern` per line;
    /// blank lines and lines starting with `#` are skipped.
    pub(crate) fn parse(text: &str) -> Result<Self, (usize, String)> {
        let mut entries = Vec::new();
        let mut seen: HashSet<&str> = HashSet::new();
        for (index, raw) in text.lines().enumerate() {
            let line_no = index + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.splitn(3, ':');
            let identity = fields.next().unwrap_or_default().trim();
            let Some(token) = fields.next().map(str::trim) else {
                return Err((line_no, "expected identity:token".to_owned()));
            };
            if identity.is_empty() || identity.chars().any(char::is_whitespace) {
                return Err((line_no, "empty identity or one with spaces".to_owned()));
            }
            if token.is_empty() || !token.bytes().all(is_token_char) {
                return Err((
                    line_no,
                    "empty token or one with characters outside A-Z a-z 0-9 - . _ ~ + / ="
                        .to_owned(),
                ));
            }
            if !seen.insert(token) {
                return Err((
                    line_no,
                    "this token is already given to another line".to_owned(),
                ));
            }
            let methods = match fields.next() {
                None => Allowlist::All,
                Some(list) => Allowlist::parse(list.split(',')).map_err(|why| (line_no, why))?,
            };
            entries.push(TokenEntry {
                token: token.as_bytes().to_vec(),
                caller: Caller {
                    identity: Some(identity.into()),
                    methods,
                },
            });
        }
        Ok(Self { entries })
    }

    pub(crate) fn load(path: &Path) -> Result<Self, SecurityError> {
        let text = std::fs::read_to_string(path).map_err(|source| SecurityError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|(line, why)| SecurityError::TokensLine {
            path: path.to_owned(),
            line,
            why,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The caller a token belongs to. Compares against every entry, each in constant time, so
    /// the time taken does not say which entry (or how much of one) matched.
    pub(super) fn find(&self, presented: &[u8]) -> Option<&Caller> {
        let mut found = None;
        for entry in &self.entries {
            if bool::from(entry.token.as_slice().ct_eq(presented)) {
                found = Some(&entry.caller);
            }
        }
        found
    }
}

/// Characters a token may have: those of a base64/base64url string, and allowed in a
/// websocket subprotocol name, so every transport can carry it.
fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=')
}

/// Keeps the tokens file current: [`TokensReloader::reload`] re-reads it, keeping the old set
/// if the new one does not parse.
pub(crate) struct TokensReloader {
    pub(super) path: PathBuf,
    pub(super) tx: watch::Sender<Arc<TokenSet>>,
}

impl TokensReloader {
    pub(crate) fn reload(&self) {
        match TokenSet::load(&self.path) {
            Ok(set) => {
                info!(path = %self.path.display(), tokens = set.len(), "tokens file reloaded");
                self.tx.send_replace(Arc::new(set));
            }
            Err(e) => warn!(
                error = %e,
                tokens = self.tx.borrow().len(),
                "tokens file not reloaded; keeping the current tokens"
            ),
        }
    }
}

/// Handles SIGHUP until `shutdown`: reloads the tokens file if there is one. Installed in every
/// case, since SIGHUP's default action (`systemctl reload` sends it) would end the process.
pub(crate) fn spawn_sighup_handler(
    reloader: Option<TokensReloader>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(hup) => hup,
        Err(e) => {
            warn!(error = %e, "cannot install a SIGHUP handler; the tokens file will not be reloaded");
            return;
        }
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                got = hup.recv() => match (got, &reloader) {
                    (None, _) => return,
                    (Some(()), Some(reloader)) => reloader.reload(),
                    (Some(()), None) => info!("SIGHUP: no tokens file to reload"),
                },
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(identity: &str, methods: Allowlist) -> Caller {
        Caller {
            identity: Some(identity.into()),
            methods,
        }
    }

    #[test]
    fn tokens_file_lines_give_identities_and_optional_allowlists() {
        let set = TokenSet::parse("# ops\n\nalice:tok-a\n  bob : tok-b : report.*, echo \n")
            .expect("parses");
        assert_eq!(set.len(), 2);
        assert_eq!(set.find(b"tok-a"), Some(&caller("alice", Allowlist::All)));
        let bob = set.find(b"tok-b").expect("bob");
        assert_eq!(bob.identity.as_deref(), Some("bob"));
        assert!(bob.methods.allows("report.daily"));
        assert!(bob.methods.allows("echo"));
        assert!(!bob.methods.allows("echo2"));
        assert!(!bob.methods.allows("fib"));
        assert_eq!(set.find(b"tok-c"), None);
        assert_eq!(set.find(b"tok-"), None);
        assert_eq!(set.find(b""), None);
    }

    #[test]
    fn tokens_file_errors_name_the_line_not_the_token() {
        for (text, line) in [
            ("alice\n", 1),
            ("# c\n:SECRET\n", 2),
            ("alice:\n", 1),
            ("a:SECRET\nb:SECRET\n", 2),
            ("a:SECRET space\n", 1),
            ("a:SECRET:re*port\n", 1),
            ("a:SECRET:,\n", 1),
        ] {
            let (got, why) = TokenSet::parse(text).expect_err(text);
            assert_eq!(got, line, "{text:?}: {why}");
            assert!(!why.contains("SECRET"), "{why}");
        }
    }
}
