//! One way to show an error with its causes in a log line or a message, for every wsmq program.

use std::error::Error;
use std::fmt;

/// Displays an error followed by its sources, `outer: inner: innermost` (what `{:#}` gives for
/// an `anyhow::Error`): a bare `%e` shows only the outermost message ("ipc framing failed"),
/// never the cause under it.
///
/// A source whose text the line already holds is left out: some errors (lapin's among them)
/// repeat their source in their own message, and the line would say it twice.
pub struct ErrorChain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&error_chain(self.0))
    }
}

/// [`ErrorChain`] as a `String`.
pub fn error_chain(e: &(dyn Error + 'static)) -> String {
    let mut line = e.to_string();
    let mut source = e.source();
    while let Some(error) = source {
        let text = error.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = error.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Middle);

    #[derive(Debug, thiserror::Error)]
    #[error("middle")]
    struct Middle(#[source] std::io::Error);

    #[test]
    fn chain_shows_every_source_outermost_first() {
        let error = Outer(Middle(std::io::Error::other("inner")));
        assert_eq!(error_chain(&error), "outer: middle: inner");
        assert_eq!(ErrorChain(&error).to_string(), "outer: middle: inner");
    }

    #[test]
    fn chain_of_an_error_without_source_is_its_message() {
        let error = std::io::Error::other("alone");
        assert_eq!(error_chain(&error), "alone");
    }

    #[test]
    fn chain_skips_a_source_the_message_already_repeats() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer: {0}")]
        struct Repeating(#[source] std::io::Error);
        let error = Repeating(std::io::Error::other("inner"));
        assert_eq!(error_chain(&error), "outer: inner");
    }
}
