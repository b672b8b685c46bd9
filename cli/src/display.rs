//! What the user sees while calls run: on a terminal an indicatif bar (a call's own progress
//! for one call, the calls done for `--many`), and plain lines on stderr when it is piped, so
//! logs and scripts get text rather than escape codes. Results go to stdout, errors to stderr.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Value, json};

use crate::calls::{Observer, Outcome};
use crate::exit::Exit;

/// Positions of a bar whose progress comes as a fraction.
const FRACTION_STEPS: u64 = 1000;

/// How a progress value maps onto a bar: `(position, length)`, or `None` for values that say
/// no amount (shown as a spinner with the value).
pub(crate) fn bar_position(value: &Value) -> Option<(u64, u64)> {
    if let Some(f) = value.as_f64() {
        if (0.0..=1.0).contains(&f) {
            // In [0, 1000]: the cast cannot truncate.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            return Some(((f * FRACTION_STEPS as f64).round() as u64, FRACTION_STEPS));
        }
        return None;
    }
    let step = value.get("step").and_then(Value::as_u64);
    let of = value.get("of").and_then(Value::as_u64);
    if let (Some(step), Some(of)) = (step, of) {
        return Some((step.min(of), of));
    }
    let percent = value.get("percent").and_then(Value::as_u64)?;
    Some((percent.min(100), 100))
}

/// The exit class of an outcome.
pub(crate) fn exit_of(outcome: &Outcome) -> Exit {
    match outcome {
        Outcome::Result(_) => Exit::Ok,
        Outcome::Error(e) => Exit::for_code(e.code),
        Outcome::NoAnswer => Exit::Timeout,
        Outcome::Lost(_) => Exit::Connection,
        Outcome::Interrupted => Exit::Interrupted,
    }
}

/// One line saying why a call failed, for stderr.
pub(crate) fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Result(_) => "ok".to_owned(),
        Outcome::Error(e) => match &e.data {
            Some(data) => format!("error {}: {} (data: {data})", e.code, e.message),
            None => format!("error {}: {}", e.code, e.message),
        },
        Outcome::NoAnswer => format!(
            "timeout: no answer by the deadline plus {}s",
            crate::calls::DEADLINE_GRACE.as_secs()
        ),
        Outcome::Lost(reason) => format!("connection lost: {reason}"),
        Outcome::Interrupted => "interrupted: the call was cancelled".to_owned(),
    }
}

/// The line `--many` prints on stdout for a finished call (`call` counts from 1).
pub(crate) fn many_line(index: usize, outcome: &Outcome) -> Value {
    let call = index + 1;
    match outcome {
        Outcome::Result(result) => json!({"call": call, "result": result}),
        Outcome::Error(error) => json!({"call": call, "error": error}),
        other => json!({"call": call, "error": {"message": describe(other)}}),
    }
}

/// Shows the progress of a run.
pub(crate) struct Display {
    many: bool,
    terminal: bool,
    bar: Option<ProgressBar>,
    ok: usize,
    failed: usize,
}

impl Display {
    /// A display for `count` calls; `--many` when `many`.
    pub(crate) fn new(count: usize, many: bool) -> Self {
        let terminal = std::io::stderr().is_terminal();
        let bar = (many && terminal).then(|| {
            let bar =
                ProgressBar::with_draw_target(Some(count as u64), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{elapsed_precise} [{wide_bar:.cyan/blue}] {pos}/{len} calls  {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar
        });
        Self {
            many,
            terminal,
            bar,
            ok: 0,
            failed: 0,
        }
    }

    /// Clears the bar; call before printing the final result.
    pub(crate) fn clear(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }

    /// The single call's bar, made when its first progress arrives.
    fn call_bar(&mut self, value: &Value) -> &ProgressBar {
        self.bar.get_or_insert_with(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        let bar = self
            .bar
            .as_ref()
            .unwrap_or_else(|| unreachable!("just set"));
        match bar_position(value) {
            Some((pos, len)) => {
                bar.set_style(
                    ProgressStyle::with_template(
                        "{spinner} {elapsed_precise} [{wide_bar:.cyan/blue}] {percent:>3}%  {msg}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                bar.set_length(len);
                bar.set_position(pos);
            }
            None => {
                bar.set_style(
                    ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
            }
        }
        bar.set_message(value.to_string());
        bar
    }
}

impl Observer for Display {
    fn progress(&mut self, index: usize, value: &Value) {
        match (self.terminal, self.many) {
            (true, false) => {
                self.call_bar(value);
            }
            // One bar for --many: a call's own progress would only flicker through it.
            (true, true) => {}
            (false, false) => eprintln!("progress {value}"),
            (false, true) => eprintln!("call {} progress {value}", index + 1),
        }
    }

    fn finished(&mut self, index: usize, outcome: &Outcome) {
        if !self.many {
            return;
        }
        if matches!(outcome, Outcome::Result(_)) {
            self.ok += 1;
        } else {
            self.failed += 1;
        }
        let line = many_line(index, outcome).to_string();
        let print = || {
            let mut out = std::io::stdout().lock();
            // A closed stdout (`| head`) is the reader's choice, not an error of the call.
            let _ = writeln!(out, "{line}");
        };
        match &self.bar {
            Some(bar) => {
                bar.suspend(print);
                bar.inc(1);
                bar.set_message(format!("{} ok, {} failed", self.ok, self.failed));
            }
            None => print(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calls::RpcError;

    #[test]
    fn progress_values_map_to_bar_positions() {
        assert_eq!(bar_position(&json!({"step": 3, "of": 8})), Some((3, 8)));
        assert_eq!(bar_position(&json!(0.25)), Some((250, 1000)));
        assert_eq!(bar_position(&json!({"percent": 40})), Some((40, 100)));
        assert_eq!(bar_position(&json!({"step": 9, "of": 8})), Some((8, 8)));
        assert_eq!(bar_position(&json!("halfway")), None);
        assert_eq!(bar_position(&json!(7)), None);
    }

    #[test]
    fn many_lines_number_calls_from_one_and_keep_the_error_object() {
        let error = Outcome::Error(RpcError {
            code: 4000,
            message: "no".into(),
            data: None,
        });
        assert_eq!(
            many_line(0, &Outcome::Result(json!(1))),
            json!({"call": 1, "result": 1})
        );
        assert_eq!(
            many_line(4, &error),
            json!({"call": 5, "error": {"code": 4000, "message": "no"}})
        );
    }
}
