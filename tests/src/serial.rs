//! The guard of the tests that stop RabbitMQ (`serial_*`).
//!
//! RabbitMQ is shared by every test of a run, so a test that stops it may run only when
//! nothing else does. nextest's config keeps such a test alone, but a plain `cargo test` (or a
//! `cargo nextest run` with another config) would run it beside the others and break them. So
//! the test itself refuses unless told it is alone: `scripts/test` sets [`SERIAL_ENV`] for its
//! serial pass only, and anywhere else the test returns at once, saying why.

/// The environment variable that says "this process runs alone": `1` to let `serial_*`
/// tests stop RabbitMQ.
pub const SERIAL_ENV: &str = "WSMQ_SERIAL_TESTS";

/// Whether a test that stops RabbitMQ may run: `WSMQ_SERIAL_TESTS=1`. Otherwise prints why it
/// is skipped and returns false, and the test returns at once: its first line is
/// `if !wsmq_tests::serial::alone() { return; }`.
pub fn alone() -> bool {
    let set = std::env::var(SERIAL_ENV).is_ok_and(|v| v == "1");
    if !set {
        eprintln!(
            "[harness] skipped: this test stops RabbitMQ, which every other test shares; it runs \
             only when {SERIAL_ENV}=1 says it runs alone (scripts/test sets it for its serial \
             pass)"
        );
    }
    set
}
