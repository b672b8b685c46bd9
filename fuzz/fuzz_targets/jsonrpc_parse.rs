//! The gateway's JSON-RPC parser on arbitrary text frames: it must never panic, and every
//! answer must be a documented JSON-RPC error (see `wsmq_gateway::fuzzing::parse_frame`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // A websocket text frame is valid UTF-8 (tungstenite checks it); anything else is closed
    // with 1007 before the parser sees it.
    if let Ok(text) = std::str::from_utf8(data) {
        wsmq_gateway::fuzzing::parse_frame(text);
    }
});
